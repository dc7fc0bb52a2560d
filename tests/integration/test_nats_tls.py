"""NATS over TLS, on a real server with the accounts of services/nats_access.py and devstack's certificates: a service
connects as its user over TLS and publishes; a plain connection, and one that does not trust the server's CA, are
refused at once."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from devstack.nats_server import NatsServer
from devstack.nats_tls import local_certificates
from devstack.stack import nats_passwords
from plumbing.bus import Bus, NatsRefused
from services import nats_access, nats_provision, streams

pytestmark = pytest.mark.xdist_group("nats-tls")


@pytest.fixture(scope="module")
def passwords(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return nats_passwords(tmp_path_factory.mktemp("var"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, passwords: dict[str, str]) -> Iterator[NatsServer]:
    directory = tmp_path_factory.mktemp("nats-tls")
    started = NatsServer(
        directory / "nats",
        authorization=nats_access.authorization_config(passwords),
        tls=local_certificates(directory / "pki"),
    ).start()
    yield started
    started.stop()


async def test_a_service_connects_over_tls_as_its_user_and_publishes(
    server: NatsServer, passwords: dict[str, str]
) -> None:
    assert server.url.startswith("tls://") and server.tls is not None
    provisioner = await Bus.connect(
        server.url, "test-provision", user="provisioner", password=passwords["provisioner"], tls_ca=server.tls.ca
    )
    try:
        await nats_provision.provision(provisioner, within=10)
    finally:
        await provisioner.drain()
    campaigns = await Bus.connect(
        server.url,
        "test-campaigns",
        user="campaigns",
        password=passwords["campaigns"],
        api_prefix=nats_access.IMPORTED_API,
        tls_ca=server.tls.ca,
    )
    try:
        assert campaigns.nc.connected_url is not None and campaigns.nc.connected_url.scheme == "tls"
        assert await campaigns.publish_batch([(streams.OUTREACH_CREATED, b"an event", {})]) == [False]
    finally:
        await campaigns.drain()


async def test_a_plain_connection_is_refused(server: NatsServer, passwords: dict[str, str]) -> None:
    """The password would cross in clear: the server requires TLS first."""
    plain = server.url.replace("tls://", "nats://")
    with pytest.raises((NatsRefused, nats.errors.Error, OSError)):
        await asyncio.wait_for(
            nats.connect(plain, user="campaigns", password=passwords["campaigns"], allow_reconnect=False), 10
        )


async def test_a_server_whose_certificate_the_ca_did_not_sign_is_refused_at_once(
    server: NatsServer, passwords: dict[str, str], tmp_path: Path
) -> None:
    """A process given another CA (or a server impersonating NATS) stops with the reason, instead of retrying."""
    other = local_certificates(tmp_path / "other-pki")
    with pytest.raises(NatsRefused, match="TLS"):
        await asyncio.wait_for(
            Bus.connect(server.url, "test", user="campaigns", password=passwords["campaigns"], tls_ca=other.ca), 20
        )


def test_the_local_certificates_are_made_once_and_kept(tmp_path: Path) -> None:
    first = local_certificates(tmp_path)
    made = first.certificate.read_bytes()
    assert local_certificates(tmp_path).certificate.read_bytes() == made
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"
