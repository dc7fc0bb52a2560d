"""Attribution bench (issue 6): disbursement → views updated at a steady rate, and recompute of a month.

    .venv/bin/python -m bench.attribution                       # 1M outreaches, 50k conversions (goal scale)
    .venv/bin/python -m bench.attribution --scale 0.02          # 20k / 1k: a quick run

1. A month of ledger (outreaches over 30 days, funnel steps, send costs, conversions with their
   disbursements) is written set-based into a fresh SQLite database at the service's head revision.
2. **Recompute**: `reconcile --fix` rebuilds every rollup row from that ledger (goal ≤ 10 s at 1M/50k).
   Beside it, the same views computed from the ledger on request (what a dashboard load would cost
   without rollup rows) against the rollup read the service does.
3. **Live**: the real service (gRPC, NATS) on that database; loans of not-yet-converted outreaches are
   applied and sanctioned, then disbursed at `--rate` per second; each disbursement's "views updated"
   time runs from sending RecordDisbursement to a GetAttributionReport that returned after it (the
   rollup moves in the disbursement's transaction, so that read includes it). Goal: p99 ≤ 1 s.

The figure lands in bench/results/attribution-<backend>.json (other scales: bench/results/scale-<s>/);
`--backend postgresql` runs it on the embedded PostgreSQL.
"""

import argparse
import asyncio
import json
import logging
import random
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median, quantiles
from typing import Any

import grpc
import structlog
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import insert

from bench.postgres import BenchPostgres
from devstack.nats_server import NatsServer
from plumbing.db import Database
from services.attribution import store, views
from services.attribution.app import MIGRATIONS, build
from services.attribution.reconcile import reconcile
from services.attribution.reporting import labels_key
from services.attribution.revenue import NimFlatModel
from services.attribution.settings import AttributionSettings
from xsell.attribution.v1 import service_pb2, service_pb2_grpc
from xsell.type.v1 import money_pb2

MONTH_START = datetime(2025, 10, 31, 18, 30, tzinfo=UTC)  # 1 November 00:00 IST
TRIGGERS = [f"T{n:02d}" for n in range(1, 17)]
CHANNELS = ("email", "sms", "whatsapp", "push")
SEND_COST = {"email": 50, "sms": 25, "whatsapp": 80, "push": 2}
LABELS = ("Cross-Sell – MSME", "Cross-Sell – Retail", "Upsell – Top-up", "Festive", "Pre-approved")
MODEL = NimFlatModel(260, 10)
BATCH = 10_000
UTC_OFFSET = 330


def _outreach(index: int, rng: random.Random) -> dict[str, Any]:
    # As in production, a campaign has one channel and one set of labels: 48 campaigns over 16 triggers.
    trigger = rng.choice(TRIGGERS)
    variant = index % 3
    return {
        "campaign_id": f"CSELL-NOV-{trigger}-{index:07d}",
        "campaign_key": f"cmp_{trigger.lower()}_{variant}",
        "profile_id": f"prf_{index}",
        "channel": CHANNELS[(int(trigger[1:]) + variant) % len(CHANNELS)],
        "trigger_code": trigger,
        "product_code": "MSME_WC_TOPUP" if int(trigger[1:]) % 2 else "PL_TOPUP",
        "labels": [LABELS[int(trigger[1:]) % len(LABELS)]],
        "category": "upsell_increase_value",
        "created_at": MONTH_START + timedelta(seconds=rng.randrange(30 * 86_400)),
    }


async def build_ledger(db: Database, outreaches: int, conversions: int, seed: int) -> list[dict[str, Any]]:
    """Writes the month set-based, in batches; returns the outreaches left unconverted (for the live part)."""
    rng = random.Random(seed)
    converted = set(rng.sample(range(outreaches), conversions))
    spare: list[dict[str, Any]] = []
    for start in range(0, outreaches, BATCH):
        rows, steps, costs, loans, disbursements = [], [], [], [], []
        for index in range(start, min(outreaches, start + BATCH)):
            row = _outreach(index, rng)
            rows.append({**row, "labels_key": labels_key(row["labels"])})
            sent_at = row["created_at"]
            costs.append(
                {
                    "campaign_id": row["campaign_id"],
                    "kind": "send",
                    "amount_paise": SEND_COST[row["channel"]],
                    "currency_code": "INR",
                    "ref": "",
                    "at": sent_at,
                }
            )
            reached = ["sent", "delivered"] + (["opened"] if rng.random() < 0.3 else [])
            if index in converted:
                reached += ["opened", "clicked", "responded", "applied", "sanctioned", "disbursed"]
            for offset, step in enumerate(dict.fromkeys(reached)):
                at = sent_at + timedelta(days=offset * rng.uniform(0.2, 2.5))
                steps.append({"campaign_id": row["campaign_id"], "step": step, "first_at": at})
                if step == "disbursed":
                    amount = rng.randrange(5, 50) * 1_00_000_00
                    revenue = MODEL.price(amount)
                    loan = f"LA-{index}"
                    loans.append(
                        {
                            "loan_number": loan,
                            "campaign_id": row["campaign_id"],
                            "product_code": row["product_code"],
                            "stage": "disbursed",
                            "currency_code": "INR",
                            "sanctioned_paise": amount,
                            "disbursed_paise": amount,
                            "applied_at": sent_at,
                            "sanctioned_at": sent_at,
                            "first_disbursed_at": at,
                            "last_disbursed_at": at,
                        }
                    )
                    disbursements.append(
                        {
                            "disbursement_id": f"D-{index}",
                            "loan_number": loan,
                            "campaign_id": row["campaign_id"],
                            "amount_paise": amount,
                            "currency_code": "INR",
                            "disbursed_at": at,
                            "lifetime_revenue_paise": revenue.lifetime_paise,
                            "year1_revenue_paise": revenue.year1_paise,
                            "revenue_model": "default",
                            "recorded_at": at,
                        }
                    )
            if index not in converted and len(spare) < 20_000:
                spare.append(row)
        async with db.transaction() as session:
            await session.execute(insert(store.outreaches), rows)
            await session.execute(insert(store.funnel_steps), steps)
            await session.execute(insert(store.costs), costs)
            if loans:
                await session.execute(insert(store.loans), loans)
                await session.execute(insert(store.disbursements), disbursements)
    return spare


async def time_views(db: Database) -> dict[str, float]:
    """A month's view from rollup rows (what the service does) against computing it from the ledger."""
    month = views.ReportFilter(start_date="2025-11-01", end_date="2025-11-30")
    rollup, ledger = [], []
    for _ in range(3):
        async with db.transaction() as session:
            started = time.perf_counter()
            await views.report(session, month, "trigger_code")
            rollup.append(time.perf_counter() - started)
            started = time.perf_counter()
            await views.recompute(session, UTC_OFFSET)
            ledger.append(time.perf_counter() - started)
    return {"view_from_rollup_ms": round(min(rollup) * 1000, 1), "view_from_ledger_ms": round(min(ledger) * 1000, 1)}


def _inr(paise: int) -> money_pb2.Money:
    return money_pb2.Money(minor_units=paise, currency_code="INR")


def _disbursement(index: int, row: dict[str, Any]) -> service_pb2.RecordDisbursementRequest:
    return service_pb2.RecordDisbursementRequest(
        request_id=f"dis-{index}",
        disbursement_id=f"LIVE-D-{index}",
        loan_number=f"LIVE-{index}",
        campaign_id=row["campaign_id"],
        amount=_inr(10**9),
    )


async def live(url: str, var: Path, spare: list[dict[str, Any]], rate: float, seconds: float) -> dict[str, Any]:
    nats = NatsServer(var / "nats").start(var / "nats.log")
    settings = AttributionSettings(  # type: ignore[call-arg]
        grpc_port=0, nats_url=nats.url, database_url=url, var_dir=var
    )
    process = await build(settings, TracerProvider())
    await process.start()
    total = min(len(spare), int(rate * seconds))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{process.server.port}") as channel:
            stub = service_pb2_grpc.AttributionServiceStub(channel)
            for index, row in enumerate(spare[:total]):
                loan = f"LIVE-{index}"
                await stub.RecordApplication(
                    service_pb2.RecordApplicationRequest(
                        request_id=f"app-{index}", loan_number=loan, campaign_id=row["campaign_id"]
                    )
                )
                await stub.RecordSanction(
                    service_pb2.RecordSanctionRequest(
                        request_id=f"san-{index}", loan_number=loan, campaign_id=row["campaign_id"], amount=_inr(10**9)
                    )
                )
            report = service_pb2.GetAttributionReportRequest(
                filter=service_pb2.ReportFilter(start_date="2025-11-01", end_date="2025-11-30")
            )
            # Closed loop first, one call at a time: what each costs when nothing queues.
            serial = max(1, min(50, total // 5))
            unloaded_disbursement, unloaded_report = [], []
            for index, row in enumerate(spare[:serial]):
                started = time.perf_counter()
                await stub.RecordDisbursement(_disbursement(index, row))
                unloaded_disbursement.append(time.perf_counter() - started)
                started = time.perf_counter()
                await stub.GetAttributionReport(report)
                unloaded_report.append(time.perf_counter() - started)

            # Then the open loop: disbursements keep their schedule however slow the answers are, while a
            # dashboard polls the month's view back to back. A disbursement's views are updated at the end
            # of the first poll that started after its call returned (the rollup moved in its transaction).
            committed: list[tuple[float, float]] = []
            polls: list[tuple[float, float]] = []
            sending = True

            async def one(index: int, row: dict[str, Any]) -> None:
                started = time.perf_counter()
                await stub.RecordDisbursement(_disbursement(index, row))
                committed.append((started, time.perf_counter()))

            async def poll() -> None:
                while sending or len(committed) < total - serial:
                    started = time.perf_counter()
                    await stub.GetAttributionReport(report)
                    polls.append((started, time.perf_counter()))

            poller = asyncio.create_task(poll())
            tasks = []
            began = time.perf_counter()
            for index, row in enumerate(spare[serial:total], start=serial):
                delay = began + (index - serial) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(index, row)))
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - began
            sending = False
            await poller
            await stub.GetAttributionReport(report)
            polls.append((time.perf_counter(), time.perf_counter()))
            latencies = [min(end for start, end in polls if start >= returned) - sent for sent, returned in committed]
    finally:
        await process.stop(1)
        nats.stop()
    cuts = quantiles(latencies, n=100)
    return {
        "disbursements": total - serial,
        "unloaded_disbursement_p50_ms": round(median(unloaded_disbursement) * 1000, 1),
        "unloaded_report_p50_ms": round(median(unloaded_report) * 1000, 1),
        "dashboard_polls": len(polls),
        "achieved_rate_per_s": round((total - serial) / elapsed, 1),
        "views_updated_p50_ms": round(median(latencies) * 1000, 1),
        "views_updated_p99_ms": round(cuts[98] * 1000, 1),
        "goal_p99_ms": 1000,
    }


async def main(args: argparse.Namespace) -> int:
    # The service's info logs would cost the measured process as much as the work; warnings still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    outreaches = max(1000, int(1_000_000 * args.scale))
    conversions = max(50, int(50_000 * args.scale))
    var = args.var.resolve()
    await asyncio.to_thread(shutil.rmtree, var, True)
    var.mkdir(parents=True)
    postgres = None
    if args.backend == "postgresql":
        # Its own cluster beside the run folder, kept between runs (initdb is slow); a fresh database each run.
        postgres = BenchPostgres(args.var.resolve().parent / "attribution-pg").start()
        await postgres.configure()
        await postgres.recreate_database("bench_attribution")
        url = postgres.url("bench_attribution")
    else:
        url = f"sqlite+aiosqlite:///{var / 'attribution.db'}"
    try:
        return await _measure(args, url, var, outreaches, conversions)
    finally:
        if postgres is not None:
            try:
                postgres.stop()
            except subprocess.CalledProcessError:
                # The library's cleanup already stopped it; pg_ctl then finds no server, which is the goal.
                print("postgresql: already stopped")


async def _measure(args: argparse.Namespace, url: str, var: Path, outreaches: int, conversions: int) -> int:
    db = Database(url)
    try:
        await db.migrate(MIGRATIONS)
        started = time.perf_counter()
        spare = await build_ledger(db, outreaches, conversions, args.seed)
        print(f"ledger: {outreaches} outreaches, {conversions} conversions in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        result = await reconcile(db, UTC_OFFSET, fix=True)
        recompute_s = time.perf_counter() - started
        print(f"recompute of the month: {recompute_s:.2f}s ({result.rows_checked} rollup rows)")
        timings = await time_views(db)
        print(
            f"a month's view: {timings['view_from_rollup_ms']} ms from rollup rows, "
            f"{timings['view_from_ledger_ms']} ms from the ledger"
        )
    finally:
        await db.dispose()
    live_figures = await live(url, var, spare, args.rate, args.seconds)
    print(
        f"unloaded: RecordDisbursement {live_figures['unloaded_disbursement_p50_ms']} ms, "
        f"GetAttributionReport {live_figures['unloaded_report_p50_ms']} ms (p50)"
    )
    print(
        f"disbursement → views updated at {live_figures['achieved_rate_per_s']}/s: "
        f"p50 {live_figures['views_updated_p50_ms']} ms, p99 {live_figures['views_updated_p99_ms']} ms"
    )
    figure = {
        "name": "attribution",
        "backend": args.backend,
        "scale": args.scale,
        "seed": args.seed,
        "outreaches": outreaches,
        "conversions": conversions,
        "recompute_month_s": round(recompute_s, 2),
        "goal_recompute_s": 10,
        "rollup_rows": result.rows_checked,
        **timings,
        **live_figures,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
    }
    results = args.results if args.scale == 1.0 else args.results / f"scale-{args.scale:g}"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"attribution-{args.backend}.json").write_text(json.dumps(figure, indent=2) + "\n")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.attribution", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 1M outreaches and 50k conversions")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rate", type=float, default=100.0, help="disbursements per second in the live part")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the live part sends")
    parser.add_argument("--var", type=Path, default=Path("var/bench/attribution"))
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
