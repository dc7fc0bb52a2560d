"""Computed attributes on SQLite and PostgreSQL: the SQL agrees with the reference, follows events, feeds segments."""

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.db import Database
from plumbing.ids import new_id
from services.segments import store
from services.segments.app import MIGRATIONS
from services.segments.catalog import Catalog, Definition
from services.segments.computed import Aggregation, ComputedDefinition, PastEvent, computed_proto, evaluate
from services.segments.records import IncomingEvent, ProfileUpdate
from services.segments.rules import Op, PropertyFilter
from services.segments.values import Kind, Value
from tests.integration.segments.approval import publish
from tests.unit.segments.builders import attr, money, n, s
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub

NOW = datetime(2025, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
DAY = 24 * 3600.0

DEFINITIONS = [
    ComputedDefinition("number_of_amcs", Kind.NUMBER, "transaction_success", Aggregation.DISTINCT_COUNT, "amc"),
    ComputedDefinition(
        "invested_90d", Kind.MONEY, "transaction_success", Aggregation.SUM, "amount", 90 * DAY, currency="INR"
    ),
    ComputedDefinition("units_total", Kind.NUMBER, "transaction_success", Aggregation.SUM, "units"),
    ComputedDefinition("smallest_units_30d", Kind.NUMBER, "transaction_success", Aggregation.MIN, "units", 30 * DAY),
    ComputedDefinition("largest_inr", Kind.MONEY, "transaction_success", Aggregation.MAX, "amount", currency="INR"),
    ComputedDefinition("sessions_30d", Kind.NUMBER, "session_start", Aggregation.COUNT, "", 30 * DAY),
    ComputedDefinition(
        "hdfc_transactions",
        Kind.NUMBER,
        "transaction_success",
        Aggregation.COUNT,
        filters=(PropertyFilter("amc", Op.IN, (Value.string("HDFC"), Value.string("hdfc"))),),
    ),
    ComputedDefinition("first_amc", Kind.STRING, "transaction_success", Aggregation.FIRST_VALUE, "amc"),
    ComputedDefinition("last_amount", Kind.MONEY, "transaction_success", Aggregation.LAST_VALUE, "amount"),
    ComputedDefinition("last_direct", Kind.BOOL, "transaction_success", Aggregation.LAST_VALUE, "direct", 60 * DAY),
    ComputedDefinition("first_nav_date", Kind.TIMESTAMP, "transaction_success", Aggregation.FIRST_VALUE, "nav_date"),
    ComputedDefinition("distinct_devices", Kind.NUMBER, "session_start", Aggregation.DISTINCT_COUNT, "device"),
]


def _world(seed: int = 11, size: int = 50) -> dict[str, list[PastEvent]]:
    rng = random.Random(seed)
    people: dict[str, list[PastEvent]] = {}
    for i in range(size):
        history = []
        # A few shared instants, so first / last value must break ties by event id on both databases.
        instants = [NOW - timedelta(days=rng.choice([1, 20, 45, 80, 120, 400])) for _ in range(3)]
        for j in range(rng.randint(0, 8)):
            name = rng.choice(["transaction_success", "transaction_success", "session_start"])
            properties: dict[str, Value] = {}
            if rng.random() < 0.8:
                properties["amc"] = Value.string(rng.choice(["HDFC", "SBI", "hdfc", "ICICI"]))
            if rng.random() < 0.8:
                properties["amount"] = Value.money(rng.randint(1, 500) * 100_00, rng.choice(["INR", "INR", "USD"]))
            if rng.random() < 0.2:
                properties["amount"] = Value.num(rng.randint(1, 9))
            if rng.random() < 0.6:
                properties["units"] = Value.num(rng.randint(-5, 50))
            if rng.random() < 0.5:
                properties["direct"] = Value.boolean(rng.random() < 0.5)
            if rng.random() < 0.4:
                properties["nav_date"] = Value.timestamp(
                    NOW - timedelta(days=rng.randint(0, 900), seconds=rng.random())
                )
            if rng.random() < 0.5:
                properties["device"] = rng.choice([Value.string("ios"), Value.string("web"), Value.num(1)])
            when = rng.choice(instants) if rng.random() < 0.4 else NOW - timedelta(days=rng.uniform(0, 500))
            history.append(PastEvent(f"p{i:02d}-e{rng.randint(0, 10**6):07d}-{j}", name, when, properties))
        people[f"p{i:02d}"] = history
    return people


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate(MIGRATIONS)
    yield database
    await database.dispose()


async def _load(db: Database, world: dict[str, list[PastEvent]]) -> None:
    async with db.transaction() as session:
        await store.upsert_profiles(session, [ProfileUpdate(pid, {}) for pid in world], NOW)
        events = [
            IncomingEvent(e.event_id, pid, e.name, e.occurred_at, dict(e.properties))
            for pid, h in world.items()
            for e in h
        ]
        await store.insert_events(session, events, NOW)
        declared = [
            Definition(d.attribute, d.kind, "", False, computed_proto(d).SerializeToString(deterministic=True), d)
            for d in DEFINITIONS
        ]
        await store.save_definitions(session, declared, Catalog(), NOW)


def _expected(world: dict[str, list[PastEvent]], now: datetime) -> dict[str, dict[str, Value]]:
    expected: dict[str, dict[str, Value]] = {}
    for pid, history in world.items():
        for definition in DEFINITIONS:
            value = evaluate(definition, history, now)
            if value is not None:
                expected.setdefault(pid, {})[definition.attribute] = value
    return expected


async def _stored(db: Database, people: list[str]) -> dict[str, dict[str, Value]]:
    async with db.transaction() as session:
        return await store.attributes_of(session, people, [d.attribute for d in DEFINITIONS])


async def test_set_based_recompute_agrees_with_the_reference_for_every_aggregation(db: Database) -> None:
    world = _world()
    async with db.transaction() as session:
        await store.upsert_profiles(session, [ProfileUpdate(pid, {}) for pid in world], NOW)
        await store.insert_events(
            session,
            [
                IncomingEvent(e.event_id, pid, e.name, e.occurred_at, dict(e.properties))
                for pid, h in world.items()
                for e in h
            ],
            NOW,
        )
        await store.recompute(session, DEFINITIONS, None, NOW)
    expected = _expected(world, NOW)
    assert await _stored(db, sorted(world)) == expected
    # Every attribute splits the people, or the comparison above proves little.
    for definition in DEFINITIONS:
        having = sum(1 for values in expected.values() if definition.attribute in values)
        assert 0 < having < len(world), definition.attribute
    # Recomputing some people later, after more events, changes exactly those people.
    later = NOW + timedelta(days=40)
    some = sorted(world)[:10]
    async with db.transaction() as session:
        await store.recompute(session, DEFINITIONS, some, later)
    expected_later = _expected({pid: world[pid] for pid in some}, later)
    stored = await _stored(db, sorted(world))
    assert {pid: v for pid, v in stored.items() if pid in some} == expected_later
    assert {pid: v for pid, v in stored.items() if pid not in some} == {
        pid: v for pid, v in expected.items() if pid not in some
    }


async def test_refresh_lapsed_recomputes_exactly_the_people_whose_events_left_a_window(db: Database) -> None:
    world = _world(seed=5)
    await _load(db, world)
    async with db.transaction() as session:
        await store.recompute(session, DEFINITIONS, None, NOW)
    later = NOW + timedelta(days=15)
    async with db.transaction() as session:
        lapsed = await store.refresh_lapsed(session, NOW, later)
    windows = {d.event_name: [] for d in DEFINITIONS}  # type: dict[str, list[float]]
    for d in DEFINITIONS:
        if d.window_seconds is not None:
            windows[d.event_name].append(d.window_seconds)
    should = sorted(
        pid
        for pid, history in world.items()
        if any(
            NOW - timedelta(seconds=w) <= e.occurred_at < later - timedelta(seconds=w)
            for e in history
            for w in windows[e.name]
        )
    )
    assert lapsed == should and lapsed
    stored = await _stored(db, sorted(world))
    windowed = {d.attribute for d in DEFINITIONS if d.window_seconds is not None}
    expected_later = _expected(world, later)
    for pid in lapsed:
        got = {name: v for name, v in stored.get(pid, {}).items() if name in windowed}
        assert got == {name: v for name, v in expected_later.get(pid, {}).items() if name in windowed}, pid


# --- through the service ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XSELL_SEGMENTS_CATALOG_CACHE_SECONDS", "0")


def _transaction(profile_id: str, days_ago: float, **properties: r.Value) -> r.Event:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(days=days_ago))
    return r.Event(
        event_id=new_id("e_"),
        profile_id=profile_id,
        name="transaction_success",
        occur_time=stamp,
        properties=properties,
    )


async def _ingest(stub: SegmentsServiceStub, *events: r.Event, request_id: str = "") -> api.IngestEventsResponse:
    response: api.IngestEventsResponse = await stub.IngestEvents(
        api.IngestEventsRequest(request_id=request_id or new_id("req_"), events=list(events))
    )
    assert not response.errors
    return response


async def _segment(stub: SegmentsServiceStub, rule: r.Rule) -> str:
    created = await stub.CreateSegment(
        api.CreateSegmentRequest(request_id=new_id("req_"), segment=r.Segment(display_name="computed", rule=rule))
    )
    await publish(stub, created.segment.segment_id)
    return created.segment.segment_id


async def _member(stub: SegmentsServiceStub, segment_id: str, profile_id: str) -> bool:
    checked = await stub.CheckMembership(api.CheckMembershipRequest(segment_id=segment_id, profile_id=profile_id))
    return bool(checked.is_member)


async def _attributes(stub: SegmentsServiceStub, profile_id: str) -> dict[str, r.Value]:
    return dict((await stub.GetProfile(api.GetProfileRequest(profile_id=profile_id))).profile.attributes)


async def test_number_of_amcs_follows_transactions_and_moves_people_into_a_segment(
    segments: SegmentsServiceStub,
) -> None:
    multi_amc = await _segment(segments, attr("number_of_amcs", "GREATER_OR_EQUAL", n(2)))
    person = f"inv-{new_id()}"
    first = _transaction(person, 3, amc=s("HDFC"), amount=money(5000_00))
    await _ingest(segments, first)
    assert (await _attributes(segments, person))["number_of_amcs"] == n(1)
    assert not await _member(segments, multi_amc, person)
    # The same AMC again, and the same event id again, change nothing.
    await _ingest(segments, _transaction(person, 2, amc=s("HDFC")), first)
    assert (await _attributes(segments, person))["number_of_amcs"] == n(1)
    assert not await _member(segments, multi_amc, person)
    await _ingest(segments, _transaction(person, 1, amc=s("SBI")))
    assert (await _attributes(segments, person))["number_of_amcs"] == n(2)
    assert await _member(segments, multi_amc, person)


async def test_amount_invested_in_90_days_crosses_a_threshold_and_the_segment_follows(
    segments: SegmentsServiceStub,
) -> None:
    big_investors = await _segment(
        segments, attr("invested_last_90_days", "GREATER_OR_EQUAL", money(1_00_000_00, "INR"))
    )
    person = f"inv-{new_id()}"
    await _ingest(segments, _transaction(person, 120, amount=money(5_00_000_00)))
    assert "invested_last_90_days" not in await _attributes(segments, person)
    await _ingest(
        segments,
        _transaction(person, 10, amount=money(60_000_00)),
        _transaction(person, 5, amount=money(90_000_00, "USD")),
    )
    assert (await _attributes(segments, person))["invested_last_90_days"] == money(60_000_00)
    assert not await _member(segments, big_investors, person)
    await _ingest(segments, _transaction(person, 1, amount=money(50_000_00)))
    assert (await _attributes(segments, person))["invested_last_90_days"] == money(1_10_000_00)
    assert await _member(segments, big_investors, person)
