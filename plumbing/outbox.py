"""Transactional outbox (events committed with their state change, relayed to JetStream) and inbox."""

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER, Bus
from plumbing.db import Database, upsert_insert
from plumbing.ids import new_id
from plumbing.metrics import meter
from plumbing.telemetry import CAMPAIGN_ID, headers_span_context

log = structlog.get_logger("plumbing.outbox")


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
        Column("published_at", DateTime(timezone=True), nullable=True, index=True),
    )


def inbox_table(metadata: MetaData) -> Table:
    """The inbox table: which message ids each durable consumer has applied."""
    return Table(
        "inbox",
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("message_id", String(200), primary_key=True),
        Column("applied_at", DateTime(timezone=True), nullable=False),
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
        if self._on_commit is not None:
            event.listen(session.sync_session, "after_commit", self._wake, once=True)

    def _wake(self, _session: object) -> None:
        if self._on_commit is not None:
            self._on_commit()


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
        batch_size: int = 200,
        poll_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.table = table
        self.bus = bus
        self.tracer = tracer
        self.batch_size = batch_size
        self.poll_interval = poll_interval
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
        self._backlog_checked_at = 0.0

    def notify(self) -> None:
        """Wakes the relay after a commit that added events (safe from any thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                published = await self.publish_pending()
                await self._observe_backlog()
            except Exception as error:  # noqa: BLE001 - NATS or the database is down: retry after a pause
                log.warning("outbox_relay_failed", error=repr(error))
                published = 0
            if published >= self.batch_size:
                continue
            self._wake.clear()
            # Woken by a commit, or polls anyway: another replica's commits do not wake us.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    async def stop(self) -> None:
        """Stops after the current batch, then publishes what committed meanwhile."""
        self._stopping.set()
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publishes one batch of unpublished events, oldest first; returns how many."""
        query = select(self.table).where(self.table.c.published_at.is_(None)).order_by(self.table.c.seq)
        query = query.limit(self.batch_size)
        if self.db.is_sqlite:
            # SQLite runs one replica, so one relay: the rows are read without the write lock and marked in a
            # short transaction after their acks, so the service's commits never wait behind NATS round trips.
            async with self.db.snapshot() as session:
                rows = (await session.execute(query)).mappings().all()
            await self._publish_rows(rows)
            if rows:
                async with self.db.transaction() as session:
                    await self._mark_published(session, [row["seq"] for row in rows])
        else:
            async with self.db.transaction() as session:
                # Several replicas may relay: each row is taken by one of them at a time.
                rows = (await session.execute(query.with_for_update(skip_locked=True))).mappings().all()
                await self._publish_rows(rows)
                if rows:
                    await self._mark_published(session, [row["seq"] for row in rows])
        if rows:
            self._published.add(len(rows))
        return len(rows)

    async def _publish_rows(self, rows: Sequence[RowMapping]) -> None:
        """Publishes a batch under one PRODUCER span that links every event's own trace.

        One span per batch, not per event (OpenTelemetry's batch-send convention): a span and a
        context extract/inject per event were most of the relay's CPU. The headers go out as the
        event was stored, so each consumer continues the trace the event was created in.
        """
        if not rows:
            return
        links = []
        for row in rows:
            remote = headers_span_context(row["headers"])
            if remote is not None:
                campaign_id = row["headers"].get(CAMPAIGN_ID_HEADER)
                links.append(Link(remote, {CAMPAIGN_ID: campaign_id} if campaign_id else None))
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
            duplicates = await self.bus.publish_batch(
                [(row["subject"], row["payload"], row["headers"]) for row in rows]
            )
        for row, duplicate in zip(rows, duplicates, strict=True):
            if duplicate:
                log.info("outbox_duplicate_dropped", event_id=row["headers"][MSG_ID_HEADER])

    async def _observe_backlog(self) -> None:
        """Counts what is waiting every few seconds, for the backlog and oldest-age gauges."""
        now = time.monotonic()
        if now - self._backlog_checked_at < 5.0:
            return
        self._backlog_checked_at = now
        async with self.db.sessions() as session:
            count, oldest = (
                await session.execute(
                    select(func.count(), func.min(self.table.c.created_at)).where(self.table.c.published_at.is_(None))
                )
            ).one()
        self._backlog.set(count)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        self._oldest_age.set((utcnow() - oldest).total_seconds() if oldest is not None else 0.0)

    async def _mark_published(self, session: AsyncSession, seqs: list[int]) -> None:
        await session.execute(update(self.table).where(self.table.c.seq.in_(seqs)).values(published_at=utcnow()))


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
