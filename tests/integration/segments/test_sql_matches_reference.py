"""The compiled SQL selects exactly the people the reference evaluator selects, on SQLite and PostgreSQL."""

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from plumbing.db import Database
from services.segments import store
from services.segments.app import MIGRATIONS
from services.segments.compiler import compile_rule
from services.segments.records import IncomingEvent, ProfileUpdate
from services.segments.rules import EventRecord, World, members, parse_rule
from services.segments.values import Value
from tests.unit.segments.builders import (
    all_,
    any_,
    attr,
    b,
    event,
    money,
    n,
    not_,
    prop,
    s,
    segment,
    sip_only,
    ss,
    ts,
)
from xsell.segments.v1 import resources_pb2 as r

NOW = datetime(2025, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
REFERENCED = "seg_referenced"


def _dataset(seed: int = 7, size: int = 60) -> World:
    rng = random.Random(seed)
    attributes: dict[str, dict[str, Value]] = {}
    events: dict[str, list[EventRecord]] = {}
    categories = ["Equity", "Debt", "ELSS", "International"]
    for i in range(size):
        pid = f"p{i:03d}"
        values: dict[str, Value] = {}
        if rng.random() < 0.8:
            values["investment_type"] = Value.string(rng.choice(["SIP", "Lumpsum", "Both", "sip"]))
        if rng.random() < 0.8:
            values["fund_categories"] = Value.string_set(set(rng.sample(categories, rng.randint(0, 3))))
        if rng.random() < 0.7:
            values["number_of_schemes"] = Value.num(rng.randint(0, 5))
        if rng.random() < 0.7:
            values["has_stp"] = Value.boolean(rng.random() < 0.5)
        if rng.random() < 0.7:
            values["total_aum"] = Value.money(rng.randint(0, 10) * 1_000_000_00, rng.choice(["INR", "INR", "USD"]))
        if rng.random() < 0.7:
            values["last_login"] = Value.timestamp(
                NOW - timedelta(days=rng.randint(0, 60), microseconds=rng.randint(0, 10**6))
            )
        if rng.random() < 0.7:
            values["plan_type"] = Value.string(rng.choice(["Regular plan", "Direct plan", "regular"]))
        attributes[pid] = values
        history = []
        for _ in range(rng.randint(0, 7)):
            name = rng.choice(["sip_registered", "lumpsum_invested", "session_start", "session_start"])
            properties: dict[str, Value] = {}
            if rng.random() < 0.7:
                properties["amount"] = Value.num(rng.choice([500, 5000, 100000, 250000]))
            if rng.random() < 0.6:
                properties["amc"] = Value.string(rng.choice(["HDFC AMC", "SBI MF", "hdfc"]))
            if rng.random() < 0.2:
                properties["amount"] = Value.string("lots")
            if rng.random() < 0.2:
                properties["paid"] = Value.money(rng.choice([100, 200]), rng.choice(["INR", "USD"]))
            history.append(EventRecord(name, NOW - timedelta(days=rng.uniform(0, 500)), properties))
        events[pid] = history
    referenced = {pid for pid in attributes if rng.random() < 0.4}
    return World(attributes=attributes, events=events, memberships={REFERENCED: referenced})


RULES: dict[str, r.Rule] = {
    "sip_only": sip_only(),
    "engaged": event("session_start", days=90, count=("GREATER_OR_EQUAL", 2)),
    "exactly_one_sip": event("sip_registered", count=("EQUALS", 1)),
    "few_sessions": event("session_start", days=365, count=("LESS_OR_EQUAL", 1)),
    "sessions_between": event("session_start", count=("BETWEEN", 1, 2)),
    "not_many_sessions": event("session_start", performed=False, count=("GREATER_OR_EQUAL", 2)),
    "fixed_window": event("lumpsum_invested", between=(NOW - timedelta(days=300), NOW - timedelta(days=100))),
    "big_ticket": event("sip_registered", filters=[prop("amount", "GREATER_OR_EQUAL", n(100000))]),
    "amount_between": event("session_start", filters=[prop("amount", "BETWEEN", n(1000), n(100000))]),
    "hdfc_contains": event("lumpsum_invested", filters=[prop("amc", "CONTAINS", s("HDFC"))]),
    "amc_in": event("session_start", filters=[prop("amc", "IN", s("SBI MF"), s("hdfc"))]),
    "amc_not_equals": event("sip_registered", filters=[prop("amc", "NOT_EQUALS", s("HDFC AMC"))]),
    "no_amc": event("session_start", filters=[prop("amc", "NOT_EXISTS")]),
    "amount_text": event("session_start", filters=[prop("amount", "EQUALS", s("lots"))]),
    "paid_inr": event("sip_registered", filters=[prop("paid", "GREATER_THAN", money(100))]),
    "sip_type": attr("investment_type", "EQUALS", s("SIP")),
    "not_sip_type": attr("investment_type", "NOT_EQUALS", s("SIP")),
    "type_in": attr("investment_type", "NOT_IN", s("SIP"), s("Both")),
    "regular_substring": attr("plan_type", "CONTAINS", s("Regular")),
    "not_regular_substring": attr("plan_type", "NOT_CONTAINS", s("egular")),
    "equity_only": attr("fund_categories", "EQUALS", ss("Equity")),
    "not_equity_debt": attr("fund_categories", "NOT_EQUALS", ss("Debt", "Equity")),
    "has_elss": attr("fund_categories", "CONTAINS", s("ELSS")),
    "no_elss": attr("fund_categories", "NOT_CONTAINS", s("ELSS")),
    "any_of": attr("fund_categories", "CONTAINS_ANY", s("Debt"), s("International")),
    "all_of": attr("fund_categories", "CONTAINS_ALL", s("Debt"), s("Equity")),
    "none_of": attr("fund_categories", "CONTAINS_NONE", s("Equity"), s("ELSS")),
    "categories_known": attr("fund_categories", "EXISTS"),
    "single_scheme": attr("number_of_schemes", "EQUALS", n(1)),
    "many_schemes": attr("number_of_schemes", "GREATER_THAN", n(2)),
    "schemes_between": attr("number_of_schemes", "BETWEEN", n(1), n(3)),
    "no_stp": attr("has_stp", "EQUALS", b(False)),
    "rich_inr": attr("total_aum", "GREATER_OR_EQUAL", money(5_000_000_00)),
    "poor_or_unknown": not_(attr("total_aum", "GREATER_THAN", money(2_000_000_00))),
    "recent_login": attr("last_login", "LESS_THAN", ts(NOW - timedelta(days=30))),
    "no_stp_lumpsum": all_(attr("has_stp", "EQUALS", b(False)), attr("investment_type", "EQUALS", s("Lumpsum"))),
    "nested": any_(
        all_(segment(REFERENCED), not_(event("lumpsum_invested", days=365))),
        all_(attr("fund_categories", "CONTAINS_NONE", s("International")), event("session_start", days=30)),
    ),
    "referenced": segment(REFERENCED),
    "not_referenced": not_(segment(REFERENCED)),
}


@pytest.fixture
async def loaded(database_url: str) -> AsyncIterator[tuple[Database, World]]:
    world = _dataset()
    db = Database(database_url)
    await db.migrate(MIGRATIONS)
    async with db.transaction() as session:
        await store.upsert_profiles(
            session, [ProfileUpdate(pid, dict(values)) for pid, values in world.attributes.items()], NOW
        )
        await store.insert_events(
            session,
            [
                IncomingEvent(f"{pid}-{i}", pid, e.name, e.occurred_at, dict(e.properties))
                for pid, history in world.events.items()
                for i, e in enumerate(history)
            ],
            NOW,
        )
        await store.insert_segment(
            session,
            store.SegmentRow(REFERENCED, "referenced", "", b"", store.PUBLISHED, 1, 0, NOW, NOW),
        )
        members = [(REFERENCED, 1, pid) for pid in sorted(world.memberships[REFERENCED])]
        await store.apply_membership_changes(session, members, {}, NOW)
    yield db, world
    await db.dispose()


async def test_sql_selects_what_the_reference_evaluator_selects(loaded: tuple[Database, World]) -> None:
    db, world = loaded
    sizes = {}
    async with db.transaction() as session:
        for name, proto in RULES.items():
            rule = parse_rule(proto)
            expected = members(rule, world, NOW)
            got = set((await session.execute(compile_rule(rule, NOW))).scalars())
            assert got == expected, (
                f"{name}: SQL-only {sorted(got - expected)}, reference-only {sorted(expected - got)}"
            )
            sizes[name] = len(expected)
    # Every rule must split the dataset, or the comparison above proves little.
    trivial = {name: size for name, size in sizes.items() if size in (0, len(world.attributes))}
    assert trivial == {}


async def test_stored_attributes_read_back_as_written(loaded: tuple[Database, World]) -> None:
    db, world = loaded
    async with db.transaction() as session:
        stored = await store.attributes_of(session, sorted(world.attributes), None)
    assert {pid: values for pid, values in stored.items()} == {
        pid: values for pid, values in world.attributes.items() if values
    }
