"""The attribution service on its real parts (NATS, SQLite or PostgreSQL, a gRPC server on port 0), shared by the
attribution tests."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plumbing.bus import Bus
from tests.integration.attribution.seeding import Service, running_service


@pytest.fixture
async def service(database_url: str, nats_url: str, nats_bus: Bus, tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(database_url, nats_url, nats_bus, tmp_path) as started:
        yield started
