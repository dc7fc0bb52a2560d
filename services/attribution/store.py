"""The attribution ledger: tables of this service's own database and the queries over them."""

from dataclasses import dataclass
from datetime import datetime
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
    case,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import UtcDateTime, upsert_insert
from plumbing.idempotency import idempotency_table
from plumbing.outbox import inbox_table, outbox_table
from services.attribution.reporting import COUNTER_COLUMNS, labels_key
from services.attribution.rules import FUNNEL_STEPS, funnel_rank

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
    Column("profile_id", String(100), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("trigger_code", String(20), nullable=False, index=True),
    Column("product_code", String(100), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("category", String(60), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # The labels as one LIKE-searchable value (reporting.labels_key), so views and lift filter by label in SQL.
    Column("labels_key", String(1000), nullable=False, server_default=""),
    Index("ix_outreaches_profile_id", "profile_id"),
)

funnel_steps = Table(
    "funnel_steps",
    metadata,
    Column("campaign_id", String(100), ForeignKey("outreaches.campaign_id"), nullable=False),
    Column("step", String(20), nullable=False),
    Column("first_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("campaign_id", "step"),
)

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
    Column("at", UtcDateTime, nullable=False),
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


ROLLUP_KEY = ("day", "campaign_key", "programme", "trigger_code", "channel", "product_code", "labels_key")
"""A rollup row's identity: the local day something happened and the outreach's dimensions."""

rollup = Table(
    "rollup",
    metadata,
    # YYYY-MM-DD at the report's UTC offset: sorts and compares as text on every backend.
    Column("day", String(10), nullable=False),
    Column("campaign_key", String(100), nullable=False),
    Column("programme", String(20), nullable=False),
    Column("trigger_code", String(20), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("product_code", String(100), nullable=False),
    Column("labels_key", String(1000), nullable=False),
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
    Column("profile_id", String(100), nullable=False, index=True),
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
    Column("profile_id", String(100), nullable=False, index=True),
    Column("product_code", String(100), nullable=False),
    Column("amount_paise", Money, nullable=False),
    Column("currency_code", String(3), nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
)
"""Conversions without a campaign ID: how lift sees held-out people convert anyway."""


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


async def get_outreach(session: AsyncSession, campaign_id: str, *, lock: bool = False) -> Outreach | None:
    """The outreach; with `lock`, its row stays locked for the rest of the transaction on PostgreSQL (SQLite
    serialises writers anyway), so one outreach's funnel moves one event at a time."""
    query = select(*_OUTREACH_COLUMNS).where(outreaches.c.campaign_id == campaign_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).mappings().first()
    return Outreach(**row) if row is not None else None


async def add_outreach(session: AsyncSession, outreach: Outreach) -> bool:
    """Records the outreach; False when its campaign ID is already in the ledger (a republished event)."""
    statement = (
        upsert_insert(session, outreaches)
        .values(**outreach.__dict__, labels_key=labels_key(outreach.labels))
        .on_conflict_do_nothing(index_elements=[outreaches.c.campaign_id])
    )
    result = cast(CursorResult[Any], await session.execute(statement))
    return bool(result.rowcount)


async def add_cost(
    session: AsyncSession, campaign_id: str, kind: str, amount_paise: int, currency: str, at: datetime, ref: str = ""
) -> None:
    await session.execute(
        insert(costs).values(
            campaign_id=campaign_id, kind=kind, amount_paise=amount_paise, currency_code=currency, ref=ref, at=at
        )
    )


async def reach_step(session: AsyncSession, campaign_id: str, step: str, at: datetime) -> None:
    """Marks the funnel step reached; out-of-order events keep the earliest time."""
    statement = upsert_insert(session, funnel_steps).values(campaign_id=campaign_id, step=step, first_at=at)
    # Two-argument MIN() is SQLite's scalar minimum; PostgreSQL spells it LEAST().
    earliest = func.least if session.bind is not None and session.bind.dialect.name == "postgresql" else func.min
    statement = statement.on_conflict_do_update(
        index_elements=[funnel_steps.c.campaign_id, funnel_steps.c.step],
        set_={"first_at": earliest(funnel_steps.c.first_at, statement.excluded.first_at)},
    )
    await session.execute(statement)


async def add_lead(session: AsyncSession, lead: Lead, dedup_key: str | None) -> bool:
    """Records the lead; False when a lead with the same dedup key exists."""
    statement = (
        upsert_insert(session, leads)
        .values(**lead.__dict__, dedup_key=dedup_key)
        .on_conflict_do_nothing(index_elements=[leads.c.dedup_key])
    )
    result = cast(CursorResult[Any], await session.execute(statement))
    return bool(result.rowcount)


async def lead_by_dedup_key(session: AsyncSession, dedup_key: str) -> Lead | None:
    row = (
        (
            await session.execute(
                select(
                    leads.c.lead_id, leads.c.campaign_id, leads.c.crm_lead_id, leads.c.origin, leads.c.created_at
                ).where(leads.c.dedup_key == dedup_key)
            )
        )
        .mappings()
        .first()
    )
    return Lead(**row) if row is not None else None


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


async def disbursement_exists(session: AsyncSession, disbursement_id: str) -> bool:
    query = select(disbursements.c.disbursement_id).where(disbursements.c.disbursement_id == disbursement_id)
    return (await session.execute(query)).first() is not None


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
) -> None:
    """Records the disbursement and adds it to its loan's total, in one transaction with the caller's."""
    await session.execute(
        insert(disbursements).values(
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
    )
    await session.execute(
        update(loans)
        .where(loans.c.loan_number == loan_number)
        .values(
            stage="disbursed",
            disbursed_paise=loans.c.disbursed_paise + amount_paise,
            first_disbursed_at=func.coalesce(loans.c.first_disbursed_at, disbursed_at),
            last_disbursed_at=disbursed_at,
        )
    )


async def attribution(session: AsyncSession, campaign_id: str) -> Attribution | None:
    """The outreach's totals in five set-based queries, however many loans, leads and costs it has."""
    outreach = await get_outreach(session, campaign_id)
    if outreach is None:
        return None

    def total(column: Any, table: Table) -> Any:
        return select(func.coalesce(func.sum(column), 0)).where(table.c.campaign_id == campaign_id).scalar_subquery()

    money = (
        await session.execute(
            select(
                total(disbursements.c.amount_paise, disbursements).label("disbursed"),
                total(disbursements.c.lifetime_revenue_paise, disbursements).label("lifetime"),
                total(disbursements.c.year1_revenue_paise, disbursements).label("year1"),
                total(costs.c.amount_paise, costs).label("cost"),
            )
        )
    ).one()

    rank = case({step: funnel_rank(step) for step in FUNNEL_STEPS}, value=funnel_steps.c.step, else_=0)
    funnel_query = select(
        *(
            func.coalesce(func.max(case((rank >= funnel_rank(step), 1), else_=0)), 0).label(step)
            for step in FUNNEL_STEPS
        )
    ).where(funnel_steps.c.campaign_id == campaign_id)
    funnel_row = (await session.execute(funnel_query)).mappings().one()

    loan_rows = (
        (
            await session.execute(
                select(*_LOAN_COLUMNS)
                .where(loans.c.campaign_id == campaign_id)
                .order_by(loans.c.applied_at, loans.c.loan_number)
            )
        )
        .mappings()
        .all()
    )
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
        disbursed_paise=int(money.disbursed),
        lifetime_revenue_paise=int(money.lifetime),
        year1_revenue_paise=int(money.year1),
        cost_paise=int(money.cost),
        funnel={step: int(funnel_row[step]) for step in FUNNEL_STEPS},
        loans=[Loan(**row) for row in loan_rows],
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
