"""Property: for random rules and random data, the compiled SQL selects exactly what the reference evaluator selects.

Runs on SQLite and PostgreSQL; the schema is created once per backend and emptied between examples.
"""

from collections.abc import AsyncIterator
from datetime import datetime
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, Select, String, Text, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from services.segments import store
from services.segments.compiler import compile_rule, condition
from services.segments.records import IncomingEvent, ProfileUpdate
from services.segments.rules import World, members, parse_rule
from tests.unit.segments.test_properties import NOW, PROBES, REFERENCED, RULES, described, subtrees, worlds
from xsell.segments.v1 import resources_pb2 as r

# The tables a dataset touches, children first.
DATASET_TABLES = (store.memberships, store.events, store.profile_attributes, store.profiles, store.segments)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    # The compiler reads only the store's tables, so the schema comes straight from its metadata.
    async with database.engine.begin() as connection:
        await connection.run_sync(store.metadata.create_all)
    yield database
    await database.dispose()


def _placeholder(column: Any) -> Any:
    """A value for a required segments column this test does not care about."""
    if isinstance(column.type, DateTime):
        return NOW
    if isinstance(column.type, BigInteger | Integer):
        return 1
    if isinstance(column.type, LargeBinary):
        return b""
    if isinstance(column.type, String | Text):
        return "x"
    raise AssertionError(f"no placeholder for segments.{column.name} of type {column.type}")


async def _load(session: AsyncSession, world: World) -> None:
    for table in DATASET_TABLES:
        await session.execute(delete(table))
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
    # Written column by column so the test keeps working as the segments table grows.
    segment = {c.name: _placeholder(c) for c in store.segments.columns if not c.nullable and c.default is None} | {
        "segment_id": REFERENCED
    }
    await session.execute(insert(store.segments).values(**segment))
    referenced = sorted(world.memberships[REFERENCED])
    if referenced:
        await session.execute(
            insert(store.memberships),
            [
                {"segment_id": REFERENCED, "profile_id": pid, "segment_version": 1, "entered_at": NOW}
                for pid in referenced
            ],
        )


async def _check(db: Database, world: World, rules: list[r.Rule], now: datetime) -> None:
    async with db.transaction() as session:
        await _load(session, world)
        for rule in rules:
            tree = parse_rule(rule)
            expected = members(tree, world, now)
            got = set((await session.execute(compile_rule(tree, now))).scalars())
            assert got == expected, (
                f"SQL-only {sorted(got - expected)}, reference-only {sorted(expected - got)} for\n{described(rule)}"
            )
        # Every node of every rule, each on its own, then the window-edge probes (one query each).
        nodes = [node for rule in rules for node in subtrees(rule)]
        await _check_nodes(session, world, nodes, _nodes_query(nodes, now), now)
        await _check_nodes(session, world, PROBES, _probes_query(now), now)


def _nodes_query(nodes: list[r.Rule], now: datetime) -> Select[Any]:
    """Each node as one boolean column, per profile."""
    p = store.profiles.c.profile_id
    return select(p, *(condition(parse_rule(node), p, now).label(f"node_{i}") for i, node in enumerate(nodes)))


@cache
def _probes_query(now: datetime) -> Select[Any]:
    # Built once: the probes are the same for every example, and building them is the slow part.
    return _nodes_query(PROBES, now)


async def _check_nodes(
    session: AsyncSession, world: World, nodes: list[r.Rule], query: Select[Any], now: datetime
) -> None:
    """Each node's column of the query against the reference evaluator."""
    rows = (await session.execute(query)).all()
    for i, node in enumerate(nodes):
        got = {row[0] for row in rows if row[i + 1]}
        expected = members(parse_rule(node), world, now)
        assert got == expected, (
            f"SQL-only {sorted(got - expected)}, reference-only {sorted(expected - got)} for\n{described(node)}"
        )


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    # No shrinking: each example costs a database round trip, and shrinking one can outlast the test
    # timeout. The message already names the smallest failing node, as a rule file, and the data.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(world=worlds(), rules=st.lists(RULES, min_size=1, max_size=3))
async def test_compiled_sql_selects_what_the_reference_evaluator_selects(
    db: Database, world: World, rules: list[r.Rule]
) -> None:
    await _check(db, world, rules, NOW)
