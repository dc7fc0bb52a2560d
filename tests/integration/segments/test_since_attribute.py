"""Since-attribute windows select the same people in SQL as by hand, on SQLite and PostgreSQL, to the microsecond."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from plumbing.db import Database
from services.segments import store
from services.segments.compiler import compile_rule
from services.segments.records import IncomingEvent, ProfileUpdate
from services.segments.rule_files import rule_from_data
from services.segments.rules import parse_rule
from services.segments.values import Value

NOW = datetime(2025, 6, 1, 12, 0, 0, 500_000, tzinfo=UTC)
SIP = datetime(2025, 4, 22, 9, 30, 15, 123_456, tzinfo=UTC)
MICRO = timedelta(microseconds=1)

ATTRIBUTES = {
    "after": {"last_sip_date": Value.timestamp(SIP)},
    "at": {"last_sip_date": Value.timestamp(SIP)},
    "just_before": {"last_sip_date": Value.timestamp(SIP)},
    "missing": {"plan_type": Value.string("Direct")},
    "text": {"last_sip_date": Value.string("2025-04-22")},
    "old_sip": {"last_sip_date": Value.timestamp(datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC))},
    "other_sip": {"last_sip_date": Value.timestamp(SIP - timedelta(days=30))},
}
EVENTS = {
    "after": [("session_start", SIP + MICRO, 100), ("session_start", NOW, 300)],
    "at": [("session_start", SIP, 250), ("sip_registered", SIP + timedelta(days=1), 0)],
    "just_before": [("session_start", SIP - MICRO, 500)],
    "missing": [("session_start", NOW - timedelta(days=1), 500)],
    "text": [("session_start", NOW - timedelta(days=1), 500)],
    "old_sip": [("session_start", datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC), 50)],
    # Its own sessions are before its SIP, but after the others' SIP: only its own date counts.
    "other_sip": [("session_start", SIP - timedelta(days=31), 50), ("session_start", SIP - timedelta(days=40), 50)],
}

CASES: list[tuple[dict[str, object], set[str]]] = [
    ({"name": "session_start", "performed": True, "since": "last_sip_date"}, {"after", "at", "old_sip"}),
    ({"name": "session_start", "performed": True, "since": "last_sip_date", "count": {"eq": 2}}, {"after"}),
    (
        {"name": "session_start", "performed": False, "since": "last_sip_date"},
        {"just_before", "missing", "text", "other_sip"},
    ),
    (
        {"name": "session_start", "performed": True, "since": "last_sip_date", "count": {"lte": 0}},
        {"just_before", "missing", "text", "other_sip"},
    ),
    (
        {"name": "session_start", "performed": True, "since": "last_sip_date", "where": {"amount": {"gte": 200}}},
        {"after", "at"},
    ),
    ({"name": "sip_registered", "performed": True, "since": "last_sip_date"}, {"at"}),
    ({"name": "session_start", "performed": True, "since": "unknown_attribute"}, set()),
]


@pytest.fixture
async def loaded(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    async with db.engine.begin() as connection:
        await connection.run_sync(store.metadata.create_all)
    async with db.transaction() as session:
        await store.upsert_profiles(session, [ProfileUpdate(pid, dict(v)) for pid, v in ATTRIBUTES.items()], NOW)
        await store.insert_events(
            session,
            [
                IncomingEvent(f"{pid}-{i}", pid, name, moment, {"amount": Value.num(amount)})
                for pid, history in EVENTS.items()
                for i, (name, moment, amount) in enumerate(history)
            ],
            NOW,
        )
    yield db
    await db.dispose()


@pytest.mark.parametrize(("condition", "expected"), CASES)
async def test_since_window_selects_by_each_persons_own_timestamp(
    loaded: Database, condition: dict[str, object], expected: set[str]
) -> None:
    rule = parse_rule(rule_from_data({"event": condition}))
    async with loaded.transaction() as session:
        got = set((await session.execute(compile_rule(rule, NOW))).scalars())
    assert got == expected
