"""Transactional outbox (events committed with their state change, relayed to JetStream) and inbox."""

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson
import structlog
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    event,
    func,
    insert,
    select,
    text,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER, Bus, PublishFailed
from plumbing.db import Database, in_values, upsert_insert
from plumbing.ids import new_id
from plumbing.metrics import meter
from plumbing.sqlite_async import sqlite_datetime
from plumbing.telemetry import TRACEPARENT, headers_span_context

if TYPE_CHECKING:
    from plumbing.settings import ServiceSettings

log = structlog.get_logger("plumbing.outbox")

WAITING = "published_at IS NULL"
"""The rows the relay still has to publish: the partial index ix_outbox_waiting holds only these, in seq order."""

PUBLISHED = "published_at IS NOT NULL"
"""The rows ix_outbox_published_at holds, by which the relay's housekeeping prunes the old ones."""

KEEP_PUBLISHED = timedelta(hours=24)
"""How long a published row stays, for inspection, before the relay prunes it (a service setting overrides it)."""

PRUNE_INTERVAL_SECONDS = 60.0
PRUNE_CHUNK = 5_000
PRUNE_CHUNKS_PER_PASS = 10
"""At most 50,000 rows a minute, in short transactions of 5,000, so publishing never waits long behind a prune."""

KEEP_APPLIED = timedelta(days=15)
"""How long an inbox entry stays: longer than any consumed stream keeps a message (14 days), so a message that
could still be redelivered always finds its entry, and an entry pruned is one whose message is gone."""

KEEP_ANSWERS = timedelta(days=90)
"""How long a mutating RPC's answer is remembered by its request_id (plumbing.idempotency), unless a service setting
says otherwise: a retry within it gets the first answer; past it, the same request_id is a new request. Far longer than
any caller retries (a CRM's or LOS's retries come within hours), and without it channels alone would keep a row per
delivery receipt and engagement for ever."""

BATCH_SIZE = 1_000
"""The most events the relay reads, publishes and marks at once. A batch pays a fixed cost (two transactions, a
span, the acks' round trip) of about 2.5 ms of CPU on SQLite: batches of 200 cost 50 µs per event behind a backlog,
of 1,000 35-39 µs (python -m bench.relay --batch-size, load 0.5). At low rates a batch is whatever is waiting."""

MARK_GATHER_SECONDS = 0.1
"""How long published events wait to be marked together (SQLite, the marking task): a trigger batch's events were a
transaction of their own each (BEGIN, UPDATE, COMMIT in the writer thread, ~0.5 ms of CPU, the write lock taken from
the next batch), ~100 a second at 1,000 entries/s; now a few a second. A crash before the mark publishes them again
at the next start, and the stream's duplicate window drops the copies, as for any mark not yet committed."""

MARK_RETRY_SECONDS = 1.0
"""The pause before marking published events again after the database refused (SQLite)."""

BACKLOG_EXACT_UP_TO = 10_000
"""The backlog gauge counts waiting rows up to this many; above, it is estimated from the sequence numbers."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def outbox_table(metadata: MetaData) -> Table:
    """The outbox table in a service's own schema."""
    return Table(
        "outbox",
        metadata,
        Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("subject", String(200), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("published_at", DateTime(timezone=True), nullable=True),
        # The relay's batches, the backlog gauge and its oldest row read only the waiting rows, in seq order.
        # Without it PostgreSQL walks the primary key past every published row: 518 ms per batch behind 1M of
        # them, 0.3 ms with it (EXPLAIN ANALYZE).
        Index("ix_outbox_waiting", "seq", postgresql_where=text(WAITING), sqlite_where=text(WAITING)),
        # The prune's, by age: only published rows are in it, so a new row's insert does not touch it (an index page
        # fewer written per transaction that adds events).
        Index("ix_outbox_published_at", "published_at", postgresql_where=text(PUBLISHED), sqlite_where=text(PUBLISHED)),
    )


def inbox_table(metadata: MetaData) -> Table:
    """The inbox table: which message ids each durable consumer has applied."""
    return Table(
        "inbox",
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("message_id", String(200), primary_key=True),
        Column("applied_at", DateTime(timezone=True), nullable=False, index=True),
    )


class Outbox:
    """Writes events into the outbox inside the caller's transaction, one at a time or a page at once."""

    def __init__(self, table: Table, on_commit: Callable[[], None] | None = None) -> None:
        self.table = table
        self._on_commit = on_commit

    def event(self, subject: str, message: Message, *, campaign_id: str | None = None) -> dict[str, Any]:
        """An outbox row for `message`, to be written with add_rows().

        The message's `event_id` field is filled in when empty and becomes the Nats-Msg-Id. The
        current trace context is captured, so call this inside the span the event belongs to (an
        outreach's span): every consumer continues that trace, and the relay's batch span links it.
        """
        event_id = getattr(message, "event_id", "") or new_id("evt_")
        if hasattr(message, "event_id"):
            message.event_id = event_id  # type: ignore[attr-defined]
        headers: dict[str, str] = {MSG_ID_HEADER: event_id}
        propagate.inject(headers)
        if campaign_id:
            headers[CAMPAIGN_ID_HEADER] = campaign_id
        return {
            "event_id": event_id,
            "subject": subject,
            "payload": message.SerializeToString(),
            "headers": headers,
            "created_at": utcnow(),
        }

    async def add(
        self, session: AsyncSession, subject: str, message: Message, *, campaign_id: str | None = None
    ) -> str:
        """Queues one event; it is published only if the transaction commits. Returns its event id."""
        row = self.event(subject, message, campaign_id=campaign_id)
        await self.add_rows(session, [row])
        return str(row["event_id"])

    async def add_rows(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
        """Queues many events built with event() in one INSERT; published only if the transaction commits."""
        if not rows:
            return
        await session.execute(insert(self.table), list(rows))
        self._wake_after_commit(session.sync_session)

    def add_rows_sync(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        """add_rows for a synchronous Session (Database.run_in_transaction's work); the relay is woken the same way,
        from whichever thread commits.

        On SQLite the rows go in as plain tuples through the driver, each value converted as SQLAlchemy would bind
        it (the headers as JSON text, the time as SQLAlchemy's SQLite DateTime stores it): Core's per-row parameter
        processing was a quarter of the channels ledger's writer thread (~10-14 µs per message).
        """
        if not rows:
            return
        if session.get_bind().dialect.name == "sqlite":
            session.connection().exec_driver_sql(
                f"INSERT INTO {self.table.name} (event_id, subject, payload, headers, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        row["event_id"],
                        row["subject"],
                        row["payload"],
                        orjson.dumps(row["headers"]).decode(),
                        sqlite_datetime(row["created_at"]),
                    )
                    for row in rows
                ],
            )
        else:
            session.execute(insert(self.table), list(rows))
        self._wake_after_commit(session)

    @staticmethod
    def column_arrays(
        rows: Sequence[dict[str, Any]],
    ) -> tuple[list[str], list[str], list[bytes], list[str], list[datetime]]:
        """Rows built with event() as one list per column (event_id, subject, payload, headers as JSON text,
        created_at), for a PostgreSQL statement that inserts them with unnest() as part of a larger write."""
        return (
            [row["event_id"] for row in rows],
            [row["subject"] for row in rows],
            [row["payload"] for row in rows],
            [orjson.dumps(row["headers"]).decode() for row in rows],
            [row["created_at"] for row in rows],
        )

    def committed(self) -> None:
        """Wakes the relay after a commit that added rows without a Session (plain SQL in autocommit)."""
        if self._on_commit is not None:
            self._on_commit()

    def _wake_after_commit(self, session: Session) -> None:
        if self._on_commit is not None:
            event.listen(session, "after_commit", self._wake, once=True)

    def _wake(self, _session: object) -> None:
        if self._on_commit is not None:
            self._on_commit()


class ServiceTables(Protocol):
    """What OutboxRelay.of_service reads of a service's store module (an `inbox` too, where the service consumes)."""

    outbox: Table
    idempotency: Table


class OutboxRelay:
    """Publishes committed outbox rows to JetStream in order and marks them published.

    A relay that dies after publishing but before marking republishes with the same
    Nats-Msg-Id, and the stream's duplicate window drops the copy.
    """

    def __init__(
        self,
        db: Database,
        table: Table,
        bus: Bus,
        tracer: trace.Tracer,
        *,
        batch_size: int = BATCH_SIZE,
        poll_interval: float = 1.0,
        keep_published: timedelta = KEEP_PUBLISHED,
        inbox: Table | None = None,
        answers: Table | None = None,
        keep_answers: timedelta = KEEP_ANSWERS,
    ) -> None:
        """`inbox` and `answers` (the service's idempotency table): pruned by the relay's housekeeping too."""
        self.db = db
        self.table = table
        self.bus = bus
        self.tracer = tracer
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.keep_published = keep_published
        self.inbox = inbox
        self.answers = answers
        self.keep_answers = keep_answers
        self._waiting = table.c.published_at.is_(None)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        instruments = meter()
        self._published = instruments.create_counter(
            "xsell.outbox.published", description="Events relayed from the outbox to JetStream."
        )
        self._backlog = instruments.create_gauge(
            "xsell.outbox.backlog", description="Committed events not yet relayed to JetStream."
        )
        self._oldest_age = instruments.create_gauge(
            "xsell.outbox.oldest_age", unit="s", description="Age of the oldest event not yet relayed."
        )
        self._mark = (
            update(self.table)
            .where(self.table.c.seq.in_(bindparam("seqs", expanding=True)))
            .values(published_at=bindparam("now"))
        )
        columns = self.table.c
        # Only what is sent and marked (the timestamps' parsing was a per-row cost for columns the relay never reads),
        # and the headers as their stored text: the JSON type's json.loads per row was a sixth of the relay's work.
        self._batch_query = (
            select(columns.seq, columns.subject, columns.payload, type_coerce(columns.headers, Text))
            .where(self._waiting)
            .order_by(columns.seq)
            .limit(self.batch_size)
        )
        self._backlog_checked_at = 0.0
        self._pruned_at = 0.0
        # SQLite: seqs published and acknowledged whose mark has not committed yet, oldest first, and the task
        # marking them (see publish_pending).
        self._unmarked: list[int] = []
        self._marking: asyncio.Task[None] | None = None
        # SQLite: the highest seq published (None until the relay knows it, and again after a prune: SQLite may
        # give a new row the seq of a pruned one), one publication at a time (the relay's batches and hand_over's)
        # so the events leave in seq order, and the hand-overs still publishing.
        self._sent_through: int | None = None
        self._sending = asyncio.Lock()
        self._handing_over: set[asyncio.Task[None]] = set()

    @classmethod
    def of_service(
        cls, db: Database, tables: "ServiceTables", bus: Bus, tracer: trace.Tracer, settings: "ServiceSettings"
    ) -> "OutboxRelay":
        """A service's relay: its store's outbox, and the inbox (where the service consumes) and remembered answers its
        housekeeping prunes, kept as long as the service's settings say."""
        return cls(
            db,
            tables.outbox,
            bus,
            tracer,
            keep_published=settings.outbox_keep_published,
            inbox=getattr(tables, "inbox", None),
            answers=tables.idempotency,
            keep_answers=settings.idempotency_keep,
        )

    def notify(self) -> None:
        """Wakes the relay after a commit that added events (safe from any thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def hand_over(self, after_seq: int, events: Sequence[tuple[str, bytes, str | dict[str, str]]]) -> None:
        """Events a writer has just committed, as it wrote them (subject, payload, headers): the outbox's rows
        after_seq + 1, after_seq + 2, ... and nothing else between. Call it on the relay's loop after the commit.

        On SQLite, when every event before them has been published, they are published at once from memory and
        marked later like any batch; otherwise (and elsewhere) the relay is woken to read them in turn. A trigger
        batch's events waited for the relay's next turn after the commit, then for its read in the reader thread,
        each behind the batch's acknowledgements and the next batch's work on the same loop: 4.5-7.7 ms p50 and
        48-64 ms p99 from the commit to the publish in the trigger bench's spans (load 2-4).
        """
        if not events:
            return
        if self._loop is None or not self.db.is_sqlite:
            self.notify()
            return
        rows = [
            _Waiting(
                after_seq + 1 + offset,
                subject,
                payload,
                orjson.loads(headers) if isinstance(headers, str | bytes) else headers,
            )
            for offset, (subject, payload, headers) in enumerate(events)
        ]
        task = asyncio.create_task(self._publish_handed_over(rows), name="outbox-hand-over")
        self._handing_over.add(task)
        task.add_done_callback(self._handing_over.discard)

    async def _publish_handed_over(self, rows: list["_Waiting"]) -> None:
        async with self._sending:
            if self._sent_through is None or rows[0].seq > self._sent_through + 1:
                self._wake.set()  # events before them wait: the relay reads these in turn
                return
            if rows[0].seq <= self._sent_through:
                return  # the relay read and published them first
            try:
                await self._publish_rows(rows)
            except Exception as error:  # noqa: BLE001 - NATS is down: the relay publishes them with its next batch
                log.warning("outbox_hand_over_failed", events=len(rows), error=str(error))
                self._wake.set()
                # Those the stream stored before the first refusal are published: only the rest go again.
                rows = rows[: error.stored] if isinstance(error, PublishFailed) else []
                if not rows:
                    return
            self._sent_through = rows[-1].seq
            self._published.add(len(rows))
            self._mark_later([row.seq for row in rows])

    def _last_unmarked(self) -> int | None:
        return self._unmarked[-1] if self._unmarked else None

    def _mark_later(self, seqs: list[int]) -> None:
        """Leaves published seqs to the marking task (SQLite), starting it if it is not running."""
        self._unmarked.extend(seqs)
        if self._marking is None or self._marking.done():
            self._marking = asyncio.create_task(self._mark_unmarked(), name="outbox-mark")

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        # The first prune a minute in, not before the first batch: a prune takes the write lock.
        self._pruned_at = time.monotonic()
        try:
            while not self._stopping.is_set():
                try:
                    published = await self.publish_pending(wait_for_mark=False)
                    await self._observe_backlog()
                    await self._prune_if_due()
                except Exception as error:  # noqa: BLE001 - NATS or the database is down: retry after a pause
                    log.warning("outbox_relay_failed", error=repr(error))
                    published = 0
                if published >= self.batch_size:
                    continue
                self._wake.clear()
                # Woken by a commit, or polls anyway: another replica's commits do not wake us.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
        finally:
            # What was published is marked before the relay ends; if the process dies first, those events are
            # published again at the next start and the stream's duplicate window drops the copies.
            if self._handing_over:
                await asyncio.gather(*self._handing_over, return_exceptions=True)
            await self._marks_done()

    async def stop(self) -> None:
        """Stops after the current batch, once what it published is marked."""
        self._stopping.set()
        self._wake.set()

    async def publish_pending(self, *, wait_for_mark: bool = True) -> int:
        """Publishes one batch of unpublished events, oldest first; returns how many.

        On SQLite (one replica, so one relay) the batch is read without the write lock and marked published in a
        transaction of its own after its acks, before this returns (a failure to mark raises). With
        `wait_for_mark=False` (the relay's loop) the mark of a batch that is not full is left to a task, which
        retries until it commits, while the relay goes on: a mark waits for the write lock behind the service's
        own transactions, and the events those transactions committed used to wait behind it (from commit to
        publish, 11-16 ms p50 and 62-69 ms p99 in the trigger bench's spans at load ~0.5). A full batch (a
        backlog: a release's events) is still marked before the relay goes on, so behind a backlog the relay
        takes the write lock in turn with the service's writers instead of out-publishing them (with every mark
        left to the task, a 200k release ran at 8.0-8.6k outreach/s against 10.5-13.8k). Until the marks commit,
        the next batches are read past the highest seq published: those rows stay in the table (only published
        rows are pruned), so SQLite gives every new row a higher seq. The batch is read in one call to the
        database's reader thread (Database.read_in_thread), not statement by statement through aiosqlite: each of
        those waited for a turn of the service's loop. (Reading on an event loop of the database's own, in a
        thread of its own, was measured too: the latency got worse in four pairs of four, the read waiting behind
        the trigger batches' transactions there.) Writers that just committed events may hand them over instead
        (hand_over), and they are not read back.
        """
        query = self._batch_query
        if self.db.is_sqlite:
            async with self._sending:
                # Past what was published: rows published and not yet marked are still waiting in the table.
                published_through = self._sent_through if self._sent_through is not None else self._last_unmarked()
                if published_through is not None:
                    query = query.where(self.table.c.seq > published_through)
                batch = query
                rows = await self.db.read_in_thread(lambda session: _waiting_events(session.execute(batch).all()))
                rows, failure = await self._publish_stored(rows)
                if rows:
                    self._sent_through = rows[-1].seq
            if rows and (wait_for_mark or len(rows) >= self.batch_size):
                await self._mark_published([row.seq for row in rows])
            elif rows:
                self._mark_later([row.seq for row in rows])
        else:
            async with self.db.transaction() as session:
                # Several replicas may relay: each row is taken by one of them at a time.
                rows = _waiting_events((await session.execute(query.with_for_update(skip_locked=True))).all())
                rows, failure = await self._publish_stored(rows)
                if rows:
                    await self._mark_published([row.seq for row in rows], session)
        if rows:
            self._published.add(len(rows))
        if failure is not None:
            raise failure
        return len(rows)

    async def _publish_stored(self, rows: list["_Waiting"]) -> tuple[list["_Waiting"], PublishFailed | None]:
        """Publishes the rows; returns those the stream took (all of them, or those before the first it refused or
        left unanswered) and the failure, if any. The rows it took are marked, and only the rest are published
        again: a stream at its byte limit would otherwise store the batch's head again once its duplicate window
        has passed."""
        try:
            await self._publish_rows(rows)
        except PublishFailed as failure:
            return rows[: failure.stored], failure
        return rows, None

    async def _mark_unmarked(self) -> None:
        """Marks what was published until nothing is left (SQLite), what was published within MARK_GATHER_SECONDS
        together (at once when the relay stops); a failure is retried after a pause."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=MARK_GATHER_SECONDS)
        while self._unmarked:
            seqs = list(self._unmarked)
            try:
                await self._mark_published(seqs)
            except Exception as error:  # noqa: BLE001 - the database is busy or down: the rows wait, marked later
                log.warning("outbox_mark_failed", events=len(seqs), error=repr(error))
                await asyncio.sleep(MARK_RETRY_SECONDS)
                continue
            # Seqs published while this transaction ran were appended after these.
            del self._unmarked[: len(seqs)]

    async def _marks_done(self) -> None:
        """Waits until every published event is marked (the marking task has nothing left)."""
        while self._marking is not None and not self._marking.done():
            await asyncio.shield(self._marking)

    async def _publish_rows(self, rows: Sequence["_Waiting"]) -> None:
        """Publishes a batch under one PRODUCER span that links every event's own trace.

        One span per batch, not per event (OpenTelemetry's batch-send convention): a span and a
        context extract/inject per event were most of the relay's CPU. The headers go out as the
        event was stored, so each consumer continues the trace the event was created in.
        """
        if not rows:
            return
        # A link without attributes: an outreach's trace id is derived from its campaign ID (outreach_ids), so the
        # link already names the campaign, and an attribute per link was a sixth of the relay's CPU. One link per
        # span that wrote events, not per event: an outreach's OutreachCreated and DispatchRequested come from the
        # same span, and the SDK wraps every link it is given in an attribute mapping of its own.
        links = []
        linked: set[str] = set()
        for row in rows:
            traceparent = row.headers.get(TRACEPARENT)
            if traceparent is None or traceparent in linked:
                continue
            linked.add(traceparent)
            remote = headers_span_context(row.headers)
            if remote is not None:
                links.append(Link(remote))
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.batch.message_count": len(rows),
        }
        with self.tracer.start_as_current_span(
            "send outbox", kind=SpanKind.PRODUCER, attributes=attributes, links=links
        ):
            # Sent back to back and acknowledged together: a round trip per batch, not per event. The messages
            # leave in seq order; a failure leaves the batch unmarked, and its re-publication keeps each Msg-Id.
            duplicates = await self.bus.publish_batch([(row.subject, row.payload, row.headers) for row in rows])
        for row, duplicate in zip(rows, duplicates, strict=True):
            if duplicate:
                log.info("outbox_duplicate_dropped", event_id=row.headers[MSG_ID_HEADER])

    async def measure_backlog(self) -> tuple[int, float]:
        """How many committed events wait, and the age in seconds of the next one (0 when none).

        Exact up to BACKLOG_EXACT_UP_TO; above, the span of sequence numbers from the next waiting row to the
        newest row (the relay publishes in seq order, so nearly all of them wait). A COUNT of every waiting row
        took 0.43 s of CPU every 5 s behind a 1M-outreach release on SQLite; this reads at most 10,000 index entries.
        """
        seq = self.table.c.seq
        async with self.db.snapshot() as session:
            first = (
                await session.execute(select(seq, self.table.c.created_at).where(self._waiting).order_by(seq).limit(1))
            ).first()
            if first is None:
                return 0, 0.0
            waiting = select(seq).where(self._waiting).limit(BACKLOG_EXACT_UP_TO).subquery()
            backlog = int((await session.execute(select(func.count()).select_from(waiting))).scalar_one())
            if backlog >= BACKLOG_EXACT_UP_TO:
                newest = int((await session.execute(select(func.max(seq)))).scalar_one())
                backlog = max(backlog, newest - first.seq + 1)
        oldest = first.created_at if first.created_at.tzinfo is not None else first.created_at.replace(tzinfo=UTC)
        return backlog, max((utcnow() - oldest).total_seconds(), 0.0)

    async def _observe_backlog(self) -> None:
        """Measures what is waiting every few seconds, for the backlog and oldest-age gauges."""
        now = time.monotonic()
        if now - self._backlog_checked_at < 5.0:
            return
        self._backlog_checked_at = now
        backlog, oldest_age = await self.measure_backlog()
        self._backlog.set(backlog)
        self._oldest_age.set(oldest_age)

    async def _prune_if_due(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_INTERVAL_SECONDS:
            return
        self._pruned_at = now
        pruned = await self.prune_published()
        if pruned:
            log.info("outbox_pruned", events=pruned)
        if self.inbox is not None:
            forgotten = await self.prune_inbox()
            if forgotten:
                log.info("inbox_pruned", entries=forgotten)
        if self.answers is not None:
            forgotten = await self.prune_answers()
            if forgotten:
                log.info("idempotency_pruned", answers=forgotten)

    async def prune_published(self) -> int:
        """Deletes rows published more than keep_published ago; returns how many.

        A published row is never read again by the relay (its Nats-Msg-Id guards only re-publication of rows not
        yet marked), so it is kept only for inspection.
        """
        old = select(self.table.c.seq).where(self.table.c.published_at < utcnow() - self.keep_published)
        async with self._sending:
            pruned = await self._delete_in_chunks(self.table, self.table.c.seq, old)
            if pruned:
                # SQLite gives a new row the highest seq + 1: with the newest rows pruned, a seq may come again.
                self._sent_through = None
        return pruned

    async def prune_inbox(self) -> int:
        """Deletes the service's inbox entries older than KEEP_APPLIED (the relay's loop is its housekeeping too)."""
        assert self.inbox is not None
        key = tuple_(self.inbox.c.consumer, self.inbox.c.message_id)
        old = select(self.inbox.c.consumer, self.inbox.c.message_id).where(
            self.inbox.c.applied_at < utcnow() - KEEP_APPLIED
        )
        return await self._delete_in_chunks(self.inbox, key, old)

    async def prune_answers(self) -> int:
        """Deletes the remembered RPC answers older than keep_answers (by ix_idempotency_created_at)."""
        assert self.answers is not None
        c = self.answers.c
        old = select(c.method, c.request_id, c.scope).where(c.created_at < utcnow() - self.keep_answers)
        return await self._delete_in_chunks(self.answers, tuple_(c.method, c.request_id, c.scope), old)

    async def _delete_in_chunks(self, table: Table, key: Any, old: Select[Any]) -> int:
        """Deletes the rows `old` selects, PRUNE_CHUNK per short transaction, at most PRUNE_CHUNKS_PER_PASS."""
        deleted = 0
        for _ in range(PRUNE_CHUNKS_PER_PASS):
            async with self.db.transaction() as session:
                # SKIP LOCKED (PostgreSQL; SQLite has one writer): replicas pruning at once take disjoint chunks
                # instead of waiting on, or deadlocking over, each other's rows.
                chunk_rows = old.limit(PRUNE_CHUNK).with_for_update(skip_locked=True)
                result = await session.execute(delete(table).where(key.in_(chunk_rows)))
            chunk = int(result.rowcount)  # type: ignore[attr-defined]
            deleted += chunk
            if chunk < PRUNE_CHUNK or self._stopping.is_set():
                break
        return deleted

    async def _mark_published(self, seqs: list[int], session: AsyncSession | None = None) -> None:
        """Marks `seqs` published: in `session`'s transaction, or in one of their own (SQLite), which is one call
        to the database's writer thread (Database.run_in_transaction).

        Through aiosqlite a mark of its own held the process's write lock across three returns to the service's
        loop (BEGIN, UPDATE, COMMIT), each waiting for a turn behind everything else that was ready, and a trigger
        batch's transaction waiting for that lock waited for all of them (1.6 ms per BEGIN and 1.4 ms per UPDATE
        on average in a trigger run's spans). One statement with an expanding parameter, compiled once: building
        an IN of 200 literals each time cost more than running it. Its seqs are padded (in_values), so the driver
        prepares ~11 statement texts rather than one per count.
        """
        values = {"seqs": in_values(seqs), "now": utcnow()}
        if session is not None:
            await session.execute(self._mark, values)
        else:
            await self.db.run_in_transaction(lambda sync: sync.execute(self._mark, values))


class _Waiting(NamedTuple):
    """An outbox row as the relay publishes it."""

    seq: int
    subject: str
    payload: bytes
    headers: dict[str, str]


def _waiting_events(rows: Sequence[Any]) -> list[_Waiting]:
    """The batch's rows, each a tuple with its headers decoded (orjson: a few times json's speed on these small
    objects; PostgreSQL's driver may hand the JSON text as str or, decoded already, as a dict)."""
    return [
        _Waiting(row[0], row[1], row[2], orjson.loads(row[3]) if isinstance(row[3], str | bytes) else row[3])
        for row in rows
    ]


class Inbox:
    """Records the messages a durable consumer has applied, in the same transaction as the change."""

    def __init__(self, table: Table) -> None:
        self.table = table

    async def claim(self, session: AsyncSession, consumer: str, message_id: str) -> bool:
        """True the first time; False when this consumer already applied the message (a redelivery)."""
        values = {"consumer": consumer, "message_id": message_id, "applied_at": utcnow()}
        statement = upsert_insert(session, self.table).values(**values).on_conflict_do_nothing()
        result = await session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def claim_many(self, session: AsyncSession, consumer: str, message_ids: Sequence[str]) -> set[str]:
        """claim() for a batch in one statement: the message ids claimed now; the others this consumer applied
        already (redeliveries), or are twice in the batch (the first one is claimed)."""
        if not message_ids:
            return set()
        now = utcnow()
        rows = [{"consumer": consumer, "message_id": message_id, "applied_at": now} for message_id in message_ids]
        statement = upsert_insert(session, self.table).on_conflict_do_nothing().returning(self.table.c.message_id)
        result = await session.execute(statement, rows)
        return set(result.scalars())
