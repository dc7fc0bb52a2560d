"""A real gateway on free ports, in front of a real grpc.aio server that records what reaches it."""

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import build
from gateway.keys import ApiKey, format_key, generate_key, hash_secret
from gateway.settings import GatewaySettings
from gateway.store import KeyStore
from plumbing.db import Database
from plumbing.runtime import ServiceProcess
from services.segments.app import build as build_segments
from services.segments.settings import SegmentsSettings
from xsell.channels.v1 import service_pb2 as channels_pb2

# A length-delimited field 999: valid bytes for any message, and unlike anything the gateway would produce itself.
DOWNSTREAM_REPLY = b"\xba\x3e\x02ok"

Responder = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


@dataclass
class Received:
    """One call as the downstream server saw it."""

    method: str
    request: bytes
    metadata: dict[str, str]
    time_remaining: float | None


class RecordingServices(grpc.GenericRpcHandler):
    """Answers every method of every service, records each call, and replies as told (DOWNSTREAM_REPLY by default)."""

    def __init__(self) -> None:
        self.calls: list[Received] = []
        self.responders: dict[str, Responder] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
            self.calls.append(Received(method, request, metadata, context.time_remaining()))
            responder = self.responders.get(method)
            return await responder(request, context) if responder else DOWNSTREAM_REPLY

        return grpc.unary_unary_rpc_method_handler(handle)

    def to(self, method: str) -> list[Received]:
        return [call for call in self.calls if call.method == method]


@dataclass
class Downstream:
    services: RecordingServices
    target: str


RECEIPT = "/xsell.channels.v1.ChannelsService/RecordDeliveryReceipt"
ENGAGEMENT = "/xsell.channels.v1.ChannelsService/RecordEngagement"


def receipts(downstream: Downstream) -> list[channels_pb2.RecordDeliveryReceiptRequest]:
    """The RecordDeliveryReceipt calls channels received from the gateway, in order."""
    return [channels_pb2.RecordDeliveryReceiptRequest.FromString(c.request) for c in downstream.services.to(RECEIPT)]


def engagements(downstream: Downstream) -> list[channels_pb2.RecordEngagementRequest]:
    """The RecordEngagement calls channels received from the gateway, in order."""
    return [channels_pb2.RecordEngagementRequest.FromString(c.request) for c in downstream.services.to(ENGAGEMENT)]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the gateway's edge, as providers and recipients' browsers call it."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def downstream() -> AsyncIterator[Downstream]:
    services = RecordingServices()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((services,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield Downstream(services, f"127.0.0.1:{port}")
    await server.stop(0)


def unused_target() -> str:
    """An address nothing listens on, standing in for a service that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@dataclass
class RunningGateway:
    process: ServiceProcess
    settings: GatewaySettings
    spans: InMemorySpanExporter
    keys: KeyStore
    _db: Database
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    stopped: bool = False

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for channel in self.channels:
            await channel.close()
        await self.process.stop(0)
        await self._db.dispose()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.process.server.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.process.http.port}"  # type: ignore[attr-defined]

    def channel(self) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(self.target)
        self.channels.append(channel)
        return channel

    async def add_key(self, *scopes: str, client: str = "test-client", revoked: bool = False) -> str:
        presented = generate_key()
        now = datetime.now(UTC)
        await self.keys.add(
            ApiKey(
                presented.key_id,
                client,
                hash_secret(presented.secret),
                frozenset(scopes),
                now,
                revoked_at=now if revoked else None,
            )
        )
        return format_key(presented.key_id, presented.secret)


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway(tmp_path: Path, downstream: Downstream) -> AsyncIterator[GatewayFactory]:
    """Builds and starts a gateway (gRPC and HTTP on free ports) whose four targets default to `downstream`."""
    running: list[RunningGateway] = []

    async def start(database_url: str | None = None, **overrides: Any) -> RunningGateway:
        values: dict[str, Any] = {
            "grpc_port": 0,
            "http_port": 0,
            "var_dir": tmp_path,
            "database_url": database_url or f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
            "segments_target": downstream.target,
            "campaigns_target": downstream.target,
            "channels_target": downstream.target,
            "attribution_target": downstream.target,
            "tracking_secret": "test-tracking-secret",
        }
        settings = GatewaySettings(**(values | overrides))
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        process = await build(settings, provider)
        await process.start()
        db = Database(settings.database_url)
        gateway = RunningGateway(process, settings, spans, KeyStore(db), db)
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        await gateway.stop()


@pytest.fixture
async def segments_target(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A real segments service, on each database backend, for a gateway to forward to."""
    settings = SegmentsSettings(grpc_port=0, database_url=database_url, nats_url=nats_url, var_dir=tmp_path)
    process = await build_segments(settings, TracerProvider())
    await process.start()
    yield f"127.0.0.1:{process.server.port}"
    await process.stop(1)
