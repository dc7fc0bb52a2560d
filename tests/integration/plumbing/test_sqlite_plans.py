"""Prebuilt statements run on the sqlite3 driver by an InlineSession (plumbing.sqlite_plans) give what SQLAlchemy's
Connection gives: the same rows, converted by the same types, under the same keys; UPDATEs their rowcount; errors as
DBAPIError. Statements a plan cannot run, or built for one call, still run through SQLAlchemy."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Boolean, Column, Integer, MetaData, String, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError

from plumbing import sqlite_plans
from plumbing.db import Database, InlineSession, UtcDateTime

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("thing_id", Integer, primary_key=True),
    Column("name", String(40), nullable=False, unique=True),
    Column("seen_at", UtcDateTime(), nullable=False),
    Column("tags", JSON, nullable=False),
    Column("active", Boolean, nullable=False),
)
AT = datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=UTC)

BY_NAMES = select(things).where(things.c.name.in_(bindparam("names", expanding=True)), things.c.active.is_(True))
LATEST = (
    select(things.c.name, func.max(things.c.seen_at))
    .where(things.c.seen_at >= bindparam("since"))
    .group_by(things.c.name)
)
FIRST_N = select(things.c.name).order_by(things.c.thing_id).limit(bindparam("n", type_=Integer, literal_execute=True))
RENAME = update(things).where(things.c.name == bindparam("p_old")).values(name=bindparam("p_new"))


@pytest.fixture
async def db(tmp_path: Path) -> Any:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'plans.db'}")
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    async with database.transaction() as session:
        await session.execute(
            insert(things),
            [
                {"thing_id": n, "name": f"t{n}", "seen_at": AT, "tags": {"n": n, "labels": ["a"]}, "active": n != 3}
                for n in range(1, 6)
            ],
        )
    yield database
    await database.dispose()


async def _both(db: Database, statement: Any, params: dict[str, Any]) -> tuple[list[Any], list[Any], bool]:
    """The statement's rows through the transaction's Connection, then through the session twice (its second run is
    the plan's), and whether it was planned."""

    async def work(session: Any) -> tuple[list[Any], list[Any], bool]:
        assert isinstance(session, InlineSession)
        connection = session.sync_session.connection()
        expected = [(tuple(row), dict(row._mapping)) for row in connection.execute(statement, params)]
        await session.execute(statement, params)  # seen once
        planned = sqlite_plans.plan_for(statement, params, connection.dialect) is not None
        got = [(tuple(row), dict(row._mapping)) for row in await session.execute(statement, params)]
        return expected, got, planned

    return await db.read_inline(work)


@pytest.mark.parametrize("names", [["t1", "t2", "t3"], ["t4"], [], ["t1", "t2", "t4", "t5", "nobody"]])
async def test_a_planned_select_gives_the_connections_rows_for_any_length_of_its_in_list(
    db: Database, names: list[str]
) -> None:
    expected, got, planned = await _both(db, BY_NAMES, {"names": names})
    assert planned
    assert got == expected
    for _row, mapping in got:
        assert isinstance(mapping["seen_at"], datetime) and mapping["seen_at"] == AT  # UtcDateTime's processor
        assert mapping["tags"]["labels"] == ["a"]  # JSON's
        assert mapping["active"] is True  # Boolean's


async def test_a_planned_aggregate_and_a_literal_limit_give_the_connections_rows(db: Database) -> None:
    expected, got, planned = await _both(db, LATEST, {"since": AT})
    assert planned and got == expected and len(got) == 5
    for limit in (2, 4):
        expected, got, planned = await _both(db, FIRST_N, {"n": limit})
        assert planned and got == expected == [((f"t{n}",), {"name": f"t{n}"}) for n in range(1, limit + 1)]


async def test_a_planned_update_reports_its_rowcount_and_a_failure_as_sqlalchemy_does(db: Database) -> None:
    async def renames(session: Any) -> list[int]:
        counts = []
        for old, new in (("t1", "u1"), ("t2", "u2"), ("nobody", "u9")):
            counts.append((await session.execute(RENAME, {"p_old": old, "p_new": new})).rowcount)
        return counts

    assert await db.write_inline(renames) == [1, 1, 0]
    assert sqlite_plans.plan_for(RENAME, {"p_old": "x", "p_new": "y"}, _dialect(db)) is not None

    async def clash(session: Any) -> None:
        await session.execute(RENAME, {"p_old": "t3", "p_new": "t4"})  # name is unique

    with pytest.raises(DBAPIError):
        await db.write_inline(clash)

    async def names(session: Any) -> list[str]:
        return list((await session.execute(select(things.c.name).order_by(things.c.thing_id))).scalars())

    assert await db.read_inline(names) == ["u1", "u2", "t3", "t4", "t5"]  # the failed transaction left nothing


def _dialect(db: Database) -> Any:
    return db._inline_sync_sessions_made().kw["bind"].dialect


async def test_statements_a_plan_cannot_run_or_built_for_one_call_are_left_to_sqlalchemy(db: Database) -> None:
    dialect = _dialect(db)
    add = insert(things)
    values = {"thing_id": 9, "name": "t9", "seen_at": AT, "tags": {}, "active": True}
    for _ in range(3):
        assert sqlite_plans.plan_for(add, values, dialect) is None  # an INSERT's SQL follows its parameters
    with_options = select(things.c.name).execution_options(yield_per=10)
    for _ in range(3):
        assert sqlite_plans.plan_for(with_options, None, dialect) is None
    for _ in range(3):
        assert sqlite_plans.plan_for(BY_NAMES, [{"names": ["t1"]}], dialect) is None  # executemany
    for _ in range(3):
        built_now = select(things.c.name).where(things.c.thing_id == 1)
        assert sqlite_plans.plan_for(built_now, None, dialect) is None  # a new statement each time: seen once
