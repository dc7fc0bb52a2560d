"""Tables and queries of the channels database: messages keyed by campaign ID, their timelines, outbox, idempotency."""

import sqlite3
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Result, RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from plumbing.db import in_values, run_on_driver, sqlite_driver, upsert_insert
from plumbing.idempotency import idempotency_table
from plumbing.outbox import Outbox, outbox_table
from plumbing.sqlite_async import sqlite_datetime
from services.channels.delivery import DeliveryState, MessageRecord, TimelineStep, state_step

metadata = MetaData()
outbox = outbox_table(metadata)
idempotency = idempotency_table(metadata)

AMBIGUOUS = f"state = '{DeliveryState.AMBIGUOUS.value}'"
"""The rows of ix_messages_ambiguous."""

# One row per outreach: the campaign ID is the primary key, so a message exists at most once.
MAX_REASON = 1000
"""A message's reason is kept to this many characters (messages.reason)."""
MAX_STEP_DETAIL = 500
"""A timeline step's detail is kept to this many characters (message_timeline.detail)."""

messages = Table(
    "messages",
    metadata,
    Column("campaign_id", String(100), primary_key=True),
    Column("channel", String(40), nullable=False),
    Column("profile_id", String(128), nullable=False),
    Column("state", String(20), nullable=False),
    # Indexed: provider webhooks name the message by the provider's id (a WhatsApp reply quotes the wamid).
    Column("provider_message_id", String(300), nullable=True, index=True),
    Column("attempts", Integer, nullable=False),
    Column("reason", String(MAX_REASON), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    # An AMBIGUOUS message's dispatch request, where it is stored (JetStream stream and sequence): handed over again,
    # once, when the provider sent no receipt for it in time (services/channels/resend.py); resent_at marks that once.
    Column("request_stream", String(64), nullable=True),
    Column("request_seq", BigInteger, nullable=True),
    Column("resent_at", DateTime(timezone=True), nullable=True),
    # SMS and WhatsApp: a keyed hash of the recipient's number (recipients.py), never the number, so an inbound
    # message that quotes none of ours finds the last message sent to that number.
    Column("recipient_key", String(32), nullable=True),
    # The messages an operator settles by hand (no receipt came), oldest first. Partial, so the states every message
    # passes through (QUEUED, SENDING, SENT) never touch it: an index of every state cost the ledger's writer thread
    # three index updates per message (~10 µs of its ~100 µs per HTTP message), and no statement reads by state.
    Index("ix_messages_ambiguous", "updated_at", sqlite_where=text(AMBIGUOUS), postgresql_where=text(AMBIGUOUS)),
    Index(
        "ix_messages_recipient_key",
        "recipient_key",
        sqlite_where=text("recipient_key IS NOT NULL"),
        postgresql_where=text("recipient_key IS NOT NULL"),
    ),
)

# What happened to each message; never personal data (no address, for clicks only the link's host).
provider_reports = Table(
    "provider_reports",
    metadata,
    # When channels last recorded a report (a receipt) of each channel's provider: a message AMBIGUOUS since before it
    # heard nothing because its provider never had it, not because reports stopped coming (resend.py).
    Column("channel", String(40), primary_key=True),
    Column("last_report_at", DateTime(timezone=True), nullable=False),
)

message_timeline = Table(
    "message_timeline",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("campaign_id", String(100), ForeignKey("messages.campaign_id"), nullable=False, index=True),
    Column("step", String(60), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("detail", String(MAX_STEP_DETAIL), nullable=False),
)


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: datetime | None) -> datetime | None: ...
def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


async def insert_queued_if_absent(
    session: AsyncSession,
    *,
    campaign_id: str,
    channel: str,
    profile_id: str,
    now: datetime,
    recipient_key: str | None = None,
) -> bool:
    """Creates the message in QUEUED with its first timeline step; False when it already exists."""
    statement = (
        upsert_insert(session, messages)
        .values(
            campaign_id=campaign_id,
            channel=channel,
            profile_id=profile_id,
            recipient_key=recipient_key,
            state=DeliveryState.QUEUED.value,
            attempts=0,
            reason="",
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()
    )
    created = bool((await session.execute(statement)).rowcount)  # type: ignore[attr-defined]
    if created:
        await add_timeline(session, campaign_id, [TimelineStep(state_step(DeliveryState.QUEUED), now)])
    return created


async def lock_state(session: AsyncSession, campaign_id: str) -> tuple[DeliveryState, int] | None:
    """The message's state and attempts, row-locked until the transaction ends (SQLite: the whole database is)."""
    return await session.run_sync(lock_state_sync, campaign_id)


def lock_state_sync(session: Session, campaign_id: str) -> tuple[DeliveryState, int] | None:
    row = session.execute(
        select(messages.c.state, messages.c.attempts).where(messages.c.campaign_id == campaign_id).with_for_update()
    ).first()
    return None if row is None else (DeliveryState(row.state), int(row.attempts))


async def queued_at(session: AsyncSession, campaign_id: str) -> datetime:
    """When the message was queued (its QUEUED step): after campaigns had chosen its address."""
    query = select(messages.c.created_at).where(messages.c.campaign_id == campaign_id)
    created: datetime = (await session.execute(query)).scalar_one()
    return _utc(created)


async def set_state(
    session: AsyncSession,
    campaign_id: str,
    state: DeliveryState,
    *,
    now: datetime,
    reason: str | None = None,
    provider_message_id: str | None = None,
    count_attempt: bool = False,
) -> None:
    await session.run_sync(
        lambda sync: set_state_sync(
            sync,
            campaign_id,
            state,
            now=now,
            reason=reason,
            provider_message_id=provider_message_id,
            count_attempt=count_attempt,
        )
    )


def set_state_sync(
    session: Session,
    campaign_id: str,
    state: DeliveryState,
    *,
    now: datetime,
    reason: str | None = None,
    provider_message_id: str | None = None,
    count_attempt: bool = False,
) -> None:
    values: dict[str, object] = {"state": state.value, "updated_at": now}
    if reason is not None:
        values["reason"] = reason[:MAX_REASON]
    if provider_message_id is not None:
        values["provider_message_id"] = provider_message_id
    if state is DeliveryState.SENT:
        values["sent_at"] = now
    if count_attempt:
        values["attempts"] = messages.c.attempts + 1
    session.execute(update(messages).where(messages.c.campaign_id == campaign_id).values(**values))


async def add_timeline(session: AsyncSession, campaign_id: str, steps: Sequence[TimelineStep]) -> None:
    await session.run_sync(add_timeline_sync, campaign_id, steps)


def add_timeline_sync(session: Session, campaign_id: str, steps: Sequence[TimelineStep]) -> None:
    session.execute(
        insert(message_timeline),
        [{"campaign_id": campaign_id, "step": s.step, "at": s.at, "detail": s.detail[:MAX_STEP_DETAIL]} for s in steps],
    )


def claim_rows(
    session: Session, new: Sequence[Mapping[str, Any]], *, now: datetime
) -> tuple[dict[str, tuple[DeliveryState, int]], list[str]]:
    """Creates the messages of `new` (campaign_id, channel, profile_id, recipient_key) that do not exist yet, QUEUED,
    and row-locks
    all of them; returns every message's state and attempts, and the campaign IDs it created (whose QUEUED
    timeline step the caller writes with its own steps, in one INSERT).

    Existing rows are read (and locked) first rather than reported by INSERT … RETURNING: SQLAlchemy compiles an
    executemany with RETURNING anew on every call, which cost more than this read. Rows go in campaign
    ID order, so two replicas inserting overlapping batches wait on each other's keys in one order.
    """
    if not new:
        return {}, []
    locked = lock_states(session, {row["campaign_id"] for row in new})
    absent = sorted((row for row in new if row["campaign_id"] not in locked), key=lambda row: row["campaign_id"])
    if not absent:
        return locked, []
    created = [row["campaign_id"] for row in absent]
    driver = _sqlite(session)
    if driver is not None:
        at = sqlite_datetime(now)
        queued = DeliveryState.QUEUED.value
        _run(
            driver,
            _SQLITE_INSERT_QUEUED,
            [
                (row["campaign_id"], row["channel"], row["profile_id"], row["recipient_key"], queued, at, at)
                for row in absent
            ],
        )
        # BEGIN IMMEDIATE took the database's write lock before the read: no one else can have inserted these.
        locked.update((campaign_id, (DeliveryState.QUEUED, 0)) for campaign_id in created)
    else:
        defaults = {
            "state": DeliveryState.QUEUED.value,
            "attempts": 0,
            "reason": "",
            "created_at": now,
            "updated_at": now,
        }
        # DO NOTHING: another replica may insert the same campaign ID after the read above.
        session.execute(_upsert(session).on_conflict_do_nothing(), [{**row, **defaults} for row in absent])
        # A row another replica inserted after the read is not ours and not yet locked: read and lock the inserted
        # keys again (the rows this transaction inserted are already its own).
        locked.update(lock_states(session, created))
    return locked, created


def lock_states(session: Session, campaign_ids: Collection[str]) -> dict[str, tuple[DeliveryState, int]]:
    """State and attempts of each message, row-locked in campaign ID order until the transaction ends."""
    if not campaign_ids:
        return {}
    driver = _sqlite(session)
    if driver is not None:
        keys = in_values(sorted(campaign_ids))
        found = _run(driver, _sqlite_in(_SQLITE_SELECT_STATES, len(keys)), tuple(keys))
        return {campaign_id: (DeliveryState(state), int(attempts)) for campaign_id, state, attempts in found}
    rows = (
        session.execute(
            select(messages.c.campaign_id, messages.c.state, messages.c.attempts)
            .where(messages.c.campaign_id.in_(sorted(campaign_ids)))
            .order_by(messages.c.campaign_id)
            .with_for_update()
        )
    ).all()
    return {row.campaign_id: (DeliveryState(row.state), int(row.attempts)) for row in rows}


def mark_sending(session: Session, campaign_ids: Collection[str], *, now: datetime) -> None:
    """The intent of a batch: every message in it is SENDING from `now`, in one statement."""
    if not campaign_ids:
        return
    driver = _sqlite(session)
    if driver is not None:
        keys = in_values(sorted(campaign_ids))
        _run(
            driver,
            _sqlite_in(_SQLITE_MARK_SENDING, len(keys)),
            (DeliveryState.SENDING.value, sqlite_datetime(now), *keys),
        )
    else:
        session.execute(
            update(messages)
            .where(messages.c.campaign_id.in_(sorted(campaign_ids)))
            .values(state=DeliveryState.SENDING.value, updated_at=now)
        )


_set_outcome = (
    update(messages)
    .where(messages.c.campaign_id == bindparam("b_campaign_id"))
    .values(
        state=bindparam("b_state"),
        updated_at=bindparam("b_at"),
        reason=bindparam("b_reason"),
        provider_message_id=func.coalesce(bindparam("b_provider_message_id"), messages.c.provider_message_id),
        sent_at=func.coalesce(bindparam("b_sent_at"), messages.c.sent_at),
        attempts=messages.c.attempts + bindparam("b_attempt", type_=Integer),
    )
)


_set_outcome_if_sending = _set_outcome.where(messages.c.state == DeliveryState.SENDING.value)


def set_states(session: Session, changes: Sequence[Mapping[str, Any]], *, only_if_sending: bool = False) -> int:
    """Many messages' new states in one executemany: each change has campaign_id, state (DeliveryState), at, reason,
    provider_message_id (None keeps the stored one) and count_attempt; SENT also stamps sent_at.

    `only_if_sending` leaves alone a message that is no longer SENDING. Returns how many rows changed.
    """
    if not changes:
        return 0
    driver = _sqlite(session)
    if driver is not None:
        sent = DeliveryState.SENT
        rows = []
        for change in changes:
            at = sqlite_datetime(change["at"])
            rows.append(
                (
                    change["state"].value,
                    at,
                    change["reason"][:MAX_REASON],
                    change["provider_message_id"],
                    at if change["state"] is sent else None,
                    1 if change["count_attempt"] else 0,
                    change["campaign_id"],
                )
            )
        statement = _SQLITE_SET_OUTCOME_IF_SENDING if only_if_sending else _SQLITE_SET_OUTCOME
        return int(_run(driver, statement, rows).rowcount)
    result = session.execute(
        _set_outcome_if_sending if only_if_sending else _set_outcome,
        [
            {
                "b_campaign_id": change["campaign_id"],
                "b_state": change["state"].value,
                "b_at": change["at"],
                "b_reason": change["reason"][:MAX_REASON],
                "b_provider_message_id": change["provider_message_id"],
                "b_sent_at": change["at"] if change["state"] is DeliveryState.SENT else None,
                "b_attempt": 1 if change["count_attempt"] else 0,
            }
            for change in changes
        ],
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def remember_requests(session: Session, requests: Sequence[tuple[str, str, int]]) -> None:
    """The dispatch request (campaign_id, stream, sequence) of each message just made AMBIGUOUS, in its
    transaction; a request that is not stored anywhere (sequence 0) is not remembered."""
    rows = [
        {"b_campaign_id": campaign_id, "b_stream": stream, "b_seq": sequence}
        for campaign_id, stream, sequence in requests
        if stream and sequence
    ]
    if rows:
        session.execute(_remember_request, rows)


_remember_request = (
    update(messages)
    .where(messages.c.campaign_id == bindparam("b_campaign_id"))
    .values(request_stream=bindparam("b_stream"), request_seq=bindparam("b_seq"))
)


async def due_resends(
    session: AsyncSession, channel: str, *, ambiguous_before: datetime, created_before: datetime, limit: int
) -> list[tuple[str, str, int]]:
    """AMBIGUOUS messages of `channel` since before `ambiguous_before`, created before `created_before`, never handed
    over again, whose request is known: (campaign_id, stream, sequence), oldest first; on ix_messages_ambiguous."""
    rows = await session.execute(
        select(messages.c.campaign_id, messages.c.request_stream, messages.c.request_seq)
        .where(
            text(AMBIGUOUS),  # written as ix_messages_ambiguous's condition, so a poll reads that index only
            messages.c.updated_at < ambiguous_before,
            messages.c.created_at < created_before,
            messages.c.channel == channel,
            messages.c.resent_at.is_(None),
            messages.c.request_seq.is_not(None),
        )
        .order_by(messages.c.updated_at)
        .limit(limit)
    )
    return [(row.campaign_id, row.request_stream, int(row.request_seq)) for row in rows]


async def mark_resent(session: AsyncSession, campaign_id: str, *, now: datetime, reason: str) -> bool:
    """AMBIGUOUS -> QUEUED, marked as handed over again; False when the message is no longer AMBIGUOUS (a receipt
    came, an operator settled it) or was handed over again already (another replica)."""
    result = await session.execute(
        update(messages)
        .where(
            messages.c.campaign_id == campaign_id,
            messages.c.state == DeliveryState.AMBIGUOUS.value,
            messages.c.resent_at.is_(None),
        )
        .values(state=DeliveryState.QUEUED.value, updated_at=now, reason=reason[:MAX_REASON], resent_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def forget_request(session: AsyncSession, campaign_id: str) -> None:
    """The request of an AMBIGUOUS message is no longer stored: it stays for the provider's receipt or an operator."""
    await session.execute(update(messages).where(messages.c.campaign_id == campaign_id).values(request_seq=None))


def add_timeline_steps(session: Session, steps: Sequence[tuple[str, TimelineStep]]) -> None:
    """Timeline steps of many messages in one INSERT."""
    if not steps:
        return
    driver = _sqlite(session)
    if driver is not None:
        _run(
            driver,
            _SQLITE_INSERT_STEP,
            [(c, s.step, sqlite_datetime(s.at), s.detail[:MAX_STEP_DETAIL]) for c, s in steps],
        )
    else:
        session.execute(
            insert(message_timeline),
            [{"campaign_id": c, "step": s.step, "at": s.at, "detail": s.detail[:MAX_STEP_DETAIL]} for c, s in steps],
        )


async def settle_and_create(
    connection: AsyncConnection,
    changes: Sequence[tuple[Mapping[str, Any], TimelineStep, dict[str, Any] | None]],
    new: Sequence[Mapping[str, Any]],
    *,
    state: DeliveryState,
    steps: Sequence[TimelineStep],
    now: datetime,
) -> tuple[set[str], set[str]]:
    """PostgreSQL, in one statement (one round trip; one transaction on an autocommit connection): each change (as
    set_states takes it) applied only if its message is still SENDING, and then its timeline step and its outbox row
    (when it has one) written; and the messages of `new` (campaign_id, channel, profile_id, recipient_key) that do
    not exist yet created at `now` in `state`, with the timeline `steps`. Returns the campaign IDs whose change
    applied and those it created; a message of `new` that exists already is left as it is, for the caller to lock
    and decide on.

    An UPDATE whose condition is the state needs no read before it: a row another transaction is changing is waited
    for, and the condition is checked again on the row as that transaction left it (READ COMMITTED). Keys go in
    campaign ID order, so rows are locked in the order lock_states locks them.
    """
    changes = sorted(changes, key=lambda change: change[0]["campaign_id"])
    new = sorted(new, key=lambda row: row["campaign_id"])
    events = [(change["campaign_id"], row) for change, _, row in changes if row is not None]
    result: Result[Any] = await connection.exec_driver_sql(
        _PG_SETTLE_AND_CREATE,
        (
            [change["campaign_id"] for change, _, _ in changes],
            [change["state"].value for change, _, _ in changes],
            [change["at"] for change, _, _ in changes],
            [change["reason"][:MAX_REASON] for change, _, _ in changes],
            [change["provider_message_id"] for change, _, _ in changes],
            [change["at"] if change["state"] is DeliveryState.SENT else None for change, _, _ in changes],
            [1 if change["count_attempt"] else 0 for change, _, _ in changes],
            [step.step for _, step, _ in changes],
            [step.at for _, step, _ in changes],
            [step.detail[:MAX_STEP_DETAIL] for _, step, _ in changes],
            DeliveryState.SENDING.value,
            [campaign_id for campaign_id, _ in events],
            *Outbox.column_arrays([row for _, row in events]),
            [row["campaign_id"] for row in new],
            [row["channel"] for row in new],
            [row["profile_id"] for row in new],
            state.value,
            now,
            [step.step for step in steps],
            [step.at for step in steps],
            [step.detail[:MAX_STEP_DETAIL] for step in steps],
            [row["recipient_key"] for row in new],
        ),
    )
    settled: set[str] = set()
    created: set[str] = set()
    for row in result:
        (settled if row.applied else created).add(row.campaign_id)
    return settled, created


# Its parts see one snapshot and none of each other's writes but through RETURNING; the timeline's foreign key is
# checked at the statement's end, once the new messages are in. A message's steps go in the order given, the outbox
# rows in campaign ID order (the outbox's seq is the relay's order).
_PG_SETTLE_AND_CREATE = """
WITH change AS (
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::timestamptz[], $7::int[],
        $8::text[], $9::timestamptz[], $10::text[]
    ) AS c(campaign_id, state, at, reason, provider_message_id, sent_at, attempt, step, step_at, detail)
), settled AS (
    UPDATE messages AS m SET
        state = c.state, updated_at = c.at, reason = c.reason,
        provider_message_id = coalesce(c.provider_message_id, m.provider_message_id),
        sent_at = coalesce(c.sent_at, m.sent_at), attempts = m.attempts + c.attempt
    FROM change AS c
    WHERE m.campaign_id = c.campaign_id AND m.state = $11
    RETURNING m.campaign_id
), settled_events AS (
    INSERT INTO outbox (event_id, subject, payload, headers, created_at)
    SELECT e.event_id, e.subject, e.payload, e.headers::json, e.created_at
    FROM unnest($12::text[], $13::text[], $14::text[], $15::bytea[], $16::text[], $17::timestamptz[])
        WITH ORDINALITY AS e(campaign_id, event_id, subject, payload, headers, created_at, n)
    WHERE e.campaign_id IN (SELECT campaign_id FROM settled)
    ORDER BY e.n
), created AS (
    INSERT INTO messages
        (campaign_id, channel, profile_id, recipient_key, state, attempts, reason, created_at, updated_at)
    SELECT i.campaign_id, i.channel, i.profile_id, i.recipient_key, $21, 0, '', $22, $22
    FROM unnest($18::text[], $19::text[], $20::text[], $26::text[])
        WITH ORDINALITY AS i(campaign_id, channel, profile_id, recipient_key, n)
    ORDER BY i.n
    -- A row that exists (a redelivery, another replica's) is left for the caller to lock and decide on.
    ON CONFLICT DO NOTHING
    RETURNING campaign_id
), steps AS (
    INSERT INTO message_timeline (campaign_id, step, at, detail)
    SELECT campaign_id, step, at, detail FROM (
        SELECT c.campaign_id, c.step, c.step_at AS at, c.detail, 0::bigint AS n
        FROM change AS c JOIN settled USING (campaign_id)
        UNION ALL
        SELECT created.campaign_id, s.step, s.at, s.detail, s.n
        FROM created
        CROSS JOIN unnest($23::text[], $24::timestamptz[], $25::text[]) WITH ORDINALITY AS s(step, at, detail, n)
    ) AS written
    ORDER BY campaign_id, n
)
SELECT true AS applied, campaign_id FROM settled
UNION ALL
SELECT false, campaign_id FROM created
"""


# The ledger's batch statements on SQLite, run as they are: per row, SQLAlchemy's parameter processing (a dict per
# row, each datetime formatted by a Python function) cost more than SQLite's own work on those rows. They write
# what the Core statements above write, in the format SQLAlchemy's SQLite DateTime stores and reads.
_SQLITE_SELECT_STATES = (
    "SELECT campaign_id, state, attempts FROM messages WHERE campaign_id IN ({}) ORDER BY campaign_id"
)
_SQLITE_INSERT_QUEUED = (
    "INSERT INTO messages "
    "(campaign_id, channel, profile_id, recipient_key, state, attempts, reason, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, 0, '', ?, ?) ON CONFLICT DO NOTHING"
)
_SQLITE_MARK_SENDING = "UPDATE messages SET state = ?, updated_at = ? WHERE campaign_id IN ({})"
_SQLITE_SET_OUTCOME = (
    "UPDATE messages SET state = ?, updated_at = ?, reason = ?, "
    "provider_message_id = coalesce(?, provider_message_id), sent_at = coalesce(?, sent_at), "
    "attempts = attempts + ? WHERE campaign_id = ?"
)
_SQLITE_SET_OUTCOME_IF_SENDING = f"{_SQLITE_SET_OUTCOME} AND state = '{DeliveryState.SENDING.value}'"
_SQLITE_INSERT_STEP = "INSERT INTO message_timeline (campaign_id, step, at, detail) VALUES (?, ?, ?, ?)"


def _sqlite_in(statement: str, count: int) -> str:
    """The statement with an IN of `count` placeholders; callers pad their values (plumbing.db.in_values), so the
    driver's cache of prepared statements holds ~10 of these rather than one per batch size."""
    return statement.format(", ".join(["?"] * count))


def _sqlite(session: Session) -> "sqlite3.Connection | Connection | None":
    """On SQLite, what the ledger's statements run on; None on other backends. On a SQLite file the driver's connection
    under the session's transaction (plumbing.db.sqlite_driver), the statements run on it directly; through the async
    driver (an in-memory database) the session's Connection."""
    driver = sqlite_driver(session)
    if driver is not None:
        return driver
    connection = session.connection()
    return connection if connection.dialect.name == "sqlite" else None


def _run(target: "sqlite3.Connection | Connection", statement: str, parameters: Sequence[Any]) -> Any:
    """One statement (a list of rows: executemany) on what _sqlite gave. Its result iterates rows and has rowcount."""
    if not isinstance(target, sqlite3.Connection):
        return target.exec_driver_sql(statement, parameters)
    return run_on_driver(target, statement, parameters)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def note_report(session: Session, channel: str, at: datetime) -> None:
    """A report of `channel`'s provider was recorded at `at`."""
    upsert = (pg_insert if _dialect(session) == "postgresql" else sqlite_insert)(provider_reports)
    statement = upsert.values(channel=channel, last_report_at=at)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[provider_reports.c.channel], set_={"last_report_at": statement.excluded.last_report_at}
        )
    )


async def last_report(session: AsyncSession, channel: str) -> datetime | None:
    """When a report of `channel`'s provider was last recorded; None when none ever was."""
    value = (
        await session.execute(select(provider_reports.c.last_report_at).where(provider_reports.c.channel == channel))
    ).scalar_one_or_none()
    return _utc(value)


def _upsert(session: Session) -> Any:
    """An INSERT that supports on_conflict_do_nothing on the session's backend."""
    return (pg_insert if _dialect(session) == "postgresql" else sqlite_insert)(messages)


async def last_message_to(
    session: AsyncSession, channel: str, recipient_key: str, *, since: datetime | None
) -> str | None:
    """The campaign ID of the last message handed to `recipient_key` on `channel` since `since` (None: ever; SENT,
    DELIVERED, or AMBIGUOUS: it may have gone); None when there is none."""
    query = select(messages.c.campaign_id).where(
        messages.c.recipient_key == recipient_key,
        messages.c.channel == channel,
        messages.c.state.in_(_HANDED_OVER),
    )
    if since is not None:
        query = query.where(messages.c.created_at >= since)
    row = (
        await session.execute(query.order_by(messages.c.created_at.desc(), messages.c.campaign_id.desc()).limit(1))
    ).first()
    return None if row is None else str(row.campaign_id)


_HANDED_OVER = (DeliveryState.SENT.value, DeliveryState.DELIVERED.value, DeliveryState.AMBIGUOUS.value)


async def campaign_id_of(session: AsyncSession, provider_message_id: str) -> str | None:
    """The campaign ID of the message the provider knows by `provider_message_id`."""
    return (
        await session.execute(
            select(messages.c.campaign_id).where(messages.c.provider_message_id == provider_message_id).limit(1)
        )
    ).scalar_one_or_none()


async def load_message(session: AsyncSession, campaign_id: str) -> MessageRecord | None:
    """The message with its timeline, oldest first (ties in time keep the order they were written in)."""
    return await session.run_sync(load_message_sync, campaign_id)


def load_message_sync(session: Session, campaign_id: str) -> MessageRecord | None:
    return messages_sync(session, [campaign_id]).get(campaign_id)


def messages_sync(session: Session, campaign_ids: Collection[str], *, lock: bool = False) -> dict[str, MessageRecord]:
    """The messages with their timelines, in two statements; with `lock`, their rows locked in campaign ID order
    until the transaction ends (as lock_states does)."""
    if not campaign_ids:
        return {}
    ids = sorted(set(campaign_ids))
    query = select(messages).where(messages.c.campaign_id.in_(ids)).order_by(messages.c.campaign_id)
    rows = session.execute(query.with_for_update() if lock else query).mappings().all()
    if not rows:
        return {}
    t = message_timeline.c
    steps: dict[str, list[TimelineStep]] = {row["campaign_id"]: [] for row in rows}
    for step in session.execute(
        select(t.campaign_id, t.step, t.at, t.detail)
        .where(t.campaign_id.in_(list(steps)))
        .order_by(t.campaign_id, t.at, t.seq)
    ).all():
        steps[step.campaign_id].append(TimelineStep(step.step, _utc(step.at) or step.at, step.detail))
    return {row["campaign_id"]: _record(row, steps[row["campaign_id"]]) for row in rows}


def _record(row: RowMapping, timeline: list[TimelineStep]) -> MessageRecord:
    return MessageRecord(
        campaign_id=row["campaign_id"],
        channel=row["channel"],
        profile_id=row["profile_id"],
        state=DeliveryState(row["state"]),
        provider_message_id=row["provider_message_id"] or "",
        attempts=row["attempts"],
        reason=row["reason"],
        timeline=timeline,
    )


async def ambiguous_page(
    session: AsyncSession, after: tuple[datetime, str] | None, limit: int
) -> list[tuple[MessageRecord, datetime]]:
    """AMBIGUOUS messages with their timelines and since when, the longest ambiguous first (by updated_at, then campaign
    ID), after the keyset `after`; two statements, on ix_messages_ambiguous (its condition written as the index's)."""
    m = messages.c
    query = select(messages).where(text(AMBIGUOUS)).order_by(m.updated_at, m.campaign_id).limit(limit)
    if after is not None:
        query = query.where(or_(m.updated_at > after[0], and_(m.updated_at == after[0], m.campaign_id > after[1])))
    rows = (await session.execute(query)).mappings().all()
    if not rows:
        return []
    t = message_timeline.c
    steps: dict[str, list[TimelineStep]] = {row["campaign_id"]: [] for row in rows}
    for step in (
        await session.execute(
            select(t.campaign_id, t.step, t.at, t.detail)
            .where(t.campaign_id.in_(list(steps)))
            .order_by(t.campaign_id, t.at, t.seq)
        )
    ).all():
        steps[step.campaign_id].append(TimelineStep(step.step, _utc(step.at) or step.at, step.detail))
    return [(_record(row, steps[row["campaign_id"]]), _utc(row["updated_at"]) or row["updated_at"]) for row in rows]
