"""The views: rollup rows kept in each ledger write's transaction, the reports read from them, lift and recompute."""

import asyncio
import functools
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    Integer,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from plumbing.db import dialect_of, upsert_insert
from services.attribution import store
from services.attribution.reporting import (
    COUNTER_COLUMNS,
    LABEL_SEPARATOR,
    LAG_BUCKET_DAYS,
    LAG_COLUMNS,
    Totals,
    day_of_number,
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
        .where(o.c.campaign_key == campaign_key, o.c.withdrawn_at.is_(None))
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
    outreach_filter = [
        *_dimension_conditions(outreach_columns, report_filter),
        *period(o.c.created_at),
        o.c.withdrawn_at.is_(None),
    ]
    funnel = store.outreach_funnel
    disbursed = exists().where(
        and_(funnel.c.campaign_id == o.c.campaign_id, funnel.c[store.step_column(CONVERTED)].is_not(None))
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


def _local_date(session: AsyncSession, column: Any, utc_offset_minutes: int) -> Any:
    """The local day of a timestamp column, computed by the database: a date on PostgreSQL (grouped as 4 bytes rather
    than formatted a million times), YYYY-MM-DD text on SQLite; str() of either is YYYY-MM-DD."""
    if dialect_of(session) == "postgresql":
        return cast(func.timezone("UTC", column) + timedelta(minutes=utc_offset_minutes), Date)
    return func.date(column, f"{utc_offset_minutes:+d} minutes")


_EARLY_STEPS = 3
"""How many of the funnel's first steps (sent, delivered, opened) most outreaches stop within: the recompute groups
those outreaches by these steps' days alone."""


def _earliest_of(session: AsyncSession, columns: list[Any]) -> Any:
    """The earliest non-NULL of the columns (NULL when all are): LEAST() on PostgreSQL; SQLite's scalar MIN() is NULL
    with a NULL argument, so it is folded pairwise with COALESCE."""
    if dialect_of(session) == "postgresql":
        return func.least(*columns)
    earliest = columns[0]
    for column in columns[1:]:
        earliest = func.coalesce(func.min(earliest, column), earliest, column)
    return earliest


def _lag_bucket(lag_micros: Any) -> Any:
    """reporting.lag_bucket in SQL, on the lag in whole microseconds (NULL when not converted). Comparing integer
    microseconds with whole days decides every lag as the float days of reporting.lag_bucket do: a lag a microsecond
    over a bound is over it in float days as well."""
    return case(
        (lag_micros.is_(None), null()),
        *((lag_micros <= days * store.MICROSECONDS_A_DAY, index) for index, days in enumerate(LAG_BUCKET_DAYS)),
        else_=len(LAG_BUCKET_DAYS),
    )


SessionFactory = Callable[[], AbstractAsyncContextManager[AsyncSession]]
"""Opens a read session that sees the same snapshot of the database as the caller's."""


async def _slices(session: AsyncSession, parts: int) -> list[ColumnElement[bool]]:
    """Conditions that split outreach_funnel into `parts` ranges of physical row positions (PostgreSQL's page
    numbers, SQLite's rowids), each read by a range scan, together covering every row exactly once."""
    if parts <= 1:
        return [true()]
    if dialect_of(session) == "postgresql":
        # The table's size now is at least its size in this snapshot; the last range is open anyway.
        pages = int(
            (
                await session.execute(
                    text("SELECT pg_relation_size('outreach_funnel') / current_setting('block_size')::int")
                )
            ).scalar_one()
        )
        position: Any = literal_column("outreach_funnel.ctid")
        bounds: list[Any] = [literal_column(f"'({pages * part // parts},0)'::tid") for part in range(1, parts)]
    else:
        highest = int(
            (
                await session.execute(
                    select(func.coalesce(func.max(literal_column("rowid")), 0)).select_from(store.outreach_funnel)
                )
            ).scalar_one()
        )
        position = literal_column("outreach_funnel.rowid")
        bounds = [literal(highest * part // parts + 1) for part in range(1, parts)]
    lows: list[Any] = [None, *bounds]
    highs: list[Any] = [*bounds, None]
    return [
        and_(true(), *([position >= low] if low is not None else []), *([position < high] if high is not None else []))
        for low, high in zip(lows, highs, strict=True)
    ]


async def recompute(
    session: AsyncSession, utc_offset_minutes: int, *, side: SessionFactory | None = None, parts: int = 1
) -> dict[RollupKey, dict[str, int]]:
    """Every rollup row as the ledger says it should be, in set-based queries over the ledger's tables.

    Returns {rollup key: {counter: value}} with only non-zero counters. Each pass groups in the database by the
    outreach's group (outreach_groups) and local day numbers (integer arithmetic on integer instants), never returning
    a row per outreach (a converted outreach's lag bucket is computed in the database from its exact instants). The
    funnel pass reads outreach_funnel in `parts` ranges; with `side`, each range after the first and the cost and
    money passes run on connections of their own, side by side.
    """
    rows: dict[RollupKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    g = store.outreach_groups
    groups: dict[int, tuple[str, ...]] = {
        row.group_id: tuple(str(row[name]) for name in store.GROUP_DIMENSIONS)
        for row in (await session.execute(select(g))).mappings()
    }

    def day_of(column: Any, name: str = "day") -> Any:
        return _local_date(session, column, utc_offset_minutes).label(name)

    day_text = functools.cache(day_of_number)

    def day_number(column: Any, name: str) -> Any:
        return store.local_day_number(column, utc_offset_minutes).label(name)

    async def collect(
        on: AsyncSession, group: Any, day: Any, source: Any, sums: Mapping[str, Any], day_text: Callable[[Any], str]
    ) -> None:
        """Adds one pass grouped by outreach group and day to `rows`."""
        query = select(group.label("group_id"), day, *(value.label(name) for name, value in sums.items()))
        for row in (await on.execute(query.select_from(source).group_by(group, day))).mappings():
            key = (day_text(row["day"]), *groups[row["group_id"]])
            for name in sums:
                rows[key][name] += int(row[name] or 0)

    f = store.outreach_funnel
    step_at = {step: f.c[store.step_column(step)] for step in FUNNEL_STEPS}
    converted_at = _earliest_of(session, [step_at[step] for step in FUNNEL_STEPS[funnel_rank(CONVERTED) - 1 :]])
    # Most outreaches stop at an open: they group by those steps' days alone, and only the others by every step's day
    # and the lag. Grouping all of them by everything took SQLite 5.6-6.1 s of CPU at 1M against 3.8 s for the two parts
    # (its sort of a million rows, and the arithmetic for its keys, are the largest share of a check).
    stopped_early = and_(*(step_at[step].is_(None) for step in FUNNEL_STEPS[_EARLY_STEPS:]))

    def funnel_query(where: ColumnElement[bool]) -> Any:
        def grouped(steps: int, lag: Any | None, condition: ColumnElement[bool]) -> Any:
            """Outreaches grouped by group, creation day, the days of the first `steps` steps and `lag`; the other
            steps' days (and the lag, without one) are NULL, as for an outreach that has not reached them."""
            created = day_number(f.c.created_at, "day")
            days = [day_number(step_at[step], f"day_{step}") for step in FUNNEL_STEPS[:steps]]
            unreached = [cast(null(), BigInteger).label(f"day_{step}") for step in FUNNEL_STEPS[steps:]]
            lags = [lag] if lag is not None else []
            return (
                select(
                    f.c.group_id,
                    created,
                    *days,
                    *unreached,
                    lag if lag is not None else cast(null(), Integer).label("lag"),
                    func.count().label("outreaches"),
                )
                .where(where, condition)
                .group_by(f.c.group_id, created, *days, *lags)
            )

        lag = _lag_bucket(store.micros(converted_at) - store.micros(f.c.created_at)).label("lag")
        return union_all(
            grouped(_EARLY_STEPS, None, stopped_early), grouped(len(FUNNEL_STEPS), lag, not_(stopped_early))
        )

    async def funnel_pass(on: AsyncSession, where: ColumnElement[bool]) -> None:
        # 1. Sends, the funnel and lag in one statement over outreach_funnel (one row per outreach, its steps side by
        # side), grouped by group, creation day and the local day of each step: outreaches that moved alike share a
        # row, and the funnel's levels (a level's day is the earliest of its step's and every later one's,
        # reporting.funnel_levels; local days order as instants do) are unpivoted here from far fewer rows. A
        # converted outreach's lag bucket is computed by the database from its exact instants (_lag_bucket).
        # By position, and counted by (day number, group, counter) until the end: ~87k rows at 1M outreaches, each
        # touching up to a dozen counters, so the per-row Python is kept to lookups and additions.
        levels = [(2 + FUNNEL_STEPS.index(step), funnel_column(step)) for step in reversed(FUNNEL_STEPS)]
        converted_position = 2 + FUNNEL_STEPS.index(CONVERTED)
        counts: dict[tuple[int, int, str], int] = defaultdict(int)
        for row in await on.execute(funnel_query(where)):
            group, lag, outreaches = row[0], row[-2], row[-1]
            counts[(row[1], group, "sent")] += outreaches
            earliest: int | None = None
            converted_day: int | None = None
            for position, column in levels:
                day = row[position]
                if day is not None and (earliest is None or day < earliest):
                    earliest = day
                if earliest is not None:
                    counts[(earliest, group, column)] += outreaches
                if position == converted_position:
                    converted_day = earliest
            if lag is not None and converted_day is not None:
                counts[(converted_day, group, LAG_COLUMNS[lag])] += outreaches
        for (day, group, column), value in counts.items():
            rows[(day_text(day), *groups[group])][column] += value

    async def money_passes(on: AsyncSession) -> None:
        # 2. Costs on the day each was booked, by the group written with each (no join with a million outreaches).
        c = store.costs
        cost_day = day_number(c.c.at, "day")
        await collect(on, c.c.group_id, cost_day, c, {"cost_paise": func.sum(c.c.amount_paise)}, day_text)
        # 2b. Fixed costs on the day each was booked, by the shares stored with them.
        fixed, shares = store.fixed_costs, store.fixed_cost_shares
        fixed_key = (fixed.c.day, fixed.c.campaign_key, *(shares.c[name] for name in store.SHARE_DIMENSIONS))
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
            (d.c.disbursed_at, d.join(f, f.c.campaign_id == d.c.campaign_id)),
            (v.c.occurred_at, v.join(f, and_(f.c.campaign_id == v.c.campaign_id, store.FUNDED))),
        ):
            await collect(
                on,
                f.c.group_id,
                day_of(paid_at),
                source,
                {
                    "disbursed_paise": func.sum(paid_at.table.c.amount_paise),
                    "lifetime_paise": func.sum(paid_at.table.c.lifetime_revenue_paise),
                    "year1_paise": func.sum(paid_at.table.c.year1_revenue_paise),
                },
                str,
            )

    await _tune_for_recompute(session)
    passes: list[Callable[[AsyncSession], Awaitable[None]]] = [
        functools.partial(funnel_pass, where=where) for where in await _slices(session, parts)
    ]
    passes.append(money_passes)
    if side is None:
        for run in passes:
            await run(session)
    else:
        opened = side

        async def on_side(run: Callable[[AsyncSession], Awaitable[None]]) -> None:
            async with opened() as other:
                await _tune_for_recompute(other)
                await run(other)

        await asyncio.gather(passes[0](session), *(on_side(run) for run in passes[1:]))
    return {key: {name: value for name, value in counters.items() if value} for key, counters in rows.items()}


async def _tune_for_recompute(session: AsyncSession) -> None:
    if dialect_of(session) == "postgresql":
        # Grouping a million outreaches by group and days is a 41 MB hash table (EXPLAIN ANALYZE at 1M outreaches); the
        # 4 MB default spills it to disk in 33 batches.
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
