"""The dispatch queries read only the outreaches still to dispatch (partial indexes), not all of a run, and the
trigger's cool-down read only the people's own outreaches, not all of them (SQLite)."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event

from plumbing.db import Database
from services.campaigns import automation_store, store
from services.campaigns.app import MIGRATIONS

NOW = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


async def _plans(tmp_path: Path) -> dict[str, str]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'plans.db'}")
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    try:
        await db.migrate(MIGRATIONS)
        event.listen(db.engine.sync_engine, "before_cursor_execute", record)
        queries = {
            "follow_up": lambda s: automation_store.due_follow_up_dispatches(s, NOW, 10),
            "dispatchable": lambda s: store.dispatchable(s, "run_1", 2000, NOW, 2000),
            "undispatched": lambda s: store.undispatched(s, "run_1"),
            "cool_down": lambda s: automation_store.last_trigger_outreaches(s, "cmp_1", ["p-1", "p-2"]),
            "resends_pending": lambda s: automation_store.resends_pending(s, "cmp_1"),
        }
        plans = {}
        async with db.snapshot() as session:
            for name, query in queries.items():
                statements.clear()
                await query(session)
                [(statement, parameters)] = [(s, p) for s, p in statements if s.startswith("SELECT")]
                rows = await session.connection()
                plan = await rows.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
                plans[name] = " | ".join(row[3] for row in plan)
        return plans
    finally:
        await db.dispose()


async def test_each_dispatch_query_starts_from_the_outreaches_still_to_dispatch(tmp_path: Path) -> None:
    plans = await _plans(tmp_path)

    # The follow-up loop's poll: the few outreaches waiting for quiet hours to end, their run and campaign per row.
    assert plans["follow_up"].startswith("SEARCH outreaches USING INDEX ix_outreaches_dispatch_after"), plans
    # A dispatch page and the run's completion check: the run's undispatched outreaches only, in release order.
    assert "USING INDEX ix_outreaches_run_undispatched (run_id=? AND ordinal<?)" in plans["dispatchable"], plans
    assert "TEMP B-TREE" not in plans["dispatchable"], plans
    assert "ix_outreaches_run_undispatched" in plans["undispatched"], plans


async def test_the_cool_down_read_looks_up_each_person_in_the_campaign(tmp_path: Path) -> None:
    plans = await _plans(tmp_path)

    # Every trigger batch reads it: through (campaign_key, profile_id), not the unique index on resend_of, whose
    # `IS NULL` matched every original outreach of every campaign.
    assert plans["cool_down"].startswith(
        "SEARCH outreaches USING INDEX ix_outreaches_campaign_profile (campaign_key=? AND profile_id=?)"
    ), plans


async def test_the_completion_check_looks_for_undecided_originals_in_the_campaign_only(tmp_path: Path) -> None:
    plans = await _plans(tmp_path)

    # Polled several times a second inside a write transaction: the campaign's originals still to decide through
    # (campaign_key, resend_state, ...), not every original of every campaign through the unique index on resend_of.
    first = plans["resends_pending"].split("SCALAR SUBQUERY 2")[0]
    assert "ix_outreaches_resend_pending (campaign_key=? AND resend_state=?)" in first, plans
    assert "uq_outreaches_resend_of" not in first, plans
