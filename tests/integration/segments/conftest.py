"""A real segments server on port 0, on each database backend, with the session's NATS."""

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.segments.app import build
from services.segments.settings import SegmentsSettings
from xsell.segments.v1 import service_pb2_grpc


@pytest.fixture
async def segments(
    database_url: str, nats_url: str, tmp_path: Path
) -> AsyncIterator[service_pb2_grpc.SegmentsServiceStub]:
    settings = SegmentsSettings(grpc_port=0, database_url=database_url, nats_url=nats_url, var_dir=tmp_path)
    process = await build(settings, TracerProvider())
    await process.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.server.port}")
    try:
        yield service_pb2_grpc.SegmentsServiceStub(channel)
    finally:
        await channel.close()
        await process.stop(1)
