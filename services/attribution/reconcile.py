"""Reconciliation: recompute the views' rollup from the ledger, report any drift, and optionally replace it.

python -m services.attribution.reconcile            # report drift; exit 1 when there is any
python -m services.attribution.reconcile --fix      # report it and rebuild the rollup from the ledger
"""

import argparse
import asyncio
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import delete, insert, text
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database, dialect_of
from services.attribution import store, views
from services.attribution.ledger import SEND
from services.attribution.reporting import COUNTER_COLUMNS
from services.attribution.revenue import CostModel
from services.attribution.settings import AttributionSettings


@dataclass(frozen=True)
class Difference:
    """One counter of one rollup row that is not what the ledger says."""

    key: views.RollupKey
    column: str
    stored: int
    expected: int

    def describe(self) -> str:
        day, campaign_key, programme, trigger, channel, product, _labels = self.key
        return (
            f"{day} {campaign_key} {programme} {trigger} {channel} {product}: {self.column} is {self.stored}, "
            f"the ledger says {self.expected} ({self.expected - self.stored:+d})"
        )


@dataclass(frozen=True)
class Reconciliation:
    rows_checked: int
    differences: list[Difference]
    fixed: bool
    unbooked_sends: int = 0
    """Outreaches a provider took whose send cost was never booked (found; booked too when fixing)."""

    @property
    def drift(self) -> bool:
        return bool(self.differences) or bool(self.unbooked_sends)


def compare(
    stored: dict[views.RollupKey, dict[str, int]], expected: dict[views.RollupKey, dict[str, int]]
) -> list[Difference]:
    differences = []
    for key in sorted(stored.keys() | expected.keys()):
        have, want = stored.get(key, {}), expected.get(key, {})
        for column in COUNTER_COLUMNS:
            if have.get(column, 0) != want.get(column, 0):
                differences.append(Difference(key, column, have.get(column, 0), want.get(column, 0)))
    return differences


FUNNEL_PARTS = 2
"""How many ranges of outreach_funnel the recompute reads side by side, each on its own connection (besides the one
reading costs and money): the scan of a million outreaches is the longest pass."""


async def reconcile(
    db: Database,
    utc_offset_minutes: int,
    *,
    fix: bool = False,
    parts: int = FUNNEL_PARTS,
    cost_model: CostModel | None = None,
    currency: str = "INR",
) -> Reconciliation:
    """Recomputes every rollup row from the ledger in one transaction and compares it with what is stored.

    Given the `cost_model`, it also counts the outreaches a provider took (a sent or delivered time) with no send
    cost: recorded by a release that books the cost at the send while an older one, still running in a rollout,
    applied their receipt (it booked none, and a later receipt finds the step reached). A fix books each at its
    first proof at the model's price, with its rollup increment, before the recompute. The scan for them reads every
    outreach (~1.5 s at a million on SQLite), so a caller that only wants the rollup checked passes no model.

    Consistency while the service keeps writing: each ledger write changes its rollup rows in the same
    transaction, so a snapshot sees both or neither. A check runs in one REPEATABLE READ snapshot on
    PostgreSQL and blocks no one; on SQLite it is a BEGIN IMMEDIATE transaction, which holds the write lock
    (writers wait for it). A fix first takes the rollup's write
    lock (LOCK TABLE … EXCLUSIVE; SQLite's write lock), so writers wait for the few seconds it takes and
    then add their increments to the rebuilt rows.
    """
    booked = await _book_unbooked_sends(db, utc_offset_minutes, cost_model, currency) if fix and cost_model else 0
    async with db.transaction() as session:
        postgres = dialect_of(session) == "postgresql"
        if fix:
            if postgres:
                await session.execute(text("LOCK TABLE rollup IN EXCLUSIVE MODE"))
            else:
                # A write first: SQLite takes its write lock here, before the ledger is read.
                await session.execute(text("UPDATE rollup SET sent = sent WHERE 0"))
        elif postgres:
            await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        unbooked = booked or (await store.count_unbooked_sends(session, SEND) if cost_model is not None else 0)
        stored = await views.stored(session)
        # SQLite: this transaction holds the write lock since its BEGIN IMMEDIATE, so a reader on another connection
        # sees the same committed state as this one.
        side = await _same_snapshot(db, session) if postgres else db.snapshot
        expected = await views.recompute(session, utc_offset_minutes, side=side, parts=parts)
        differences = compare(stored, expected)
        if fix and differences:
            await session.execute(delete(store.rollup))
            rows = [
                {
                    **dict(zip(store.ROLLUP_KEY, key, strict=True)),
                    **{column: counters.get(column, 0) for column in COUNTER_COLUMNS},
                }
                for key, counters in expected.items()
            ]
            for start in range(0, len(rows), 1000):
                await session.execute(insert(store.rollup), rows[start : start + 1000])
    return Reconciliation(
        len(stored.keys() | expected.keys()), differences, fix and (bool(differences) or bool(booked)), unbooked
    )


async def _book_unbooked_sends(db: Database, utc_offset_minutes: int, cost_model: CostModel, currency: str) -> int:
    """Books the unbooked sends with their rollup increments, in a transaction of their own (committed before the
    recompute, whose side connections read committed rows); how many."""
    async with db.transaction() as session:
        booked = await store.book_unbooked_sends(session, SEND, cost_model.send_cost_paise, currency)
        if booked:
            locked = await store.lock_outreaches(session, {campaign_id for campaign_id, _, _ in booked})
            changes = [
                (locked[campaign_id].outreach, [(at, {"cost_paise": amount})])
                for campaign_id, amount, at in booked
                if campaign_id in locked
            ]
            await views.Rollup(utc_offset_minutes).apply_many(session, changes)
    return len(booked)


async def _same_snapshot(db: Database, session: AsyncSession) -> views.SessionFactory:
    """Read sessions on other connections that see exactly what `session` sees (PostgreSQL's exported snapshot, as
    pg_dump's parallel jobs use it), so the recompute's passes can run side by side and still agree."""
    snapshot = str((await session.execute(text("SELECT pg_export_snapshot()"))).scalar_one())
    if not re.fullmatch(r"[0-9A-F-]+", snapshot):
        raise RuntimeError(f"unexpected snapshot id {snapshot!r}")

    @asynccontextmanager
    async def same_snapshot() -> AsyncIterator[AsyncSession]:
        async with db.snapshot() as other:
            # SET TRANSACTION SNAPSHOT takes no parameters; the id was checked above.
            await other.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
            yield other

    return same_snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.attribution.reconcile",
        description="Recompute the attribution views from the ledger and report any drift.",
    )
    parser.add_argument("--fix", action="store_true", help="replace the rollup with the recomputed rows")
    parser.add_argument("--limit", type=int, default=50, help="print at most this many differences (default 50)")
    args = parser.parse_args(argv)
    settings = AttributionSettings()

    async def run() -> Reconciliation:
        db = Database(settings.resolved_database_url("attribution"))
        try:
            return await reconcile(
                db,
                settings.report_utc_offset_minutes,
                fix=args.fix,
                cost_model=settings.cost(),
                currency=settings.currency,
            )
        finally:
            await db.dispose()

    result = asyncio.run(run())
    for difference in result.differences[: args.limit]:
        print(difference.describe())
    if len(result.differences) > args.limit:
        print(f"… and {len(result.differences) - args.limit} more")
    if result.unbooked_sends:
        done = "booked now" if result.fixed else "run with --fix to book them"
        print(f"{result.unbooked_sends} outreaches a provider took had no send cost; {done}")
    if not result.drift:
        print(f"no drift: {result.rows_checked} rollup rows match the ledger")
        return 0
    state = "fixed: the rollup was rebuilt from the ledger" if result.fixed else "run with --fix to rebuild"
    print(f"drift in {len(result.differences)} counters of {result.rows_checked} rollup rows; {state}")
    return 0 if result.fixed else 1


if __name__ == "__main__":
    sys.exit(main())
