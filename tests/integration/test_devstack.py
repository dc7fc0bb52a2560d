"""`make run`'s own parts against a real nats-server: its readiness probe leaves no error in its log."""

import socket
from pathlib import Path

from devstack.nats_server import NatsServer
from devstack.nats_tls import local_certificates
from tests.waiting import eventually


async def test_nats_over_tls_starts_without_a_handshake_error_in_its_log(tmp_path: Path) -> None:
    log = tmp_path / "nats.log"
    server = NatsServer(tmp_path / "nats", tls=local_certificates(tmp_path / "pki")).start(log)
    try:
        # A client that hangs up before its handshake, as the readiness probe once did: once the server has logged
        # this one's error, it has handled the probe's connection too, which came first.
        with socket.create_connection((server.host, server.port)) as client:
            client_port = client.getsockname()[1]

        async def handshake_errors() -> list[str]:
            lines = [line for line in log.read_text().splitlines() if "TLS handshake error" in line]
            return lines if any(f"127.0.0.1:{client_port} " in line for line in lines) else []

        errors = await eventually(handshake_errors)
    finally:
        server.stop()
    assert len(errors) == 1, errors
