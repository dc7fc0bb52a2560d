"""`python -m services.migrate <service>` brings a real database to the newest schema, as an init container does."""

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from plumbing.db import Database
from services.migrate import TARGETS, LockWaitTooLong, migrate

ROOT = Path(__file__).resolve().parents[2]


def run_migrate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.migrate", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def tables_and_revision(url: str) -> tuple[set[str], str]:
    db = Database(url)
    try:
        async with db.engine.connect() as connection:
            tables = set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
            revision = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        return tables, revision
    finally:
        await db.dispose()


def head_revision(migrations: Path) -> str:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


@pytest.mark.parametrize("service", sorted(TARGETS))
async def test_migrates_each_service_to_head_and_is_rerunnable(
    service: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"XSELL_{service.upper()}_DATABASE_URL", database_url)
    settings, migrations = TARGETS[service]()

    await migrate(service, settings, migrations)
    tables, revision = await tables_and_revision(database_url)
    assert revision == head_revision(migrations)
    assert "alembic_version" in tables and len(tables) > 1

    # A second pod's init container finds the schema current and changes nothing.
    await migrate(service, settings, migrations)
    assert await tables_and_revision(database_url) == (tables, revision)


@pytest.mark.postgres
async def test_replicas_migrating_at_once_take_turns(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the advisory lock both runners issue the same CREATE TABLEs and one fails.
    monkeypatch.setenv("XSELL_SEGMENTS_DATABASE_URL", postgres_url)
    settings, migrations = TARGETS["segments"]()
    await asyncio.gather(*(migrate("segments", settings, migrations) for _ in range(3)))
    assert (await tables_and_revision(postgres_url))[1] == head_revision(migrations)


@pytest.mark.postgres
async def test_a_migration_waiting_for_a_table_lock_gives_up_with_nothing_applied(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A running pod's transaction has read attribution's outreaches; 0010 widens a column of that table (an ACCESS
    # EXCLUSIVE lock), which would hold every later write to it behind the ALTER while it waits.
    monkeypatch.setenv("XSELL_ATTRIBUTION_DATABASE_URL", postgres_url)
    settings, migrations = TARGETS["attribution"]()
    db = Database(postgres_url)
    try:
        await db.migrate(migrations, revision="0009")
        async with db.engine.connect() as running_pod:
            await running_pod.execute(text("SELECT count(*) FROM outreaches"))
            with pytest.raises(LockWaitTooLong, match="nothing was applied"):
                await migrate("attribution", settings, migrations, lock_timeout=timedelta(milliseconds=300))
            assert (await tables_and_revision(postgres_url))[1] == "0009"
            await running_pod.rollback()
        # Once the transaction ends, the retry (the init container's restart) applies it.
        await migrate("attribution", settings, migrations, lock_timeout=timedelta(milliseconds=300))
        assert (await tables_and_revision(postgres_url))[1] == head_revision(migrations)
    finally:
        await db.dispose()


def test_the_entry_point_migrates_from_the_environment_and_exits(database_url: str) -> None:
    result = run_migrate("gateway", env={"XSELL_GATEWAY_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert '"migrations_applied"' in result.stdout + result.stderr
    tables, _ = asyncio.run(tables_and_revision(database_url))
    assert "alembic_version" in tables


def test_an_unknown_service_is_refused_with_the_valid_names() -> None:
    result = run_migrate("billing", env={})
    assert result.returncode == 2
    assert "invalid choice: 'billing'" in result.stderr
    assert "segments" in result.stderr and "gateway" in result.stderr


def test_an_unreachable_database_fails_the_container() -> None:
    # Nothing listens on port 1: the init container must fail (and be restarted), not report success.
    result = run_migrate(
        "campaigns", env={"XSELL_CAMPAIGNS_DATABASE_URL": "postgresql+asyncpg://xsell:x@127.0.0.1:1/campaigns"}
    )
    assert result.returncode != 0
    assert '"migrations_applied"' not in result.stdout + result.stderr
