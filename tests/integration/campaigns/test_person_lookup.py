"""PersonLookup over real gRPC: many people in BatchGetProfiles calls of at most segments' bound, and its errors."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plumbing.errors import Unavailable
from services.campaigns.person_client import BATCH_GET_MAX, PersonLookup
from xsell.segments.v1 import resources_pb2 as seg
from xsell.segments.v1 import service_pb2 as seg_service
from xsell.segments.v1 import service_pb2_grpc as seg_grpc
from xsell.type.v1 import channel_pb2


@dataclass
class BatchSegments(seg_grpc.SegmentsServiceServicer):
    """Knows every profile but those named ghost-…; p-0007 has opted out of SMS; can be made unavailable."""

    requests: list[seg_service.BatchGetProfilesRequest] = field(default_factory=list)
    traceparents: list[str | None] = field(default_factory=list)
    unavailable: bool = False

    async def BatchGetProfiles(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        self.traceparents.append(dict(context.invocation_metadata()).get("traceparent"))
        if self.unavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "segments is restarting")
        response = seg_service.BatchGetProfilesResponse()
        for profile_id in request.profile_ids:
            if profile_id.startswith("ghost-"):
                response.missing_profile_ids.append(profile_id)
                continue
            person = response.profiles.add()
            person.profile.profile_id = profile_id
            person.profile.attributes["email"].string_value = f"{profile_id}@example.in"
            if profile_id == "p-0007":
                person.suppressions.add(
                    profile_id=profile_id, channel=channel_pb2.CHANNEL_SMS, reason=seg.SUPPRESSION_REASON_OPT_OUT
                )
        return response


@pytest.fixture
async def segments() -> AsyncIterator[tuple[BatchSegments, grpc.aio.Channel]]:
    servicer = BatchSegments()
    server = grpc.aio.server()
    seg_grpc.add_SegmentsServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, channel
    finally:
        await channel.close()
        await server.stop(0)


async def test_many_people_are_looked_up_in_calls_of_at_most_the_bound(
    segments: tuple[BatchSegments, grpc.aio.Channel],
) -> None:
    servicer, channel = segments
    now = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
    known = [f"p-{n:04d}" for n in range(2 * BATCH_GET_MAX + 300)]
    asked = [*known, "ghost-1", known[0], "", "ghost-2"]

    found = await PersonLookup(channel).members(asked, now)

    # Each person asked once, in calls of at most the bound, with the moment suppressions must be in force at;
    # the empty id, which segments would refuse the whole call for, is not asked.
    assert [len(r.profile_ids) for r in servicer.requests] == [BATCH_GET_MAX, BATCH_GET_MAX, 302]
    assert [p for r in servicer.requests for p in r.profile_ids] == [*known, "ghost-1", "ghost-2"]
    assert {r.at_time.ToDatetime(tzinfo=UTC) for r in servicer.requests} == {now}
    assert sorted(found) == known
    assert found["p-0001"].attributes == {"email": "p-0001@example.in"}
    assert found["p-0007"].suppressed_on == {"SMS": (seg.SUPPRESSION_REASON_OPT_OUT,)}
    assert found["p-0001"].suppressed_on == {}
    assert await PersonLookup(channel).members(["ghost-3", ""], now) == {}


async def test_segments_unavailable_is_an_error_to_retry(segments: tuple[BatchSegments, grpc.aio.Channel]) -> None:
    servicer, channel = segments
    servicer.unavailable = True
    with pytest.raises(Unavailable, match="UNAVAILABLE"):
        await PersonLookup(channel).members(["p-0001"], datetime.now(UTC))


async def test_a_call_carries_its_callers_trace_and_describes_itself_on_the_callers_span(
    segments: tuple[BatchSegments, grpc.aio.Channel],
) -> None:
    servicer, channel = segments
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("campaigns.triggers batch") as batch:
        await PersonLookup(channel).members(["p-0001", "p-0002"], datetime.now(UTC))
        context = batch.get_span_context()

    # Segments' server span continues the batch's trace as the batch span's child: no client span between them.
    assert servicer.traceparents == [f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"]
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.method"] == "BatchGetProfiles"
    assert span.attributes["xsell.profiles.asked"] == 2

    # Outside any span a call carries no context.
    await PersonLookup(channel).members(["p-0003"], datetime.now(UTC))
    assert servicer.traceparents[-1] is None


async def test_a_failed_call_is_recorded_on_the_callers_span(segments: tuple[BatchSegments, grpc.aio.Channel]) -> None:
    servicer, channel = segments
    servicer.unavailable = True
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("campaigns.triggers batch"), pytest.raises(Unavailable):
        await PersonLookup(channel).members(["p-0001"], datetime.now(UTC))
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
