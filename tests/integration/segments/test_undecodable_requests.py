"""Requests protobuf cannot parse reach a real segments server: INVALID_ARGUMENT naming the message and the fix, with
the call traced, and the same server goes on answering good requests."""

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plumbing.grpc_server import PROTOBUF_MAX_DEPTH
from services.segments.app import build
from services.segments.settings import SegmentsSettings
from tests.unit.segments.builders import attr, not_, s
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub

SERVICE = "/xsell.segments.v1.SegmentsService"
GARBAGE = b"\xff\xff\xff\xff not a message"
FIX = f"send that message as protobuf serializes it, nested at most {PROTOBUF_MAX_DEPTH} levels deep"


@pytest.fixture
async def channel(
    database_url: str, nats_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> AsyncIterator[grpc.aio.Channel]:
    settings = SegmentsSettings(grpc_port=0, database_url=database_url, nats_url=nats_url, var_dir=tmp_path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    process = await build(settings, provider)
    await process.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{process.server.port}") as channel:
            yield channel
    finally:
        await process.stop(1)


def _field(message: type, name: str, payload: bytes) -> bytes:
    """`payload` as the length-delimited field `name` of `message`, encoded by hand."""
    number = message.DESCRIPTOR.fields_by_name[name].number  # type: ignore[attr-defined]
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _negated(levels: int) -> bytes:
    """A rule under `levels` negations; protobuf itself refuses to build or serialize one past its limit."""
    rule = attr("city", "EQUALS", s("Pune")).SerializeToString()
    for _ in range(levels):
        rule = _field(r.Rule, "negate", rule)
    return rule


async def _refusal(channel: grpc.aio.Channel, method: str, request: bytes) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"{SERVICE}/{method}")(request, timeout=10)  # no serializers: bytes as they are
    return raised.value


def _assert_refused(error: grpc.aio.AioRpcError, message_type: str, reason: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"the request is not a valid {message_type}: {reason}")
    assert FIX in error.details()
    status = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
    assert (status.code, status.message) == (code_pb2.INVALID_ARGUMENT, error.details())


async def test_a_rule_nested_past_protobufs_limit_is_invalid_argument(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    too_deep = _negated(PROTOBUF_MAX_DEPTH + 1)
    create = _field(api.CreateSegmentRequest, "segment", _field(r.Segment, "rule", too_deep))
    _assert_refused(
        await _refusal(channel, "CreateSegment", create),
        "xsell.segments.v1.CreateSegmentRequest",
        f"its messages nest more than {PROTOBUF_MAX_DEPTH} levels deep",
    )
    _assert_refused(
        await _refusal(channel, "PreviewSegment", _field(api.PreviewSegmentRequest, "rule", too_deep)),
        "xsell.segments.v1.PreviewSegmentRequest",
        f"its messages nest more than {PROTOBUF_MAX_DEPTH} levels deep",
    )
    # The tracing interceptor still wraps the call, so the refusal is in the trace too.
    span = next(span for span in spans.get_finished_spans() if span.name == f"{SERVICE}/CreateSegment")
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    shallow = not_(not_(attr("city", "EQUALS", s("Pune"))))
    stub = SegmentsServiceStub(channel)
    created = await stub.CreateSegment(
        api.CreateSegmentRequest(request_id="req_shallow", segment=r.Segment(display_name="Pune", rule=shallow))
    )
    assert created.segment.segment_id and created.segment.rule == shallow


async def test_bytes_that_are_no_message_are_invalid_argument(channel: grpc.aio.Channel) -> None:
    _assert_refused(await _refusal(channel, "CreateSegment", GARBAGE), "xsell.segments.v1.CreateSegmentRequest", "")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in channel.unary_stream(f"{SERVICE}/StreamSegmentMembers")(GARBAGE, timeout=10):
            pass
    _assert_refused(raised.value, "xsell.segments.v1.StreamSegmentMembersRequest", "")

    stub = SegmentsServiceStub(channel)
    listed = await stub.ListSegments(api.ListSegmentsRequest())
    assert list(listed.segments) == []
