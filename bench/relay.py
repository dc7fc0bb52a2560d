"""python -m bench.relay: the outbox relay's CPU per event against the floor of raw acknowledged publishes.

Every service's events leave through plumbing.outbox.OutboxRelay, so its cost per event is part of
every figure of issues 3-6 (a trigger's outreach-created and dispatch-requested events, a message's
delivery updates). The floor is the same messages published with nats.py alone, a batch at a time as
the relay does, each with a reply subject on one inbox whose acks are only counted: no database, no
spans. nats.py's own JetStream API (js.publish, gathered per batch) is measured beside it.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData

from bench.results import machine_info
from devstack.nats_server import NatsServer
from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER, Bus
from plumbing.db import Database
from plumbing.outbox import BATCH_SIZE, Outbox, OutboxRelay, outbox_table
from plumbing.telemetry import outreach_ids, outreach_span, setup_tracing
from xsell.campaigns.v1 import events_pb2

SUBJECT = "bench.relay.dispatch_requested"


async def _relay(bus: Bus, run_dir: Path, events: int, batch_size: int) -> dict[str, Any]:
    """Events written as a service writes them (one outreach span each), then relayed to the end."""
    provider = setup_tracing("bench-relay", run_dir)
    tracer = provider.get_tracer("bench")
    db = Database(f"sqlite+aiosqlite:///{run_dir / 'relay.db'}")
    metadata = MetaData()
    table = outbox_table(metadata)
    async with db.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    outbox = Outbox(table)
    rows = []
    for number in range(events):
        campaign_id = f"CSELL-NOV-T06-{number:06d}"
        with outreach_span(tracer, "outreach.create", campaign_id, root=True):
            rows.append(
                outbox.event(SUBJECT, events_pb2.DispatchRequested(campaign_id=campaign_id), campaign_id=campaign_id)
            )
    async with db.transaction() as session:
        await outbox.add_rows(session, rows)
    relay = OutboxRelay(db, table, bus, tracer, batch_size=batch_size)
    # The outreach spans are exported now, so their export (on the processor's thread) is not counted below.
    provider.force_flush()
    cpu, wall = time.process_time(), time.perf_counter()
    published = 0
    while published < events:
        published += await relay.publish_pending()
    provider.force_flush()  # the spans' export is part of the cost
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    provider.shutdown()
    await db.dispose()
    return {"cpu_us_per_event": round(cpu / events * 1e6, 1), "events_per_s": round(events / wall)}


def _messages(events: int) -> list[tuple[bytes, dict[str, str]]]:
    """Payloads and headers of the relay's shape: message id, trace context, campaign ID."""
    messages = []
    for number in range(events):
        campaign_id = f"CSELL-NOV-F00-{number:06d}"
        trace_id, span_id = outreach_ids(campaign_id)
        headers = {
            MSG_ID_HEADER: f"floor-{number}-{time.monotonic_ns()}",
            "traceparent": f"00-{trace_id:032x}-{span_id:016x}-01",
            CAMPAIGN_ID_HEADER: campaign_id,
        }
        messages.append((events_pb2.DispatchRequested(campaign_id=campaign_id).SerializeToString(), headers))
    return messages


async def _floor(bus: Bus, events: int, batch_size: int) -> dict[str, Any]:
    """The least nats.py can do per acknowledged publish: plain publishes with a reply subject each on one
    inbox, a batch at a time, the acks only counted (no database, no spans, no ack parsing)."""
    messages = _messages(events)
    inbox = bus.nc.new_inbox()
    acked = 0
    all_acked = asyncio.Event()
    wanted = 0

    async def ack(_msg: object) -> None:
        nonlocal acked
        acked += 1
        if acked == wanted:
            all_acked.set()

    subscription = await bus.nc.subscribe(f"{inbox}.>", cb=ack)
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, events, batch_size):
        batch = messages[start : start + batch_size]
        all_acked.clear()
        wanted = start + len(batch)
        for index, (payload, headers) in enumerate(batch):
            await bus.nc.publish(SUBJECT, payload, reply=f"{inbox}.{start + index}", headers=headers)
        await all_acked.wait()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await subscription.unsubscribe()
    return {"cpu_us_per_event": round(cpu / events * 1e6, 1), "events_per_s": round(events / wall)}


async def _js_publish(bus: Bus, events: int, batch_size: int) -> dict[str, Any]:
    """The same messages through nats.py's JetStream API (js.publish), a batch gathered at a time: what the
    relay cost per event before it published batches itself."""
    messages = _messages(events)
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, events, batch_size):
        batch = messages[start : start + batch_size]
        await asyncio.gather(*(bus.js.publish(SUBJECT, payload, headers=headers) for payload, headers in batch))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_us_per_event": round(cpu / events * 1e6, 1), "events_per_s": round(events / wall)}


async def main(args: argparse.Namespace) -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="xsell-bench-relay-"))
    nats = NatsServer(run_dir / "nats").start()
    try:
        bus = await Bus.connect(nats.url, name="bench-relay")
        await bus.js.add_stream(name="BENCH_RELAY", subjects=["bench.relay.>"])
        rounds = []
        for _ in range(args.rounds):
            # Alternated, so the machine's other load falls on both alike.
            rounds.append({"floor": await _floor(bus, args.events, args.batch_size)})
            rounds[-1]["js_publish"] = await _js_publish(bus, args.events, args.batch_size)
            rounds[-1]["relay"] = await _relay(bus, run_dir, args.events, args.batch_size)
            await bus.js.purge_stream("BENCH_RELAY")
        await bus.nc.close()
    finally:
        nats.stop()
    relay_cpu = min(r["relay"]["cpu_us_per_event"] for r in rounds)
    floor_cpu = min(r["floor"]["cpu_us_per_event"] for r in rounds)
    js_cpu = min(r["js_publish"]["cpu_us_per_event"] for r in rounds)
    document = {
        "name": "relay",
        "command": "python -m bench.relay " + " ".join(sys.argv[1:]),
        "events": args.events,
        "batch_size": args.batch_size,
        "rounds": rounds,
        "relay_cpu_us_per_event": {"value": relay_cpu, "unit": "µs CPU per event (best round)"},
        "floor_cpu_us_per_event": {"value": floor_cpu, "unit": "µs CPU per event (best round)"},
        "js_publish_cpu_us_per_event": {"value": js_cpu, "unit": "µs CPU per event (best round)"},
        "ratio_to_floor": round(relay_cpu / floor_cpu, 2),
        "goal": "none of its own: a part of every service's per-event cost (issues 3-6)",
        "machine": await machine_info(None),
        "load_average_at_write": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(
        f"relay {relay_cpu:.0f} µs CPU/event, raw acknowledged-publish floor {floor_cpu:.0f} µs: "
        f"{document['ratio_to_floor']}×; nats.py js.publish {js_cpu:.0f} µs "
        f"({args.events:,} events, batches of {args.batch_size})"
    )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "relay.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="the relay's batch (OutboxRelay's default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
