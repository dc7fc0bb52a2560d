"""A consumer hands each message over as it arrives instead of waiting for its batch to fill.

Every latency figure (trigger -> dispatch, dispatch -> provider) depends on it: nats-py's fetch(n) kept
collecting until n messages had come, so under a steady stream each message waited for its batch to fill.
"""

import asyncio
from typing import Any

import pytest
from opentelemetry import trace

from plumbing import bus as bus_module
from plumbing.bus import Bus, Consumer, ConsumerSpec, Delivery, Handler, StreamSpec
from plumbing.ids import new_id
from tests.waiting import eventually
from xsell.segments.v1.events_pb2 import SegmentPublished

tracer = trace.get_tracer(__name__)


async def _consumer(
    nats_bus: Bus, handled: asyncio.Queue[str] | Handler[SegmentPublished], **options: Any
) -> tuple[Consumer[SegmentPublished], str]:
    """A consumer on a stream of its own, whose handler puts each segment id in `handled` (or is `handled`)."""
    suffix = new_id("f").lower()
    subject = f"fetch.{suffix}.published"
    await nats_bus.ensure_streams([StreamSpec(f"FETCH_{suffix}".upper(), (f"fetch.{suffix}.>",))])

    async def queueing(event: SegmentPublished, delivery: Delivery) -> None:
        assert isinstance(handled, asyncio.Queue)
        handled.put_nowait(event.segment_id)

    handler = queueing if isinstance(handled, asyncio.Queue) else handled
    spec = ConsumerSpec(
        stream=f"FETCH_{suffix}".upper(),
        durable=f"fetch-{suffix}",
        filter_subject=subject,
        dead_letter_subject=f"dlq.fetch.{suffix}",
        batch_size=50,
    )
    return Consumer(nats_bus, spec, SegmentPublished, handler, tracer, **options), subject


async def _publish(nats_bus: Bus, subject: str, *ids: str) -> None:
    for segment_id in ids:
        await nats_bus.js.publish(
            subject, SegmentPublished(segment_id=segment_id).SerializeToString(), headers={"Nats-Msg-Id": segment_id}
        )


async def test_a_lone_message_is_handled_without_waiting_for_its_batch_to_fill(
    nats_bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pull request open far longer than the test may take: a consumer that waited for a full batch (50)
    # or for the request's end would time out.
    monkeypatch.setattr(bus_module, "PULL_EXPIRES_SECONDS", 60.0)
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


async def test_messages_delivered_but_not_handled_go_back_at_once_when_the_consumer_stops(nats_bus: Bus) -> None:
    handled: asyncio.Queue[str] = asyncio.Queue()
    consumer, subject = await _consumer(nats_bus, handled)
    await consumer.declare()
    ids = [f"seg_{n}" for n in range(10)]
    await _publish(nats_bus, subject, *ids)

    feed = bus_module._PullFeed(nats_bus, consumer.spec)
    await feed.open()
    # One pull request for 10 delivers all of them to this process; only 3 are taken in hand.
    await feed._request_if_needed(10)

    async def all_arrived() -> bool:
        return feed._queue.qsize() == 10

    await eventually(all_arrived)
    in_hand = await feed.next_batch(3)
    await feed.close()

    # The 7 never handed over are redelivered now, not after the 30 s ack wait; the 3 in hand are not.
    again = bus_module._PullFeed(nats_bus, consumer.spec)
    await again.open()
    redelivered: list[str] = []

    async def take_seven() -> None:
        while len(redelivered) < 7:
            for msg in await again.next_batch(10):
                assert msg.metadata.num_delivered == 2
                redelivered.append(SegmentPublished.FromString(msg.data).segment_id)
                await msg.ack()

    await asyncio.wait_for(take_seven(), timeout=20)
    await again.close()
    assert sorted(redelivered) == sorted(ids[3:])
    assert [SegmentPublished.FromString(msg.data).segment_id for msg in in_hand] == ids[:3]


@pytest.mark.parametrize("keep_full", [False, True])
async def test_kept_full_a_message_that_arrives_while_another_is_in_hand_is_handled_at_once(
    nats_bus: Bus, keep_full: bool
) -> None:
    handled: list[str] = []
    release_slow = asyncio.Event()

    async def handler(event: SegmentPublished, delivery: Delivery) -> None:
        if event.segment_id == "slow":
            await release_slow.wait()
        handled.append(event.segment_id)

    consumer, subject = await _consumer(nats_bus, handler, concurrency=4, keep_full=keep_full)
    await consumer.declare()
    task = asyncio.create_task(consumer.run())
    try:
        await _publish(nats_bus, subject, "slow")
        await asyncio.sleep(0.5)  # "slow" is in hand, waiting
        await _publish(nats_bus, subject, "quick")

        async def quick_handled() -> bool:
            return handled == ["quick"]

        if keep_full:
            # Handed over as it arrived, beside the one still in hand.
            await eventually(quick_handled)
        else:
            # A fetched batch at a time: it waits until every message of the batch in hand is done.
            await asyncio.sleep(1.0)
            assert handled == []
        release_slow.set()

        async def both_handled() -> bool:
            return sorted(handled) == ["quick", "slow"]

        await eventually(both_handled)
    finally:
        # Stopping waits for what is in hand.
        release_slow.set()
        await consumer.stop()
        await task
