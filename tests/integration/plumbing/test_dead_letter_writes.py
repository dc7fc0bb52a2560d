"""A message is never left neither handled nor dead-lettered, on a real NATS server: a dead letter that cannot be
written brings the message back, one delivered more often than allowed without being settled is dead-lettered before
its handler, and durables made with a server-side limit lose it at the next start."""

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import api
from opentelemetry import trace

from plumbing.bus import Bus, Consumer, ConsumerSpec, Delivery, PermanentError, StreamSpec
from plumbing.ids import new_id
from plumbing.times import utc_time
from tests.waiting import eventually
from xsell.segments.v1.events_pb2 import SegmentPublished

TRACER = trace.get_tracer("test")


async def _setup(bus: Bus, max_deliver: int = 8) -> tuple[ConsumerSpec, str, str]:
    suffix = new_id().lower()
    stream, dead_letters = f"DLW_{suffix}".upper(), f"DLWQ_{suffix}".upper()
    await bus.ensure_streams([StreamSpec(stream, (f"dlw.{suffix}.>",)), StreamSpec(dead_letters, (f"dlwq.{suffix}",))])
    spec = ConsumerSpec(
        stream=stream,
        durable=f"dlw-{suffix}",
        filter_subject=f"dlw.{suffix}.event",
        dead_letter_subject=f"dlwq.{suffix}",
        max_deliver=max_deliver,
        ack_wait_seconds=1.0,
    )
    return spec, stream, dead_letters


async def _letters(bus: Bus, stream: str) -> list[dict[str, str]]:
    state = (await bus.js.stream_info(stream)).state
    return [
        dict((await bus.js.get_msg(stream, seq)).headers or {}) for seq in range(state.first_seq, state.last_seq + 1)
    ][: state.messages]


async def test_a_dead_letter_that_cannot_be_written_is_held_and_written_once_there_is_room(nats_bus: Bus) -> None:
    """The dead-letter stream is full when the last attempt fails: the message is held (not given back to its
    handler) while the consumer goes on with the next ones, and its letter is written once the stream has room.
    (Before, with the limit on the server, that attempt's failure left it on the server, never delivered again and
    never dead-lettered.)"""
    spec, stream, dead_letters = await _setup(nats_bus, max_deliver=2)
    await _fill(nats_bus, spec, dead_letters)
    await nats_bus.js.publish(spec.filter_subject, SegmentPublished(segment_id="failing").SerializeToString())
    attempts: list[tuple[str, int]] = []

    async def failing(event: SegmentPublished, delivery: Delivery) -> None:
        attempts.append((event.segment_id, delivery.num_delivered))
        if event.segment_id == "failing":
            raise RuntimeError("the database is away")

    consumer = Consumer(nats_bus, spec, SegmentPublished, failing, TRACER)
    async with _running(consumer):
        await eventually(lambda: _attempted(attempts, ("failing", 2)))
        await nats_bus.js.publish(spec.filter_subject, SegmentPublished(segment_id="next").SerializeToString())
        await eventually(lambda: _attempted(attempts, ("next", 1)))  # the held letter holds no slot
        await asyncio.sleep(3 * spec.ack_wait_seconds)  # held over three ack waits: not delivered again
        assert (await nats_bus.js.stream_info(dead_letters)).state.messages == 1
        await _make_room(nats_bus, dead_letters)
        await eventually(lambda: _count(nats_bus, dead_letters, 2))
    assert attempts == [("failing", 1), ("failing", 2), ("next", 1)]
    letters = await _letters(nats_bus, dead_letters)
    assert letters[-1]["Xsell-Dlq-Reason"].startswith("failed 2 times: RuntimeError('the database is away')")
    info = await nats_bus.js.consumer_info(stream, spec.durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_a_stop_gives_a_held_message_back_at_once(nats_bus: Bus) -> None:
    """For the next process: it is not left in hand until its ack wait passes."""
    spec, stream, dead_letters = await _setup(nats_bus)
    spec = dataclasses.replace(spec, ack_wait_seconds=60.0)
    await _fill(nats_bus, spec, dead_letters)
    await nats_bus.js.publish(spec.filter_subject, b"\xff\xff not a protobuf")
    consumer = Consumer(nats_bus, spec, SegmentPublished, _never_called, TRACER)
    async with _running(consumer):

        async def held() -> bool:
            info = await nats_bus.js.consumer_info(stream, spec.durable)
            return (info.delivered.consumer_seq, info.num_ack_pending) == (1, 1)

        await eventually(held)

    # The next process takes it at once (its ack wait, 60 s, has not passed).
    taken = await nats_bus.js.pull_subscribe_bind(spec.durable, stream)
    (message,) = await taken.fetch(1, timeout=5)
    await taken.unsubscribe()
    assert message.metadata.num_delivered == 2


async def test_a_refused_message_is_held_until_its_dead_letter_is_written_and_not_handled_again(nats_bus: Bus) -> None:
    """A handler refuses a message as permanent while the dead-letter stream is full: the consumer holds it (the
    server is told it is still in hand, so it is not delivered again) and writes the letter once there is room; the
    handler, which might accept it a second time, never sees it again."""
    spec, stream, dead_letters = await _setup(nats_bus)
    await _fill(nats_bus, spec, dead_letters)
    await nats_bus.js.publish(spec.filter_subject, SegmentPublished(segment_id="s").SerializeToString())
    attempts: list[int] = []

    async def refusing_once(event: SegmentPublished, delivery: Delivery) -> None:
        attempts.append(delivery.num_delivered)
        if len(attempts) == 1:
            raise PermanentError("no such segment")

    consumer = Consumer(nats_bus, spec, SegmentPublished, refusing_once, TRACER)
    async with _running(consumer):
        await asyncio.sleep(3 * spec.ack_wait_seconds)  # held over three ack waits: not delivered again
        assert (await nats_bus.js.consumer_info(stream, spec.durable)).delivered.consumer_seq == 1
        await _make_room(nats_bus, dead_letters)
        await eventually(lambda: _count(nats_bus, dead_letters, 2))
    assert attempts == [1]
    assert (await _letters(nats_bus, dead_letters))[-1]["Xsell-Dlq-Reason"] == "no such segment"


async def test_an_event_its_handler_finds_invalid_is_dead_lettered_at_once_with_the_field(nats_bus: Bus) -> None:
    """An InvalidArgument (a time past year 9999 read by plumbing.times) says the event is wrong, not the moment:
    dead-lettered on its first delivery with the field named, not retried max_deliver times first."""
    spec, _, dead_letters = await _setup(nats_bus)
    await nats_bus.js.publish(spec.filter_subject, SegmentPublished(segment_id="s").SerializeToString())
    attempts: list[int] = []

    async def invalid(event: SegmentPublished, delivery: Delivery) -> None:
        attempts.append(delivery.num_delivered)
        utc_time(Timestamp(seconds=253_402_300_800), "occur_time")  # 10000-01-01

    consumer = Consumer(nats_bus, spec, SegmentPublished, invalid, TRACER)
    async with _running(consumer):
        await eventually(lambda: _count(nats_bus, dead_letters, 1))
    assert attempts == [1]
    reason = (await _letters(nats_bus, dead_letters))[-1]["Xsell-Dlq-Reason"]
    assert reason.startswith("occur_time: occur_time (seconds 253402300800, nanos 0) is not a time")


async def test_in_a_batch_the_applied_messages_are_acknowledged_while_a_letter_is_held(nats_bus: Bus) -> None:
    """A batch handler (campaigns' triggers) applied two of three; the third's letter cannot be written yet. The two
    are acknowledged at once, not after the hold (they would come again meanwhile)."""
    spec, stream, dead_letters = await _setup(nats_bus)
    await _fill(nats_bus, spec, dead_letters)
    for segment in ("a", "refused", "c"):
        await nats_bus.js.publish(spec.filter_subject, SegmentPublished(segment_id=segment).SerializeToString())

    async def batch(items: Sequence[tuple[SegmentPublished, Delivery]]) -> list[BaseException | None]:
        return [PermanentError("refused") if event.segment_id == "refused" else None for event, _ in items]

    consumer = Consumer(nats_bus, spec, SegmentPublished, None, TRACER, batch_handler=batch)
    async with _running(consumer):

        async def only_the_held_one_pending() -> bool:
            info = await nats_bus.js.consumer_info(stream, spec.durable)
            return (info.num_ack_pending, info.num_pending, info.ack_floor.stream_seq) == (1, 0, 1)

        await eventually(only_the_held_one_pending)
        await _make_room(nats_bus, dead_letters)
        await eventually(lambda: _count(nats_bus, dead_letters, 2))


async def test_a_large_message_is_dead_lettered_without_its_payload(nats_bus: Bus) -> None:
    """A feed's batch near NATS's maximum payload: with the letter's headers it would pass it (the server closes the
    connection). The letter names the size; a replay republishes the stored original."""
    spec, _, dead_letters = await _setup(nats_bus)
    batch = b"\xff" + b"\0" * (nats_bus.nc.max_payload - 100)
    await nats_bus.js.publish(spec.filter_subject, batch)
    consumer = Consumer(nats_bus, spec, SegmentPublished, _never_called, TRACER)
    async with _running(consumer):
        await eventually(lambda: _count(nats_bus, dead_letters, 1))
    message = await nats_bus.js.get_msg(dead_letters, 1)
    assert message.data in (b"", None)
    assert (message.headers or {})["Xsell-Dlq-Payload-Omitted"] == str(len(batch))
    assert not nats_bus.nc.is_closed


@pytest.mark.parametrize("deliveries", [2, 3], ids=["first-time-over", "hook-already-told"])
async def test_a_message_delivered_more_often_than_allowed_is_dead_lettered_before_its_handler(
    nats_bus: Bus, deliveries: int
) -> None:
    """A message whose handling never settled (the process stopped each time) is not handled once more. Its
    on_dead_letter hook is told (channels marks the message so), once: delivered again past that, the hook itself may
    be what stopped the process, and the letter alone is written."""
    spec, stream, dead_letters = await _setup(nats_bus, max_deliver=2)
    await nats_bus.ensure_consumer(spec)
    await nats_bus.js.publish(spec.filter_subject, SegmentPublished(segment_id="s").SerializeToString())
    taken = await nats_bus.js.pull_subscribe_bind(spec.durable, stream)
    for _ in range(deliveries):  # delivered, never acknowledged: as a process that died while handling it
        (message,) = await taken.fetch(1, timeout=5)
    await taken.unsubscribe()
    assert message.metadata.num_delivered == deliveries
    handled: list[str] = []
    told: list[tuple[str, int, str]] = []

    async def handler(event: SegmentPublished, delivery: Delivery) -> None:
        handled.append(event.segment_id)

    async def dead_lettered(event: SegmentPublished, delivery: Delivery, reason: str) -> None:
        told.append((event.segment_id, delivery.num_delivered, reason))

    consumer = Consumer(nats_bus, spec, SegmentPublished, handler, TRACER, on_dead_letter=dead_lettered)
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: _count(nats_bus, dead_letters, 1))
    finally:
        await consumer.stop()
        await task
    assert handled == []
    (letter,) = await _letters(nats_bus, dead_letters)
    reason = letter["Xsell-Dlq-Reason"]
    assert reason.startswith(f"delivered {deliveries + 1} times (2 allowed) without being settled")
    assert told == ([("s", 3, reason)] if deliveries == 2 else [])


async def test_a_failing_dead_letter_hook_does_not_keep_the_letter_from_being_written(nats_bus: Bus) -> None:
    """The hook is told of a message its handler refused, and of one that failed its last allowed attempt; one that
    cannot be decoded is not its business. A hook that fails is logged; the letter, which holds the reason, is
    written all the same."""
    spec, _, dead_letters = await _setup(nats_bus, max_deliver=1)
    for segment in ("refused", "failing"):
        await nats_bus.js.publish(spec.filter_subject, SegmentPublished(segment_id=segment).SerializeToString())
    await nats_bus.js.publish(spec.filter_subject, b"\xff not a protobuf")
    told: list[tuple[str, str]] = []

    async def handler(event: SegmentPublished, delivery: Delivery) -> None:
        if event.segment_id == "refused":
            raise PermanentError("no such segment")
        raise RuntimeError("the database is away")

    async def dead_lettered(event: SegmentPublished, delivery: Delivery, reason: str) -> None:
        told.append((event.segment_id, reason))
        raise RuntimeError("the ledger is away too")

    consumer = Consumer(nats_bus, spec, SegmentPublished, handler, TRACER, on_dead_letter=dead_lettered)
    async with _running(consumer):
        await eventually(lambda: _count(nats_bus, dead_letters, 3))
    assert told == [("refused", "no such segment"), ("failing", "failed 1 times: RuntimeError('the database is away')")]
    reasons = [letter["Xsell-Dlq-Reason"] for letter in await _letters(nats_bus, dead_letters)]
    assert reasons[:2] == [reason for _, reason in told] and reasons[2].startswith("undecodable SegmentPublished")


async def test_a_durable_made_with_a_server_side_limit_loses_it_and_keeps_its_place(nats_bus: Bus) -> None:
    spec, stream, _ = await _setup(nats_bus)
    for number in range(3):
        await nats_bus.js.publish(spec.filter_subject, f"{number}".encode())
    await nats_bus.js.add_consumer(
        stream,
        config=api.ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=spec.filter_subject,
            max_deliver=spec.max_deliver,
            ack_wait=spec.ack_wait_seconds,
            max_ack_pending=spec.max_ack_pending,
        ),
    )
    taken = await nats_bus.js.pull_subscribe_bind(spec.durable, stream)
    (first,) = await taken.fetch(1, timeout=5)
    await first.ack_sync()
    await taken.unsubscribe()
    await nats_bus.ensure_consumer(spec)
    info = await nats_bus.js.consumer_info(stream, spec.durable)
    assert info.config.max_deliver == -1
    assert (info.delivered.stream_seq, info.num_pending) == (1, 2)


async def _never_called(event: SegmentPublished, delivery: Delivery) -> None:
    raise AssertionError("an undecodable message reached its handler")


async def _attempted(attempts: list[tuple[str, int]], attempt: tuple[str, int]) -> bool:
    return attempt in attempts


async def _fill(bus: Bus, spec: ConsumerSpec, dead_letters: str) -> None:
    """The dead-letter stream nearly full: no letter fits."""
    config = (await bus.js.stream_info(dead_letters)).config
    config.max_bytes, config.discard = 400, api.DiscardPolicy.NEW
    await bus.js.update_stream(config)
    await bus.js.publish(spec.dead_letter_subject, b"x" * 300)


async def _make_room(bus: Bus, dead_letters: str) -> None:
    config = (await bus.js.stream_info(dead_letters)).config
    config.max_bytes = -1
    await bus.js.update_stream(config)


@contextlib.asynccontextmanager
async def _running(consumer: Consumer[SegmentPublished]) -> AsyncIterator[None]:
    await consumer.declare()
    task = asyncio.create_task(consumer.run())
    try:
        yield
    finally:
        await consumer.stop()
        await task


async def _count(bus: Bus, stream: str, at_least: int) -> bool:
    return (await bus.js.stream_info(stream)).state.messages >= at_least


async def _delivered_at_least(bus: Bus, spec: ConsumerSpec, times: int) -> bool:
    info = await bus.js.consumer_info(spec.stream, spec.durable)
    return (info.num_redelivered or 0) >= 1 and (info.delivered.consumer_seq or 0) >= times


async def test_a_handler_slower_than_the_ack_wait_keeps_its_message_and_is_not_delivered_again(nats_bus: Bus) -> None:
    """Channels waiting for a provider's rate, or a slow SMTP relay: the server delivered the message again after the
    ack wait, maybe to another replica, while the handler still worked (the copy marked the hand-over AMBIGUOUS, and
    one past the last allowed delivery was taken for a process that had stopped). The consumer now tells the server
    the message is in progress while its handler runs."""
    spec, stream, dead_letters = await _setup(nats_bus, max_deliver=1)  # ack wait 1 s
    await nats_bus.js.publish(spec.filter_subject, SegmentPublished(segment_id="slow").SerializeToString())
    deliveries: list[int] = []
    told: list[str] = []

    async def slow(event: SegmentPublished, delivery: Delivery) -> None:
        deliveries.append(delivery.num_delivered)
        await asyncio.sleep(3.5 * spec.ack_wait_seconds)

    async def dead_lettered(event: SegmentPublished, delivery: Delivery, reason: str) -> None:
        told.append(reason)

    consumer = Consumer(nats_bus, spec, SegmentPublished, slow, TRACER, concurrency=4, on_dead_letter=dead_lettered)
    async with _running(consumer):

        async def acknowledged() -> bool:
            info = await nats_bus.js.consumer_info(stream, spec.durable)
            return info.num_ack_pending == 0 and info.ack_floor.stream_seq == 1

        await eventually(acknowledged, timeout=15)
    assert deliveries == [1] and told == []
    assert (await nats_bus.js.stream_info(dead_letters)).state.messages == 0
