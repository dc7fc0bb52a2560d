"""The public gRPC port over TLS, and mTLS where a client CA is configured (the API key is still required)."""

import asyncio
from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError

from cli.__main__ import main as cli_main
from gateway.settings import GatewaySettings
from tests.integration.gateway.conftest import GatewayFactory
from tests.pki import issue, make_ca
from xsell.gateway.v1 import service_pb2, service_pb2_grpc


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the gateway's server certificate (localhost, 127.0.0.1) and a CRM's client certificate."""
    directory = make_ca(tmp_path_factory.mktemp("pki"))
    issue(directory, "client", "/CN=crm-prod", "extendedKeyUsage=clientAuth\n")
    return directory


def _secure(port: int, pki: Path, *, client_certificate: bool) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client_certificate else None,
        certificate_chain=(pki / "client.pem").read_bytes() if client_certificate else None,
    )
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


async def _caller(channel: grpc.aio.Channel, key: str) -> str:
    stub = service_pb2_grpc.GatewayServiceStub(channel)
    reply = await stub.GetCaller(service_pb2.GetCallerRequest(), metadata=(("x-api-key", key),), timeout=10)
    return reply.caller.client_name


async def test_mtls_admits_a_client_certificate_from_the_ca_and_nothing_else(
    start_gateway: GatewayFactory, pki: Path
) -> None:
    gateway = await start_gateway(
        tls_certificate_file=pki / "server.pem",
        tls_private_key_file=pki / "server.key",
        tls_client_ca_file=pki / "ca.pem",
    )
    key = await gateway.add_key("reports.read", client="crm-prod")
    port = gateway.process.server.port
    async with _secure(port, pki, client_certificate=True) as channel:
        assert await _caller(channel, key) == "crm-prod"
        # The certificate does not replace the key: without one the call is refused as before.
        with pytest.raises(grpc.aio.AioRpcError) as no_key:
            await service_pb2_grpc.GatewayServiceStub(channel).GetCaller(service_pb2.GetCallerRequest(), timeout=10)
        assert no_key.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with _secure(port, pki, client_certificate=False) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as no_certificate:
            await _caller(channel, key)
        assert no_certificate.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as plaintext:
            await _caller(channel, key)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_without_a_client_ca_needs_no_client_certificate(start_gateway: GatewayFactory, pki: Path) -> None:
    gateway = await start_gateway(tls_certificate_file=pki / "server.pem", tls_private_key_file=pki / "server.key")
    key = await gateway.add_key("reports.read", client="los")
    async with _secure(gateway.process.server.port, pki, client_certificate=False) as channel:
        assert await _caller(channel, key) == "los"


def test_half_a_tls_configuration_is_refused_at_start(pki: Path) -> None:
    with pytest.raises(ValidationError, match="TLS_PRIVATE_KEY_FILE"):
        GatewaySettings(tls_certificate_file=pki / "server.pem")
    with pytest.raises(ValidationError, match="needs the TLS certificate"):
        GatewaySettings(tls_client_ca_file=pki / "ca.pem")


async def test_the_cli_talks_mtls_with_its_certificate_and_fails_clearly_without(
    start_gateway: GatewayFactory, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = await start_gateway(
        tls_certificate_file=pki / "server.pem",
        tls_private_key_file=pki / "server.key",
        tls_client_ca_file=pki / "ca.pem",
    )
    key = await gateway.add_key("segments.manage", client="ops")
    common = [
        "--gateway",
        f"localhost:{gateway.process.server.port}",
        "--api-key",
        key,
        "--tls-ca",
        str(pki / "ca.pem"),
    ]
    client = ["--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")]
    assert await asyncio.to_thread(cli_main, ["segments", "list", *common, *client, "--json", "--timeout", "10"]) == 0
    assert await asyncio.to_thread(cli_main, ["segments", "list", *common, "--timeout", "10"]) != 0
    assert "UNAVAILABLE" in capsys.readouterr().err
