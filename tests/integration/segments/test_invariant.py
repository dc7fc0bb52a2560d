"""After any sequence of events, attribute changes and clock advances, precomputed memberships equal a full
recompute at the same moment, on SQLite and PostgreSQL (seeded random sequences, the clock injected)."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import select

from plumbing.db import Database
from plumbing.ids import new_id
from plumbing.outbox import Outbox
from services.segments import maintenance, store
from services.segments.activity import Activity
from services.segments.api_catalog import install_catalog_file
from services.segments.api_governance import validate_definition
from services.segments.app import MIGRATIONS
from services.segments.compiler import compile_rule
from services.segments.records import IncomingEvent, ProfileUpdate
from services.segments.settings import DEFAULT_CATALOG
from services.segments.sweeper import Sweeper
from services.segments.values import Value
from tests.unit.segments.builders import all_, any_, attr, event, money, not_, prop, s, segment, sip_only
from xsell.segments.v1 import resources_pb2 as r

START = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
PEOPLE = [f"p{i}" for i in range(7)]
EVENT_NAMES = ["sip_registered", "lumpsum_invested", "session_start", "transaction_success"]

# Published in this order: later ones refer to earlier ones.
SEGMENTS: list[tuple[str, r.Rule]] = [
    ("seg_a_sip_only", sip_only()),
    ("seg_b_engaged", event("session_start", days=30, count=("GREATER_OR_EQUAL", 3))),
    (
        "seg_c_high_value",
        event(
            "transaction_success",
            days=90,
            count=("GREATER_OR_EQUAL", 2),
            filters=[prop("amount", "GREATER_OR_EQUAL", money(500000))],
        ),
    ),
    (
        "seg_d_dormant_sip",
        all_(attr("investment_type", "EQUALS", s("SIP")), event("transaction_success", performed=False, days=60)),
    ),
    (
        "seg_e_recent_money",
        all_(segment("seg_a_sip_only"), attr("invested_last_90_days", "GREATER_OR_EQUAL", money(1000000))),
    ),
    (
        "seg_f_quiet",
        any_(not_(segment("seg_b_engaged")), event("lumpsum_invested", days=180, count=("LESS_OR_EQUAL", 1))),
    ),
]


async def _publish_all(db: Database) -> dict[str, r.Rule]:
    async with db.transaction() as session:
        for segment_id, rule in SEGMENTS:
            definition = validate_definition(segment_id, "", rule)
            head = store.SegmentRow(segment_id, segment_id, "", definition.rule_bytes, store.DRAFT, 1, 0, START, None)
            await store.insert_segment(session, head)
            version = definition.version_row(segment_id, 1, "maker", START)
            await store.insert_version(session, version)
            await maintenance.publish_version(session, head, version, definition.rule, START)
    return dict(SEGMENTS)


async def _assert_current(db: Database, rules: dict[str, r.Rule], now: datetime) -> None:
    async with db.transaction() as session:
        for segment_id, rule in rules.items():
            stored = select(store.memberships.c.profile_id).where(store.memberships.c.segment_id == segment_id)
            precomputed = set((await session.execute(stored)).scalars())
            recomputed = set(
                (await session.execute(compile_rule(validate_definition("x", "", rule).rule, now))).scalars()
            )
            assert precomputed == recomputed, (segment_id, now)
            assert (await store.get_segment(session, segment_id)).member_count == len(precomputed)  # type: ignore[union-attr]


async def _assert_windowed_attribute(db: Database, history: list[tuple[str, datetime, int]], now: datetime) -> None:
    """invested_last_90_days is the INR sum of the last 90 days' transaction_success amounts, or absent."""
    expected: dict[str, float] = {}
    for profile_id, occurred_at, paise in history:
        if occurred_at >= now - timedelta(days=90):
            expected[profile_id] = expected.get(profile_id, 0.0) + paise
    async with db.transaction() as session:
        stored = await store.attributes_of(session, PEOPLE, ["invested_last_90_days"])
    assert {p: v["invested_last_90_days"].number for p, v in stored.items()} == expected


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_memberships_stay_equal_to_a_full_recompute(database_url: str, seed: int) -> None:
    rng = random.Random(seed)
    db = Database(database_url)
    await db.migrate(MIGRATIONS)
    try:
        tracer = TracerProvider().get_tracer("test")
        activity = Activity(Outbox(store.outbox), tracer)
        await install_catalog_file(db, activity, str(DEFAULT_CATALOG))
        sweeper = Sweeper(db, activity, tracer, interval=60)
        rules = await _publish_all(db)
        now = START
        history: list[tuple[str, datetime, int]] = []
        for _step in range(30):
            kind = rng.choice(["event", "event", "attribute", "advance"])
            person = rng.choice(PEOPLE)
            if kind == "event":
                name = rng.choice(EVENT_NAMES)
                occurred_at = now - timedelta(days=rng.uniform(0, 200))
                properties: dict[str, Value] = {}
                if name == "transaction_success":
                    paise = rng.choice([100000, 500000, 900000])
                    properties = {"amount": Value.money(paise, "INR"), "amc": Value.string(rng.choice(["HDFC", "SBI"]))}
                    history.append((person, occurred_at, paise))
                async with db.transaction() as session:
                    await activity.record_events(
                        session, [IncomingEvent(new_id("e_"), person, name, occurred_at, properties)], now
                    )
            elif kind == "attribute":
                value = Value.string(rng.choice(["SIP", "Lumpsum", "Both"]))
                async with db.transaction() as session:
                    await store.upsert_profiles(session, [ProfileUpdate(person, {"investment_type": value})], now)
                    await activity.refresh(session, [person], now)
            else:
                now += timedelta(days=rng.choice([0.5, 3, 20, 45, 100]))
                await sweeper.sweep(now)
            await _assert_current(db, rules, now)
            await _assert_windowed_attribute(db, history, now)
    finally:
        await db.dispose()
