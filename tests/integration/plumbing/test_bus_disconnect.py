"""A lost NATS connection is logged as one; closing it ourselves (a drain at shutdown, a tool finishing) is not."""

from pathlib import Path

import structlog

from devstack.nats_server import NatsServer
from plumbing.bus import Bus
from tests.waiting import eventually


async def test_only_a_lost_connection_is_warned_of(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    try:
        with structlog.testing.capture_logs() as logs:
            drained = await Bus.connect(server.url, "test-drained")
            await drained.drain()
            lost = await Bus.connect(server.url, "test-lost")
            server.stop()

            async def warned() -> bool:
                return any(entry["event"] == "nats_disconnected" for entry in logs)

            await eventually(warned)
            lost.closing = True  # as drain does: the server is gone, there is nothing to drain
            await lost.nc.close()
    finally:
        server.stop()
    assert [entry["event"] for entry in logs if entry["event"] == "nats_disconnected"] == ["nats_disconnected"]


async def test_a_connection_the_server_closed_is_warned_of_with_its_reason(tmp_path: Path) -> None:
    """nats.py checks a publish's payload against the server's maximum, not its headers with it: the server closes
    the connection for good. That is not our own close."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        with structlog.testing.capture_logs() as logs:
            bus = await Bus.connect(server.url, "test-oversize")
            await bus.nc.publish("anything", b"\0" * (bus.nc.max_payload - 10), headers={"X-Big": "y" * 1000})

            async def warned() -> list[dict[str, object]]:
                return [entry for entry in logs if entry["event"] == "nats_disconnected"]

            (warning,) = await eventually(warned)
            await bus.drain()
    finally:
        server.stop()
    assert "payload" in str(warning["error"]).lower()
