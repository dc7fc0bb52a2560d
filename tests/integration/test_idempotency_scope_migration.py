"""Each service's idempotency table, migrated to scoped request ids on SQLite and PostgreSQL, keeps its answers as
unscoped ones, and then holds one answer per (method, request_id, scope): two API keys may use the same request_id."""

from collections.abc import Callable
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from plumbing.db import Database

# The revision before scoped request ids, and theirs.
SERVICES = {
    "services.segments": ("0008", "0009"),
    "services.campaigns": ("0014", "0015"),
    "services.channels": ("0009", "0010"),
    "services.attribution": ("0010", "0011"),
}
_NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
_ROW = "INSERT INTO idempotency ({columns}) VALUES ({values})"


def _insert(*, scope: str | None) -> str:
    columns = [
        "method",
        "request_id",
        "request_hash",
        "response",
        "created_at",
        *(["scope"] if scope is not None else []),
    ]
    values = [f":{column}" for column in columns]
    return _ROW.format(columns=", ".join(columns), values=", ".join(values))


def _downgrade(migrations: Path, revision: str) -> Callable[[Connection], None]:
    def downgrade(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(migrations))
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    return downgrade


@pytest.mark.parametrize("service", SERVICES)
async def test_answers_kept_unscoped_and_two_scopes_share_a_request_id(database_url: str, service: str) -> None:
    before, scoped = SERVICES[service]
    migrations = import_module(f"{service}.app").MIGRATIONS
    row = {"method": "M", "request_id": "1", "request_hash": "h", "response": b"r", "created_at": _NOW}
    db = Database(database_url)
    try:
        await db.migrate(migrations, before)
        async with db.engine.begin() as connection:
            await connection.execute(text(_insert(scope=None)), row)
        await db.migrate(migrations, scoped)
        async with db.engine.begin() as connection:
            # A replica of the release before, during the rollout: its insert names no scope.
            await connection.execute(text(_insert(scope=None)), row | {"request_id": "2"})
            await connection.execute(text(_insert(scope="api_key:a")), row | {"scope": "api_key:a"})
            await connection.execute(text(_insert(scope="api_key:b")), row | {"scope": "api_key:b"})
        with pytest.raises(IntegrityError):
            async with db.engine.begin() as connection:
                await connection.execute(text(_insert(scope="api_key:a")), row | {"scope": "api_key:a"})
        async with db.engine.connect() as connection:
            kept = (await connection.execute(text("SELECT request_id, scope FROM idempotency ORDER BY 1, 2"))).all()
        assert [tuple(r) for r in kept] == [("1", ""), ("1", "api_key:a"), ("1", "api_key:b"), ("2", "")]
        async with db.engine.begin() as connection:
            await connection.run_sync(_downgrade(migrations, before))  # the scoped answers forgotten, the others kept
        async with db.engine.connect() as connection:
            kept = (await connection.execute(text("SELECT request_id FROM idempotency ORDER BY 1"))).all()
        assert [tuple(r) for r in kept] == [("1",), ("2",)]
    finally:
        await db.dispose()
