"""The key store on both backends, and the `python -m gateway keys` commands on a real database."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway import scopes
from gateway.__main__ import keys_command, parser
from gateway.app import MIGRATIONS
from gateway.keys import ApiKey, hash_secret
from gateway.settings import GatewaySettings
from gateway.store import KeyStore
from plumbing.db import Database
from plumbing.errors import NotFound

REPO = Path(__file__).resolve().parents[3]


async def test_keys_are_added_listed_revoked_and_replaced(database_url: str) -> None:
    db = Database(database_url)
    await db.migrate(MIGRATIONS)
    store = KeyStore(db)
    created = datetime(2025, 11, 3, 9, 30, tzinfo=UTC)
    crm = ApiKey("01crm", "crm-prod", hash_secret("crm-secret"), frozenset({scopes.CRM_LEADS}), created)
    los = ApiKey("01los", "los-prod", hash_secret("los-secret"), frozenset({scopes.LOS_EVENTS}), created + timedelta(1))
    await store.add(crm)
    await store.add(los)
    assert await store.get("01crm") == crm
    assert await store.get("01nope") is None
    assert [key.key_id for key in await store.list()] == ["01crm", "01los"]

    revoked_at = created + timedelta(days=2)
    assert (await store.revoke("01crm", revoked_at)).revoked_at == revoked_at
    assert (await store.revoke("01crm", revoked_at + timedelta(1))).revoked_at == revoked_at, "first revocation wins"
    with pytest.raises(NotFound):
        await store.revoke("01nope", revoked_at)

    replaced = ApiKey("01crm", "bootstrap", hash_secret("new"), frozenset({scopes.ADMIN}), created + timedelta(3))
    await store.put(replaced)
    stored = await store.get("01crm")
    assert stored is not None
    assert (stored.client_name, stored.key_hash, stored.scopes, stored.revoked_at) == (
        "bootstrap",
        hash_secret("new"),
        frozenset({scopes.ADMIN}),
        None,
    )
    assert stored.created_at == created, "replacing keeps when the key id was first issued"
    await db.dispose()


async def test_keys_are_read_beside_a_writer_not_behind_it(database_url: str) -> None:
    db = Database(database_url)
    await db.migrate(MIGRATIONS)
    store = KeyStore(db)
    crm = ApiKey("01crm", "crm", hash_secret("s"), frozenset({scopes.CRM_LEADS}), datetime(2025, 11, 3, tzinfo=UTC))
    await store.add(crm)
    try:
        async with db.transaction() as writer:
            await writer.execute(text("DELETE FROM api_keys"))
            # Every request's key check reads here: it must not queue behind a write (on SQLite a read that took
            # the write lock itself would wait in the busy handler and fail at its timeout).
            assert await store.get("01crm") == crm
            assert [key.key_id for key in await store.list()] == ["01crm"]
    finally:
        await db.dispose()


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XSELL_GATEWAY_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


async def test_python_m_gateway_keys_create_issues_a_working_key(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    created = run_cli(database_url, "create", "--name", "crm-prod", "--scopes", "crm.leads,los.events")
    assert created.returncode == 0, created.stderr
    prefix, key_id, secret = created.stdout.strip().split("_", 2)
    assert prefix == "xsk"
    db = Database(database_url)
    stored = await KeyStore(db).get(key_id)
    await db.dispose()
    assert stored is not None
    assert (stored.client_name, stored.scopes) == ("crm-prod", frozenset({"crm.leads", "los.events"}))
    assert stored.key_hash == hash_secret(secret)


async def test_the_keys_commands_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = GatewaySettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")

    async def keys(*args: str) -> tuple[int, str, str]:
        code = await keys_command(parser().parse_args(["keys", *args]), settings)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = await keys("create", "--client", "los-prod", "--scope", "los.events", "--scope", "reports.read")
    assert code == 0
    _, key_id, secret = out.strip().split("_", 2)

    code, out, _ = await keys("list")
    assert code == 0
    assert key_id in out and "los-prod" in out and "los.events,reports.read" in out and "active" in out
    assert secret not in out

    assert (await keys("revoke", key_id))[0] == 0
    assert "revoked" in (await keys("list"))[1]
    code, _, err = await keys("revoke", "01unknown")
    assert code == 1 and "01unknown" in err
    code, _, err = await keys("create", "--name", "x", "--scopes", "everything")
    assert code == 2 and "unknown scopes" in err


async def test_the_keys_commands_set_and_drop_a_key_rate_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = GatewaySettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")

    async def keys(*args: str) -> tuple[int, str, str]:
        code = await keys_command(parser().parse_args(["keys", *args]), settings)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = await keys("create", "--name", "crm-bulk", "--scopes", "ingest", "--rate", "5")
    assert code == 0
    key_id = out.strip().split("_")[1]
    assert "5 calls/s (bursts of 10)" in (await keys("list"))[1]
    assert (
        (await keys("limit", key_id, "--rate", "0.5", "--burst", "3"))[1].strip().endswith("0.5 calls/s (bursts of 3)")
    )
    assert "the default rate limit" in (await keys("limit", key_id, "--default"))[1]
    assert "default rate limit" in (await keys("list"))[1]
    code, _, err = await keys("limit", key_id, "--burst", "3")
    assert code == 2 and "--burst needs --rate" in err
    code, _, err = await keys("limit", key_id, "--rate", "-1")
    assert code == 2 and "positive rate" in err
    code, _, err = await keys("limit", "01unknown", "--rate", "1")
    assert code == 1 and "01unknown" in err
