"""A real segments server on port 0, on each database backend, with the session's NATS."""

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.segments.app import build
from services.segments.settings import SegmentsSettings
from xsell.segments.v1 import service_pb2_grpc


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The spans the server under test finished, for checking their attributes."""
    return InMemorySpanExporter()


@pytest.fixture
async def segments(
    database_url: str, nats_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> AsyncIterator[service_pb2_grpc.SegmentsServiceStub]:
    settings = SegmentsSettings(grpc_port=0, database_url=database_url, nats_url=nats_url, var_dir=tmp_path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    process = await build(settings, provider)
    await process.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.server.port}")
    try:
        yield service_pb2_grpc.SegmentsServiceStub(channel)
    finally:
        await channel.close()
        await process.stop(1)
