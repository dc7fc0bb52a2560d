"""The campaigns database: definitions, runs, the campaign-ID counters, outreaches, outbox and idempotency."""

import functools
import hashlib
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import aiosqlite
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing import sqlite_async
from plumbing.db import UtcDateTime, dialect_of, per_transaction, upsert_insert
from plumbing.idempotency import idempotency_table
from plumbing.ids import new_id
from plumbing.outbox import inbox_table, outbox_table
from services.campaigns.automation import FELL_BACK
from services.campaigns.campaign_ids import SequenceBlock
from services.campaigns.resends import RESENT

MAX_FAILURE_REASON = 300
"""Characters of channels' failure reason an outreach keeps (outreaches.failure_reason)."""
metadata = MetaData()
outbox = outbox_table(metadata)

RESENDS_ONLY = "resend_of IS NOT NULL"
"""The outreaches uq_outreaches_resend_of holds: resends, one per original."""
FALLBACKS_ONLY = "fallback_of IS NOT NULL"
"""The outreaches uq_outreaches_fallback_of holds: fallbacks, one per failed outreach."""
FALLBACK_PENDING = "fallback_due_at IS NOT NULL AND fallback_state IS NULL"
"""The outreaches ix_outreaches_fallback_pending holds: failed ones whose fallback is still to decide (a few)."""
idempotency = idempotency_table(metadata)
# Which MembershipChanged messages the trigger consumer has applied (0007).
inbox = inbox_table(metadata)

campaigns = Table(
    "campaigns",
    metadata,
    # ULIDs: ordering by key is ordering by creation, which ListCampaigns relies on.
    Column("campaign_key", String(40), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("category", Integer, nullable=False),
    Column("programme", String(10), nullable=False),
    Column("trigger_code", String(3), nullable=False),
    Column("segment_id", String(100), nullable=False),
    Column("segment_version", BigInteger, nullable=False),
    Column("channel", String(20), nullable=False),
    Column("offer_product_code", String(100), nullable=False),
    Column("offer_amount_minor", BigInteger, nullable=True),
    Column("offer_currency", String(3), nullable=True),
    Column("subject_template", Text, nullable=False),
    Column("html_template", Text, nullable=False),
    Column("text_template", Text, nullable=False),
    Column("from_name", String(200), nullable=False),
    Column("send_time", UtcDateTime, nullable=True),
    Column("time_zone", String(64), nullable=False),
    Column("state", String(20), nullable=False),
    Column("outreach_count", BigInteger, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("launched_at", UtcDateTime, nullable=True),
    # Governance (0002): the definition's version, its maker and checker, and where a pause came from.
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("author", String(200), nullable=False, server_default="internal"),
    Column("approver", String(200), nullable=True),
    Column("paused_from", String(20), nullable=True),
    Column("pause_reason", Text, nullable=True),
    # Delivery (0003): recurrence, distribution, quiet hours, automatic pause, caps, priority, holdout.
    Column("options", JSON, nullable=True),
    # Content (0004): SMS / WhatsApp / push / webhook templates (e-mail has the columns above) and the
    # channel names tried, in order, when a person cannot be reached on `channel`.
    Column("channel_content", JSON, nullable=True),
    Column("fallback_channels", JSON, nullable=True),
    # Triggers and resends (0007): services.campaigns.automation.Automation as JSON.
    Column("automation", JSON, nullable=True),
    # The offer's amount rule and eligibility conditions (0012), as the JSON of xsell.campaigns.v1.Offer's fields;
    # NULL when every person gets the same offer.
    Column("offer_rules", JSON, nullable=True),
)

# Every transition of every campaign, oldest first by seq: who did what to which version, and when.
campaign_audit = Table(
    "campaign_audit",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("campaign_key", String(40), ForeignKey("campaigns.campaign_key"), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("action", String(40), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("state", String(20), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_campaign_audit_campaign_seq", "campaign_key", "seq"),
)

# Each version's definition as the serialised xsell.campaigns.v1.Campaign, so an approval can be traced
# to exactly what was approved.
campaign_versions = Table(
    "campaign_versions",
    metadata,
    Column("campaign_key", String(40), ForeignKey("campaigns.campaign_key"), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("definition", LargeBinary, nullable=False),
    Column("author", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

campaign_runs = Table(
    "campaign_runs",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("campaign_key", String(40), ForeignKey("campaigns.campaign_key"), nullable=False),
    Column("month", String(3), nullable=False),
    # The segments page token to continue from; "" before the first page.
    Column("cursor", Text, nullable=False),
    # Compare-and-set version: a page commits only if no one else released a page meanwhile.
    Column("pages_released", Integer, nullable=False),
    Column("outreach_count", BigInteger, nullable=False),
    Column("skipped_no_email", BigInteger, nullable=False),
    Column("skipped_render", BigInteger, nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("completed_at", UtcDateTime, nullable=True),
    # The occurrence this run is for (send-now runs: the launch time); one run per occurrence.
    Column("occurrence_at", UtcDateTime, nullable=True),
    # When the audience was fully materialised; dispatch steps start then.
    Column("materialized_at", UtcDateTime, nullable=True),
    # Outreaches with ordinal < released_through may be dispatched; the next step raises it at next_step_at.
    Column("released_through", BigInteger, nullable=False, server_default="0"),
    Column("next_step_at", UtcDateTime, nullable=True),
    # Who was left out at release time (the funnel of the run).
    Column("audience", BigInteger, nullable=False, server_default="0"),
    Column("held_out", BigInteger, nullable=False, server_default="0"),
    Column("suppressed", BigInteger, nullable=False, server_default="0"),
    Column("capped", BigInteger, nullable=False, server_default="0"),
    # "release" (the runner materialises the segment), "trigger" (a triggered campaign's local day) or
    # "resend" (the resends of one run's outreaches) (0007).
    Column("kind", String(10), nullable=False, server_default="release"),
    # The W3C traceparent of the span that started the run: the LaunchCampaign call (a recurring campaign's later
    # runs keep their first's). Its outreaches' root spans link to it (0016); NULL before 0016 and outside a span.
    Column("started_by", String(55), nullable=True),
    Index("ix_campaign_runs_open", "completed_at", "due_at"),
    UniqueConstraint("campaign_key", "occurrence_at", name="uq_campaign_runs_occurrence"),
)

# The sequence of campaign IDs per (programme, month, trigger code). It never resets: NOV of next
# year continues where NOV of this year stopped, so a campaign ID is unique across years without
# carrying the year. Sequences are allocated in blocks, one UPDATE ... RETURNING per released page.
campaign_id_counters = Table(
    "campaign_id_counters",
    metadata,
    Column("programme", String(10), primary_key=True),
    Column("month", String(3), primary_key=True),
    Column("trigger_code", String(3), primary_key=True),
    Column("last_sequence", BigInteger, nullable=False),
)

UNDISPATCHED = "dispatched_at IS NULL AND withdrawn_at IS NULL"
"""An outreach that may still be dispatched (ix_outreaches_run_undispatched's condition)."""
DEFERRED = f"dispatch_after IS NOT NULL AND {UNDISPATCHED}"
"""An undispatched outreach waiting for the end of its recipient's quiet hours (ix_outreaches_dispatch_after's)."""

outreaches = Table(
    "outreaches",
    metadata,
    Column("campaign_id", String(40), primary_key=True),
    Column("campaign_key", String(40), ForeignKey("campaigns.campaign_key"), nullable=False),
    Column("run_id", String(40), nullable=False),
    Column("profile_id", String(200), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("trigger_code", String(3), nullable=False),
    Column("offer_product_code", String(100), nullable=False),
    Column("offer_amount_minor", BigInteger, nullable=True),
    Column("offer_currency", String(3), nullable=True),
    Column("labels", JSON, nullable=False),
    Column("category", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # Release order within the run (0-based); distribution steps release ordinal ranges.
    Column("ordinal", BigInteger, nullable=True),
    # The DispatchRequested to publish when the outreach's step and quiet hours allow.
    Column("dispatch_payload", LargeBinary, nullable=True),
    Column("recipient_time_zone", String(64), nullable=True),
    Column("dispatch_after", UtcDateTime, nullable=True),
    Column("dispatched_at", UtcDateTime, nullable=True),
    # Test sends are delivered but never attributed or counted in reports.
    Column("test", Boolean, nullable=False, server_default=false()),
    # What channels reported, first time of each (set once; later repeats change nothing).
    Column("sent_at", UtcDateTime, nullable=True),
    Column("delivered_at", UtcDateTime, nullable=True),
    Column("failed_at", UtcDateTime, nullable=True),
    # Channels' reason for the failure, with failed_at (0014): scrubbed of numbers and addresses there.
    Column("failure_reason", String(MAX_FAILURE_REASON), nullable=True),
    Column("opened_at", UtcDateTime, nullable=True),
    Column("clicked_at", UtcDateTime, nullable=True),
    Column("replied_at", UtcDateTime, nullable=True),
    Column("bounced_at", UtcDateTime, nullable=True),
    Column("complained_at", UtcDateTime, nullable=True),
    Column("opted_out_at", UtcDateTime, nullable=True),
    # Set when a better-ranked campaign took this undispatched outreach's place under a cap (0004):
    # it is never dispatched and its run counts it as capped.
    Column("withdrawn_at", UtcDateTime, nullable=True),
    # Resends (0007): the original a resend resends (unique: never a second resend), and on the original
    # what was decided about its resend ("resent", "opened", "suppressed:opt_out"...) and when it is due.
    Column("resend_of", String(40), nullable=True),
    Column("resend_state", String(60), nullable=True),
    Column("resend_due_at", UtcDateTime, nullable=True),
    # Fallbacks (0013): the failed outreach a fallback follows (unique: one fallback each), and on the failed one
    # when its fallback fell due (its failure or bounce, on a campaign with fallback_on_failure) and what was decided
    # ("fell_back", "last_channel", "suppressed:no_contact"...).
    Column("fallback_of", String(40), nullable=True),
    Column("fallback_state", String(60), nullable=True),
    Column("fallback_due_at", UtcDateTime, nullable=True),
    # Resends only: an original's NULL is in no index entry, so creating one writes an index page fewer (0011).
    Index(
        "uq_outreaches_resend_of",
        "resend_of",
        unique=True,
        sqlite_where=text(RESENDS_ONLY),
        postgresql_where=text(RESENDS_ONLY),
    ),
    Index("ix_outreaches_campaign_profile", "campaign_key", "profile_id", "created_at"),
    Index("ix_outreaches_resend_pending", "campaign_key", "resend_state", "dispatched_at"),
    # A person gets one outreach per run, whatever happens to it (a recurring campaign has a run per occurrence).
    UniqueConstraint("run_id", "profile_id", name="uq_outreaches_run_profile"),
    Index("ix_outreaches_campaign_key_campaign_id", "campaign_key", "campaign_id"),
    # Partial (0010): a run's outreaches still to dispatch, in release order, so each dispatch page starts at the
    # first of them instead of walking past every one dispatched before (quadratic in the run); and the few whose
    # dispatch waits for the end of quiet hours, so the follow-up loop's poll reads those instead of every open
    # run's outreaches.
    Index(
        "ix_outreaches_run_undispatched",
        "run_id",
        "ordinal",
        sqlite_where=text(UNDISPATCHED),
        postgresql_where=text(UNDISPATCHED),
    ),
    Index(
        "ix_outreaches_dispatch_after",
        "dispatch_after",
        sqlite_where=text(DEFERRED),
        postgresql_where=text(DEFERRED),
    ),
    Index(
        "uq_outreaches_fallback_of",
        "fallback_of",
        unique=True,
        sqlite_where=text(FALLBACKS_ONLY),
        postgresql_where=text(FALLBACKS_ONLY),
    ),
    Index(
        "ix_outreaches_fallback_pending",
        "campaign_key",
        "fallback_due_at",
        sqlite_where=text(FALLBACK_PENDING),
        postgresql_where=text(FALLBACK_PENDING),
    ),
)


async def insert_campaign(session: AsyncSession, values: Mapping[str, Any]) -> None:
    await session.execute(insert(campaigns).values(**values))


async def get_campaign(session: AsyncSession, campaign_key: str) -> Row[Any] | None:
    return (await session.execute(select(campaigns).where(campaigns.c.campaign_key == campaign_key))).first()


async def list_campaigns(session: AsyncSession, before_key: str | None, limit: int) -> Sequence[Row[Any]]:
    """Newest first: campaign keys are ULIDs, so descending key order is descending creation order."""
    query = select(campaigns).order_by(campaigns.c.campaign_key.desc()).limit(limit)
    if before_key is not None:
        query = query.where(campaigns.c.campaign_key < before_key)
    return (await session.execute(query)).all()


async def mark_launched(
    session: AsyncSession, campaign_key: str, from_state: str, to_state: str, launched_at: datetime
) -> bool:
    """Moves the campaign out of `from_state`; False when a concurrent call moved it first."""
    result = await session.execute(
        update(campaigns)
        .where(campaigns.c.campaign_key == campaign_key, campaigns.c.state == from_state)
        .values(state=to_state, launched_at=launched_at)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_state(session: AsyncSession, campaign_key: str, from_state: str, to_state: str) -> bool:
    result = await session.execute(
        update(campaigns)
        .where(campaigns.c.campaign_key == campaign_key, campaigns.c.state == from_state)
        .values(state=to_state)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def insert_run(session: AsyncSession, values: Mapping[str, Any]) -> None:
    await session.execute(
        insert(campaign_runs).values(
            cursor="", pages_released=0, outreach_count=0, skipped_no_email=0, skipped_render=0, **values
        )
    )


async def get_run_for_campaign(session: AsyncSession, campaign_key: str) -> Row[Any] | None:
    return (await session.execute(select(campaign_runs).where(campaign_runs.c.campaign_key == campaign_key))).first()


async def due_runs(session: AsyncSession, now: datetime, limit: int = 100) -> Sequence[Row[Any]]:
    """Unfinished runs whose time has come, oldest first: new launches, due schedules, and runs a restart cut short."""
    return (await session.execute(_DUE_RUNS, {"now": now, "limit": limit})).all()


# The release runner polls it several times a second: built once.
_DUE_RUNS = (
    select(campaign_runs)
    .join(campaigns, campaigns.c.campaign_key == campaign_runs.c.campaign_key)
    .where(
        campaign_runs.c.completed_at.is_(None),
        campaign_runs.c.due_at <= bindparam("now"),
        # Paused campaigns wait for ResumeCampaign; cancelled ones have their runs closed.
        campaigns.c.state.in_(("SCHEDULED", "RUNNING")),
        # Trigger and resend runs create their outreaches one by one (trigger_handler, resend_runner).
        campaign_runs.c.kind == "release",
    )
    .order_by(campaign_runs.c.due_at, campaign_runs.c.run_id)
    .limit(bindparam("limit"))
)


async def ensure_counter(session: AsyncSession, programme: str, month: str, trigger_code: str) -> None:
    """Creates the counter row at 0 if it does not exist yet, so allocation is a plain UPDATE."""
    statement = (
        upsert_insert(session, campaign_id_counters)
        .values(programme=programme, month=month, trigger_code=trigger_code, last_sequence=0)
        .on_conflict_do_nothing()
    )
    await session.execute(statement)


async def allocate_sequences(
    session: AsyncSession, programme: str, month: str, trigger_code: str, count: int
) -> SequenceBlock:
    """Reserves `count` consecutive sequence numbers in one statement (SQLite >= 3.35 and PostgreSQL).

    The row lock taken by the UPDATE serialises concurrent allocations until the transaction ends,
    so two pages never get overlapping blocks; a rolled-back page gives its block back.
    """
    if count < 1:
        raise ValueError("allocate at least one sequence number")
    values = {"p_programme": programme, "p_month": month, "p_trigger_code": trigger_code, "p_count": count}
    last = (await session.execute(_ALLOCATE, values)).scalar_one()
    return SequenceBlock.ending_at(int(last), count)


# Statements every trigger batch and release page runs, built once with their parameters: building a statement's
# expression each time cost ~0.2 ms of CPU, as much as running it. (An UPDATE's parameters may not be named as its
# table's columns: hence p_.)
_counter = campaign_id_counters.c
_ALLOCATE = (
    update(campaign_id_counters)
    .where(
        _counter.programme == bindparam("p_programme"),
        _counter.month == bindparam("p_month"),
        _counter.trigger_code == bindparam("p_trigger_code"),
    )
    .values(last_sequence=_counter.last_sequence + bindparam("p_count"))
    .returning(_counter.last_sequence)
)
_ADD_TO_CAMPAIGN = (
    update(campaigns)
    .where(campaigns.c.campaign_key == bindparam("p_campaign_key"))
    .values(outreach_count=campaigns.c.outreach_count + bindparam("p_created"))
)
_run = campaign_runs.c
_ADD_RUN_COUNTS = (
    update(campaign_runs)
    .where(_run.run_id == bindparam("p_run_id"))
    .values(
        audience=_run.audience + bindparam("p_audience"),
        held_out=_run.held_out + bindparam("p_held_out"),
        suppressed=_run.suppressed + bindparam("p_suppressed"),
        capped=_run.capped + bindparam("p_capped"),
    )
)


async def insert_outreaches(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """One executemany INSERT (a resend's or a test send's outreach; pages use insert_page)."""
    if rows:
        await session.execute(insert(outreaches), list(rows))


# The columns of an outreach a page writes, in the order of OutreachRows' tuples: the person's, then those
# every outreach of the run shares.
PAGE_PERSON_COLUMNS = (
    "campaign_id",
    "profile_id",
    "channel",
    "ordinal",
    "recipient_time_zone",
    "dispatch_after",
    "dispatched_at",
    "dispatch_payload",
    # The person's offer amount: the campaign's, or their own when it is decided per person.
    "offer_amount_minor",
    "offer_currency",
)
PAGE_RUN_COLUMNS = (
    "campaign_key",
    "run_id",
    "trigger_code",
    "offer_product_code",
    "labels",
    "category",
    "created_at",
)
PAGE_OUTREACH_COLUMNS = PAGE_PERSON_COLUMNS + PAGE_RUN_COLUMNS
PAGE_EVENT_COLUMNS = ("event_id", "subject", "payload", "headers", "created_at")
PAGE_CONTACT_COLUMNS = (
    "campaign_id",
    "profile_id",
    "channel",
    "campaign_key",
    "category",
    "contacted_at",
    "priority",
    "offer_value_minor",
    "launched_at",
)


class DriverValues:
    """Values as the database driver takes them, converted the way SQLAlchemy binds them (SQLite keeps
    datetimes and JSON as text), so that a page's rows can be written as plain tuples: a value every row
    shares (the page's time, the campaign's labels) is converted once per page instead of once per row."""

    def __init__(self, session: AsyncSession) -> None:
        assert session.bind is not None
        self._datetime, self._event_time, self._json = _bind_processors(session.bind.dialect)

    def time(self, value: datetime | None) -> Any:
        """A timezone-aware UTC datetime of the campaigns tables (UtcDateTime columns)."""
        return self._datetime(value) if self._datetime is not None and value is not None else value

    def event_time(self, value: datetime) -> Any:
        """The outbox's created_at."""
        return self._event_time(value) if self._event_time is not None else value

    def json(self, value: Any) -> Any:
        return self._json(value) if self._json is not None else value


@functools.lru_cache(maxsize=8)
def _bind_processors(dialect: Any) -> tuple[Any, Any, Any]:
    """DriverValues' processors for a dialect (an engine's, for its life): made once, not per page (a trigger batch
    built them each time, ~35 µs)."""
    return (
        outreaches.c.created_at.type.dialect_impl(dialect).bind_processor(dialect),
        outbox.c.created_at.type.dialect_impl(dialect).bind_processor(dialect),
        outreaches.c.labels.type.dialect_impl(dialect).bind_processor(dialect),
    )


async def insert_page(
    session: AsyncSession, outreach_rows: Sequence[tuple[Any, ...]], event_rows: Sequence[tuple[Any, ...]]
) -> range | None:
    """A page's outreaches and outbox events, as tuples of driver values (DriverValues) in the orders of
    PAGE_OUTREACH_COLUMNS and PAGE_EVENT_COLUMNS. Returns the outbox seqs the events were given, in order, where
    the driver tells them (an inline transaction on a SQLite file: OutboxRelay.hand_over takes them), else None.

    Written with the driver itself (multi-row INSERTs on SQLite, plumbing.sqlite_async.insert_rows; COPY on
    PostgreSQL): SQLAlchemy's executemany processes every column of every row, which cost about a fifth of a
    release's CPU.
    """
    await _insert_rows(session, outreaches, PAGE_OUTREACH_COLUMNS, outreach_rows)
    last_seq = await _insert_rows(session, outbox, PAGE_EVENT_COLUMNS, event_rows)
    if last_seq is None or not event_rows:
        return None
    return range(last_seq - len(event_rows) + 1, last_seq + 1)


COPY_MIN_ROWS = 200
"""Rows from which a PostgreSQL page is written with COPY rather than one pipelined INSERT (asyncpg's executemany).

COPY waits twice for the server (its start, then its end), an executemany once: for a trigger batch's few rows (tens),
its three inserts were six round trips of 0.4-1.9 ms each on a busy machine. A release page's 2,000 rows keep COPY.
"""


async def _insert_rows(
    session: AsyncSession, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> int | None:
    """Inserts `rows`; on a sqlite3 connection used inline (InlineSession), returns the rowid of the last one.

    SQLite gives the rows of one insert consecutive rowids (the largest before them + 1, + 2, ...: nothing else
    writes in the transaction meanwhile), so the last one tells them all. That read is SQLite's
    `last_insert_rowid()`, a few µs; the `max(seq)` statements a trigger batch read before and after its inserts
    to bound its events' seqs cost ~150 µs each through the session on a busy process (its main thread's CPU
    around each call, 1,561 batches).
    """
    if not rows:
        return None
    connection = await session.connection()
    dialect = connection.dialect
    if dialect.name == "postgresql" and dialect.driver == "asyncpg":
        driver = (await connection.get_raw_connection()).driver_connection
        # SQLAlchemy begins the driver's transaction at the session's first statement: a COPY before it would
        # commit on its own, so it is used only once the transaction has begun (every page's has by then).
        if driver is not None and driver.is_in_transaction():
            if len(rows) >= COPY_MIN_ROWS:
                await driver.copy_records_to_table(table.name, records=rows, columns=list(columns))
            else:
                await driver.executemany(_insert_statement(table, columns, "numeric_dollar"), rows)
            return None
    if dialect.name == "sqlite":
        driver = (await connection.get_raw_connection()).driver_connection
        if isinstance(driver, aiosqlite.Connection | sqlite3.Connection):
            await sqlite_async.insert_rows(driver, table.name, columns, rows)
            if isinstance(driver, sqlite3.Connection):
                return int(driver.execute("SELECT last_insert_rowid()").fetchone()[0])
            return None
    await connection.exec_driver_sql(_insert_statement(table, columns, dialect.paramstyle), list(rows))
    return None


def _insert_statement(table: Table, columns: Sequence[str], paramstyle: str) -> str:
    """A one-row INSERT of `columns` in the driver's parameter style (run once per row by executemany)."""
    if paramstyle == "qmark":
        placeholders = ", ".join("?" for _ in columns)
    elif paramstyle == "numeric_dollar":
        placeholders = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    else:
        placeholders = ", ".join("%s" for _ in columns)
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})"


async def advance_run(
    session: AsyncSession,
    run_id: str,
    *,
    expected_pages: int,
    cursor: str,
    created: int,
    skipped_no_email: int,
    skipped_render: int,
    materialized_at: datetime | None,
) -> bool:
    """Records one materialised page; False when another process materialised this page first."""
    run = campaign_runs.c
    result = await session.execute(
        update(campaign_runs)
        .where(
            run.run_id == run_id,
            run.pages_released == expected_pages,
            run.completed_at.is_(None),
            run.materialized_at.is_(None),
        )
        .values(
            cursor=cursor,
            pages_released=run.pages_released + 1,
            outreach_count=run.outreach_count + created,
            skipped_no_email=run.skipped_no_email + skipped_no_email,
            skipped_render=run.skipped_render + skipped_render,
            materialized_at=materialized_at,
            next_step_at=materialized_at,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def add_outreaches_to_campaign(session: AsyncSession, campaign_key: str, created: int) -> None:
    await session.execute(_ADD_TO_CAMPAIGN, {"p_campaign_key": campaign_key, "p_created": created})


async def campaign_state(session: AsyncSession, campaign_key: str) -> str | None:
    return (
        await session.execute(select(campaigns.c.state).where(campaigns.c.campaign_key == campaign_key))
    ).scalar_one_or_none()


async def get_outreach(session: AsyncSession, campaign_id: str) -> Row[Any] | None:
    return (await session.execute(select(outreaches).where(outreaches.c.campaign_id == campaign_id))).first()


async def list_outreaches(
    session: AsyncSession, campaign_key: str, after_campaign_id: str | None, limit: int
) -> Sequence[Row[Any]]:
    query = (
        select(outreaches)
        .where(outreaches.c.campaign_key == campaign_key)
        .order_by(outreaches.c.campaign_id)
        .limit(limit)
    )
    if after_campaign_id is not None:
        query = query.where(outreaches.c.campaign_id > after_campaign_id)
    return (await session.execute(query)).all()


async def add_audit(
    session: AsyncSession,
    campaign_key: str,
    *,
    version: int,
    action: str,
    actor: str,
    state: str,
    note: str,
    at: datetime,
) -> None:
    await session.execute(
        insert(campaign_audit).values(
            campaign_key=campaign_key,
            version=version,
            action=action,
            actor=actor,
            state=state,
            note=note,
            created_at=at,
        )
    )


async def list_audit(session: AsyncSession, campaign_key: str, after_seq: int, limit: int) -> Sequence[Row[Any]]:
    query = (
        select(campaign_audit)
        .where(campaign_audit.c.campaign_key == campaign_key, campaign_audit.c.seq > after_seq)
        .order_by(campaign_audit.c.seq)
        .limit(limit)
    )
    return (await session.execute(query)).all()


async def insert_version(
    session: AsyncSession, campaign_key: str, version: int, definition: bytes, author: str, at: datetime
) -> None:
    await session.execute(
        insert(campaign_versions).values(
            campaign_key=campaign_key, version=version, definition=definition, author=author, created_at=at
        )
    )


async def transition(
    session: AsyncSession, campaign_key: str, from_state: str, from_version: int, values: Mapping[str, Any]
) -> bool:
    """Compare-and-set on (state, version): False when a concurrent request changed the campaign first."""
    result = await session.execute(
        update(campaigns)
        .where(
            campaigns.c.campaign_key == campaign_key,
            campaigns.c.state == from_state,
            campaigns.c.version == from_version,
        )
        .values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def cancel_open_runs(session: AsyncSession, campaign_key: str, at: datetime) -> None:
    """A cancelled campaign's unfinished runs end now; the runner never picks them up again."""
    await session.execute(
        update(campaign_runs)
        .where(campaign_runs.c.campaign_key == campaign_key, campaign_runs.c.completed_at.is_(None))
        .values(completed_at=at)
    )


async def get_run(session: AsyncSession, run_id: str) -> Row[Any] | None:
    return (await session.execute(select(campaign_runs).where(campaign_runs.c.run_id == run_id))).first()


async def advance_step(
    session: AsyncSession, run_id: str, released_through: int, step: int, next_step_at: datetime
) -> None:
    """Opens the next distribution step (compare-and-set on released_through so two runners never open two)."""
    await session.execute(
        update(campaign_runs)
        .where(campaign_runs.c.run_id == run_id, campaign_runs.c.released_through == released_through)
        .values(released_through=released_through + step, next_step_at=next_step_at)
    )


async def dispatchable(
    session: AsyncSession, run_id: str, released_through: int, now: datetime, limit: int
) -> Sequence[Any]:
    """Undispatched outreaches of the open steps whose quiet-hours deferral (if any) has passed, in release order."""
    o = outreaches.c
    query = (
        select(o.campaign_id, o.dispatch_payload, o.recipient_time_zone, o.dispatch_after)
        .where(
            o.run_id == run_id,
            o.ordinal < released_through,
            o.dispatched_at.is_(None),
            o.withdrawn_at.is_(None),
            or_(o.dispatch_after.is_(None), o.dispatch_after <= now),
        )
        .order_by(o.ordinal)
        .limit(limit)
    )
    return (await session.execute(query)).all()


async def undispatched(session: AsyncSession, run_id: str) -> int:
    o = outreaches.c
    query = select(func.count()).where(
        o.run_id == run_id, o.dispatched_at.is_(None), o.withdrawn_at.is_(None), o.test.is_(False)
    )
    return int((await session.execute(query)).scalar_one())


async def mark_dispatched(session: AsyncSession, campaign_ids: Sequence[str], at: datetime) -> set[str]:
    """The campaign IDs marked; one withdrawn meanwhile (a cap gave its place to a better campaign) is not."""
    if not campaign_ids:
        return set()
    o = outreaches.c
    result = await session.execute(
        update(outreaches)
        .where(o.campaign_id.in_(campaign_ids), o.withdrawn_at.is_(None), o.dispatched_at.is_(None))
        .values(dispatched_at=at)
        .returning(o.campaign_id)
    )
    return set(result.scalars())


async def defer_dispatches(session: AsyncSession, deferrals: Sequence[Mapping[str, Any]]) -> None:
    """One executemany UPDATE: each outreach waits until the end of its recipient's quiet hours."""
    if deferrals:
        statement = (
            update(outreaches)
            .where(outreaches.c.campaign_id == bindparam("key"))
            .values(dispatch_after=bindparam("after"))
        )
        await session.execute(statement, list(deferrals))


async def released_engagement(session: AsyncSession, run_id: str) -> dict[str, int]:
    """Dispatched, bounced, complained, opted-out and failed counts of a run's released outreaches, in one query."""
    o = outreaches.c
    query = select(
        func.count(o.dispatched_at),
        func.count(o.bounced_at),
        func.count(o.complained_at),
        func.count(o.opted_out_at),
        func.count(o.failed_at),
    ).where(o.run_id == run_id, o.dispatched_at.is_not(None))
    dispatched, bounced, complained, opted_out, failed = (await session.execute(query)).one()
    return {
        "dispatched": dispatched,
        "bounced": bounced,
        "complained": complained,
        "opted_out": opted_out,
        "failed": failed,
    }


async def complete_run(session: AsyncSession, run_id: str, at: datetime) -> None:
    await session.execute(update(campaign_runs).where(campaign_runs.c.run_id == run_id).values(completed_at=at))


async def schedule_run(
    session: AsyncSession,
    campaign: Any,
    occurrence: datetime,
    month: str,
    now: datetime,
    started_by: str | None = None,
) -> None:
    """The run of one occurrence; a second call for the same occurrence changes nothing (idempotent per occurrence).
    `started_by`: the traceparent of what started the campaign's runs (the launch)."""
    await ensure_counter(session, campaign.programme, month, campaign.trigger_code)
    statement = (
        upsert_insert(session, campaign_runs)
        .values(
            run_id=new_id("run_"),
            campaign_key=campaign.campaign_key,
            month=month,
            cursor="",
            pages_released=0,
            outreach_count=0,
            skipped_no_email=0,
            skipped_render=0,
            due_at=occurrence,
            occurrence_at=occurrence,
            created_at=now,
            started_by=started_by,
        )
        .on_conflict_do_nothing(index_elements=["campaign_key", "occurrence_at"])
    )
    await session.execute(statement)


SIGNAL_COLUMNS = frozenset(
    {
        "sent_at",
        "delivered_at",
        "failed_at",
        "opened_at",
        "clicked_at",
        "replied_at",
        "bounced_at",
        "complained_at",
        "opted_out_at",
    }
)


async def record_signals(session: AsyncSession, signals: Sequence[tuple[str, str, datetime, str]]) -> None:
    """Sets each (campaign ID, column, time, reason)'s column on its outreach the first time only (a redelivery
    changes nothing), a failure with its reason; a statement per column. Of two signals of one column for one
    outreach, the first is kept."""
    by_column: dict[str, list[dict[str, Any]]] = {}
    for campaign_id, column, at, reason in signals:
        if column not in SIGNAL_COLUMNS:
            raise ValueError(f"{column} is not a signal column")
        row: dict[str, Any] = {"signalled": campaign_id, "at": at}
        if column == "failed_at":
            row["reason"] = reason[:MAX_FAILURE_REASON] or None
        by_column.setdefault(column, []).append(row)
    if by_column and dialect_of(session) == "postgresql":
        # Every row first, in campaign ID order: a statement per column would otherwise take them in column order,
        # and two fetches (the delivery and the engagement consumer's, two replicas') could each hold a row the
        # other waits for, a deadlock that fails both fetches.
        await session.execute(
            select(outreaches.c.campaign_id)
            .where(outreaches.c.campaign_id.in_(sorted({signal[0] for signal in signals})))
            .order_by(outreaches.c.campaign_id)
            .with_for_update()
        )
    for column, rows in sorted(by_column.items()):
        values: dict[str, Any] = {column: bindparam("at", type_=UtcDateTime)}
        if column == "failed_at":
            # A failure without a reason keeps whatever reason the outreach has.
            values["failure_reason"] = func.coalesce(bindparam("reason", type_=String), outreaches.c.failure_reason)
        statement = (
            update(outreaches)
            .where(outreaches.c.campaign_id == bindparam("signalled"), outreaches.c[column].is_(None))
            .values(values)
        )
        await session.execute(statement, rows)


# --- who was left out, and the contact ledger the caps count (0004) -----------------------------

# Every streamed member of a run who got no outreach, with why: suppressed (by reason, "no_contact"
# for no address on the channel), held_out (the control group), capped (by the rule, or "outranked"
# when a better campaign took the place of this run's undispatched outreach).
run_exclusions = Table(
    "run_exclusions",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("profile_id", String(200), primary_key=True),
    Column("campaign_key", String(40), ForeignKey("campaigns.campaign_key"), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("reason", String(40), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # ExplainOutreach looks one person up across a campaign's runs (0008).
    Index("ix_run_exclusions_person", "campaign_key", "profile_id"),
)

# One row per outreach that counts against frequency caps, with the rank its campaign had at release.
# Written in the page's transaction, under per-person locks, so concurrent runs see each other's.
contact_ledger = Table(
    "contact_ledger",
    metadata,
    Column("campaign_id", String(40), primary_key=True),
    Column("profile_id", String(200), nullable=False),
    Column("campaign_key", String(40), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("category", Integer, nullable=False),
    Column("contacted_at", UtcDateTime, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("offer_value_minor", BigInteger, nullable=False),
    Column("launched_at", UtcDateTime, nullable=False),
    Index("ix_contact_ledger_profile_time", "profile_id", "contacted_at"),
    # Entries older than any cap's period are pruned by time (0006).
    Index("ix_contact_ledger_contacted_at", "contacted_at"),
)


def _person_lock_key(profile_id: str) -> int:
    """A signed 64-bit advisory-lock key per person (a collision only serialises two people needlessly)."""
    return int.from_bytes(hashlib.sha256(profile_id.encode()).digest()[:8], "big", signed=True)


_PEOPLE_LOCKED = "xsell.campaigns.people_locked"
"""session.info key (plumbing.db.per_transaction): the person lock keys the current transaction holds."""


async def lock_people(session: AsyncSession, profile_ids: Sequence[str]) -> None:
    """Serialises the cap check and ledger write per person across concurrent runs until commit.

    PostgreSQL: transaction-scoped advisory locks taken in key order (so two pages never wait on each
    other in a cycle). SQLite: every write transaction already holds the database's write lock
    (BEGIN IMMEDIATE), so there is nothing more to take.
    """
    if not profile_ids or session.bind is None or session.bind.dialect.name != "postgresql":
        return
    # A lock held already in this transaction is not asked for again (a trigger batch locks its people, then its
    # gate the admitted ones among them): each ask is a round trip.
    held: set[int] = per_transaction(session, _PEOPLE_LOCKED, lambda _sync: set())
    keys = sorted({_person_lock_key(p) for p in profile_ids} - held)
    if not keys:
        return
    held.update(keys)
    await session.execute(
        text("SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY k) s"),
        {"keys": keys},
    )


async def recent_contacts(session: AsyncSession, profile_ids: Sequence[str], since: datetime) -> Sequence[Row[Any]]:
    """The people's ledger entries since `since`, each with whether its outreach is dispatched yet."""
    if not profile_ids:
        return []
    ledger = contact_ledger.c
    query = (
        select(contact_ledger, outreaches.c.dispatched_at)
        .join(outreaches, outreaches.c.campaign_id == ledger.campaign_id)
        .where(ledger.profile_id.in_(list(profile_ids)), ledger.contacted_at >= since)
    )
    return (await session.execute(query)).all()


async def insert_contacts(session: AsyncSession, rows: Sequence[tuple[Any, ...]]) -> None:
    """Ledger entries as tuples of driver values in the order of PAGE_CONTACT_COLUMNS (see insert_page)."""
    await _insert_rows(session, contact_ledger, PAGE_CONTACT_COLUMNS, rows)


async def forget_contact(session: AsyncSession, campaign_id: str) -> None:
    """Takes an outreach off the contact ledger: its message never reached the person (it failed or bounced), so
    the caps do not count it against the fallback that replaces it."""
    await session.execute(delete(contact_ledger).where(contact_ledger.c.campaign_id == campaign_id))


async def prune_contacts(session: AsyncSession, before: datetime) -> int:
    """Deletes ledger entries older than `before`; the outreaches themselves are kept."""
    result = await session.execute(delete(contact_ledger).where(contact_ledger.c.contacted_at < before))
    return int(getattr(result, "rowcount", 0) or 0)


EXCLUSION_COLUMNS = ("run_id", "profile_id", "campaign_key", "kind", "reason", "created_at")


async def insert_exclusions(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Left-out people's rows, written with the driver as a page's outreaches are (insert_page): 4.8 µs a row
    against SQLAlchemy's executemany's 7.9 on SQLite (2,000-row pages), for the third of an audience a strict offer
    or a wide suppression may leave out."""
    if not rows:
        return
    time = DriverValues(session).time
    await _insert_rows(
        session,
        run_exclusions,
        EXCLUSION_COLUMNS,
        [
            (r["run_id"], r["profile_id"], r["campaign_key"], r["kind"], r["reason"], time(r["created_at"]))
            for r in rows
        ],
    )


async def withdraw_outreaches(session: AsyncSession, campaign_ids: Sequence[str], at: datetime) -> Sequence[Row[Any]]:
    """Withdraws the undispatched ones of these outreaches and takes them off the ledger; returns those withdrawn.

    Conditional on dispatched_at being empty, so a dispatch that committed first wins (the caller then
    sees fewer rows than it asked for).
    """
    if not campaign_ids:
        return []
    o = outreaches.c
    result = await session.execute(
        update(outreaches)
        .where(o.campaign_id.in_(list(campaign_ids)), o.dispatched_at.is_(None), o.withdrawn_at.is_(None))
        .values(withdrawn_at=at)
        .returning(o.campaign_id, o.run_id, o.campaign_key, o.profile_id)
    )
    withdrawn = result.all()
    if withdrawn:
        await session.execute(
            delete(contact_ledger).where(contact_ledger.c.campaign_id.in_([w.campaign_id for w in withdrawn]))
        )
    return withdrawn


async def add_run_counts(
    session: AsyncSession, run_id: str, *, audience: int, held_out: int, suppressed: int, capped: int
) -> None:
    """Adds one page's funnel to the run (capped counts this run's own capped people, not withdrawals)."""
    values = {
        "p_run_id": run_id,
        "p_audience": audience,
        "p_held_out": held_out,
        "p_suppressed": suppressed,
        "p_capped": capped,
    }
    await session.execute(_ADD_RUN_COUNTS, values)


# --- reports: counted from the stored outreaches and exclusions, per run ------------------------


async def runs_page(
    session: AsyncSession, campaign_key: str, before_run_id: str | None, limit: int
) -> Sequence[Row[Any]]:
    """Newest first: run ids are ULIDs, so descending id order is descending creation order."""
    query = (
        select(campaign_runs)
        .where(campaign_runs.c.campaign_key == campaign_key)
        .order_by(campaign_runs.c.run_id.desc())
        .limit(limit)
    )
    if before_run_id is not None:
        query = query.where(campaign_runs.c.run_id < before_run_id)
    return (await session.execute(query)).all()


async def runs_of(session: AsyncSession, campaign_keys: Sequence[str]) -> Sequence[Row[Any]]:
    if not campaign_keys:
        return []
    query = select(campaign_runs).where(campaign_runs.c.campaign_key.in_(list(campaign_keys)))
    return (await session.execute(query)).all()


OUTREACH_COUNT_COLUMNS = (
    "dispatched_at",
    "sent_at",
    "delivered_at",
    "failed_at",
    "opened_at",
    "clicked_at",
    "replied_at",
    "bounced_at",
    "complained_at",
    "opted_out_at",
)


async def outreach_counts(
    session: AsyncSession, campaign_keys: Sequence[str], run_ids: Sequence[str] | None = None
) -> dict[str, dict[str, int]]:
    """Per run: outreaches created, withdrawn, and how many reached each delivery / engagement state.

    Test sends are left out; a withdrawn outreach is never dispatched, so it counts in no state.
    """
    if not campaign_keys:
        return {}
    o = outreaches.c
    query = (
        select(
            o.run_id,
            func.count().label("created"),
            func.count(o.withdrawn_at).label("withdrawn"),
            func.count(o.resend_of).label("resent"),
            func.count(o.fallback_of).label("fell_back"),
            *(func.count(o[column]).label(column) for column in OUTREACH_COUNT_COLUMNS),
        )
        .where(o.campaign_key.in_(list(campaign_keys)), o.test.is_(False))
        .group_by(o.run_id)
    )
    if run_ids is not None:
        query = query.where(o.run_id.in_(list(run_ids)))
    return {
        row.run_id: {k: int(v) for k, v in row._mapping.items() if k != "run_id"}
        for row in await session.execute(query)
    }


# A follow-up decision column and the decision that made the follow-up: the others are skips, by reason.
FOLLOW_UP_TAKEN = {"resend_state": RESENT, "fallback_state": FELL_BACK}


async def follow_up_skips(
    session: AsyncSession, campaign_keys: Sequence[str], run_ids: Sequence[str] | None = None
) -> list[tuple[str, str, str, int]]:
    """(run_id, decision column, reason, outreaches) of the resends and fallbacks decided against, by the run of the
    outreaches they would have followed."""
    if not campaign_keys:
        return []
    o = outreaches.c
    skips = []
    for column, taken in FOLLOW_UP_TAKEN.items():
        query = (
            select(o.run_id, o[column], func.count())
            .where(
                o.campaign_key.in_(list(campaign_keys)),
                o.test.is_(False),
                o[column].is_not(None),
                o[column] != taken,
            )
            .group_by(o.run_id, o[column])
        )
        if run_ids is not None:
            query = query.where(o.run_id.in_(list(run_ids)))
        skips += [(run_id, column, reason, int(count)) for run_id, reason, count in await session.execute(query)]
    return skips


async def exclusion_counts(
    session: AsyncSession, campaign_keys: Sequence[str], run_ids: Sequence[str] | None = None
) -> list[tuple[str, str, str, int]]:
    """(run_id, kind, reason, people) for every kind and reason of exclusion of the campaigns' runs."""
    if not campaign_keys:
        return []
    x = run_exclusions.c
    query = (
        select(x.run_id, x.kind, x.reason, func.count())
        .where(x.campaign_key.in_(list(campaign_keys)))
        .group_by(x.run_id, x.kind, x.reason)
    )
    if run_ids is not None:
        query = query.where(x.run_id.in_(list(run_ids)))
    return [(row[0], row[1], row[2], int(row[3])) for row in await session.execute(query)]


async def campaign_labels(session: AsyncSession) -> Sequence[Any]:
    """Every campaign's key, labels and channel (definitions, not people: a label report filters these)."""
    c = campaigns.c
    return (await session.execute(select(c.campaign_key, c.labels, c.channel))).all()


# --- explain: one person's outreaches and exclusions in a campaign ------------------------------


async def person_outreaches(session: AsyncSession, campaign_key: str, profile_id: str) -> Sequence[Row[Any]]:
    query = select(outreaches).where(outreaches.c.campaign_key == campaign_key, outreaches.c.profile_id == profile_id)
    return (await session.execute(query)).all()


async def person_exclusions(session: AsyncSession, campaign_key: str, profile_id: str) -> Sequence[Row[Any]]:
    query = select(run_exclusions).where(
        run_exclusions.c.campaign_key == campaign_key, run_exclusions.c.profile_id == profile_id
    )
    return (await session.execute(query)).all()
