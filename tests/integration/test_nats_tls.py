"""NATS over TLS, on a real server with the accounts of services/nats_access.py and devstack's certificates: a service
connects as its user over TLS and publishes; a plain connection, and one that does not trust the server's CA, are
refused at once."""

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from devstack.nats_server import NatsServer
from devstack.nats_tls import local_certificates
from devstack.stack import nats_passwords
from plumbing import bus as bus_module
from plumbing.bus import Bus, NatsRefused
from services import nats_access, nats_provision, streams
from tests.integration.nats_users import service_bus
from tests.waiting import eventually

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
    campaigns = await service_bus(server, passwords, "campaigns")
    try:
        assert campaigns.nc.connected_url is not None and campaigns.nc.connected_url.scheme == "tls"
        assert await campaigns.publish_batch([(streams.OUTREACH_CREATED, b"an event", {})]) == [False]
        # What the XsellNatsCertificateExpiring alert reads: the local certificate is made for 365 days.
        expires_in = await campaigns.certificate_expires_in()
        assert expires_in is not None and 364 * 86400 < expires_in <= 365 * 86400
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


async def test_a_tls_client_never_sends_its_password_to_a_server_without_tls(
    passwords: dict[str, str], tmp_path: Path
) -> None:
    """The TLS handshake comes first: nats.py would otherwise upgrade only when the server asks for it, and give the
    password in clear to a server, or anything on its port, that does not."""
    plain = NatsServer(tmp_path / "plain", authorization=nats_access.authorization_config(passwords)).start()
    try:
        ca = local_certificates(tmp_path / "pki").ca
        with pytest.raises(NatsRefused, match="TLS"):
            await asyncio.wait_for(
                Bus.connect(
                    plain.url.replace("nats://", "tls://"),
                    "t",
                    user="campaigns",
                    password=passwords["campaigns"],
                    tls_ca=ca,
                ),
                20,
            )
    finally:
        plain.stop()


async def test_a_client_that_waits_for_the_servers_info_first_still_connects(
    server: NatsServer, passwords: dict[str, str]
) -> None:
    """The nats CLI, or a feed's nats.py without tls_handshake_first: the server falls back after 300 ms."""
    assert server.tls is not None
    context = ssl.create_default_context(cafile=str(server.tls.ca))
    client = await nats.connect(
        server.url, tls=context, allow_reconnect=False, user="feeds", password=passwords["feeds"]
    )
    await client.close()


async def test_a_first_connect_stuck_in_its_handshake_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that accepts and then says nothing (a member starting, a starved node): nats.py would wait for ever;
    a new client tries again after CONNECT_ATTEMPT_SECONDS."""
    monkeypatch.setattr(bus_module, "CONNECT_ATTEMPT_SECONDS", 0.5)
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    ca = local_certificates(tmp_path / "pki").ca
    connecting = asyncio.create_task(Bus.connect(f"tls://127.0.0.1:{port}", "t", tls_ca=ca))
    try:

        async def tried_again() -> bool:
            return len(accepted) >= 3

        await eventually(tried_again, timeout=10)
        assert not connecting.done()
    finally:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        for writer in accepted:
            writer.close()
        listener.close()


def test_the_local_certificates_are_made_once_and_kept(tmp_path: Path) -> None:
    first = local_certificates(tmp_path)
    made = first.certificate.read_bytes()
    assert local_certificates(tmp_path).certificate.read_bytes() == made
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"
    # A set left half written (another CA beside the certificate) is made anew.
    local_certificates(tmp_path / "other").ca.replace(first.ca)
    assert local_certificates(tmp_path).certificate.read_bytes() != made
