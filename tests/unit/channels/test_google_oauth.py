"""The service-account JWT and the token answer, read without I/O."""

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.channels.delivery import ProviderUnavailable
from services.channels.providers.base import ProviderAnswer
from services.channels.providers.google_oauth import (
    FCM_SCOPE,
    InvalidServiceAccount,
    ServiceAccount,
    jwt_assertion,
    read_token_answer,
    token_request,
)

TOKEN_URI = "https://oauth2.googleapis.com/token"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_json(key: rsa.RSAPrivateKey) -> str:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return json.dumps(
        {
            "type": "service_account",
            "private_key_id": "kid-1",
            "private_key": pem.decode(),
            "client_email": "push@xsell.iam.gserviceaccount.com",
            "token_uri": TOKEN_URI,
        }
    )


def decode(part: str) -> dict[str, object]:
    value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert isinstance(value, dict)
    return value


def test_the_assertion_is_signed_rs256_with_the_claims_google_asks_for(key: rsa.RSAPrivateKey) -> None:
    account = ServiceAccount.load(key_json(key))

    assertion = jwt_assertion(account, scope=FCM_SCOPE, issued_at=1_800_000_000)

    header, claims, signature = assertion.split(".")
    assert decode(header) == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}
    assert decode(claims) == {
        "iss": "push@xsell.iam.gserviceaccount.com",
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "aud": TOKEN_URI,
        "iat": 1_800_000_000,
        "exp": 1_800_003_600,
    }
    key.public_key().verify(
        base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
        f"{header}.{claims}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    request = token_request(account, assertion)
    assert request.url == TOKEN_URI
    assert request.body.decode() == (
        f"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
    )


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("{not json", "JSON key file"),
        ('{"client_email": "a@b", "token_uri": "https://t"}', "JSON key file .*: it has no private_key"),
        ('{"private_key": "garbage", "client_email": "a@b", "token_uri": "https://t"}', "JSON key file"),
        ("/nonexistent/fcm-key.json", "neither JSON nor a readable file"),
    ],
)
def test_a_key_that_is_not_a_service_account_key_says_so(key: str, says: str) -> None:
    with pytest.raises(InvalidServiceAccount, match=says):
        ServiceAccount.load(key)


def test_the_token_answer_gives_the_token_and_its_lifetime() -> None:
    answer = ProviderAnswer(200, {}, b'{"access_token": "ya29.abc", "expires_in": 3599, "token_type": "Bearer"}')
    assert read_token_answer(answer) == ("ya29.abc", 3599.0)


def test_a_refused_grant_is_transient_and_carries_googles_reason() -> None:
    answer = ProviderAnswer(400, {}, b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}')
    with pytest.raises(ProviderUnavailable, match="push token HTTP 400: invalid_grant Invalid JWT Signature"):
        read_token_answer(answer)
