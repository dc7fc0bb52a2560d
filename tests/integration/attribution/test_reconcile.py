"""Reconciliation finds drift between the views' rollup and the ledger, reports it, and rebuilds the rollup
(function and CLI, SQLite and PostgreSQL), while the service keeps serving."""

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from plumbing.bus import Bus
from plumbing.db import Database
from services.attribution.reconcile import reconcile
from tests.integration.attribution.seeding import running_service, seed_worked_example
from xsell.attribution.v1 import service_pb2, service_pb2_grpc

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def seeded(database_url: str, nats_url: str, nats_bus: Bus, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    async with running_service(database_url, nats_url, nats_bus, tmp_path) as service:
        await seed_worked_example(nats_bus, service.stub)
        yield database_url, f"127.0.0.1:{service.process.server.port}"


async def _total(target: str) -> service_pb2.GetAttributionReportResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.AttributionServiceStub(channel)
        return await stub.GetAttributionReport(service_pb2.GetAttributionReportRequest())


async def test_reconcile_reports_drift_and_rebuilds_the_rollup(seeded: tuple[str, str]) -> None:
    database_url, target = seeded
    before = await _total(target)
    db = Database(database_url)
    try:
        clean = await reconcile(db, 330)
        assert not clean.drift and clean.rows_checked == 6  # Nov 13 twice (T06, T01), 14, 15, 18, 22

        # Drift: a lost increment on the disbursement day, and a whole day's row gone.
        async with db.transaction() as session:
            await session.execute(
                text("UPDATE rollup SET disbursed_paise = disbursed_paise - 100 WHERE day = '2025-11-22'")
            )
            await session.execute(text("DELETE FROM rollup WHERE day = '2025-11-14'"))
        assert (await _total(target)).total.disbursed_amount.minor_units == 174_000_000 - 100

        drifted = await reconcile(db, 330)
        assert drifted.drift and not drifted.fixed
        described = [difference.describe() for difference in drifted.differences]
        assert (
            "2025-11-22 cmp_msme_gst CSELL T06 email MSME_WC_TOPUP: disbursed_paise is 173999900, "
            "the ledger says 174000000 (+100)"
        ) in described
        assert {d.column for d in drifted.differences if d.key[0] == "2025-11-14"} == {"cost_paise", "f_responded"}

        fixed = await reconcile(db, 330, fix=True)
        assert fixed.fixed
        assert not (await reconcile(db, 330)).drift
    finally:
        await db.dispose()
    assert await _total(target) == before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_cli_exits_1_on_drift_and_0_once_fixed(seeded: tuple[str, str]) -> None:
    database_url, _target = seeded
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await session.execute(text("UPDATE rollup SET sent = sent + 1 WHERE day = '2025-11-13'"))
    finally:
        await db.dispose()
    env = {**os.environ, "XSELL_ATTRIBUTION_DATABASE_URL": database_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.attribution.reconcile", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    report = await asyncio.to_thread(cli)
    assert report.returncode == 1, report.stderr
    assert "sent is" in report.stdout and "run with --fix to rebuild" in report.stdout
    fixed = await asyncio.to_thread(cli, "--fix")
    assert fixed.returncode == 0, fixed.stderr
    assert "fixed: the rollup was rebuilt from the ledger" in fixed.stdout
    again = await asyncio.to_thread(cli)
    assert again.returncode == 0 and "no drift: 6 rollup rows match the ledger" in again.stdout
