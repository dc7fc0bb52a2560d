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
            await lost.nc.close()
    finally:
        server.stop()
    assert [entry["event"] for entry in logs if entry["event"] == "nats_disconnected"] == ["nats_disconnected"]
