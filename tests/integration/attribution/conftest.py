"""The attribution service on its real parts (NATS, SQLite or PostgreSQL, a gRPC server on port 0), shared by the
attribution tests."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from plumbing.bus import Bus
from tests.integration.attribution.seeding import Service, running_service


@pytest.fixture
def service_settings() -> dict[str, Any]:
    """Settings over the defaults; a test module overrides this fixture to run the service differently."""
    return {}


@pytest.fixture
async def service(
    database_url: str, nats_url: str, nats_bus: Bus, tmp_path: Path, service_settings: dict[str, Any]
) -> AsyncIterator[Service]:
    async with running_service(database_url, nats_url, nats_bus, tmp_path, **service_settings) as started:
        yield started
