"""A consumed message is handled under its CONSUMER span, which continues the event's trace, with the log fields
that name it bound; both end with the message, whatever the handler did."""

import asyncio

import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, get_current_span

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER, Bus, Consumer, ConsumerSpec, Delivery, StreamSpec
from plumbing.ids import new_id
from plumbing.telemetry import outreach_ids
from tests.waiting import eventually
from xsell.segments.v1.events_pb2 import SegmentPublished


async def test_each_message_runs_under_its_span_and_log_fields_and_leaves_neither_behind(nats_bus: Bus) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    suffix = new_id("s").lower()
    subject = f"span.{suffix}.published"
    await nats_bus.ensure_streams([StreamSpec(f"SPAN_{suffix}".upper(), (f"span.{suffix}.>",))])
    seen: dict[str, tuple[object, dict[str, object]]] = {}

    async def handler(event: SegmentPublished, delivery: Delivery) -> None:
        seen[event.segment_id] = (get_current_span(), structlog.contextvars.get_contextvars())
        if event.segment_id == "fails" and delivery.num_delivered == 1:
            raise ConnectionResetError("the database went away")

    spec = ConsumerSpec(
        stream=f"SPAN_{suffix}".upper(),
        durable=f"span-{suffix}",
        filter_subject=subject,
        dead_letter_subject=f"dlq.span.{suffix}",
        backoff_seconds=(0.05,),
    )
    consumer = Consumer(nats_bus, spec, SegmentPublished, handler, provider.get_tracer("test"))
    campaign_id = "CSELL-NOV-T06-0884"
    trace_id, span_id = outreach_ids(campaign_id)
    await nats_bus.js.publish(
        subject,
        SegmentPublished(segment_id="traced").SerializeToString(),
        headers={
            MSG_ID_HEADER: "m-traced",
            CAMPAIGN_ID_HEADER: campaign_id,
            "traceparent": f"00-{trace_id:032x}-{span_id:016x}-01",
        },
    )
    await nats_bus.js.publish(
        subject, SegmentPublished(segment_id="fails").SerializeToString(), headers={MSG_ID_HEADER: "m-fails"}
    )
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: _at_least(exporter, 3))
    finally:
        await consumer.stop()
        await task

    traced_span, traced_fields = seen["traced"]
    assert isinstance(traced_span, ReadableSpan) and traced_span.kind == SpanKind.CONSUMER
    assert traced_span.context.trace_id == trace_id and traced_span.parent is not None
    assert traced_span.parent.span_id == span_id
    assert traced_span.attributes is not None and traced_span.attributes["campaign.id"] == campaign_id
    assert traced_fields == {"durable": spec.durable, "message_id": "m-traced", "campaign.id": campaign_id}
    assert seen["fails"][1] == {"durable": spec.durable, "message_id": "m-fails"}
    spans = exporter.get_finished_spans()
    assert [span.status.status_code for span in spans if span.attributes["messaging.message.id"] == "m-fails"] == [
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    # Nothing stays bound or current once a message is done.
    assert structlog.contextvars.get_contextvars() == {}
    assert not get_current_span().get_span_context().is_valid


async def _at_least(exporter: InMemorySpanExporter, count: int) -> bool:
    return len(exporter.get_finished_spans()) >= count
