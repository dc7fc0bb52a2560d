"""OAuth 2.0 access tokens for FCM minted from a Google service account (RFC 7523 JWT bearer grant), cached.

Google's server-to-server flow: a JWT signed RS256 with the service account's private key, claims
`iss` = client_email, `scope`, `aud` = token_uri, `iat`, `exp` (at most an hour later), POSTed to the
token_uri as `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`; the answer is
`{"access_token", "expires_in", "token_type": "Bearer"}` or `{"error", "error_description"}`.
"""

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.channels.delivery import ProviderOutcomeUnknown, ProviderUnavailable, scrub
from services.channels.providers.base import ProviderAnswer, ProviderRequest
from services.channels.providers.http import HttpTransport

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 3600
"""Google refuses an assertion whose exp is more than an hour after its iat."""
REFRESH_MARGIN_SECONDS = 300.0
"""A token is replaced this long before it expires, so no request leaves with a token about to lapse."""


class InvalidServiceAccount(ValueError):
    """The service-account key is not a Google service-account JSON key with an RSA private key."""


@dataclass(frozen=True)
class ServiceAccount:
    """The parts of a service-account JSON key the token flow uses."""

    client_email: str
    private_key_id: str
    private_key: rsa.RSAPrivateKey
    token_uri: str

    @classmethod
    def load(cls, key: str) -> "ServiceAccount":
        """From the JSON key itself, or from the path of the file that holds it (a mounted Secret)."""
        if key.lstrip().startswith("{"):
            return cls.from_json(key)
        try:
            text = Path(key).read_text()
        except OSError as error:
            raise InvalidServiceAccount(
                f"the FCM service-account key is neither JSON nor a readable file: {error.strerror}"
            ) from None
        return cls.from_json(text)

    @classmethod
    def from_json(cls, text: str) -> "ServiceAccount":
        try:
            document = json.loads(text)
            key = serialization.load_pem_private_key(document["private_key"].encode(), password=None)
            client_email, token_uri = str(document["client_email"]), str(document["token_uri"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            what = f"it has no {error.args[0]}" if isinstance(error, KeyError) else type(error).__name__
            raise InvalidServiceAccount(
                "the FCM service-account key must be the JSON key file Google issues (client_email, private_key, "
                f"token_uri): {what}"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidServiceAccount("the FCM service-account private_key must be an RSA key (RS256)")
        return cls(client_email, str(document.get("private_key_id", "")), key, token_uri)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt_assertion(account: ServiceAccount, *, scope: str, issued_at: int) -> str:
    """The signed JWT that the token_uri exchanges for an access token."""
    header = {"alg": "RS256", "typ": "JWT", **({"kid": account.private_key_id} if account.private_key_id else {})}
    claims = {
        "iss": account.client_email,
        "scope": scope,
        "aud": account.token_uri,
        "iat": issued_at,
        "exp": issued_at + ASSERTION_LIFETIME_SECONDS,
    }
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = account.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def token_request(account: ServiceAccount, assertion: str) -> ProviderRequest:
    body = urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": assertion}).encode()
    return ProviderRequest("POST", account.token_uri, body, {"Content-Type": "application/x-www-form-urlencoded"})


def read_token_answer(answer: ProviderAnswer) -> tuple[str, float]:
    """The access token and its lifetime in seconds; ProviderUnavailable when the token_uri refused."""
    document = answer.json()
    token = document.get("access_token")
    expires_in = document.get("expires_in")
    if 200 <= answer.status < 300 and isinstance(token, str) and token and isinstance(expires_in, int | float):
        return token, float(expires_in)
    # invalid_grant (bad signature, clock skew, a deleted key) is about our credentials, not a message: retried
    # with backoff and dead-lettered after the last attempt, like a 401 from the provider.
    error = f"{document.get('error', '')} {document.get('error_description', '')}".strip() or "no access_token"
    raise ProviderUnavailable(f"push token HTTP {answer.status}: {scrub(error)}")


class AccessTokens(Protocol):
    """Where a provider's bearer token comes from."""

    async def token(self) -> str:
        """A token that is good for the next call."""
        ...

    async def refresh(self, rejected: str) -> str:
        """A token other than `rejected`, which the provider refused (401)."""
        ...


class ServiceAccountTokens:
    """Mints access tokens from a service account, keeps the current one and replaces it before it expires.

    One mint at a time: callers that need a token while one is being minted wait for it rather than
    each asking the token_uri.
    """

    def __init__(
        self,
        account: ServiceAccount,
        http: HttpTransport,
        *,
        scope: str = FCM_SCOPE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.account = account
        self.http = http
        self.scope = scope
        self.clock = clock
        self._token = ""
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.minted = 0

    async def token(self) -> str:
        if self._token and self.clock() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._token and self.clock() < self._refresh_at:
                return self._token
            return await self._mint()

    async def refresh(self, rejected: str) -> str:
        async with self._lock:
            if self._token and self._token != rejected:
                return self._token  # another caller already replaced it
            return await self._mint()

    async def _mint(self) -> str:
        now = self.clock()
        request = token_request(self.account, jwt_assertion(self.account, scope=self.scope, issued_at=int(now)))
        try:
            answer = await self.http.send(request)
        except ProviderOutcomeUnknown as error:
            # A lost token answer only costs a token: the provider has not seen the message, so it is retried.
            raise ProviderUnavailable(f"push token: {error.reason}") from error
        token, expires_in = read_token_answer(answer)
        self.minted += 1
        self._token = token
        self._refresh_at = now + expires_in - min(REFRESH_MARGIN_SECONDS, expires_in / 2)
        return token


async def send_with_token(http: HttpTransport, request: ProviderRequest, tokens: AccessTokens) -> ProviderAnswer:
    """Sends with the current bearer token; after a 401, once more with a fresh one.

    A 401 means the provider refused our credentials before taking the message, so asking again
    with a new token cannot deliver it twice. A second 401 is returned as it is (retried later).
    """
    token = await tokens.token()
    answer = await http.send(request.with_header("Authorization", f"Bearer {token}"))
    if answer.status != 401:
        return answer
    token = await tokens.refresh(token)
    return await http.send(request.with_header("Authorization", f"Bearer {token}"))
