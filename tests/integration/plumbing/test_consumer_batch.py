"""A consumer with a batch handler hands each fetch to one call under one CONSUMER span, and settles each message on
its own answer: acked, naked and redelivered, or dead-lettered; an undecodable one never reaches the handler."""

import asyncio
from collections.abc import Sequence

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, get_current_span

from plumbing import bus as bus_module
from plumbing.bus import (
    DLQ_REASON_HEADER,
    MSG_ID_HEADER,
    Bus,
    Consumer,
    ConsumerSpec,
    Delivery,
    PermanentError,
    StreamSpec,
)
from plumbing.ids import new_id
from plumbing.telemetry import outreach_ids
from tests.waiting import eventually
from xsell.segments.v1.events_pb2 import SegmentPublished


async def test_a_fetch_is_one_call_under_one_span_and_each_message_is_settled_on_its_own_answer(
    nats_bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One pull request for all of them, open far longer than the test.
    monkeypatch.setattr(bus_module, "PULL_EXPIRES_SECONDS", 60.0)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    suffix = new_id("b").lower()
    subject = f"batch.{suffix}.published"
    dead_letters = f"dlq.batch.{suffix}"
    await nats_bus.ensure_streams(
        [
            StreamSpec(f"BATCH_{suffix}".upper(), (f"batch.{suffix}.>",)),
            StreamSpec(f"DLQ_{suffix}".upper(), (dead_letters,)),
        ]
    )
    calls: list[list[tuple[str, int]]] = []
    contexts: list[tuple[object, dict[str, object]]] = []

    async def handler(items: Sequence[tuple[SegmentPublished, Delivery]]) -> list[BaseException | None]:
        calls.append([(event.segment_id, delivery.num_delivered) for event, delivery in items])
        contexts.append((get_current_span(), structlog.contextvars.get_contextvars()))
        answers: list[BaseException | None] = []
        for event, delivery in items:
            if event.segment_id == "flaky" and delivery.num_delivered == 1:
                answers.append(ConnectionResetError("the database went away"))
            elif event.segment_id == "hopeless":
                answers.append(PermanentError("segment hopeless cannot be applied: its rule names no attribute"))
            else:
                answers.append(None)
        return answers

    spec = ConsumerSpec(
        stream=f"BATCH_{suffix}".upper(),
        durable=f"batch-{suffix}",
        filter_subject=subject,
        dead_letter_subject=dead_letters,
        backoff_seconds=(0.05,),
    )
    consumer = Consumer(nats_bus, spec, SegmentPublished, None, provider.get_tracer("test"), batch_handler=handler)
    await consumer.declare()
    trace_id, span_id = outreach_ids("CSELL-NOV-T06-0884")
    for segment_id in ("first", "flaky", "hopeless", "last"):
        headers = {MSG_ID_HEADER: f"m-{segment_id}"}
        if segment_id == "first":
            headers["traceparent"] = f"00-{trace_id:032x}-{span_id:016x}-01"
        await nats_bus.js.publish(subject, SegmentPublished(segment_id=segment_id).SerializeToString(), headers=headers)
    await nats_bus.js.publish(subject, b"\xff not a protobuf", headers={MSG_ID_HEADER: "m-poison"})

    task = asyncio.create_task(consumer.run())
    try:

        async def flaky_again() -> bool:
            return any(("flaky", 2) in call for call in calls)

        await eventually(flaky_again)
    finally:
        await consumer.stop()
        await task

    # The four decodable messages came in one call (one fetch), the poison one never; the redelivery in another.
    assert calls[0] == [("first", 1), ("flaky", 1), ("hopeless", 1), ("last", 1)]
    assert calls[1:] == [[("flaky", 2)]]
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    batch, again = spans
    assert batch.kind == SpanKind.CONSUMER and batch.name == f"process {subject}"
    assert batch.attributes is not None and batch.attributes["messaging.batch.message_count"] == 4
    # A batch of several starts its own trace and links the messages that carried one.
    assert batch.parent is None
    assert [(link.context.trace_id, link.context.span_id) for link in batch.links] == [(trace_id, span_id)]
    assert batch.status.status_code == StatusCode.ERROR
    current, fields = contexts[0]
    assert current.get_span_context() == batch.context and fields == {"durable": spec.durable}  # type: ignore[attr-defined]
    # A batch of one continues its message's trace as a message's own span does (none here: a new root).
    assert again.attributes is not None and again.attributes["messaging.message.id"] == "m-flaky"
    assert again.status.status_code == StatusCode.UNSET
    assert structlog.contextvars.get_contextvars() == {}
    assert not get_current_span().get_span_context().is_valid

    # Acked: nothing is left pending or waiting for an ack on the durable.
    info = await nats_bus.js.consumer_info(spec.stream, spec.durable)
    assert info.num_pending == 0 and info.num_ack_pending == 0
    # The hopeless one and the poison one were dead-lettered with their reasons.
    reasons = {}
    dlq = await nats_bus.js.pull_subscribe(dead_letters, durable=f"dlq-{suffix}")
    for msg in await dlq.fetch(2, timeout=10):
        headers = msg.headers or {}
        reasons[headers[MSG_ID_HEADER]] = headers[DLQ_REASON_HEADER]
        await msg.ack()
    assert reasons.keys() == {f"dlq:{spec.durable}:m-hopeless", f"dlq:{spec.durable}:m-poison"}
    assert "its rule names no attribute" in reasons[f"dlq:{spec.durable}:m-hopeless"]
    assert reasons[f"dlq:{spec.durable}:m-poison"].startswith("undecodable SegmentPublished")


async def test_a_batch_handler_that_raises_naks_every_message_of_its_fetch(
    nats_bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus_module, "PULL_EXPIRES_SECONDS", 60.0)
    suffix = new_id("r").lower()
    subject = f"raise.{suffix}.published"
    await nats_bus.ensure_streams([StreamSpec(f"RAISE_{suffix}".upper(), (f"raise.{suffix}.>",))])
    calls: list[list[tuple[str, int]]] = []

    async def handler(items: Sequence[tuple[SegmentPublished, Delivery]]) -> list[BaseException | None]:
        calls.append([(event.segment_id, delivery.num_delivered) for event, delivery in items])
        if len(calls) == 1:
            raise ConnectionResetError("the database went away")
        return [None] * len(items)

    spec = ConsumerSpec(
        stream=f"RAISE_{suffix}".upper(),
        durable=f"raise-{suffix}",
        filter_subject=subject,
        dead_letter_subject=f"dlq.raise.{suffix}",
        backoff_seconds=(0.05,),
    )
    tracer = TracerProvider().get_tracer("test")
    consumer = Consumer(nats_bus, spec, SegmentPublished, None, tracer, batch_handler=handler)
    await consumer.declare()
    for segment_id in ("a", "b"):
        await nats_bus.js.publish(
            subject, SegmentPublished(segment_id=segment_id).SerializeToString(), headers={MSG_ID_HEADER: segment_id}
        )
    task = asyncio.create_task(consumer.run())
    try:

        async def both_again() -> bool:
            return sorted(item for call in calls[1:] for item in call) == [("a", 2), ("b", 2)]

        await eventually(both_again)
    finally:
        await consumer.stop()
        await task
    assert calls[0] == [("a", 1), ("b", 1)]


def test_a_consumer_takes_a_handler_or_a_batch_handler() -> None:
    spec = ConsumerSpec(stream="S", durable="d", filter_subject="s", dead_letter_subject="dlq.s")

    async def handler(event: SegmentPublished, delivery: Delivery) -> None:
        return None

    async def batch_handler(items: Sequence[tuple[SegmentPublished, Delivery]]) -> list[BaseException | None]:
        return [None] * len(items)

    tracer = TracerProvider().get_tracer("test")
    with pytest.raises(ValueError, match="a handler or a batch_handler"):
        Consumer(object(), spec, SegmentPublished, handler, tracer, batch_handler=batch_handler)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a handler or a batch_handler"):
        Consumer(object(), spec, SegmentPublished, None, tracer)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep_full"):
        Consumer(object(), spec, SegmentPublished, None, tracer, keep_full=True, batch_handler=batch_handler)  # type: ignore[arg-type]
