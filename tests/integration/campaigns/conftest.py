"""Fixtures of the campaigns integration tests: a fake segments server and a campaigns harness on port 0."""

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from plumbing.db import Database
from plumbing.telemetry import setup_tracing
from services.campaigns.app import MIGRATIONS
from services.campaigns.settings import CampaignsSettings
from tests.integration.campaigns.harness import FakeSegments, Harness
from xsell.campaigns.v1 import service_pb2_grpc
from xsell.segments.v1 import service_pb2_grpc as seg_grpc


@pytest.fixture
async def harness(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    segments = FakeSegments()
    server = grpc.aio.server()
    seg_grpc.add_SegmentsServiceServicer_to_server(segments, server)
    segments_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = CampaignsSettings(
        grpc_port=0,
        var_dir=tmp_path,
        database_url=database_url,
        nats_url=nats_url,
        segments_target=f"127.0.0.1:{segments_port}",
        # Small pages so one run spans several transactions and cursor advances.
        release_page_size=3,
        release_poll_seconds=0.1,
    )
    provider = setup_tracing("campaigns", tmp_path)
    harness = Harness(settings, provider, segments)
    yield harness
    await harness.stop()
    provider.shutdown()
    await server.stop(0)


@pytest.fixture
async def stub(harness: Harness) -> service_pb2_grpc.CampaignsServiceStub:
    return await harness.start()


@pytest.fixture
async def campaigns_db(database_url: str) -> AsyncIterator[Database]:
    """The campaigns schema, migrated, on each backend; no service around it."""
    database = Database(database_url)
    await database.migrate(MIGRATIONS)
    yield database
    await database.dispose()
