"""The key store on both backends, and the `python -m gateway keys` commands on a real database."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway import scopes
from gateway.app import MIGRATIONS
from gateway.keys import ApiKey, hash_secret
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


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XSELL_GATEWAY_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


async def test_the_keys_commands_issue_list_and_revoke(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    created = run_cli(database_url, "create", "--name", "crm-prod", "--scopes", "crm.leads,los.events")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "xsk"

    db = Database(database_url)
    stored = await KeyStore(db).get(key_id)
    await db.dispose()
    assert stored is not None
    assert stored.scopes == frozenset({"crm.leads", "los.events"})
    assert stored.key_hash == hash_secret(secret)

    listed = run_cli(database_url, "list")
    assert key_id in listed.stdout and "crm-prod" in listed.stdout and "active" in listed.stdout
    assert secret not in listed.stdout

    assert run_cli(database_url, "revoke", key_id).returncode == 0
    assert "revoked" in run_cli(database_url, "list").stdout
    assert run_cli(database_url, "revoke", "01unknown").returncode == 1
    refused = run_cli(database_url, "create", "--name", "x", "--scopes", "everything")
    assert refused.returncode == 2 and "unknown scopes" in refused.stderr
