"""Membership refresh re-evaluates only what a batch can change, yet stays equal to a full recompute: for people
created by the batch, for segments built on other segments, and for concurrent batches naming the same people."""

import asyncio
import random
from datetime import UTC, datetime, timedelta

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
from services.segments.values import Value
from tests.unit.segments.builders import all_, attr, b, event, not_, s, segment, sip_only
from xsell.segments.v1 import resources_pb2 as r

NOW = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)

SEGMENTS: list[tuple[str, r.Rule]] = [
    ("no_minor_folio", not_(attr("has_minor_folio", "EQUALS", b(True)))),
    ("sip_only", sip_only()),
    ("sip_investors", attr("investment_type", "EQUALS", s("SIP"))),
    ("engaged", event("session_start", days=30, count=("GREATER_OR_EQUAL", 2))),
    ("engaged_sip", all_(segment("sip_investors"), segment("engaged"))),
    ("quiet_sip", all_(segment("sip_investors"), not_(segment("engaged")))),
]


async def _started(database_url: str) -> tuple[Database, Activity]:
    db = Database(database_url)
    await db.migrate(MIGRATIONS)
    activity = Activity(Outbox(store.outbox), TracerProvider().get_tracer("test"))
    await install_catalog_file(db, activity, str(DEFAULT_CATALOG))
    async with db.transaction() as session:
        for segment_id, rule in SEGMENTS:
            definition = validate_definition(segment_id, "", rule)
            head = store.SegmentRow(segment_id, segment_id, "", definition.rule_bytes, store.DRAFT, 1, 0, NOW, None)
            await store.insert_segment(session, head)
            version = definition.version_row(segment_id, 1, "maker", NOW)
            await store.insert_version(session, version)
            await maintenance.publish_version(session, head, version, definition.rule, NOW)
    return db, activity


async def _members(db: Database) -> dict[str, set[str]]:
    async with db.transaction() as session:
        rows = (await session.execute(select(store.memberships.c.segment_id, store.memberships.c.profile_id))).all()
    found: dict[str, set[str]] = {segment_id: set() for segment_id, _ in SEGMENTS}
    for segment_id, profile_id in rows:
        found[segment_id].add(profile_id)
    return found


async def _assert_current(db: Database) -> None:
    members = await _members(db)
    async with db.transaction() as session:
        for segment_id, rule in SEGMENTS:
            expected = set(
                (await session.execute(compile_rule(validate_definition("x", "", rule).rule, NOW))).scalars()
            )
            assert members[segment_id] == expected, segment_id
            assert (await store.get_segment(session, segment_id)).member_count == len(expected)  # type: ignore[union-attr]


def _event(person: str, name: str) -> IncomingEvent:
    return IncomingEvent(new_id("e_"), person, name, NOW - timedelta(hours=1), {})


async def test_a_person_created_by_an_event_enters_segments_on_what_they_lack(database_url: str) -> None:
    db, activity = await _started(database_url)
    try:
        # "watchlist_add" is read by no rule, but the person is new: no minor folio is true of them.
        async with db.transaction() as session:
            await activity.record_events(session, [_event("newcomer", "watchlist_add")], NOW)
        assert "newcomer" in (await _members(db))["no_minor_folio"]
        await _assert_current(db)
    finally:
        await db.dispose()


async def test_segments_built_on_a_changed_segment_follow_it(database_url: str) -> None:
    db, activity = await _started(database_url)
    try:
        async with db.transaction() as session:
            await store.upsert_profiles(session, [ProfileUpdate("asha", {"investment_type": Value.string("SIP")})], NOW)
            changed = maintenance.Changed(attributes=frozenset({"investment_type"}))
            await activity.refresh(session, ["asha"], NOW, changed=changed, new_profiles={"asha"})
        assert {"quiet_sip", "no_minor_folio"} <= {k for k, v in (await _members(db)).items() if "asha" in v}
        # Two sessions make her engaged: only "engaged" reads session_start, yet both segments built on it move.
        for _ in range(2):
            async with db.transaction() as session:
                await activity.record_events(session, [_event("asha", "session_start")], NOW)
        member_of = {k for k, v in (await _members(db)).items() if "asha" in v}
        assert {"engaged", "engaged_sip"} <= member_of
        assert "quiet_sip" not in member_of
        await _assert_current(db)
    finally:
        await db.dispose()


async def test_concurrent_batches_on_the_same_people_keep_memberships_exact(database_url: str) -> None:
    """On PostgreSQL batches run side by side (the per-person locks order them); on SQLite they queue."""
    db, activity = await _started(database_url)
    rng = random.Random(7)
    people = [f"p{i}" for i in range(6)]
    try:
        async with db.transaction() as session:
            updates = [ProfileUpdate(p, {"investment_type": Value.string(rng.choice(["SIP", "Both"]))}) for p in people]
            await store.upsert_profiles(session, updates, NOW)
            await activity.refresh(session, people, NOW)

        async def batch(index: int) -> None:
            chosen = rng.sample([*people, f"new{index}"], 3)
            incoming = [_event(p, rng.choice(["session_start", "sip_registered"])) for p in chosen]
            async with db.transaction() as session:
                await activity.record_events(session, incoming, NOW)

        await asyncio.gather(*(batch(i) for i in range(12)))
        await _assert_current(db)
        # The sweeper folds the appended count deltas into the segment rows; the counts read the same after.
        async with db.transaction() as session:
            assert await store.fold_member_counts(session) > 0
        async with db.transaction() as session:
            assert await store.fold_member_counts(session) == 0
            raw = dict(
                (await session.execute(select(store.segments.c.segment_id, store.segments.c.member_count))).all()
            )
        assert raw == {segment_id: len(members) for segment_id, members in (await _members(db)).items()}
        await _assert_current(db)
    finally:
        await db.dispose()
