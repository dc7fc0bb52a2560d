"""The attribution ledger: tables of this service's own database and the queries over them."""

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.types import TypeDecorator

from plumbing.db import UtcDateTime, dialect_of, upsert_insert
from plumbing.idempotency import idempotency_table
from plumbing.outbox import inbox_table, outbox_table
from services.attribution.reporting import COUNTER_COLUMNS, labels_key, programme_of
from services.attribution.rules import (
    CONVERTED,
    DELIVERED,
    DISBURSED,
    FIRST_TRANSACTION,
    FUNNEL_STEPS,
    MAX_PROFILE_ID_LENGTH,
    SANCTIONED,
    SENT,
    funnel_rank,
)

Money = BigInteger
"""Amounts are integer paise; a bigint holds ₹9.2 × 10^16 crore."""

metadata = MetaData()

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
idempotency = idempotency_table(metadata)

outreaches = Table(
    "outreaches",
    metadata,
    Column("campaign_id", String(100), primary_key=True),
    Column("campaign_key", String(100), nullable=False, index=True),
    Column("profile_id", String(MAX_PROFILE_ID_LENGTH), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("trigger_code", String(20), nullable=False, index=True),
    Column("product_code", String(100), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("category", String(60), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # The labels as one LIKE-searchable value (reporting.labels_key), so views and lift filter by label in SQL.
    Column("labels_key", String(1000), nullable=False, server_default=""),
    # Withdrawn before it was sent (campaigns' OutreachWithdrawn, 0007): its funnel row and send cost are gone, and
    # last touch, lift and a fixed cost's shares leave it out.
    Column("withdrawn_at", UtcDateTime, nullable=True),
    Index("ix_outreaches_profile_id", "profile_id"),
)

_DIMENSION_TYPES = {
    "campaign_key": String(100),
    # The campaign ID up to its first "-" (reporting.programme_of).
    "programme": String(20),
    "trigger_code": String(20),
    "channel": String(20),
    "product_code": String(100),
    # The labels as one LIKE-searchable value (reporting.labels_key).
    "labels_key": String(1000),
}
GROUP_DIMENSIONS = tuple(_DIMENSION_TYPES)
"""An outreach's rollup dimensions: a rollup row's key (ROLLUP_KEY) without its day."""
SHARE_DIMENSIONS = GROUP_DIMENSIONS[1:]
"""The dimensions a fixed cost is shared over: its campaign's groups differ in these, not in the campaign key."""


def _dimension_columns(names: Sequence[str]) -> list[Column[Any]]:
    """The columns of these dimensions, typed alike in every table that holds them."""
    return [Column(name, _DIMENSION_TYPES[name], nullable=False) for name in names]


outreach_groups = Table(
    "outreach_groups",
    metadata,
    Column("group_id", Integer, primary_key=True, autoincrement=True),
    *_dimension_columns(GROUP_DIMENSIONS),
    UniqueConstraint(*GROUP_DIMENSIONS, name="uq_outreach_groups_dimensions"),
)
"""Each distinct set of rollup dimensions an outreach has (a few per campaign), named by a small integer, so the
ledger rows a recompute groups carry one integer instead of six strings."""


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECONDS_A_DAY = 86_400_000_000


class UtcMicroseconds(TypeDecorator[datetime]):
    """A UTC instant stored as whole microseconds since 1970-01-01 UTC (a BIGINT), read back as an aware datetime.

    A recompute takes a million instants' local days with integer arithmetic on these (local_day_number) where
    SQLite had to parse each timestamp's text with date(); the microseconds keep every instant exactly.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: xsell stores timezone-aware UTC only")
        return (value - EPOCH) // timedelta(microseconds=1)

    def process_result_value(self, value: int | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return EPOCH + timedelta(microseconds=value)


def micros(column: Any) -> Any:
    """A UtcMicroseconds column (or an expression of them) as the plain integer it is, for arithmetic in SQL."""
    return type_coerce(column, BigInteger)


def local_day_number(column: Any, utc_offset_minutes: int) -> Any:
    """The local day of a UtcMicroseconds column as a day number (days since 1970-01-01), in integer arithmetic that
    every backend runs alike; NULL for NULL. Instants before 1970 are not in the ledger, so truncating division is
    the floor."""
    return (micros(column) + utc_offset_minutes * 60_000_000) // MICROSECONDS_A_DAY


def step_column(step: str) -> str:
    """The outreach_funnel column holding the first time the outreach reached `step`."""
    return f"{step}_at"


outreach_funnel = Table(
    "outreach_funnel",
    metadata,
    Column("campaign_id", String(100), ForeignKey("outreaches.campaign_id"), primary_key=True),
    Column("group_id", Integer, ForeignKey("outreach_groups.group_id"), nullable=False),
    Column("created_at", UtcMicroseconds, nullable=False),
    # The first time of each funnel step (rules.FUNNEL_STEPS); NULL until the step is reached.
    *(Column(step_column(step), UtcMicroseconds, nullable=True) for step in FUNNEL_STEPS),
)
"""The funnel steps' ledger: one narrow row per outreach, written with the outreach and moved with each step in the
step's transaction, so a recompute is one scan of a million rows, without a join or a pivot. Its instants are
integers (UtcMicroseconds, migration 0005), so their local days are arithmetic, not parsing."""

costs = Table(
    "costs",
    metadata,
    Column("cost_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("campaign_id", String(100), ForeignKey("outreaches.campaign_id"), nullable=False, index=True),
    # send | rm_time | fixed
    Column("kind", String(20), nullable=False),
    Column("amount_paise", Money, nullable=False),
    Column("currency_code", String(3), nullable=False),
    # What the cost is for: the lead of an rm_time cost; empty for a send cost.
    Column("ref", String(100), nullable=False),
    # When it was booked (an integer, as outreach_funnel's instants: a recompute takes a million costs' local days).
    Column("at", UtcMicroseconds, nullable=False),
    # The outreach's group (outreach_groups), written with the cost: its dimensions never change.
    Column(
        "group_id",
        Integer,
        ForeignKey("outreach_groups.group_id", name="fk_costs_group_id_outreach_groups"),
        nullable=False,
    ),
)

leads = Table(
    "leads",
    metadata,
    Column("lead_id", String(100), primary_key=True),
    Column("campaign_id", String(100), ForeignKey("outreaches.campaign_id"), nullable=False, index=True),
    Column("crm_lead_id", String(100), nullable=False),
    # crm | reply | support_agent
    Column("origin", String(20), nullable=False),
    # One reply lead per outreach and one lead per CRM lead id; NULL when neither applies.
    Column("dedup_key", String(120), nullable=True, unique=True),
    Column("created_at", UtcDateTime, nullable=False),
    # The leads still awaiting the CRM's id (crm_lead_id "") in id order, for ListLeads and its gauges (0009); a
    # lead with a CRM id is found by its dedup key crm:<id>, a claimed one too.
    Index("ix_leads_crm_lead_id", "crm_lead_id", "lead_id"),
)

loans = Table(
    "loans",
    metadata,
    Column("loan_number", String(100), primary_key=True),
    Column("campaign_id", String(100), ForeignKey("outreaches.campaign_id"), nullable=False, index=True),
    Column("product_code", String(100), nullable=False),
    # applied | sanctioned | disbursed
    Column("stage", String(20), nullable=False),
    Column("currency_code", String(3), nullable=False),
    Column("sanctioned_paise", Money, nullable=True),
    Column("disbursed_paise", Money, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
    Column("sanctioned_at", UtcDateTime, nullable=True),
    Column("first_disbursed_at", UtcDateTime, nullable=True),
    Column("last_disbursed_at", UtcDateTime, nullable=True),
)

disbursements = Table(
    "disbursements",
    metadata,
    Column("disbursement_id", String(100), primary_key=True),
    Column("loan_number", String(100), ForeignKey("loans.loan_number"), nullable=False, index=True),
    Column("campaign_id", String(100), ForeignKey("outreaches.campaign_id"), nullable=False, index=True),
    Column("amount_paise", Money, nullable=False),
    Column("currency_code", String(3), nullable=False),
    Column("disbursed_at", UtcDateTime, nullable=False),
    Column("lifetime_revenue_paise", Money, nullable=False),
    Column("year1_revenue_paise", Money, nullable=False),
    # Which model priced it (the product code whose model was used, or "default"), for audit.
    Column("revenue_model", String(100), nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
)


ROLLUP_KEY = ("day", *GROUP_DIMENSIONS)
"""A rollup row's identity: the local day something happened and the outreach's dimensions."""

rollup = Table(
    "rollup",
    metadata,
    # YYYY-MM-DD at the report's UTC offset: sorts and compares as text on every backend.
    Column("day", String(10), nullable=False),
    *_dimension_columns(GROUP_DIMENSIONS),
    *(Column(name, BigInteger, nullable=False, server_default="0") for name in COUNTER_COLUMNS),
    PrimaryKeyConstraint(*ROLLUP_KEY),
)
"""The views' summary rows, kept in the transaction of every ledger write (views.Rollup) and rebuilt by
reconcile: a dashboard reads days × campaigns × channels rows, never the outreaches themselves."""

holdouts = Table(
    "holdouts",
    metadata,
    Column("campaign_key", String(100), nullable=False),
    Column("run_id", String(100), nullable=False),
    Column("profile_id", String(MAX_PROFILE_ID_LENGTH), nullable=False, index=True),
    Column("trigger_code", String(20), nullable=False),
    Column("product_code", String(100), nullable=False),
    Column("labels_key", String(1000), nullable=False),
    Column("assigned_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("campaign_key", "run_id", "profile_id"),
)
"""People held out of a run (the control group), from campaigns' HoldoutAssigned."""

profile_conversions = Table(
    "profile_conversions",
    metadata,
    Column("conversion_id", String(100), primary_key=True),
    Column("profile_id", String(MAX_PROFILE_ID_LENGTH), nullable=False, index=True),
    Column("product_code", String(100), nullable=False),
    Column("amount_paise", Money, nullable=False),
    Column("currency_code", String(3), nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
)
"""Conversions without a campaign ID: how lift sees held-out people convert anyway."""

conversions = Table(
    "conversions",
    metadata,
    Column("conversion_id", String(100), primary_key=True),
    # lumpsum_invested | sip_registered | sip_step_up | switch_regular_to_direct | dividend_to_growth |
    # account_funded | first_transaction (rules.CONVERSION_KINDS)
    Column("kind", String(40), nullable=False),
    # NULL when unattributed: no campaign ID and no outreach in the last-touch window.
    Column("campaign_id", String(100), ForeignKey("outreaches.campaign_id"), nullable=True, index=True),
    # campaign_id | last_touch | unattributed
    Column("linkage", String(20), nullable=False),
    Column("profile_id", String(MAX_PROFILE_ID_LENGTH), nullable=False, index=True),
    Column("product_code", String(100), nullable=False),
    Column("amount_paise", Money, nullable=False),
    Column("currency_code", String(3), nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("lifetime_revenue_paise", Money, nullable=False),
    Column("year1_revenue_paise", Money, nullable=False),
    # Which model priced it (a product code or "default"); empty for a first transaction, which is not priced.
    Column("revenue_model", String(100), nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
)
"""Fund, deposit and card conversions: their money counts in the views like a disbursement's when attributed."""

FUNDED = conversions.c.kind != FIRST_TRANSACTION
"""The conversions whose amount is money in (invested, funded); a first transaction's amount is not."""

fixed_costs = Table(
    "fixed_costs",
    metadata,
    Column("cost_id", String(100), primary_key=True),
    Column("campaign_key", String(100), nullable=False, index=True),
    Column("amount_paise", Money, nullable=False),
    Column("currency_code", String(3), nullable=False),
    # The local day the cost lands on in the views, YYYY-MM-DD.
    Column("day", String(10), nullable=False),
    Column("description", String(500), nullable=False),
    Column("booked_at", UtcDateTime, nullable=False),
)
"""A campaign's fixed costs (agency fee, creative), booked on a day."""

fixed_cost_shares = Table(
    "fixed_cost_shares",
    metadata,
    Column("cost_id", String(100), ForeignKey("fixed_costs.cost_id"), nullable=False),
    # The group of the campaign's outreaches the share is of (its rollup row's key is the cost's day and campaign key
    # with these).
    *_dimension_columns(SHARE_DIMENSIONS),
    Column("amount_paise", Money, nullable=False),
    PrimaryKeyConstraint("cost_id", *SHARE_DIMENSIONS),
)
"""Each fixed cost's share per group of its campaign's outreaches (by sends when booked), kept so a recompute gives
the same rollup rows however many outreaches the campaign has since."""


@dataclass(frozen=True)
class Outreach:
    campaign_id: str
    campaign_key: str
    profile_id: str
    channel: str
    trigger_code: str
    product_code: str
    labels: list[str]
    category: str
    created_at: datetime


@dataclass(frozen=True)
class Loan:
    loan_number: str
    campaign_id: str
    product_code: str
    stage: str
    currency_code: str
    sanctioned_paise: int | None
    disbursed_paise: int
    applied_at: datetime
    sanctioned_at: datetime | None


@dataclass(frozen=True)
class Lead:
    lead_id: str
    campaign_id: str
    crm_lead_id: str
    origin: str
    created_at: datetime


@dataclass(frozen=True)
class Attribution:
    """What one outreach produced, as the ledger adds it up."""

    outreach: Outreach
    disbursed_paise: int
    lifetime_revenue_paise: int
    year1_revenue_paise: int
    cost_paise: int
    funnel: dict[str, int]
    loans: list[Loan]
    leads: list[Lead]


_OUTREACH_COLUMNS = tuple(outreaches.c[name] for name in Outreach.__dataclass_fields__)


async def outreaches_of_profile(
    session: AsyncSession, profile_id: str, *, before: tuple[datetime, str] | None, limit: int
) -> list[Outreach]:
    """The person's outreaches, newest first (by creation, then campaign ID), older than `before`; withdrawn ones
    (never sent) left out. Through ix_outreaches_profile_id: a person has few."""
    o = outreaches.c
    query = select(*_OUTREACH_COLUMNS).where(o.profile_id == profile_id, o.withdrawn_at.is_(None))
    if before is not None:
        at, campaign_id = before
        query = query.where(or_(o.created_at < at, and_(o.created_at == at, o.campaign_id < campaign_id)))
    rows = (await session.execute(query.order_by(o.created_at.desc(), o.campaign_id.desc()).limit(limit))).mappings()
    return [Outreach(**row) for row in rows]


async def get_outreach(session: AsyncSession, campaign_id: str) -> Outreach | None:
    """The outreach; None when it is not in the ledger, or was withdrawn before it was sent."""
    query = select(*_OUTREACH_COLUMNS).where(
        outreaches.c.campaign_id == campaign_id, outreaches.c.withdrawn_at.is_(None)
    )
    row = (await session.execute(query)).mappings().first()
    return Outreach(**row) if row is not None else None


@dataclass(frozen=True)
class LockedOutreach:
    """An outreach whose row the transaction holds locked, with its group and the first time of each funnel step it
    reached."""

    outreach: Outreach
    group_id: int
    funnel: dict[str, datetime]


_FUNNEL_COLUMNS = tuple(outreach_funnel.c[step_column(step)] for step in FUNNEL_STEPS)


def _locked(row: Any) -> LockedOutreach:
    return LockedOutreach(
        Outreach(**{name: row[name] for name in Outreach.__dataclass_fields__}),
        row["group_id"],
        {step: row[step_column(step)] for step in FUNNEL_STEPS if row[step_column(step)] is not None},
    )


def _with_funnel() -> Any:
    return select(*_OUTREACH_COLUMNS, outreach_funnel.c.group_id, *_FUNNEL_COLUMNS).select_from(
        outreaches.join(outreach_funnel, outreach_funnel.c.campaign_id == outreaches.c.campaign_id)
    )


async def lock_outreach(session: AsyncSession, campaign_id: str) -> LockedOutreach | None:
    """The outreach and its funnel; its row stays locked for the rest of the transaction on PostgreSQL (SQLite
    serialises writers anyway), so one outreach's funnel moves one event at a time."""
    if dialect_of(session) == "postgresql":
        # Two statements: under READ COMMITTED a statement that waited for the row lock still reads the other
        # tables as of its start, so a funnel read in the locking statement could miss the step whose
        # transaction held the lock. Read after the lock, it sees that step.
        locked = await session.execute(
            select(outreaches.c.campaign_id).where(outreaches.c.campaign_id == campaign_id).with_for_update()
        )
        if locked.first() is None:
            return None
    # SQLite: one statement, in a transaction that holds the database's write lock since BEGIN IMMEDIATE.
    row = (await session.execute(_with_funnel().where(outreaches.c.campaign_id == campaign_id))).mappings().first()
    return _locked(row) if row is not None else None


async def withdrawn_at(session: AsyncSession, campaign_id: str) -> datetime | None:
    """When the outreach was withdrawn; None when it was not, or is not in the ledger."""
    query = select(outreaches.c.withdrawn_at).where(outreaches.c.campaign_id == campaign_id)
    at: datetime | None = (await session.execute(query)).scalar_one_or_none()
    return at


async def withdraw_outreach(session: AsyncSession, campaign_id: str, at: datetime, *, send_kind: str) -> int:
    """Marks a locked outreach withdrawn at `at` and deletes its funnel row and its send cost (costs of `send_kind`);
    returns that cost in paise, for the rollup to give back."""
    deleted = await session.execute(
        delete(costs)
        .where(costs.c.campaign_id == campaign_id, costs.c.kind == send_kind)
        .returning(costs.c.amount_paise)
    )
    amount = sum(int(row[0]) for row in deleted.all())
    await session.execute(delete(outreach_funnel).where(outreach_funnel.c.campaign_id == campaign_id))
    await session.execute(update(outreaches).where(outreaches.c.campaign_id == campaign_id).values(withdrawn_at=at))
    return amount


def _group_dimensions(outreach: Outreach) -> dict[str, str]:
    return {
        "campaign_key": outreach.campaign_key,
        "programme": programme_of(outreach.campaign_id),
        "trigger_code": outreach.trigger_code,
        "channel": outreach.channel,
        "product_code": outreach.product_code,
        "labels_key": labels_key(outreach.labels),
    }


async def group_id(session: AsyncSession, outreach: Outreach) -> int:
    """The id of the outreach's group (outreach_groups), added the first time an outreach of the group is recorded."""
    dimensions = _group_dimensions(outreach)
    query = select(outreach_groups.c.group_id).where(
        *(outreach_groups.c[name] == value for name, value in dimensions.items())
    )
    found: int | None = (await session.execute(query)).scalar_one_or_none()
    if found is None:
        # A concurrent first outreach of the same group may insert it too: its insert wins, this one adds nothing
        # (after waiting for it on PostgreSQL), and the read below sees the committed row.
        await session.execute(
            upsert_insert(session, outreach_groups)
            .values(**dimensions)
            .on_conflict_do_nothing(index_elements=[outreach_groups.c[name] for name in GROUP_DIMENSIONS])
        )
        found = (await session.execute(query)).scalar_one()
    return found


async def add_outreaches(session: AsyncSession, batch: Sequence[Outreach]) -> list[Outreach]:
    """Records the outreaches and their empty funnels in a few statements: those recorded now, in order; one whose
    campaign ID is in the ledger already (a republished event), or earlier in the batch, is left out."""
    rows = {outreach.campaign_id: outreach for outreach in reversed(batch)}  # the first of a campaign ID wins
    if not rows:
        return []
    statement = (
        upsert_insert(session, outreaches)
        .on_conflict_do_nothing(index_elements=[outreaches.c.campaign_id])
        .returning(outreaches.c.campaign_id)
    )
    # In campaign ID order, and the new groups below in their dimensions' order: two fetches recorded at once (two
    # replicas) then wait for each other's rows in one order, never each for a row the other holds (a deadlock on
    # PostgreSQL, which failed one of them).
    parameters = [
        {**outreach.__dict__, "labels_key": labels_key(outreach.labels)}
        for _, outreach in sorted(rows.items(), key=lambda item: item[0])
    ]
    inserted = set((await session.execute(statement, parameters)).scalars())
    added = [
        outreach for outreach in batch if outreach.campaign_id in inserted and rows[outreach.campaign_id] is outreach
    ]
    by_group = {tuple(_group_dimensions(outreach).values()): outreach for outreach in reversed(added)}
    groups = {key: await group_id(session, by_group[key]) for key in sorted(by_group)}
    funnels = [
        {
            "campaign_id": outreach.campaign_id,
            "group_id": groups[tuple(_group_dimensions(outreach).values())],
            "created_at": outreach.created_at,
        }
        for outreach in added
    ]
    if funnels:
        await session.execute(insert(outreach_funnel), funnels)
    return added


def cost_row(
    campaign_id: str, group: int, kind: str, amount_paise: int, currency: str, at: datetime, ref: str = ""
) -> dict[str, Any]:
    """A costs row, for add_costs."""
    return {
        "campaign_id": campaign_id,
        "group_id": group,
        "kind": kind,
        "amount_paise": amount_paise,
        "currency_code": currency,
        "ref": ref,
        "at": at,
    }


async def add_cost(
    session: AsyncSession,
    campaign_id: str,
    group: int,
    kind: str,
    amount_paise: int,
    currency: str,
    at: datetime,
    ref: str = "",
) -> None:
    await add_costs(session, [cost_row(campaign_id, group, kind, amount_paise, currency, at, ref)])


async def add_costs(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        await session.execute(insert(costs), list(rows))


@dataclass(frozen=True)
class BookedCost:
    """An outreach's send cost as booked: its row (0 while only planned), amount and instant."""

    cost_id: int
    amount_paise: int
    at: datetime


async def send_costs(session: AsyncSession, campaign_ids: Collection[str], send_kind: str) -> dict[str, BookedCost]:
    """The outreaches' send costs (their costs of `send_kind`), by campaign ID; an outreach without one is left out."""
    query = (
        select(costs.c.campaign_id, costs.c.cost_id, costs.c.amount_paise, costs.c.at)
        .where(costs.c.campaign_id.in_(sorted(campaign_ids)), costs.c.kind == send_kind)
        .order_by(costs.c.at.desc())
    )
    # Latest first, so that the earliest is the one kept, were there ever two.
    return {
        row.campaign_id: BookedCost(int(row.cost_id), int(row.amount_paise), row.at)
        for row in (await session.execute(query))
    }


def _unbooked_sends(send_kind: str) -> Any:
    """Outreaches a provider took (their funnel has a sent or delivered time) without a send cost: an outreach a new
    release recorded whose receipt an old one applied (it booked no cost then), while a rollout ran both."""
    funnel = outreach_funnel.c
    sent, delivered = funnel[step_column(SENT)], funnel[step_column(DELIVERED)]
    booked = select(costs.c.cost_id).where(costs.c.campaign_id == funnel.campaign_id, costs.c.kind == send_kind)
    first = case((sent.is_(None), delivered), (delivered.is_(None), sent), (sent <= delivered, sent), else_=delivered)
    return (
        select(funnel.campaign_id, funnel.group_id, outreaches.c.channel, first.label("first_proof"))
        .select_from(outreach_funnel.join(outreaches, outreaches.c.campaign_id == funnel.campaign_id))
        .where(or_(sent.is_not(None), delivered.is_not(None)), ~booked.exists(), outreaches.c.withdrawn_at.is_(None))
    )


async def count_unbooked_sends(session: AsyncSession, send_kind: str) -> int:
    query = select(func.count()).select_from(_unbooked_sends(send_kind).subquery())
    return int((await session.execute(query)).scalar_one())


async def book_unbooked_sends(
    session: AsyncSession, send_kind: str, amounts: Mapping[str, int], currency: str
) -> list[tuple[str, int, datetime]]:
    """Books each unbooked send (_unbooked_sends) its channel's cost at its first proof: (campaign ID, amount,
    instant) of each booked, for the caller's rollup."""
    unbooked = _unbooked_sends(send_kind).subquery()
    amount = case(*((unbooked.c.channel == channel, paise) for channel, paise in sorted(amounts.items())), else_=0)
    statement = (
        insert(costs)
        .from_select(
            ["campaign_id", "group_id", "kind", "amount_paise", "currency_code", "ref", "at"],
            select(
                unbooked.c.campaign_id,
                unbooked.c.group_id,
                literal(send_kind),
                amount,
                literal(currency),
                literal(""),
                unbooked.c.first_proof,
            ),
        )
        .returning(costs.c.campaign_id, costs.c.amount_paise, costs.c.at)
    )
    return [(row[0], int(row[1]), row[2]) for row in await session.execute(statement)]


async def move_costs(session: AsyncSession, instants: Mapping[int, datetime]) -> None:
    """Books each cost (by cost_id) at another instant; moving it between the views' days is the caller's."""
    if instants:
        statement = (
            update(costs)
            .where(costs.c.cost_id == bindparam("moved_id"))
            .values(at=bindparam("moved_at", type_=UtcMicroseconds))
        )
        await session.execute(statement, [{"moved_id": id_, "moved_at": at} for id_, at in instants.items()])


def _earliest(session: AsyncSession, step: str, at: Any) -> Any:
    """The step's first time once `at` is known: the earlier of the two; `at` while the step is not reached yet."""
    column = outreach_funnel.c[step_column(step)]
    # Two-argument MIN() is SQLite's scalar minimum (NULL with a NULL argument); PostgreSQL spells it LEAST().
    earlier = func.least if dialect_of(session) == "postgresql" else func.min
    return func.coalesce(earlier(column, at), at)


async def reach_step(session: AsyncSession, campaign_id: str, step: str, at: datetime) -> None:
    """Marks the funnel step reached; out-of-order events keep the earliest time."""
    at_param = bindparam("at", at, type_=UtcMicroseconds)
    await session.execute(
        update(outreach_funnel)
        .where(outreach_funnel.c.campaign_id == campaign_id)
        .values({step_column(step): _earliest(session, step, at_param)})
    )


async def add_lead(session: AsyncSession, lead: Lead, dedup_key: str | None) -> bool:
    """Records the lead; False when a lead with the same dedup key exists."""
    statement = (
        upsert_insert(session, leads)
        .values(**lead.__dict__, dedup_key=dedup_key)
        .on_conflict_do_nothing(index_elements=[leads.c.dedup_key])
    )
    result = cast(CursorResult[Any], await session.execute(statement))
    return bool(result.rowcount)


_LEAD_COLUMNS = (leads.c.lead_id, leads.c.campaign_id, leads.c.crm_lead_id, leads.c.origin, leads.c.created_at)


async def lead_by_dedup_key(session: AsyncSession, dedup_key: str) -> Lead | None:
    row = (await session.execute(select(*_LEAD_COLUMNS).where(leads.c.dedup_key == dedup_key))).mappings().first()
    return Lead(**row) if row is not None else None


async def first_lead(session: AsyncSession, campaign_id: str) -> Lead | None:
    query = select(*_LEAD_COLUMNS).where(leads.c.campaign_id == campaign_id).order_by(leads.c.lead_id).limit(1)
    row = (await session.execute(query)).mappings().first()
    return Lead(**row) if row is not None else None


async def lead_awaiting_crm_id(session: AsyncSession, campaign_id: str) -> Lead | None:
    """The outreach's first lead made without the CRM's id (a reply's, a support agent's), if any."""
    query = (
        select(*_LEAD_COLUMNS)
        .where(leads.c.campaign_id == campaign_id, leads.c.crm_lead_id == "")
        .order_by(leads.c.lead_id)
        .limit(1)
    )
    row = (await session.execute(query)).mappings().first()
    return Lead(**row) if row is not None else None


async def claim_lead(session: AsyncSession, lead_id: str, crm_lead_id: str, dedup_key: str) -> None:
    """Gives a lead that awaits the CRM's id that id, and its dedup key (crm:<id>): the unique key then refuses the
    same CRM id for another outreach made at the same moment, as it does for a lead made with it."""
    await session.execute(
        update(leads)
        .where(leads.c.lead_id == lead_id, leads.c.crm_lead_id == "")
        .values(crm_lead_id=crm_lead_id, dedup_key=dedup_key)
    )


def _awaiting_crm() -> tuple[Any, ...]:
    """Leads without the CRM's id, on an outreach the CRM has no lead for yet (a reply's lead made before the CRM
    could claim it stays out once the CRM recorded its own)."""
    recorded = aliased(leads)
    return (
        leads.c.crm_lead_id == "",
        ~exists().where(recorded.c.campaign_id == leads.c.campaign_id, recorded.c.crm_lead_id != ""),
    )


async def awaiting_leads(session: AsyncSession) -> tuple[int, datetime | None]:
    """How many leads await the CRM, and when the oldest was made."""
    row = (await session.execute(select(func.count(), func.min(leads.c.created_at)).where(*_awaiting_crm()))).one()
    return int(row[0]), row[1]


@dataclass(frozen=True)
class ListedLead:
    """A lead with the outreach it came from: whom to call, about which offer."""

    lead: Lead
    profile_id: str
    product_code: str
    campaign_key: str


async def list_leads(session: AsyncSession, *, awaiting: bool, after: str | None, limit: int) -> list[ListedLead]:
    """Leads in id order (the order they were made), after the lead id `after`; with `awaiting`, only those the CRM
    has not recorded yet."""
    o = outreaches.c
    query = select(*_LEAD_COLUMNS, o.profile_id, o.product_code, o.campaign_key).join(
        outreaches, o.campaign_id == leads.c.campaign_id
    )
    if awaiting:
        query = query.where(*_awaiting_crm())
    if after is not None:
        query = query.where(leads.c.lead_id > after)
    rows = (await session.execute(query.order_by(leads.c.lead_id).limit(limit))).mappings().all()
    return [
        ListedLead(
            Lead(**{column.name: row[column.name] for column in _LEAD_COLUMNS}),
            row["profile_id"],
            row["product_code"],
            row["campaign_key"],
        )
        for row in rows
    ]


_LOAN_COLUMNS = (
    loans.c.loan_number,
    loans.c.campaign_id,
    loans.c.product_code,
    loans.c.stage,
    loans.c.currency_code,
    loans.c.sanctioned_paise,
    loans.c.disbursed_paise,
    loans.c.applied_at,
    loans.c.sanctioned_at,
)


async def get_loan(session: AsyncSession, loan_number: str) -> Loan | None:
    """The loan, locked for the rest of the transaction on PostgreSQL (SQLite serialises writers anyway)."""
    query = select(*_LOAN_COLUMNS).where(loans.c.loan_number == loan_number).with_for_update()
    row = (await session.execute(query)).mappings().first()
    return Loan(**row) if row is not None else None


async def add_loan(session: AsyncSession, loan: Loan) -> None:
    await session.execute(insert(loans).values(**loan.__dict__))


async def sanction_loan(session: AsyncSession, loan_number: str, amount_paise: int, at: datetime) -> None:
    await session.execute(
        update(loans)
        .where(loans.c.loan_number == loan_number)
        .values(stage="sanctioned", sanctioned_paise=amount_paise, sanctioned_at=at)
    )


async def disburse_loan(
    session: AsyncSession, loan_number: str, campaign_id: str, amount_paise: int, disbursed_at: datetime
) -> str | None:
    """Adds a disbursement to its loan when the loan is sanctioned (or already disbursed) under `campaign_id`, in
    the statement that checks it; returns the loan's product code, or None (nothing changed) when it is not."""
    statement = (
        update(loans)
        .where(
            loans.c.loan_number == loan_number,
            loans.c.campaign_id == campaign_id,
            loans.c.stage.in_((SANCTIONED, DISBURSED)),
        )
        .values(
            stage=DISBURSED,
            disbursed_paise=loans.c.disbursed_paise + amount_paise,
            first_disbursed_at=func.coalesce(loans.c.first_disbursed_at, disbursed_at),
            last_disbursed_at=disbursed_at,
        )
        .returning(loans.c.product_code)
    )
    product_code: str | None = (await session.execute(statement)).scalar_one_or_none()
    return product_code


async def add_disbursement(
    session: AsyncSession,
    *,
    disbursement_id: str,
    loan_number: str,
    campaign_id: str,
    amount_paise: int,
    currency: str,
    disbursed_at: datetime,
    lifetime_revenue_paise: int,
    year1_revenue_paise: int,
    revenue_model: str,
    recorded_at: datetime,
) -> bool:
    """Records the disbursement (its loan's total is disburse_loan's); False, with nothing written, when its
    disbursement_id is already recorded."""
    statement = (
        upsert_insert(session, disbursements)
        .values(
            disbursement_id=disbursement_id,
            loan_number=loan_number,
            campaign_id=campaign_id,
            amount_paise=amount_paise,
            currency_code=currency,
            disbursed_at=disbursed_at,
            lifetime_revenue_paise=lifetime_revenue_paise,
            year1_revenue_paise=year1_revenue_paise,
            revenue_model=revenue_model,
            recorded_at=recorded_at,
        )
        .on_conflict_do_nothing(index_elements=[disbursements.c.disbursement_id])
    )
    return bool(cast(CursorResult[Any], await session.execute(statement)).rowcount)


def _furthest_rank() -> Any:
    """The funnel rank of the furthest step the outreach reached (0 for none), from its outreach_funnel row."""
    return case(
        *((outreach_funnel.c[step_column(step)].is_not(None), funnel_rank(step)) for step in reversed(FUNNEL_STEPS)),
        else_=0,
    )


@functools.cache
def _attribution_with_loans() -> Any:
    """One outreach's money, cost and furthest funnel step (bound as :campaign_id) on every row of its loans (one
    row of NULL loan columns when it has none), in one statement built once: its subqueries cost more to build
    than to run."""
    campaign_id = bindparam("campaign_id", type_=String)

    def total(column: Any, table: Table) -> Any:
        return select(func.coalesce(func.sum(column), 0)).where(table.c.campaign_id == campaign_id).scalar_subquery()

    def money(name: str) -> Any:
        """The total of a money column over the outreach's disbursements and its conversions (same column names)."""
        funded = select(func.coalesce(func.sum(conversions.c[name]), 0)).where(
            conversions.c.campaign_id == campaign_id, FUNDED
        )
        return total(disbursements.c[name], disbursements) + funded.scalar_subquery()

    furthest = select(func.coalesce(func.max(_furthest_rank()), 0)).where(outreach_funnel.c.campaign_id == campaign_id)
    one_row = select(literal(1).label("one")).subquery()
    return (
        select(
            money("amount_paise").label("total_disbursed"),
            money("lifetime_revenue_paise").label("total_lifetime"),
            money("year1_revenue_paise").label("total_year1"),
            total(costs.c.amount_paise, costs).label("total_cost"),
            furthest.scalar_subquery().label("furthest"),
            *_LOAN_COLUMNS,
        )
        .select_from(one_row.outerjoin(loans, loans.c.campaign_id == campaign_id))
        .order_by(loans.c.applied_at, loans.c.loan_number)
    )


async def attribution(session: AsyncSession, campaign_id: str, outreach: Outreach | None = None) -> Attribution | None:
    """The outreach's totals, loans and leads in two set-based queries (three without the `outreach` in hand),
    however many loans, leads and costs it has."""
    outreach = outreach or await get_outreach(session, campaign_id)
    if outreach is None:
        return None
    rows = (await session.execute(_attribution_with_loans(), {"campaign_id": campaign_id})).mappings().all()
    totals = rows[0]
    lead_rows = (
        (
            await session.execute(
                select(leads.c.lead_id, leads.c.campaign_id, leads.c.crm_lead_id, leads.c.origin, leads.c.created_at)
                .where(leads.c.campaign_id == campaign_id)
                .order_by(leads.c.created_at, leads.c.lead_id)
            )
        )
        .mappings()
        .all()
    )
    return Attribution(
        outreach=outreach,
        disbursed_paise=int(totals["total_disbursed"]),
        lifetime_revenue_paise=int(totals["total_lifetime"]),
        year1_revenue_paise=int(totals["total_year1"]),
        cost_paise=int(totals["total_cost"]),
        # A step counts as reached when it or a later one was (rules.FUNNEL_STEPS).
        funnel={step: int(totals["furthest"] >= funnel_rank(step)) for step in FUNNEL_STEPS},
        loans=[
            Loan(**{name: row[name] for name in Loan.__dataclass_fields__})
            for row in rows
            if row["loan_number"] is not None
        ],
        leads=[Lead(**row) for row in lead_rows],
    )


async def add_holdout(
    session: AsyncSession,
    *,
    campaign_key: str,
    run_id: str,
    profile_id: str,
    trigger_code: str,
    product_code: str,
    labels_key: str,
    assigned_at: datetime,
) -> bool:
    """Records a held-out person; False when they were already recorded for this run."""
    statement = (
        upsert_insert(session, holdouts)
        .values(
            campaign_key=campaign_key,
            run_id=run_id,
            profile_id=profile_id,
            trigger_code=trigger_code,
            product_code=product_code,
            labels_key=labels_key,
            assigned_at=assigned_at,
        )
        .on_conflict_do_nothing(index_elements=[holdouts.c.campaign_key, holdouts.c.run_id, holdouts.c.profile_id])
    )
    result = cast(CursorResult[Any], await session.execute(statement))
    return bool(result.rowcount)


async def add_profile_conversion(
    session: AsyncSession,
    *,
    conversion_id: str,
    profile_id: str,
    product_code: str,
    amount_paise: int,
    currency: str,
    occurred_at: datetime,
    recorded_at: datetime,
) -> bool:
    """Records a conversion without a campaign ID; False when its conversion_id is already recorded."""
    statement = (
        upsert_insert(session, profile_conversions)
        .values(
            conversion_id=conversion_id,
            profile_id=profile_id,
            product_code=product_code,
            amount_paise=amount_paise,
            currency_code=currency,
            occurred_at=occurred_at,
            recorded_at=recorded_at,
        )
        .on_conflict_do_nothing(index_elements=[profile_conversions.c.conversion_id])
    )
    result = cast(CursorResult[Any], await session.execute(statement))
    return bool(result.rowcount)


async def last_touch(
    session: AsyncSession, profile_id: str, start: datetime, end: datetime, *, converted_only: bool
) -> str | None:
    """The campaign ID of the person's latest outreach created from `start` to `end` (both inclusive), or None; with
    `converted_only`, only among outreaches that reached the conversion step by `end`."""
    query = select(outreaches.c.campaign_id).where(
        outreaches.c.profile_id == profile_id,
        outreaches.c.created_at >= start,
        outreaches.c.created_at <= end,
        outreaches.c.withdrawn_at.is_(None),
    )
    if converted_only:
        converted_at = outreach_funnel.c[step_column(CONVERTED)]
        query = query.where(
            select(outreach_funnel.c.campaign_id)
            .where(outreach_funnel.c.campaign_id == outreaches.c.campaign_id, converted_at <= end)
            .exists()
        )
    query = query.order_by(outreaches.c.created_at.desc(), outreaches.c.campaign_id.desc()).limit(1)
    campaign_id: str | None = (await session.execute(query)).scalar_one_or_none()
    return campaign_id


async def add_conversion(session: AsyncSession, **row: Any) -> bool:
    """Records a conversion (a row of the conversions table); False, with nothing written, when its conversion_id is
    already recorded."""
    statement = (
        upsert_insert(session, conversions)
        .values(**row)
        .on_conflict_do_nothing(index_elements=[conversions.c.conversion_id])
    )
    return bool(cast(CursorResult[Any], await session.execute(statement)).rowcount)


async def add_fixed_cost(session: AsyncSession, shares: Sequence[Mapping[str, Any]], **row: Any) -> None:
    """Records a fixed cost and its shares (rows of fixed_cost_shares without the cost_id)."""
    await session.execute(insert(fixed_costs).values(**row))
    await session.execute(insert(fixed_cost_shares), [{**share, "cost_id": row["cost_id"]} for share in shares])


# Set-based forms of the disbursement path, for a batch of disbursements applied in one transaction
# (AttributionApi._record_disbursements, through plumbing's GroupCommit): a handful of statements however many
# disbursements the batch holds.


async def lock_outreaches(session: AsyncSession, campaign_ids: Collection[str]) -> dict[str, LockedOutreach]:
    """lock_outreach for many outreaches at once; the ones not in the ledger are left out."""
    if not campaign_ids:
        return {}
    ordered = sorted(campaign_ids)
    if dialect_of(session) == "postgresql":
        # In campaign ID order, as every batch takes them, so two batches cannot wait for each other's rows.
        await session.execute(
            select(outreaches.c.campaign_id)
            .where(outreaches.c.campaign_id.in_(ordered))
            .order_by(outreaches.c.campaign_id)
            .with_for_update()
        )
    query = _with_funnel().where(outreaches.c.campaign_id.in_(ordered))
    return {row["campaign_id"]: _locked(row) for row in (await session.execute(query)).mappings()}


async def get_loans(session: AsyncSession, loan_numbers: Collection[str]) -> dict[str, Loan]:
    """The loans, locked for the rest of the transaction on PostgreSQL (in loan number order)."""
    if not loan_numbers:
        return {}
    query = (
        select(*_LOAN_COLUMNS)
        .where(loans.c.loan_number.in_(sorted(loan_numbers)))
        .order_by(loans.c.loan_number)
        .with_for_update()
    )
    return {row["loan_number"]: Loan(**row) for row in (await session.execute(query)).mappings()}


async def recorded_disbursements(session: AsyncSession, disbursement_ids: Collection[str]) -> set[str]:
    """Which of the disbursement ids are already in the ledger."""
    if not disbursement_ids:
        return set()
    query = select(disbursements.c.disbursement_id).where(disbursements.c.disbursement_id.in_(list(disbursement_ids)))
    return set((await session.execute(query)).scalars())


async def add_disbursements(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Records disbursements (rows of the disbursements table) and adds each to its loan's total; one loan per row."""
    if not rows:
        return
    await session.execute(insert(disbursements), list(rows))
    await session.execute(
        update(loans)
        .where(loans.c.loan_number == bindparam("loan"))
        .values(
            stage=DISBURSED,
            disbursed_paise=loans.c.disbursed_paise + bindparam("amount"),
            first_disbursed_at=func.coalesce(loans.c.first_disbursed_at, bindparam("at", type_=UtcDateTime)),
            last_disbursed_at=bindparam("at", type_=UtcDateTime),
        ),
        [{"loan": row["loan_number"], "amount": row["amount_paise"], "at": row["disbursed_at"]} for row in rows],
    )


async def reach_steps(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """reach_step for many (campaign_id, step, first_at) rows, in one statement per step."""
    by_step: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_step.setdefault(row["step"], []).append({"outreach": row["campaign_id"], "at": row["first_at"]})
    for step, parameters in sorted(by_step.items()):
        statement = (
            update(outreach_funnel)
            .where(outreach_funnel.c.campaign_id == bindparam("outreach"))
            .values({step_column(step): _earliest(session, step, bindparam("at", type_=UtcMicroseconds))})
        )
        await session.execute(statement, parameters)


async def attributions(session: AsyncSession, outreaches_by_id: Mapping[str, Outreach]) -> dict[str, Attribution]:
    """attribution() for many outreaches in five set-based queries."""
    ids = sorted(outreaches_by_id)
    if not ids:
        return {}

    paid_in = union_all(
        *(
            select(
                table.c.campaign_id,
                table.c.amount_paise,
                table.c.lifetime_revenue_paise,
                table.c.year1_revenue_paise,
            ).where(table.c.campaign_id.in_(ids), *condition)
            for table, condition in ((disbursements, ()), (conversions, (FUNDED,)))
        )
    ).subquery("paid_in")
    money = {
        row.campaign_id: row
        for row in (
            await session.execute(
                select(
                    paid_in.c.campaign_id,
                    func.sum(paid_in.c.amount_paise).label("disbursed"),
                    func.sum(paid_in.c.lifetime_revenue_paise).label("lifetime"),
                    func.sum(paid_in.c.year1_revenue_paise).label("year1"),
                ).group_by(paid_in.c.campaign_id)
            )
        ).all()
    }
    cost_query = (
        select(costs.c.campaign_id, func.sum(costs.c.amount_paise))
        .where(costs.c.campaign_id.in_(ids))
        .group_by(costs.c.campaign_id)
    )
    cost = {campaign_id: total for campaign_id, total in (await session.execute(cost_query)).tuples()}
    furthest_query = select(outreach_funnel.c.campaign_id, _furthest_rank()).where(
        outreach_funnel.c.campaign_id.in_(ids)
    )
    furthest = {campaign_id: rank for campaign_id, rank in (await session.execute(furthest_query)).tuples()}
    loans_of: dict[str, list[Loan]] = {campaign_id: [] for campaign_id in ids}
    loan_query = (
        select(*_LOAN_COLUMNS).where(loans.c.campaign_id.in_(ids)).order_by(loans.c.applied_at, loans.c.loan_number)
    )
    for row in (await session.execute(loan_query)).mappings():
        loans_of[row["campaign_id"]].append(Loan(**row))
    leads_of: dict[str, list[Lead]] = {campaign_id: [] for campaign_id in ids}
    lead_query = (
        select(leads.c.lead_id, leads.c.campaign_id, leads.c.crm_lead_id, leads.c.origin, leads.c.created_at)
        .where(leads.c.campaign_id.in_(ids))
        .order_by(leads.c.created_at, leads.c.lead_id)
    )
    for row in (await session.execute(lead_query)).mappings():
        leads_of[row["campaign_id"]].append(Lead(**row))
    result = {}
    for campaign_id in ids:
        paid = money.get(campaign_id)
        reached = int(furthest.get(campaign_id) or 0)
        result[campaign_id] = Attribution(
            outreach=outreaches_by_id[campaign_id],
            disbursed_paise=int(paid.disbursed) if paid else 0,
            lifetime_revenue_paise=int(paid.lifetime) if paid else 0,
            year1_revenue_paise=int(paid.year1) if paid else 0,
            cost_paise=int(cost.get(campaign_id) or 0),
            funnel={step: int(reached >= funnel_rank(step)) for step in FUNNEL_STEPS},
            loans=loans_of[campaign_id],
            leads=leads_of[campaign_id],
        )
    return result
