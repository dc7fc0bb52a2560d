"""Outbox and inbox semantics against a real NATS server, on SQLite and PostgreSQL."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from nats.js import api
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update

from plumbing import outbox as outbox_module
from plumbing.bus import Bus, Consumer, ConsumerSpec, Delivery, PublishFailed, StreamSpec
from plumbing.db import Database
from plumbing.idempotency import api_key_scope, idempotency_table
from plumbing.ids import new_id
from plumbing.outbox import Inbox, Outbox, OutboxRelay, inbox_table, outbox_table, utcnow
from tests.waiting import eventually
from xsell.segments.v1.events_pb2 import SegmentPublished

tracer = trace.get_tracer("test")


async def _true(value: bool) -> bool:
    return value


class RelayDiedBeforeMarking(Exception):
    pass


class DyingRelay(OutboxRelay):
    """Publishes, then dies before it can mark the rows published."""

    async def _mark_published(self, seqs, session=None):  # type: ignore[no-untyped-def]
        raise RelayDiedBeforeMarking


@pytest.fixture
async def setup(database_url: str, nats_bus: Bus) -> AsyncIterator[tuple[Database, Bus, Table, Table, Table, str]]:
    metadata = MetaData()
    outbox = outbox_table(metadata)
    inbox = inbox_table(metadata)
    things = Table(
        "things",
        metadata,
        Column("id", String(50), primary_key=True),
        Column("applied", Integer, nullable=False),
    )
    db = Database(database_url)
    async with db.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    suffix = new_id().lower()
    subject = f"test.{suffix}.published"
    await nats_bus.ensure_streams(
        [
            StreamSpec(f"TEST_{suffix}".upper(), (f"test.{suffix}.>",)),
            StreamSpec(f"DLQ_{suffix}".upper(), (f"dlq.{suffix}.>",)),
        ]
    )
    yield db, nats_bus, outbox, inbox, things, subject
    await db.dispose()


async def _stream_count(bus: Bus, subject: str) -> int:
    stream = await bus.js.find_stream_name_by_subject(subject)
    info = await bus.js.stream_info(stream)
    return int(info.state.messages)


async def test_event_is_published_only_with_its_commit(setup) -> None:  # type: ignore[no-untyped-def]
    db, bus, outbox_t, _, things, subject = setup
    outbox = Outbox(outbox_t)
    async with db.transaction() as session:
        await session.execute(insert(things).values(id="a", applied=0))
        await outbox.add(session, subject, SegmentPublished(segment_id="seg_a"))
    with pytest.raises(ZeroDivisionError):
        async with db.transaction() as session:
            await session.execute(insert(things).values(id="b", applied=0))
            await outbox.add(session, subject, SegmentPublished(segment_id="seg_b"))
            raise ZeroDivisionError
    relay = OutboxRelay(db, outbox_t, bus, tracer)
    assert await relay.publish_pending() == 1
    assert await relay.publish_pending() == 0
    assert await _stream_count(bus, subject) == 1


async def test_relay_that_dies_before_marking_republishes_and_stream_drops_duplicate(setup) -> None:  # type: ignore[no-untyped-def]
    db, bus, outbox_t, _, _, subject = setup
    outbox = Outbox(outbox_t)
    async with db.transaction() as session:
        event_id = await outbox.add(session, subject, SegmentPublished(segment_id="seg_a"))
    with pytest.raises(RelayDiedBeforeMarking):
        await DyingRelay(db, outbox_t, bus, tracer).publish_pending()
    assert await _stream_count(bus, subject) == 1
    # A new relay finds the row still unpublished and publishes it again under the same id.
    assert await OutboxRelay(db, outbox_t, bus, tracer).publish_pending() == 1
    assert await _stream_count(bus, subject) == 1
    async with db.transaction() as session:
        published_at = (
            await session.execute(select(outbox_t.c.published_at).where(outbox_t.c.event_id == event_id))
        ).scalar_one()
    assert published_at is not None


async def test_a_full_stream_leaves_the_events_in_the_outbox_until_it_has_room(setup) -> None:  # type: ignore[no-untyped-def]
    """A stream at its byte limit refuses new messages (services/streams.py: discard new): the relay marks the
    events the stream took before the first refusal, keeps the rest, and publishes only those once the stream has
    room (the head is not stored again after the duplicate window)."""
    db, bus, outbox_t, _, _, subject = setup
    stream = await bus.js.find_stream_name_by_subject(subject)
    config = (await bus.js.stream_info(stream)).config
    config.max_bytes, config.discard = 4_000, api.DiscardPolicy.NEW
    await bus.js.update_stream(config)
    outbox = Outbox(outbox_t)
    async with db.transaction() as session:
        for number in range(30):
            await outbox.add(session, subject, SegmentPublished(segment_id=f"seg_{number:02}" + "x" * 100))
    relay = OutboxRelay(db, outbox_t, bus, tracer)
    with pytest.raises(PublishFailed, match="maximum bytes exceeded"):
        await relay.publish_pending()
    stored = await _stream_count(bus, subject)
    assert 0 < stored < 30
    async with db.transaction() as session:
        marked = (await session.execute(select(outbox_t.c.seq).where(outbox_t.c.published_at.is_not(None)))).scalars()
        waiting = (await session.execute(select(outbox_t.c.seq).where(outbox_t.c.published_at.is_(None)))).scalars()
        marked, waiting = sorted(marked), sorted(waiting)
    assert len(marked) == stored and max(marked) < min(waiting)  # the head the stream took, and nothing after it

    # Past the duplicate window a head published again would be stored again: the window is narrowed to its least
    # (100 ms) and passed, to show that none is.
    config.max_bytes, config.duplicate_window = -1, 0.1
    await bus.js.update_stream(config)
    await asyncio.sleep(0.3)
    assert await relay.publish_pending() == 30 - stored
    assert await _stream_count(bus, subject) == 30


async def test_redelivered_message_is_applied_once(setup) -> None:  # type: ignore[no-untyped-def]
    db, bus, outbox_t, inbox_t, things, subject = setup
    outbox = Outbox(outbox_t)
    inbox = Inbox(inbox_t)
    async with db.transaction() as session:
        await session.execute(insert(things).values(id="seg_a", applied=0))
        await outbox.add(session, subject, SegmentPublished(segment_id="seg_a"))
    await OutboxRelay(db, outbox_t, bus, tracer).publish_pending()

    deliveries: list[int] = []
    durable = f"d{new_id().lower()}"

    async def handler(event: SegmentPublished, delivery: Delivery) -> None:
        deliveries.append(delivery.num_delivered)
        async with db.transaction() as session:
            if await inbox.claim(session, durable, delivery.message_id):
                await session.execute(
                    update(things).where(things.c.id == event.segment_id).values(applied=things.c.applied + 1)
                )
        if delivery.num_delivered == 1:
            # The change is committed but the process "crashes" before the ack: JetStream redelivers.
            raise ConnectionResetError("crashed before ack")

    stream = await bus.js.find_stream_name_by_subject(subject)
    spec = ConsumerSpec(
        stream=stream,
        durable=durable,
        filter_subject=subject,
        dead_letter_subject=f"dlq.x.{durable}",
        backoff_seconds=(0.05,),
    )
    consumer = Consumer(bus, spec, SegmentPublished, handler, tracer)
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: _true(len(deliveries) >= 2))
    finally:
        await consumer.stop()
        await task
    async with db.transaction() as session:
        applied = (await session.execute(select(things.c.applied).where(things.c.id == "seg_a"))).scalar_one()
        claims = (await session.execute(select(func.count()).select_from(inbox_t))).scalar_one()
    assert deliveries == [1, 2]
    assert applied == 1
    assert claims == 1


async def test_poison_message_is_dead_lettered_not_retried(setup) -> None:  # type: ignore[no-untyped-def]
    _, bus, _, _, _, subject = setup
    suffix = subject.split(".")[1]
    await bus.js.publish(subject, b"\xff\xff not a protobuf", headers={"Nats-Msg-Id": "poison-1"})
    calls: list[str] = []

    async def handler(event: SegmentPublished, delivery: Delivery) -> None:
        calls.append(delivery.message_id)

    stream = await bus.js.find_stream_name_by_subject(subject)
    spec = ConsumerSpec(
        stream=stream,
        durable=f"p{suffix}",
        filter_subject=subject,
        dead_letter_subject=f"dlq.{suffix}.poison",
    )
    consumer = Consumer(bus, spec, SegmentPublished, handler, tracer)
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: _stream_count(bus, f"dlq.{suffix}.poison"))
    finally:
        await consumer.stop()
        await task
    dead = await bus.js.get_last_msg(
        await bus.js.find_stream_name_by_subject(f"dlq.{suffix}.poison"), f"dlq.{suffix}.poison"
    )
    assert calls == []
    assert dead.headers is not None
    assert "undecodable" in dead.headers["Xsell-Dlq-Reason"]
    assert dead.headers["Xsell-Original-Subject"] == subject


async def test_the_relay_sends_a_batch_under_one_span_and_consumers_continue_each_events_trace(setup) -> None:  # type: ignore[no-untyped-def]
    db, bus, outbox_t, _, _, subject = setup
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = provider.get_tracer("test")
    outbox = Outbox(outbox_t)
    creators = {}
    async with db.transaction() as session:
        for segment_id, events in (("seg_a", 2), ("seg_b", 1)):
            with spans.start_as_current_span(f"create {segment_id}") as creator:
                for _ in range(events):
                    await outbox.add(
                        session, subject, SegmentPublished(segment_id=segment_id), campaign_id=f"C-{segment_id}"
                    )
            creators[segment_id] = creator.get_span_context()
    assert await OutboxRelay(db, outbox_t, bus, spans).publish_pending() == 3

    parents: dict[str, int] = {}
    durable = f"d{new_id().lower()}"

    async def handler(event: SegmentPublished, delivery: Delivery) -> None:
        current = trace.get_current_span()
        assert isinstance(current, ReadableSpan) and current.parent is not None
        parents[event.segment_id] = current.parent.span_id

    stream = await bus.js.find_stream_name_by_subject(subject)
    spec = ConsumerSpec(stream=stream, durable=durable, filter_subject=subject, dead_letter_subject=f"dlq.x.{durable}")
    consumer = Consumer(bus, spec, SegmentPublished, handler, spans)
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: _true(len(parents) == 2))
    finally:
        await consumer.stop()
        await task

    [batch] = [span for span in exporter.get_finished_spans() if span.name == "send outbox"]
    assert batch.kind == SpanKind.PRODUCER
    assert batch.attributes is not None and batch.attributes["messaging.batch.message_count"] == 3
    # A link to each context events were created in (for an outreach, the campaign ID's own trace), once: an
    # outreach's two events come from its one span.
    assert sorted((link.context.trace_id, link.context.span_id) for link in batch.links) == sorted(
        (context.trace_id, context.span_id) for context in creators.values()
    )
    # Each consumer span is a child of the span its event was created in, in that span's trace.
    assert parents == {segment_id: context.span_id for segment_id, context in creators.items()}
    processed = [span for span in exporter.get_finished_spans() if span.name.startswith("process ")]
    assert {span.context.trace_id for span in processed} == {context.trace_id for context in creators.values()}


async def _add_rows(db: Database, outbox_t: Table, subject: str, published_ago: list[timedelta | None]) -> None:
    """One row per entry: published that long ago, or waiting (None); each created an hour before now."""
    outbox = Outbox(outbox_t)
    now = utcnow()
    rows = []
    for ago in published_ago:
        row = outbox.event(subject, SegmentPublished(segment_id="seg"))
        row["created_at"] = now - timedelta(hours=1)
        row["published_at"] = None if ago is None else now - ago
        rows.append(row)
    async with db.transaction() as session:
        await session.execute(insert(outbox_t), rows)


async def _waiting_and_published(db: Database, outbox_t: Table) -> tuple[int, int]:
    async with db.snapshot() as session:
        waiting = (await session.execute(select(func.count()).where(outbox_t.c.published_at.is_(None)))).scalar_one()
        total = (await session.execute(select(func.count()).select_from(outbox_t))).scalar_one()
    return waiting, total - waiting


async def test_published_rows_are_pruned_after_the_keep_period_in_chunks_and_waiting_ones_never(  # type: ignore[no-untyped-def]
    setup, monkeypatch
) -> None:
    db, bus, outbox_t, _, _, subject = setup
    old, recent = timedelta(hours=30), timedelta(hours=2)
    await _add_rows(db, outbox_t, subject, [old, old, old, recent, recent, None, None])
    monkeypatch.setattr(outbox_module, "PRUNE_CHUNK", 2)
    relay = OutboxRelay(db, outbox_t, bus, tracer, keep_published=timedelta(hours=24))
    assert await relay.prune_published() == 3  # two chunks: 2, then 1
    assert await _waiting_and_published(db, outbox_t) == (2, 2)
    assert await relay.prune_published() == 0
    # Keeping nothing prunes every published row, and still no waiting one.
    assert await OutboxRelay(db, outbox_t, bus, tracer, keep_published=timedelta(0)).prune_published() == 2
    assert await _waiting_and_published(db, outbox_t) == (2, 0)


async def test_the_backlog_is_read_beside_a_writer_not_behind_it(setup) -> None:  # type: ignore[no-untyped-def]
    db, bus, outbox_t, _, _, subject = setup
    await _add_rows(db, outbox_t, subject, [None, None])
    async with db.transaction() as writer:
        await writer.execute(outbox_t.delete())
        # The writer holds the write lock and has not committed. A read that took the lock itself (SQLite's BEGIN
        # IMMEDIATE) would wait in the busy handler, outside this process's writer order, and fail at its timeout.
        assert (await OutboxRelay(db, outbox_t, bus, tracer).measure_backlog())[0] == 2


async def test_a_row_after_every_row_was_pruned_is_published(setup) -> None:  # type: ignore[no-untyped-def]
    db, bus, outbox_t, _, _, subject = setup
    relay = OutboxRelay(db, outbox_t, bus, tracer, keep_published=timedelta(0))
    await _write_unannounced(db, outbox_t, subject, ["seg_a", "seg_b"])
    assert await relay.publish_pending() == 2
    assert await relay.prune_published() == 2
    # SQLite numbers the next row from the highest seq left: it may take a seq the relay has published before.
    await _write_unannounced(db, outbox_t, subject, ["seg_c"])
    assert await relay.publish_pending() == 1
    assert await _stream_segments(bus, subject) == ["seg_a", "seg_b", "seg_c"]


async def test_the_backlog_is_counted_exactly_up_to_the_limit_and_estimated_from_sequence_numbers_above(  # type: ignore[no-untyped-def]
    setup, monkeypatch
) -> None:
    db, bus, outbox_t, _, _, subject = setup
    relay = OutboxRelay(db, outbox_t, bus, tracer)
    assert await relay.measure_backlog() == (0, 0.0)
    await _add_rows(db, outbox_t, subject, [timedelta(minutes=5)] * 2 + [None] * 5)
    backlog, oldest_age = await relay.measure_backlog()
    assert backlog == 5
    assert 3590 < oldest_age < 3700  # the next waiting row was created an hour ago
    monkeypatch.setattr(outbox_module, "BACKLOG_EXACT_UP_TO", 3)
    # Counting stops at 3; the next waiting row's seq to the newest seq spans the 5 waiting ones.
    assert (await relay.measure_backlog())[0] == 5
    assert await relay.publish_pending() == 5
    assert await relay.measure_backlog() == (0, 0.0)


async def test_inbox_entries_are_pruned_once_older_than_any_stream_keeps_a_message(setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    db, bus, outbox_t, inbox_t, _, _ = setup
    now = utcnow()
    ages = [timedelta(days=16)] * 3 + [timedelta(days=13)] * 2
    async with db.transaction() as session:
        await session.execute(
            insert(inbox_t),
            [{"consumer": "d", "message_id": f"m{i}", "applied_at": now - age} for i, age in enumerate(ages)],
        )
    monkeypatch.setattr(outbox_module, "PRUNE_CHUNK", 2)
    relay = OutboxRelay(db, outbox_t, bus, tracer, inbox=inbox_t)
    assert await relay.prune_inbox() == 3
    async with db.snapshot() as session:
        kept = (await session.execute(select(inbox_t.c.message_id).order_by(inbox_t.c.message_id))).scalars().all()
    assert kept == ["m3", "m4"]
    # A redelivery of a message still in its stream is still recognised.
    async with db.transaction() as session:
        assert not await Inbox(inbox_t).claim(session, "d", "m3")


async def test_a_replica_prunes_past_rows_another_holds_instead_of_waiting_for_them(  # type: ignore[no-untyped-def]
    setup, monkeypatch, database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer: replicas never prune at once")
    db, bus, outbox_t, _, _, subject = setup
    await _add_rows(db, outbox_t, subject, [timedelta(hours=30)] * 12 + [None])
    monkeypatch.setattr(outbox_module, "PRUNE_CHUNK", 5)
    old = select(outbox_t.c.seq).where(outbox_t.c.published_at.is_not(None)).order_by(outbox_t.c.seq).limit(5)
    async with db.transaction() as holder:
        # Another replica's prune in flight: it holds the five oldest rows until it commits.
        held = (await holder.execute(old.with_for_update())).scalars().all()
        other = Database(database_url)
        try:
            # A generous bound that only a prune waiting for the held rows reaches.
            pruned = await asyncio.wait_for(OutboxRelay(other, outbox_t, bus, tracer).prune_published(), timeout=30)
        finally:
            await other.dispose()
    assert len(held) == 5
    assert pruned == 7
    assert await _waiting_and_published(db, outbox_t) == (1, 5)


async def test_rows_added_in_a_synchronous_transaction_wake_the_relay_only_when_it_commits(setup) -> None:  # type: ignore[no-untyped-def]
    db, _, outbox_t, _, _, subject = setup
    woken: list[int] = []
    outbox = Outbox(outbox_t, on_commit=lambda: woken.append(1))

    def add(session: Any, fail: bool) -> None:
        before = len(woken)
        outbox.add_rows_sync(session, [outbox.event(subject, SegmentPublished(segment_id="seg_sync"))])
        assert len(woken) == before  # not before the commit
        if fail:
            raise ZeroDivisionError

    await db.run_in_transaction(lambda session: add(session, fail=False))
    assert woken == [1]
    with pytest.raises(ZeroDivisionError):
        await db.run_in_transaction(lambda session: add(session, fail=True))
    assert woken == [1]
    assert await _waiting_and_published(db, outbox_t) == (1, 0)


async def _stream_segments(bus: Bus, subject: str) -> list[str]:
    """The segment ids of the SegmentPublished events on the subject's stream, in stream order."""
    stream = await bus.js.find_stream_name_by_subject(subject)
    info = await bus.js.stream_info(stream)
    found: list[str] = []
    if not info.state.messages:
        return found
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await bus.js.get_msg(stream, seq)
        found.append(SegmentPublished.FromString(message.data or b"").segment_id)
    return found


async def _write_unannounced(db: Database, outbox_t: Table, subject: str, segments: list[str]) -> tuple[int, Any]:
    """Events committed without waking the relay: the outbox's last seq before them, and (subject, payload,
    headers) of each, as a writer that hands them over has them."""
    rows = [Outbox(outbox_t).event(subject, SegmentPublished(segment_id=s)) for s in segments]
    async with db.transaction() as session:
        before = int((await session.execute(select(func.max(outbox_t.c.seq)))).scalar() or 0)
        await session.execute(insert(outbox_t), rows)
    return before, [(row["subject"], row["payload"], row["headers"]) for row in rows]


@asynccontextmanager
async def _relay_past_a_first_event(
    db: Database, outbox_t: Table, bus: Bus, subject: str
) -> AsyncIterator[OutboxRelay]:
    """A running relay (it polls only every 10 minutes) that has read and published one event ("seg_a"), and so
    knows where it stands; stopped when the block ends."""
    relay = OutboxRelay(db, outbox_t, bus, tracer, poll_interval=600)
    running = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: _true(relay._loop is not None))
        await _write_unannounced(db, outbox_t, subject, ["seg_a"])
        relay.notify()
        await eventually(lambda: _stream_count_is(bus, subject, 1))
        yield relay
    finally:
        await relay.stop()
        await running


async def test_events_handed_over_after_their_commit_leave_without_the_relay_reading_them(  # type: ignore[no-untyped-def]
    setup, monkeypatch
) -> None:
    db, bus, outbox_t, _, _, subject = setup
    async with _relay_past_a_first_event(db, outbox_t, bus, subject) as relay:
        reads = 0
        read_in_thread = db.read_in_thread

        async def counted(work):  # type: ignore[no-untyped-def]
            nonlocal reads
            reads += 1
            return await read_in_thread(work)

        monkeypatch.setattr(db, "read_in_thread", counted)
        before, events = await _write_unannounced(db, outbox_t, subject, ["seg_b", "seg_c"])
        relay.hand_over(before, events)
        await eventually(lambda: _stream_count_is(bus, subject, 3))
        assert await _stream_segments(bus, subject) == ["seg_a", "seg_b", "seg_c"]
        # On SQLite from memory (elsewhere, where several replicas may relay, the relay is woken to read them).
        assert reads == 0 or not db.is_sqlite
        await eventually(lambda: _waiting_is(db, outbox_t, 0))


async def test_events_handed_over_behind_unpublished_ones_wait_for_them(setup) -> None:  # type: ignore[no-untyped-def]
    db, bus, outbox_t, _, _, subject = setup
    async with _relay_past_a_first_event(db, outbox_t, bus, subject) as relay:
        await _write_unannounced(db, outbox_t, subject, ["seg_b"])  # committed, not announced: waiting
        before, events = await _write_unannounced(db, outbox_t, subject, ["seg_c"])
        relay.hand_over(before, events)
        await eventually(lambda: _stream_count_is(bus, subject, 3))
        assert await _stream_segments(bus, subject) == ["seg_a", "seg_b", "seg_c"]
        await eventually(lambda: _waiting_is(db, outbox_t, 0))


async def test_events_handed_over_to_a_full_stream_leave_the_head_it_took_marked(setup) -> None:  # type: ignore[no-untyped-def]
    """A hand-over (on SQLite published from memory; elsewhere read by the woken relay) that the stream takes only in
    part: the head it took is marked, and only the rest goes once it has room, past the duplicate window."""
    db, bus, outbox_t, _, _, subject = setup
    async with _relay_past_a_first_event(db, outbox_t, bus, subject) as relay:
        stream = await bus.js.find_stream_name_by_subject(subject)
        config = (await bus.js.stream_info(stream)).config
        config.max_bytes, config.discard = 4_000, api.DiscardPolicy.NEW
        await bus.js.update_stream(config)
        names = [f"seg_{number:02}" + "x" * 100 for number in range(30)]
        before, events = await _write_unannounced(db, outbox_t, subject, names)
        relay.hand_over(before, events)
        await eventually(lambda: _waiting_below(db, outbox_t, 30))
        stored = await _stream_count(bus, subject) - 1
        assert 0 < stored < 30
        assert (await _waiting_and_published(db, outbox_t))[0] == 30 - stored

        config.max_bytes, config.duplicate_window = -1, 0.1
        await bus.js.update_stream(config)
        await asyncio.sleep(0.3)
        relay.notify()
        await eventually(lambda: _waiting_is(db, outbox_t, 0))
        assert await _stream_segments(bus, subject) == ["seg_a", *names]


async def _waiting_below(db: Database, outbox_t: Table, count: int) -> bool:
    return (await _waiting_and_published(db, outbox_t))[0] < count


async def _stream_count_is(bus: Bus, subject: str, count: int) -> bool:
    return await _stream_count(bus, subject) == count


async def _waiting_is(db: Database, outbox_t: Table, count: int) -> bool:
    return (await _waiting_and_published(db, outbox_t))[0] == count


async def test_a_batch_claims_in_one_statement_what_this_consumer_has_not_applied(setup) -> None:  # type: ignore[no-untyped-def]
    db, _, _, inbox_t, _, _ = setup
    inbox = Inbox(inbox_t)
    async with db.transaction() as session:
        assert await inbox.claim(session, "d", "m1")
        assert await inbox.claim(session, "other", "m2")
    async with db.transaction() as session:
        # m1 was applied by this consumer; m2 by another one only; m3 comes twice in the batch.
        assert await inbox.claim_many(session, "d", ["m1", "m2", "m3", "m3"]) == {"m2", "m3"}
        assert await inbox.claim_many(session, "d", []) == set()
    async with db.transaction() as session:
        assert await inbox.claim_many(session, "d", ["m1", "m2", "m3", "m4"]) == {"m4"}


async def test_remembered_answers_are_forgotten_once_older_than_the_services_keep(setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Channels remembers an answer per receipt and engagement: the relay's housekeeping forgets those older than the
    service's idempotency_keep_days, whatever their scope, and keeps the younger ones (a retry still gets them)."""
    db, bus, outbox_t, _, _, _ = setup
    answers = idempotency_table(MetaData())
    async with db.engine.begin() as connection:
        await connection.run_sync(answers.metadata.create_all)
    now = utcnow()
    rows = [
        ("RecordDeliveryReceipt", "wa:old-1", "", timedelta(days=31)),
        ("RecordDeliveryReceipt", "wa:old-2", "", timedelta(days=45)),
        ("IngestEvents", "1", api_key_scope("crm"), timedelta(days=40)),
        ("IngestEvents", "1", api_key_scope("los"), timedelta(days=29)),
        ("RecordDeliveryReceipt", "wa:new", "", timedelta(hours=1)),
    ]
    async with db.transaction() as session:
        await session.execute(
            insert(answers),
            [
                {"method": m, "request_id": r, "scope": s, "request_hash": "h", "response": b"", "created_at": now - a}
                for m, r, s, a in rows
            ],
        )
    monkeypatch.setattr(outbox_module, "PRUNE_CHUNK", 2)
    relay = OutboxRelay(db, outbox_t, bus, tracer, answers=answers, keep_answers=timedelta(days=30))
    assert await relay.prune_answers() == 3
    async with db.snapshot() as session:
        kept = (
            await session.execute(select(answers.c.request_id, answers.c.scope).order_by(answers.c.request_id))
        ).all()
    assert [tuple(row) for row in kept] == [("1", api_key_scope("los")), ("wa:new", "")]
