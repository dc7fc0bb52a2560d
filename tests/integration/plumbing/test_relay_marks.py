"""On SQLite the relay's loop does not wait for its mark-published to get the write lock before publishing what
committed next, and publishes nothing twice while a mark waits; every event is marked in the end."""

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

from opentelemetry import trace
from sqlalchemy import MetaData, Table, select

from plumbing.bus import Bus, StreamSpec
from plumbing.db import Database
from plumbing.ids import new_id
from plumbing.outbox import Outbox, OutboxRelay, outbox_table
from tests.waiting import eventually
from xsell.segments.v1.events_pb2 import SegmentPublished


async def test_the_next_events_are_published_while_the_last_mark_waits_for_the_write_lock(
    tmp_path: Path, nats_bus: Bus
) -> None:
    subject, db, table = await _outbox_on_sqlite(tmp_path, nats_bus)
    received: list[str] = []

    async def on_message(msg: object) -> None:
        received.append(SegmentPublished.FromString(msg.data).segment_id)  # type: ignore[attr-defined]

    subscription = await nats_bus.nc.subscribe(subject, cb=on_message)
    path = tmp_path / "outbox.db"
    relay = CountingRelay(db, table, nats_bus, trace.get_tracer("test"), poll_interval=0.05)
    outbox = Outbox(table, on_commit=relay.notify)
    async with db.transaction() as session:
        await outbox.add(session, subject, SegmentPublished(segment_id="first"))

    async def published_at() -> dict[str, object]:
        async with db.snapshot() as session:
            rows = (await session.execute(select(table.c.event_id, table.c.published_at))).all()
        return {event_id: at for event_id, at in rows}

    running = asyncio.create_task(relay.run())
    try:
        # The service's own transactions hold this process's write lock (one long one, here).
        async with db._sqlite_writer:  # type: ignore[union-attr]
            await eventually(lambda: _equal(received, ["first"]))
            # A commit from outside this process's lock (another connection), as the next trigger batch's would be.
            second = Outbox(table).event(subject, SegmentPublished(segment_id="second"))
            with contextlib.closing(sqlite3.connect(path)) as other:
                other.execute(
                    "INSERT INTO outbox (event_id, subject, payload, headers, created_at) VALUES (?, ?, ?, ?, ?)",
                    (
                        second["event_id"],
                        subject,
                        second["payload"],
                        json.dumps(second["headers"]),
                        second["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f"),
                    ),
                )
                other.commit()
            relay.notify()
            await eventually(lambda: _equal(received, ["first", "second"]))
            # Both were published while the lock was held, and neither is marked yet.
            assert set((await published_at()).values()) == {None}
            # The relay goes round again meanwhile and publishes neither a second time.
            cycles = relay.cycles
            await eventually(lambda: _true(relay.cycles >= cycles + 3))
            assert received == ["first", "second"]

        async def all_marked() -> bool:
            marks = await published_at()
            return len(marks) == 2 and None not in marks.values()

        await eventually(all_marked)
    finally:
        await relay.stop()
        await asyncio.wait_for(running, timeout=10)
        await subscription.unsubscribe()
        await db.dispose()
    assert received == ["first", "second"]


async def _outbox_on_sqlite(tmp_path: Path, nats_bus: Bus) -> tuple[str, Database, Table]:
    """A stream of its own and an outbox table in a SQLite file (tmp_path / "outbox.db")."""
    suffix = new_id("m").lower()
    await nats_bus.ensure_streams([StreamSpec(f"MARKS_{suffix}".upper(), (f"marks.{suffix}.>",))])
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    metadata = MetaData()
    table = outbox_table(metadata)
    async with db.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    return f"marks.{suffix}.published", db, table


class CountingRelay(OutboxRelay):
    cycles = 0

    async def publish_pending(self, *, wait_for_mark: bool = True) -> int:
        self.cycles += 1
        return await super().publish_pending(wait_for_mark=wait_for_mark)


async def _equal(value: object, expected: object) -> bool:
    return value == expected


async def _true(value: bool) -> bool:
    return value


async def test_a_full_batch_is_marked_before_the_relay_goes_on(tmp_path: Path, nats_bus: Bus) -> None:
    """Behind a backlog the relay takes the write lock in turn with the service's writers (a batch that fills up is
    marked before publish_pending returns, even from the relay's loop); a batch that does not fill is marked later."""
    subject, db, table = await _outbox_on_sqlite(tmp_path, nats_bus)
    relay = OutboxRelay(db, table, nats_bus, trace.get_tracer("test"), batch_size=2)
    outbox = Outbox(table)
    async with db.transaction() as session:
        for name in ("a", "b", "c"):
            await outbox.add(session, subject, SegmentPublished(segment_id=name))

    async def unmarked() -> int:
        async with db.snapshot() as session:
            return len((await session.execute(select(table.c.seq).where(table.c.published_at.is_(None)))).all())

    try:
        assert await relay.publish_pending(wait_for_mark=False) == 2
        assert await unmarked() == 1  # the full batch, marked before it returned
        assert await relay.publish_pending(wait_for_mark=False) == 1
        assert await relay.publish_pending(wait_for_mark=False) == 0  # the last one is not read again meanwhile

        async def all_marked() -> bool:
            return await unmarked() == 0

        await eventually(all_marked)
    finally:
        await db.dispose()
