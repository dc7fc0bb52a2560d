"""A consumer takes a lone message at once instead of waiting for its batch to fill.

nats-py's fetch(n) returns once a lingering pull delivers its first message (measured: 0.3 s for a message
published 0.3 s into a fetch(50, timeout=5)); this keeps it so for the consumers' batch sizes, whatever the
fetch wait, since every latency figure (trigger -> dispatch, dispatch -> provider) depends on it.
"""

import asyncio

import pytest
from opentelemetry import trace

from plumbing import bus as bus_module
from plumbing.bus import Bus, Consumer, ConsumerSpec, Delivery, StreamSpec
from plumbing.ids import new_id
from xsell.segments.v1.events_pb2 import SegmentPublished

tracer = trace.get_tracer(__name__)


async def _consumer(nats_bus: Bus, handled: asyncio.Queue[str]) -> tuple[Consumer[SegmentPublished], str]:
    suffix = new_id("f").lower()
    subject = f"fetch.{suffix}.published"
    await nats_bus.ensure_streams([StreamSpec(f"FETCH_{suffix}".upper(), (f"fetch.{suffix}.>",))])

    async def handler(event: SegmentPublished, delivery: Delivery) -> None:
        handled.put_nowait(event.segment_id)

    spec = ConsumerSpec(
        stream=f"FETCH_{suffix}".upper(),
        durable=f"fetch-{suffix}",
        filter_subject=subject,
        dead_letter_subject=f"dlq.fetch.{suffix}",
        batch_size=50,
    )
    return Consumer(nats_bus, spec, SegmentPublished, handler, tracer), subject


async def _publish(nats_bus: Bus, subject: str, *ids: str) -> None:
    for segment_id in ids:
        await nats_bus.js.publish(
            subject, SegmentPublished(segment_id=segment_id).SerializeToString(), headers={"Nats-Msg-Id": segment_id}
        )


async def test_a_lone_message_is_handled_without_waiting_for_its_batch_to_fill(
    nats_bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fetch wait far longer than the test may take: a consumer that waited for a full batch would time out.
    monkeypatch.setattr(bus_module, "FETCH_WAIT_SECONDS", 60.0)
    handled: asyncio.Queue[str] = asyncio.Queue()
    consumer, subject = await _consumer(nats_bus, handled)
    await consumer.declare()
    task = asyncio.create_task(consumer.run())
    try:
        for segment_id in ("seg_1", "seg_2", "seg_3"):
            await _publish(nats_bus, subject, segment_id)
            assert await asyncio.wait_for(handled.get(), timeout=20) == segment_id
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
