"""The views: rollup rows kept in each ledger write's transaction, the reports read from them, lift and recompute."""

import asyncio
import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Date, and_, case, cast, exists, func, literal, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from plumbing.db import dialect_of, upsert_insert
from services.attribution import store
from services.attribution.reporting import (
    COUNTER_COLUMNS,
    LABEL_SEPARATOR,
    LAG_COLUMNS,
    Totals,
    funnel_column,
    funnel_levels,
    labels_of,
    lag_bucket,
    local_day,
    programme_of,
)
from services.attribution.rules import CONVERTED, FUNNEL_STEPS, funnel_rank

RollupKey = tuple[str, ...]
"""A rollup row's identity, in store.ROLLUP_KEY order."""

DIMENSIONS = ("trigger_code", "campaign_key", "programme", "labels_key", "channel", "product_code")


@dataclass(frozen=True)
class ReportFilter:
    """Which rollup rows a view sums; empty values do not filter. Days are inclusive, YYYY-MM-DD."""

    start_date: str = ""
    end_date: str = ""
    labels: tuple[str, ...] = ()
    trigger_code: str = ""
    campaign_key: str = ""
    programme: str = ""
    channel: str = ""
    product_code: str = ""


def _escaped_like(label: str) -> str:
    escaped = label.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{LABEL_SEPARATOR}{escaped}{LABEL_SEPARATOR}%"


def _dimension_conditions(columns: Any, report_filter: ReportFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    for name in ("trigger_code", "campaign_key", "programme", "channel", "product_code"):
        value = getattr(report_filter, name)
        if value and name in columns:
            conditions.append(columns[name] == value)
    if report_filter.labels:
        conditions.append(
            or_(*(columns["labels_key"].like(_escaped_like(label), escape="\\") for label in report_filter.labels))
        )
    return conditions


class Rollup:
    """Adds a ledger write's effect to the rollup rows, in the caller's transaction.

    Every count lands on the local day the thing happened: an outreach on its creation day, a cost on
    the day it was booked, a disbursement's money on its disbursement day, each funnel level on the day
    the outreach first reached it. A view over a period is then a plain sum of rows.
    """

    def __init__(self, utc_offset_minutes: int) -> None:
        self.utc_offset_minutes = utc_offset_minutes
        self._upserts: dict[str, Any] = {}

    def day(self, at: datetime) -> str:
        return local_day(at, self.utc_offset_minutes)

    def _upsert(self, session: AsyncSession) -> Any:
        """One additive upsert of every counter, built once per dialect: rebuilding its two dozen column
        expressions on each write cost more than running it."""
        dialect = dialect_of(session)
        if dialect not in self._upserts:
            statement = upsert_insert(session, store.rollup)
            # Concurrent writers on one row serialise on its row lock (PostgreSQL) or on the database write
            # lock (SQLite); neither reads a stale total.
            self._upserts[dialect] = statement.on_conflict_do_update(
                index_elements=[store.rollup.c[name] for name in store.ROLLUP_KEY],
                set_={column: store.rollup.c[column] + statement.excluded[column] for column in COUNTER_COLUMNS},
            )
        return self._upserts[dialect]

    async def add(self, session: AsyncSession, outreach: store.Outreach, at: datetime, **deltas: int) -> None:
        await self.apply(session, outreach, [(at, deltas)])

    async def apply(
        self, session: AsyncSession, outreach: store.Outreach, deltas: Iterable[tuple[datetime, Mapping[str, int]]]
    ) -> None:
        """Adds each instant's counters to the outreach's rollup row of that instant's local day, in one statement."""
        await self.apply_many(session, [(outreach, deltas)])

    async def apply_many(
        self,
        session: AsyncSession,
        changes: Iterable[tuple[store.Outreach, Iterable[tuple[datetime, Mapping[str, int]]]]],
    ) -> None:
        """apply() for many outreaches in one statement; changes that land on the same rollup row are summed first."""
        by_key: dict[RollupKey, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTER_COLUMNS, 0))
        for outreach, deltas in changes:
            dimensions = (
                outreach.campaign_key,
                programme_of(outreach.campaign_id),
                outreach.trigger_code,
                outreach.channel,
                outreach.product_code,
                store.labels_key(outreach.labels),
            )
            for at, counters_at in deltas:
                unknown = counters_at.keys() - set(COUNTER_COLUMNS)
                if unknown:
                    raise ValueError(f"not rollup counters: {sorted(unknown)}")
                counters = by_key[(self.day(at), *dimensions)]
                for column, delta in counters_at.items():
                    counters[column] += delta
        await self.apply_rows(session, by_key)

    async def apply_rows(self, session: AsyncSession, by_key: Mapping[RollupKey, Mapping[str, int]]) -> None:
        """Adds counters to rollup rows named by their whole key (store.ROLLUP_KEY), in one statement."""
        # In key order, so concurrent transactions touch shared rollup rows in the same order (no deadlock).
        rows = [
            {**dict(zip(store.ROLLUP_KEY, key, strict=True)), **dict.fromkeys(COUNTER_COLUMNS, 0), **counters}
            for key, counters in sorted(by_key.items())
            if any(counters.values())
        ]
        if rows:
            await session.execute(self._upsert(session), rows)


@dataclass(frozen=True)
class OutreachGroup:
    """A campaign's outreaches that share every rollup dimension, and how many there are."""

    programme: str
    trigger_code: str
    channel: str
    product_code: str
    labels_key: str
    outreaches: int


async def campaign_groups(session: AsyncSession, campaign_key: str) -> list[OutreachGroup]:
    """The campaign's outreaches grouped by the rollup's dimensions, in one grouped query (a fixed cost's shares)."""
    o = store.outreaches
    programme = _programme(session).label("programme")
    dims = (programme, o.c.trigger_code, o.c.channel, o.c.product_code, o.c.labels_key)
    query = (
        select(*dims, func.count().label("outreaches"))
        .where(o.c.campaign_key == campaign_key)
        .group_by(*dims)
        .order_by(*dims)
    )
    return [OutreachGroup(**row) for row in (await session.execute(query)).mappings()]


def funnel_moves(
    outreach: store.Outreach, before: Mapping[str, datetime], after: Mapping[str, datetime]
) -> dict[datetime, dict[str, int]]:
    """The rollup deltas of one outreach's funnel changing from `before` to `after` (first time of each step).

    Each level whose first time changed leaves its old instant's day and lands on the new one; so does the
    conversion's lag bucket.
    """
    moves: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    old_levels, new_levels = funnel_levels(before), funnel_levels(after)
    for step in FUNNEL_STEPS:
        old, new = old_levels.get(step), new_levels.get(step)
        if old == new:
            continue
        if old is not None:
            moves[old][funnel_column(step)] -= 1
        if new is not None:
            moves[new][funnel_column(step)] += 1
        if step == CONVERTED:
            if old is not None:
                moves[old][LAG_COLUMNS[lag_bucket(outreach.created_at, old)]] -= 1
            if new is not None:
                moves[new][LAG_COLUMNS[lag_bucket(outreach.created_at, new)]] += 1
    return {at: dict(deltas) for at, deltas in moves.items()}


@functools.cache
def _sums() -> tuple[Any, ...]:
    """SUM of every counter, built once: building two dozen labelled functions cost more than a report's queries."""
    return tuple(func.coalesce(func.sum(store.rollup.c[column]), 0).label(column) for column in COUNTER_COLUMNS)


def _rollup_where(report_filter: ReportFilter) -> list[ColumnElement[bool]]:
    columns = store.rollup.c
    conditions = _dimension_conditions(columns, report_filter)
    if report_filter.start_date:
        conditions.append(columns.day >= report_filter.start_date)
    if report_filter.end_date:
        conditions.append(columns.day <= report_filter.end_date)
    return conditions


@dataclass
class Report:
    total: Totals
    rows: dict[str, Totals] = field(default_factory=dict)
    trend: dict[str, Totals] = field(default_factory=dict)


async def report(session: AsyncSession, report_filter: ReportFilter, dimension: str) -> Report:
    """One group per value of `dimension` and one point per day, in two aggregate queries; the totals are the sum
    of the days (every rollup row is on exactly one day)."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}")
    where = _rollup_where(report_filter)
    result = Report(Totals())

    group = store.rollup.c[dimension]
    for row in (await session.execute(select(group.label("key"), *_sums()).where(*where).group_by(group))).mappings():
        # A labels_key group is a set of labels: its figures count under each of them.
        keys = labels_of(row["key"]) if dimension == "labels_key" else [row["key"]]
        for key in keys:
            if dimension == "labels_key" and report_filter.labels and key not in report_filter.labels:
                continue
            result.rows.setdefault(key, Totals()).add(row)

    day = store.rollup.c.day
    trend_query = select(day.label("key"), *_sums()).where(*where).group_by(day).order_by(day)
    for row in (await session.execute(trend_query)).mappings():
        result.trend.setdefault(row["key"], Totals()).add(row)
        result.total.add(row)
    return result


@dataclass(frozen=True)
class LiftCounts:
    treated: int
    treated_conversions: int
    held_out: int
    held_out_conversions: int


async def lift_counts(session: AsyncSession, report_filter: ReportFilter, utc_offset_minutes: int) -> LiftCounts:
    """Outreaches against holdouts created in the period, and how many of each converted.

    Intention to treat: a reached person converted when the outreach was disbursed on, or when a
    conversion without a campaign ID of the offered product came after the outreach; a held-out person
    converted when such a conversion came after the hold-out.
    """
    o, h, p = store.outreaches, store.holdouts, store.profile_conversions
    start, end = _period_instants(report_filter, utc_offset_minutes)

    def period(column: Any) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if start is not None:
            conditions.append(column >= start)
        if end is not None:
            conditions.append(column < end)
        return conditions

    outreach_columns: dict[str, Any] = dict(o.c)
    outreach_columns["programme"] = _programme(session)
    outreach_filter = _dimension_conditions(outreach_columns, report_filter) + period(o.c.created_at)
    disbursed = exists().where(
        and_(store.funnel_steps.c.campaign_id == o.c.campaign_id, store.funnel_steps.c.step == CONVERTED)
    )
    treated_converted = or_(
        disbursed,
        exists().where(
            and_(
                p.c.profile_id == o.c.profile_id,
                p.c.product_code == o.c.product_code,
                p.c.occurred_at >= o.c.created_at,
            )
        ),
    )
    treated = (await session.execute(select(func.count()).select_from(o).where(*outreach_filter))).scalar_one()
    treated_conversions = (
        await session.execute(select(func.count()).select_from(o).where(*outreach_filter, treated_converted))
    ).scalar_one()

    holdout_filter = _dimension_conditions(dict(h.c), report_filter) + period(h.c.assigned_at)
    if report_filter.channel:
        # A held-out person was reached on no channel: a channel filter leaves the control group empty.
        holdout_filter.append(literal(False))
    held_converted = exists().where(
        and_(p.c.profile_id == h.c.profile_id, p.c.product_code == h.c.product_code, p.c.occurred_at >= h.c.assigned_at)
    )
    held_out = (await session.execute(select(func.count()).select_from(h).where(*holdout_filter))).scalar_one()
    held_out_conversions = (
        await session.execute(select(func.count()).select_from(h).where(*holdout_filter, held_converted))
    ).scalar_one()
    return LiftCounts(int(treated), int(treated_conversions), int(held_out), int(held_out_conversions))


def _period_instants(report_filter: ReportFilter, utc_offset_minutes: int) -> tuple[datetime | None, datetime | None]:
    """The UTC instants the filter's local days start and end at."""
    offset = timedelta(minutes=utc_offset_minutes)

    def midnight(day: str) -> datetime:
        return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC) - offset

    start = midnight(report_filter.start_date) if report_filter.start_date else None
    end = midnight(report_filter.end_date) + timedelta(days=1) if report_filter.end_date else None
    return start, end


def _programme(session: AsyncSession) -> Any:
    """reporting.programme_of in SQL: the campaign ID up to its first "-", or all of it without one."""
    campaign_id = store.outreaches.c.campaign_id
    if dialect_of(session) == "postgresql":
        return func.split_part(campaign_id, "-", 1)
    dash = func.instr(campaign_id, "-")
    return case((dash == 0, campaign_id), else_=func.substr(campaign_id, 1, dash - 1))


def _day_expression(session: AsyncSession, column: Any, utc_offset_minutes: int) -> Any:
    """The local day of a timestamp column, as YYYY-MM-DD text, computed by the database."""
    if dialect_of(session) == "postgresql":
        shifted = func.timezone("UTC", column) + timedelta(minutes=utc_offset_minutes)
        return func.to_char(cast(shifted, Date), "YYYY-MM-DD")
    return func.date(column, f"{utc_offset_minutes:+d} minutes")


SessionFactory = Callable[[], AbstractAsyncContextManager[AsyncSession]]
"""Opens a read session that sees the same snapshot of the database as the caller's."""


async def recompute(
    session: AsyncSession, utc_offset_minutes: int, *, side: SessionFactory | None = None
) -> dict[RollupKey, dict[str, int]]:
    """Every rollup row as the ledger says it should be, in five set-based queries over the ledger's tables.

    Returns {rollup key: {counter: value}} with only non-zero counters. Each pass groups in the database by the
    outreach's dimensions and local days, never returning a row per outreach (a converted outreach is its own group,
    for its exact lag: 50k in a month). With `side`, the cost and money passes run on a second connection while the
    funnel pass runs on `session`.
    """
    o = store.outreaches
    dims = (
        o.c.campaign_key,
        _programme(session).label("programme"),
        o.c.trigger_code,
        o.c.channel,
        o.c.product_code,
        o.c.labels_key,
    )
    rows: dict[RollupKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def day_of(column: Any, name: str = "day") -> Any:
        return _day_expression(session, column, utc_offset_minutes).label(name)

    async def collect(on: AsyncSession, day: Any, source: Any, sums: Mapping[str, Any]) -> None:
        """Adds one pass grouped by day and the outreach's dimensions to `rows`."""
        query = select(day, *dims, *(value.label(name) for name, value in sums.items())).select_from(source)
        for row in (await on.execute(query.group_by(day, *dims))).mappings():
            key = (str(row["day"]), *(str(row[d.name]) for d in dims))
            for name in sums:
                rows[key][name] += int(row[name] or 0)

    async def funnel_pass(on: AsyncSession) -> None:
        # 1. Sends, the funnel and lag in one pass over the outreaches. Each outreach's steps side by side (one row per
        # outreach), grouped by its dimensions, its creation day and the local day of each step: outreaches that moved
        # alike share a row, and the funnel's levels (a level's day is the earliest of its step's and every later one's,
        # reporting.funnel_levels; local days order as instants do) are unpivoted here from far fewer rows than steps.
        f = store.funnel_steps
        step_times = (
            select(
                f.c.campaign_id,
                *(func.max(case((f.c.step == step, f.c.first_at))).label(step) for step in FUNNEL_STEPS),
            )
            .group_by(f.c.campaign_id)
            .subquery("step_times")
        )
        converted_steps = FUNNEL_STEPS[funnel_rank(CONVERTED) - 1 :]
        converted = or_(*(step_times.c[step].is_not(None) for step in converted_steps))
        # A converted outreach keeps its instants, for its lag bucket; every other one groups by days alone.
        exact = (
            case((converted, o.c.created_at)).label("created_at"),
            *(case((converted, step_times.c[step])).label(f"at_{step}") for step in converted_steps),
        )
        step_days = tuple(day_of(step_times.c[step], f"day_{step}") for step in FUNNEL_STEPS)
        sent_day = day_of(o.c.created_at)
        funnel_query = (
            select(sent_day, *dims, *step_days, *exact, func.count().label("outreaches"))
            .select_from(o.outerjoin(step_times, step_times.c.campaign_id == o.c.campaign_id))
            .group_by(sent_day, *dims, *step_days, *exact)
        )
        for row in (await on.execute(funnel_query)).mappings():
            dimensions = tuple(str(row[d.name]) for d in dims)
            outreaches = int(row["outreaches"])
            rows[(str(row["day"]), *dimensions)]["sent"] += outreaches
            earliest: str | None = None
            for step in reversed(FUNNEL_STEPS):
                day = row[f"day_{step}"]
                if day is not None and (earliest is None or str(day) < earliest):
                    earliest = str(day)
                if earliest is not None:
                    rows[(earliest, *dimensions)][funnel_column(step)] += outreaches
            if row["created_at"] is not None:
                converted_at = min(row[f"at_{step}"] for step in converted_steps if row[f"at_{step}"] is not None)
                key = (local_day(converted_at, utc_offset_minutes), *dimensions)
                rows[key][LAG_COLUMNS[lag_bucket(row["created_at"], converted_at)]] += outreaches

    async def money_passes(on: AsyncSession) -> None:
        # 2. Costs on the day each was booked.
        c = store.costs
        await collect(
            on,
            day_of(c.c.at),
            c.join(o, o.c.campaign_id == c.c.campaign_id),
            {"cost_paise": func.sum(c.c.amount_paise)},
        )
        # 2b. Fixed costs on the day each was booked, by the shares stored with them.
        fixed, shares = store.fixed_costs, store.fixed_cost_shares
        fixed_key = (fixed.c.day, fixed.c.campaign_key, *(shares.c[name] for name in store.ROLLUP_KEY[2:]))
        fixed_query = (
            select(*fixed_key, func.sum(shares.c.amount_paise).label("cost_paise"))
            .select_from(shares.join(fixed, fixed.c.cost_id == shares.c.cost_id))
            .group_by(*fixed_key)
        )
        for row in (await on.execute(fixed_query)).mappings():
            rows[tuple(str(row[name]) for name in store.ROLLUP_KEY)]["cost_paise"] += int(row["cost_paise"])
        # 3. Money on its disbursement day, and an attributed priced conversion's on the day it happened.
        d, v = store.disbursements, store.conversions
        for paid_at, source in (
            (d.c.disbursed_at, d.join(o, o.c.campaign_id == d.c.campaign_id)),
            (v.c.occurred_at, v.join(o, and_(o.c.campaign_id == v.c.campaign_id, store.FUNDED))),
        ):
            await collect(
                on,
                day_of(paid_at),
                source,
                {
                    "disbursed_paise": func.sum(paid_at.table.c.amount_paise),
                    "lifetime_paise": func.sum(paid_at.table.c.lifetime_revenue_paise),
                    "year1_paise": func.sum(paid_at.table.c.year1_revenue_paise),
                },
            )

    if side is None:
        await _tune_for_recompute(session)
        await funnel_pass(session)
        await money_passes(session)
    else:

        async def on_side() -> None:
            async with side() as other:
                await _tune_for_recompute(other)
                await money_passes(other)

        await _tune_for_recompute(session)
        await asyncio.gather(funnel_pass(session), on_side())
    return {key: {name: value for name, value in counters.items() if value} for key, counters in rows.items()}


async def _tune_for_recompute(session: AsyncSession) -> None:
    if dialect_of(session) == "postgresql":
        # Hashing 2.6M steps by outreach takes ~213 MB at 1M outreaches; the 4 MB default would spill it to disk.
        await session.execute(text("SET LOCAL work_mem = '256MB'"))


async def stored(session: AsyncSession) -> dict[RollupKey, dict[str, int]]:
    """Every rollup row as stored, with only non-zero counters."""
    result: dict[RollupKey, dict[str, int]] = {}
    for row in (await session.execute(select(store.rollup))).mappings():
        key = tuple(str(row[name]) for name in store.ROLLUP_KEY)
        counters = {name: int(row[name]) for name in COUNTER_COLUMNS if row[name]}
        if counters:
            result[key] = counters
    return result
