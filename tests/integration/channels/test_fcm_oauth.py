"""Push with an access token minted from a service account, against the local FCM server and its token endpoint."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.provider_sinks import GoogleTokenEndpoint, ProviderSinks
from plumbing.bus import Bus
from services import streams
from services.channels.delivery import Accepted, ProviderUnavailable
from services.channels.outgoing import OutgoingPush
from services.channels.providers.google_oauth import ServiceAccount, ServiceAccountTokens, send_with_token
from services.channels.providers.http import HttpTransport
from services.channels.providers.push import FcmPush
from tests.integration.channels.conftest import Listener, SmtpRelay, StartChannels
from tests.integration.channels.support import (
    dispatch_on,
    get_message,
    new_campaign_id,
    publish,
    published_state,
    states,
)
from xsell.channels.v1 import resources_pb2

CLIENT_EMAIL = "xsell-push@xsell-dev.iam.gserviceaccount.com"
PUSH = OutgoingPush("fcm-token-abc123", "Pre-approved", "Your loan is ready", "acmebank://offers/T06")


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_file(key: rsa.RSAPrivateKey, token_uri: str) -> str:
    """A service-account JSON key in the form Google issues it."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "xsell-dev",
            "private_key_id": "0123456789abcdef",
            "private_key": pem.decode(),
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "token_uri": token_uri,
        }
    )


@pytest.fixture
def account_key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture
def google(provider_sinks: ProviderSinks, account_key: rsa.RSAPrivateKey) -> GoogleTokenEndpoint:
    """The push server's token endpoint, trusting the public half of the key generated for this test."""
    public = account_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    endpoint = GoogleTokenEndpoint(CLIENT_EMAIL, public, f"{provider_sinks.push.base_url}/token")
    provider_sinks.push.oauth = endpoint
    return endpoint


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    http = HttpTransport(timeout_seconds=5.0, connect_timeout_seconds=2.0)
    yield http
    await http.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def adapter(sinks: ProviderSinks) -> FcmPush:
    # No fixed token: with a service account configured the server accepts only the tokens it minted.
    return FcmPush(sinks.push.base_url, sinks.credentials.fcm_project_id, "not-a-minted-token")


async def push(sinks: ProviderSinks, http: HttpTransport, tokens: ServiceAccountTokens, campaign_id: str) -> Accepted:
    fcm = adapter(sinks)
    return fcm.accepted(await send_with_token(http, fcm.request(campaign_id, "prof_1", PUSH), tokens))


def tokens_for(
    key: rsa.RSAPrivateKey, google: GoogleTokenEndpoint, http: HttpTransport, **options: object
) -> ServiceAccountTokens:
    return ServiceAccountTokens(ServiceAccount.from_json(key_file(key, google.token_uri)), http, **options)  # type: ignore[arg-type]


async def test_push_carries_the_minted_token_and_one_token_serves_many_sends(
    provider_sinks: ProviderSinks, google: GoogleTokenEndpoint, account_key: rsa.RSAPrivateKey, transport: HttpTransport
) -> None:
    tokens = tokens_for(account_key, google, transport)

    await asyncio.gather(*(push(provider_sinks, transport, tokens, f"CSELL-OAUTH-{n}") for n in range(10)))
    await push(provider_sinks, transport, tokens, "CSELL-OAUTH-10")

    assert google.requests == 1
    [token] = google.issued
    assert len(provider_sinks.push.received) == 11
    assert {r.headers["Authorization"] for r in provider_sinks.push.received} == {f"Bearer {token}"}


async def test_a_token_about_to_expire_is_replaced_before_it_is_sent(
    provider_sinks: ProviderSinks, google: GoogleTokenEndpoint, account_key: rsa.RSAPrivateKey, transport: HttpTransport
) -> None:
    # Short-lived tokens, so that the channels clock moves into the refresh margin while the assertion it signs
    # is still within the server's allowed clock skew.
    google.lifetime_seconds = 10
    clock = Clock(time.time())
    tokens = tokens_for(account_key, google, transport, clock=clock)
    await push(provider_sinks, transport, tokens, "CSELL-OAUTH-A")
    clock.now += 6  # past half the lifetime (the margin for short tokens), before the token lapses

    await push(provider_sinks, transport, tokens, "CSELL-OAUTH-B")

    assert google.requests == 2
    first, second = (r.headers["Authorization"] for r in provider_sinks.push.received)
    assert first != second
    assert provider_sinks.push.refused == []  # replaced before use, not after a 401


async def test_a_401_refreshes_the_token_once_and_the_message_goes_once(
    provider_sinks: ProviderSinks, google: GoogleTokenEndpoint, account_key: rsa.RSAPrivateKey, transport: HttpTransport
) -> None:
    tokens = tokens_for(account_key, google, transport)
    await push(provider_sinks, transport, tokens, "CSELL-OAUTH-A")
    google.revoke_all()

    await push(provider_sinks, transport, tokens, "CSELL-OAUTH-B")

    assert [status for status, _ in provider_sinks.push.refused] == [401]
    assert google.requests == 2
    assert len(provider_sinks.push.for_campaign("CSELL-OAUTH-B")) == 1


async def test_a_second_401_is_left_to_a_later_attempt_and_nothing_is_sent(
    provider_sinks: ProviderSinks, google: GoogleTokenEndpoint, account_key: rsa.RSAPrivateKey, transport: HttpTransport
) -> None:
    google.lifetime_seconds = 0  # every token it issues is already expired when FCM sees it
    tokens = tokens_for(account_key, google, transport)

    with pytest.raises(ProviderUnavailable, match="push HTTP 401"):
        await push(provider_sinks, transport, tokens, "CSELL-OAUTH-A")

    assert [status for status, _ in provider_sinks.push.refused] == [401, 401]
    assert google.requests == 2
    assert provider_sinks.push.received == []


async def test_a_key_google_does_not_know_is_an_invalid_grant_and_nothing_reaches_fcm(
    provider_sinks: ProviderSinks, google: GoogleTokenEndpoint, transport: HttpTransport
) -> None:
    tokens = tokens_for(new_key(), google, transport)

    with pytest.raises(ProviderUnavailable, match="push token HTTP 400: invalid_grant Invalid JWT Signature"):
        await push(provider_sinks, transport, tokens, "CSELL-OAUTH-A")

    assert google.issued == {}
    assert provider_sinks.push.received == [] and provider_sinks.push.refused == []


async def test_a_token_for_another_scope_is_refused(
    provider_sinks: ProviderSinks, google: GoogleTokenEndpoint, account_key: rsa.RSAPrivateKey, transport: HttpTransport
) -> None:
    tokens = tokens_for(
        account_key, google, transport, scope="https://www.googleapis.com/auth/cloud-platform.read-only"
    )

    with pytest.raises(ProviderUnavailable, match="invalid_scope"):
        await push(provider_sinks, transport, tokens, "CSELL-OAUTH-A")
    assert provider_sinks.push.received == []


async def test_the_service_sends_push_with_a_token_minted_from_the_key_file(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    google: GoogleTokenEndpoint,
    account_key: rsa.RSAPrivateKey,
    nats_bus: Bus,
    listener: Listener,
    tmp_path: Path,
) -> None:
    path = tmp_path / "fcm-service-account.json"
    path.write_text(key_file(account_key, google.token_uri))
    settings = {**provider_sinks.channels_settings(), "fcm_service_account": str(path)}
    channels = await start_channels(smtp_relay.port, **settings)
    campaign_id = new_campaign_id()

    await publish(nats_bus, dispatch_on("push", campaign_id))

    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)
    [received] = provider_sinks.push.for_campaign(campaign_id)
    assert received.headers["Authorization"] == f"Bearer {next(iter(google.issued))}"
    assert (await get_message(channels, campaign_id)).state == resources_pb2.DELIVERY_STATE_SENT


async def test_a_refused_key_leaves_the_push_queued_never_sending_and_failed_after_the_last_attempt(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    google: GoogleTokenEndpoint,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    """The token is fetched before the intent: a refused key is retried without a SENDING row to turn AMBIGUOUS,
    the message says why it waits, and after the dispatch durable's last attempt it is FAILED with Google's reason."""
    settings = {**provider_sinks.channels_settings(), "fcm_service_account": key_file(new_key(), google.token_uri)}
    channels = await start_channels(smtp_relay.port, **settings)
    campaign_id = new_campaign_id()

    await publish(nats_bus, dispatch_on("push", campaign_id))

    failed = await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_FAILED)
    assert failed.reason.startswith(f"gave up after {streams.CHANNELS_DISPATCH.max_deliver} attempts: ")
    assert "invalid_grant" in failed.reason
    assert google.requests == streams.CHANNELS_DISPATCH.max_deliver
    assert provider_sinks.push.received == [] and provider_sinks.push.refused == []
    record = await get_message(channels, campaign_id)
    assert record.state == resources_pb2.DELIVERY_STATE_FAILED
    assert "DELIVERY_STATE_SENDING" not in states(record)
    assert "DELIVERY_STATE_QUEUED" in states(record)
