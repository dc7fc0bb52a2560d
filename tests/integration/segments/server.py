"""A segments server with chosen settings, for tests that need more than the conftest fixture gives."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.sdk.trace import TracerProvider

from plumbing.runtime import ServiceProcess
from services.segments.app import build
from services.segments.settings import SegmentsSettings
from services.segments.sweeper import Sweeper
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub


@asynccontextmanager
async def serving(
    database_url: str, nats_url: str, var_dir: Path, **overrides: Any
) -> AsyncIterator[tuple[SegmentsServiceStub, ServiceProcess]]:
    settings = SegmentsSettings(grpc_port=0, database_url=database_url, nats_url=nats_url, var_dir=var_dir, **overrides)
    process = await build(settings, TracerProvider())
    await process.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.server.port}")
    try:
        yield SegmentsServiceStub(channel), process
    finally:
        await channel.close()
        await process.stop(1)


def sweeper_of(process: ServiceProcess) -> Sweeper:
    """The process's own sweeper, to sweep at a chosen moment instead of waiting for its interval."""
    task = next(task for task in process.tasks if task.name == "window-sweeper")
    sweeper = task.run.__self__  # type: ignore[attr-defined]
    assert isinstance(sweeper, Sweeper)
    return sweeper
