"""Campaigns bench (issue 4): trigger -> dispatch requested latency, outreach creation rate, peak RSS.

    .venv/bin/python -m bench.campaigns              # goal scale: a 1M-person audience, 30k trigger events
    .venv/bin/python -m bench.campaigns --quick      # = --scale 0.02: 20k people, 1k events, about 2 minutes
    .venv/bin/python -m bench.campaigns --parts trigger --trigger-rate 200   # another rate: no result file
    .venv/bin/python -m bench.campaigns --backend postgresql   # the trigger part on the embedded PostgreSQL

The campaigns service runs as production runs it (`python -m services.campaigns`, SQLite, its own NATS
server). Segments is played by a small gRPC server in a child process that streams synthetic members
and answers profile look-ups, so the figures measure campaigns' own work (the gate, rendering, the
outbox and NATS) and its CPU does not delay this process's publishing or timestamps.

1. **Trigger**: MembershipChanged ENTERED published at 1k/s for a triggered campaign; each one's time
   from publish to its DispatchRequested received. Goal: p99 <= 20 ms.
   First, in the same minutes, the same drive against bench/trigger_floor.py (bare clients: a NATS consumer,
   one sqlite3 transaction per entry, a DispatchRequested published; no service) on a NATS server of its own:
   its latency is what the machine, NATS and this process take, and the service's p99 is reported over it.
2. **Release**: a send-now campaign on an audience of a tenth, then the whole; time from launch until
   every outreach is created. Goal: >= 10,000 outreach/s.
3. **Memory**: campaigns' peak RSS during both releases. Goal: the whole within 1.15x the tenth. Both are measured
   on a warm process: a release of a tenth runs first, unmeasured for the goal (its figures are reported as
   `warm_up`), so the ratio compares two audiences rather than a process's first seconds with its steady state;
   each measured release starts once the relay has published every event before it.
4. **The offer per person**: after them, a release of a tenth whose offer is decided per person (80% of a money
   attribute, capped and rounded, for people with a score of 750 or more: two thirds of the audience), reported
   as people decided per second and against the fixed offer's release of the same size (no goal of its own).
5. **Floor**: what the database allows, in the same run: the same number of outreach, outbox and
   contact-ledger rows as the whole release writes, of the same shape (payloads copied from the release's
   own rows), inserted with the standard library's sqlite3 (multi-row INSERTs of 500 rows as the release
   writes them, plumbing.sqlite_async.insert_values; a page per transaction, the service's pragmas) into
   a fresh database with the campaigns schema. The release's CPU per outreach and rate are reported
   against it.

On `--backend postgresql` the campaigns database is the bench's embedded PostgreSQL (bench.postgres, kept under
var/bench/pg, a fresh database each run) and the trigger part runs alone: the release's floor and its wait for the
relay read the SQLite file. The trigger floor then commits its row per entry to the same server (asyncpg).

Results: bench/results/campaigns.json, or campaigns-postgresql.json for the trigger part on PostgreSQL (other scales:
bench/results/scale-<s>/), each
figure with its unit, goal and verdict, the machine and package versions. Everything binds to
127.0.0.1 and every process started here is stopped at the end.
"""

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench import generator
from bench.postgres import BenchPostgres
from bench.results import Context, collector_paused, machine_info, write_result
from bench.service import ServiceProcess, loop_lag, profiled
from devstack.nats_server import NatsServer, free_port
from plumbing.bus import MSG_ID_HEADER, Bus
from plumbing.db import Database
from plumbing.ids import new_id
from plumbing.sqlite_async import insert_values
from plumbing.telemetry import read_spans
from services import streams
from services.campaigns.app import MIGRATIONS
from xsell.campaigns.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc
from xsell.segments.v1 import events_pb2 as segment_events
from xsell.segments.v1 import resources_pb2 as seg
from xsell.segments.v1 import service_pb2 as seg_service
from xsell.segments.v1 import service_pb2_grpc as seg_grpc
from xsell.type.v1 import channel_pb2, money_pb2

HOST = "127.0.0.1"
SERVICE = "xsell.campaigns.v1.CampaignsService"
FULL_AUDIENCE = 1_000_000
FULL_TRIGGER_EVENTS = 30_000
QUICK_SCALE = 0.02
TRIGGER_RATE = 1000.0
STREAM_CHUNK = 1000
RELEASE_PAGE_SIZE = 2000
GOAL_OUTREACH_PER_S = 10_000
GOAL_P99_MS = 20.0
RSS_TOLERANCE = 1.15
PARTS = ("trigger", "release")
BACKEND_PARTS = {"sqlite": PARTS, "postgresql": ("trigger",)}
"""The parts each backend runs (all of them make a full run, the one that writes the result file)."""
HTML = '<p>Dear {{ first_name }}, a lumpsum top-up awaits</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'


OFFER_SEGMENT = "offer"
"""Segment "offer-<n>": members with the attributes the per-person offer reads (bureau_score, preapproved_limit)."""
LAKH_PAISE = 1_00_000_00


def _score(index: int) -> float:
    return 700.0 + index % 150  # 750 or more for two people in three


def _member(profile_id: str, lending: bool = False) -> seg.Member:
    member = seg.Member(profile_id=profile_id)
    member.attributes["email"].string_value = f"{profile_id}@bench.example"
    member.attributes["first_name"].string_value = "Asha"
    if lending:
        index = int(profile_id[1:])
        member.attributes["bureau_score"].number_value = _score(index)
        limit = member.attributes["preapproved_limit"].money_value
        limit.minor_units, limit.currency_code = (index % 40 + 1) * LAKH_PAISE + 12_345_00, "INR"
    return member


def _per_person_offer() -> resources_pb2.Offer:
    score = seg.AttributeCondition(attribute="bureau_score", operator=seg.OPERATOR_GREATER_OR_EQUAL)
    score.values.add(number_value=750)
    return resources_pb2.Offer(
        product_code="PL_TOPUP",
        amount_rule=resources_pb2.OfferAmountRule(
            attribute="preapproved_limit",
            share_basis_points=8000,
            maximum=money_pb2.Money(minor_units=20 * LAKH_PAISE, currency_code="INR"),
            round_down_to=money_pb2.Money(minor_units=10_000_00, currency_code="INR"),
        ),
        eligibility=[score],
    )


class SyntheticSegments(seg_grpc.SegmentsServiceServicer):
    """Segment "all-<n>" has members p00000000...; BatchGetProfiles answers any profile; nobody is suppressed."""

    async def GetSegment(self, request: Any, context: Any) -> seg_service.GetSegmentResponse:
        segment = seg.Segment(
            segment_id=request.segment_id, state=seg.SEGMENT_STATE_PUBLISHED, version=1, published_version=1
        )
        return seg_service.GetSegmentResponse(segment=segment)

    async def ListAttributes(self, request: Any, context: Any) -> seg_service.ListAttributesResponse:
        response = seg_service.ListAttributesResponse()
        for name, kind in (
            ("email", seg.ATTRIBUTE_TYPE_STRING),
            ("first_name", seg.ATTRIBUTE_TYPE_STRING),
            ("time_zone", seg.ATTRIBUTE_TYPE_STRING),
            ("bureau_score", seg.ATTRIBUTE_TYPE_NUMBER),
            ("preapproved_limit", seg.ATTRIBUTE_TYPE_MONEY),
        ):
            response.attributes.add(name=name, type=kind)
        return response

    async def StreamSegmentMembers(self, request: Any, context: Any) -> AsyncIterator[Any]:
        kind, _, count = request.segment_id.rpartition("-")
        size = int(count) if kind in ("all", OFFER_SEGMENT) else 0
        lending = kind == OFFER_SEGMENT
        start = int(request.after_profile_id[1:]) + 1 if request.after_profile_id else 0
        for first in range(start, size, STREAM_CHUNK):
            members = [_member(f"p{i:08d}", lending) for i in range(first, min(first + STREAM_CHUNK, size))]
            yield seg_service.StreamSegmentMembersResponse(members=members)

    async def BatchGetProfiles(self, request: Any, context: Any) -> seg_service.BatchGetProfilesResponse:
        response = seg_service.BatchGetProfilesResponse()
        for profile_id in dict.fromkeys(request.profile_ids):
            profile = response.profiles.add().profile
            profile.profile_id = profile_id
            for name, value in _member(profile_id).attributes.items():
                profile.attributes[name].CopyFrom(value)
        return response


async def serve_segments(port: int) -> None:
    """The child process's body: SyntheticSegments on `port` until terminated."""
    server = grpc.aio.server()
    seg_grpc.add_SegmentsServiceServicer_to_server(SyntheticSegments(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    # As every service does once started (plumbing.runtime): what the imports made is frozen, so a full collection
    # no longer walks it. Without it the full collections of this process (its imports are campaigns') held a
    # BatchGetProfiles for up to 66 ms, and every trigger of that batch waited for it.
    gc.collect()
    gc.freeze()
    await server.wait_for_termination()


class SegmentsProcess:
    """SyntheticSegments in a child process, so its CPU is not spent on the loop that paces and times events."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.port = free_port(HOST)
        self.target = f"{HOST}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def _launch(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = (self.run_dir / "segments.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.campaigns", "--serve-segments", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )

    async def start(self) -> None:
        await asyncio.to_thread(self._launch)
        assert self.process is not None
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = seg_grpc.SegmentsServiceStub(channel)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.process.poll() is None:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.GetSegment(seg_service.GetSegmentRequest(segment_id="all-1"), timeout=1)
                    return
                await asyncio.sleep(0.1)
        raise TimeoutError("the synthetic segments server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def _campaigns_process(run_dir: Path, segments_target: str, database_url: str | None) -> ServiceProcess:
    """`python -m services.campaigns` on `database_url` (None: a fresh SQLite file), with its own NATS server."""
    return ServiceProcess(
        "campaigns",
        run_dir,
        database_url or f"sqlite+aiosqlite:///{run_dir / 'campaigns.db'}",
        {
            "XSELL_CAMPAIGNS_SEGMENTS_TARGET": segments_target,
            "XSELL_CAMPAIGNS_REQUIRE_APPROVAL": "false",
            "XSELL_CAMPAIGNS_RELEASE_PAGE_SIZE": str(RELEASE_PAGE_SIZE),
            "XSELL_CAMPAIGNS_RELEASE_POLL_SECONDS": "0.2",
        },
        grpc_service=SERVICE,
    )


def _campaign(segment_id: str, **fields: Any) -> resources_pb2.Campaign:
    values: dict[str, Any] = {
        "display_name": f"bench {segment_id}",
        "segment_id": segment_id,
        "channel": channel_pb2.CHANNEL_EMAIL,
        "offer": resources_pb2.Offer(product_code="LUMPSUM"),
        "content": resources_pb2.Content(
            email=resources_pb2.EmailContent(subject_template="Hello {{ first_name }}", html_template=HTML)
        ),
    }
    return resources_pb2.Campaign(**{**values, **fields})


async def _launch(stub: service_pb2_grpc.CampaignsServiceStub, campaign: resources_pb2.Campaign) -> str:
    created = await stub.CreateCampaign(service_pb2.CreateCampaignRequest(request_id=new_id("b_"), campaign=campaign))
    key = created.campaign.campaign_key
    await stub.LaunchCampaign(service_pb2.LaunchCampaignRequest(request_id=new_id("b_"), campaign_key=key))
    return key


def percentile(samples: list[float], q: float) -> float | None:
    """The nearest-rank q-quantile of sorted `samples`, rounded to 0.01; None when there are none."""
    if not samples:
        return None
    return round(samples[min(len(samples) - 1, int(q * len(samples)))], 2)


async def _drive(
    bus: Bus, events: int, segment_id: str, rate: float
) -> tuple[dict[str, float], dict[str, float], float, float]:
    """MembershipChanged ENTERED on `segment_id` at `rate` a second, and each one's DispatchRequested received: every
    profile's publish and receipt times (perf_counter), when publishing started and how long it took."""
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    done = asyncio.Event()

    async def on_dispatch(msg: Any) -> None:
        profile_id = events_pb2.DispatchRequested.FromString(msg.data).profile_id
        if profile_id in sent and profile_id not in received:
            received[profile_id] = time.perf_counter()
            if len(received) == events:
                done.set()

    subscription = await bus.nc.subscribe(streams.DISPATCH_REQUESTED, cb=on_dispatch)
    js = bus.nc.jetstream()
    started = time.perf_counter()
    for i in range(events):
        # Paced on absolute times, so a slow publish is caught up, not added to every later one.
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        profile_id = f"t{i:08d}"
        change = segment_events.MembershipChanged(
            event_id=new_id("evt_"),
            segment_id=segment_id,
            segment_version=1,
            profile_id=profile_id,
            change=segment_events.MEMBERSHIP_CHANGE_ENTERED,
        )
        change.change_time.FromDatetime(datetime.now(UTC))
        sent[profile_id] = time.perf_counter()
        await js.publish(
            streams.MEMBERSHIP_CHANGED, change.SerializeToString(), headers={MSG_ID_HEADER: change.event_id}
        )
    publish_s = time.perf_counter() - started
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=60 + events / rate)
    await subscription.unsubscribe()
    return sent, received, started, publish_s


def _latencies(sent: dict[str, float], received: dict[str, float]) -> list[float]:
    """Each received entry's milliseconds from publish to receipt, sorted."""
    return sorted((received[p] - sent[p]) * 1000 for p in received)


async def trigger_latency(
    stub: Any, bus: Bus, process: ServiceProcess, events: int, rate: float = TRIGGER_RATE
) -> dict[str, Any]:
    """MembershipChanged ENTERED at `rate` a second (the goal's 1k/s) for a triggered campaign; each one's time to
    its DispatchRequested."""
    trigger = resources_pb2.Trigger(source=resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY)
    await _launch(stub, _campaign("trig-1", trigger_code="T01", trigger=trigger))
    lag_before = await process.loop_lag_readings()
    cpu_before = process.cpu_seconds()
    sent, received, started, publish_s = await _drive(bus, events, "trig-1", rate)
    cpu = process.cpu_seconds() - cpu_before
    lag = loop_lag(lag_before, await process.loop_lag_readings())
    latencies = _latencies(sent, received)
    # Each entry's publish and receipt in wall-clock seconds, as the service's spans carry time: to see whether slow
    # entries come together, and what the service did then.
    wall_minus_perf = time.time() - time.perf_counter()
    samples = process.run_dir / "trigger-samples.jsonl"
    with samples.open("w", encoding="utf-8") as file:
        for profile_id, at in sorted(sent.items(), key=lambda item: item[1]):
            done_at = received.get(profile_id)
            received_at = None if done_at is None else done_at + wall_minus_perf
            file.write(json.dumps({"profile_id": profile_id, "sent": at + wall_minus_perf, "received": received_at}))
            file.write("\n")
    handled_s = (max(received.values()) - started) if received else None
    p99 = percentile(latencies, 0.99)
    return {
        "unit": "ms",
        "goal": f"p99 <= {GOAL_P99_MS:g} ms from MembershipChanged published to DispatchRequested received, at "
        f"{rate:g} events/s",
        "events": events,
        "dispatched": len(received),
        "offered_rate_per_s": round(events / publish_s, 1),
        "handled_rate_per_s": round(len(received) / handled_s, 1) if handled_s else None,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": p99,
        "max_ms": round(latencies[-1], 2) if latencies else None,
        # CPU of the campaigns process per event it dispatched: what bounds the rate when it has a core to itself.
        "campaigns_cpu_ms_per_event": round(cpu / len(received) * 1000, 3) if received else None,
        # How long work held the campaigns process's loop meanwhile (its xsell.event_loop.lag, read every 100 ms): the
        # stalls behind a tail, apart from the share of the machine the process got.
        "loop_lag": lag,
        "goal_met": p99 is not None and len(received) == events and p99 <= GOAL_P99_MS,
    }


async def trigger_floor(
    run_dir: Path, events: int, rate: float = TRIGGER_RATE, postgres: BenchPostgres | None = None
) -> dict[str, Any]:
    """The same drive against bench/trigger_floor.py (bare clients, one transaction per entry, no service), on a NATS
    server of its own with the services' streams: what the machine, NATS and this process take per entry. Its
    transactions go to a SQLite file, or to a fresh database on `postgres`."""
    if postgres is not None:
        await postgres.recreate_database("bench_trigger_floor")
        database = postgres.libpq_uri("bench_trigger_floor")
    else:
        database = str(run_dir / "floor.db")
    await asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True)
    server = NatsServer(run_dir / "nats").start(run_dir / "nats.log")
    try:
        bus = await Bus.connect(server.url, name="bench-floor")
        try:
            await bus.ensure_streams(streams.ALL_STREAMS)
            floor_process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.trigger_floor",
                server.url,
                database,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert floor_process.stdout is not None
                ready = await asyncio.wait_for(floor_process.stdout.readline(), timeout=60)
                if ready.strip() != b"ready":
                    raise RuntimeError(f"bench.trigger_floor did not start (exit {floor_process.returncode})")
                floor_cpu = psutil.Process(floor_process.pid)
                cpu_before = sum(floor_cpu.cpu_times()[:2])
                with collector_paused():
                    sent, received, _, _ = await _drive(bus, events, "floor-1", rate)
                cpu = sum(floor_cpu.cpu_times()[:2]) - cpu_before
            finally:
                floor_process.terminate()
                await asyncio.wait_for(floor_process.wait(), timeout=30)
        finally:
            await bus.drain()
    finally:
        server.stop()
    latencies = _latencies(sent, received)
    driver = "sqlite3" if postgres is None else "asyncpg"
    return {
        "what": f"MembershipChanged in, one {driver} transaction, DispatchRequested out, by bare clients (nats.py, "
        f"{driver}) in a process of their own: no look-up, spans or outbox",
        "events": events,
        "dispatched": len(received),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "cpu_ms_per_event": round(cpu / len(received) * 1000, 3) if received else None,
    }


def trigger_batches(var_dir: Path) -> dict[str, Any]:
    """The trigger handler's batches as its spans recorded them: how many entries each took, how long each ran, and
    the pause between one batch's end and the next one's start (the consumer acknowledging its fetch)."""
    batches = sorted(
        (span for span in read_spans(var_dir) if span["name"] == f"process {streams.MEMBERSHIP_CHANGED}"),
        key=lambda span: span["start_ns"],
    )
    sizes = sorted(float(span["attributes"].get("messaging.batch.message_count", 1)) for span in batches)
    durations = sorted((span["end_ns"] - span["start_ns"]) / 1e6 for span in batches)
    gaps = sorted((later["start_ns"] - earlier["end_ns"]) / 1e6 for earlier, later in itertools.pairwise(batches))
    return {
        "count": len(batches),
        "entries_p50": percentile(sizes, 0.5),
        "entries_p90": percentile(sizes, 0.9),
        "duration_p50_ms": percentile(durations, 0.5),
        "duration_p99_ms": percentile(durations, 0.99),
        "gap_p50_ms": percentile(gaps, 0.5),
        "gap_p99_ms": percentile(gaps, 0.99),
    }


async def release_rate(
    stub: Any, process: ServiceProcess, audience: int, *, per_person: bool = False
) -> dict[str, Any]:
    """Launch a send-now campaign on an `audience`-person segment; time until every outreach is created.

    `per_person`: the offer decided per person (_per_person_offer) on the "offer-" segment; only the eligible
    get an outreach, so the wait is for theirs, and the rate is of people decided."""
    peak = process.rss_mib()
    cpu_before = process.cpu_seconds()
    started = time.perf_counter()
    if per_person:
        campaign = _campaign(f"{OFFER_SEGMENT}-{audience}", offer=_per_person_offer())
        expected = sum(1 for index in range(audience) if _score(index) >= 750)
    else:
        campaign, expected = _campaign(f"all-{audience}"), audience
    key = await _launch(stub, campaign)
    created = 0
    # The peak so far at each tenth of the audience released: flat after the first tenths when memory does not grow
    # with the audience (RSS climbs in the first seconds of any release, while the relay and the dispatch start
    # running beside its pages).
    by_tenth: dict[str, float] = {}
    while created < expected:
        await asyncio.sleep(0.1)
        peak = max(peak, process.rss_mib())
        created = (await stub.GetCampaign(service_pb2.GetCampaignRequest(campaign_key=key))).campaign.outreach_count
        for tenth in range(1, min(10, created * 10 // expected) + 1):
            by_tenth.setdefault(f"{tenth * 10}%", round(peak, 1))
    elapsed = time.perf_counter() - started
    cpu = process.cpu_seconds() - cpu_before
    waiting = await asyncio.to_thread(_events_waiting, process.run_dir / "campaigns.db")
    return {
        "audience": audience,
        "outreaches": expected,
        "seconds": round(elapsed, 2),
        "outreach_per_s": round(audience / elapsed, 1),
        # CPU of the campaigns process per outreach: what bounds the rate when it has a core to itself. It includes
        # the outbox relay's publishing while the release ran, however much of it fell inside the window:
        "campaigns_cpu_us_per_outreach": round(cpu / audience * 1e6, 1),
        # the events still waiting for the relay when the last outreach was created (published after the window).
        "events_waiting_at_end": waiting,
        "peak_rss_mib": round(peak, 1),
        "peak_rss_mib_by_share_released": by_tenth,
    }


async def _published(process: ServiceProcess, timeout: float = 300.0) -> float:
    """Seconds until the relay has published every event in the outbox (the next release then starts with it idle)."""
    started = time.perf_counter()
    while await asyncio.to_thread(_events_waiting, process.run_dir / "campaigns.db"):
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"the relay had not published the outbox after {timeout:g} s")
        await asyncio.sleep(0.5)
    return round(time.perf_counter() - started, 1)


def _events_waiting(database: Path) -> int:
    """Outbox rows not yet published (read through the relay's partial index of waiting rows)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        return int(connection.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0])


# The columns the release writes per outreach (services.campaigns.store.PAGE_*_COLUMNS); the floor writes the same.
_FLOOR_OUTREACH_COLUMNS = (
    "campaign_id, profile_id, channel, ordinal, recipient_time_zone, dispatch_after, dispatched_at, "
    "dispatch_payload, campaign_key, run_id, trigger_code, offer_product_code, offer_amount_minor, offer_currency, "
    "labels, category, created_at"
)
_FLOOR_EVENT_COLUMNS = "event_id, subject, payload, headers, created_at"
_FLOOR_CONTACT_COLUMNS = (
    "campaign_id, profile_id, channel, campaign_key, category, contacted_at, priority, offer_value_minor, launched_at"
)


def _floor_inserts(path: Path, template: Path, outreaches: int) -> dict[str, Any]:
    """Inserts `outreaches` outreach + outbox + ledger rows shaped like `template`'s first ones, a page per
    transaction, with sqlite3 alone; runs in a thread of its own, whose CPU time it reports."""
    with contextlib.closing(sqlite3.connect(template)) as source:
        outreach = source.execute(
            f"SELECT {_FLOOR_OUTREACH_COLUMNS} FROM outreaches ORDER BY ordinal LIMIT 1"
        ).fetchone()
        event = source.execute(f"SELECT {_FLOOR_EVENT_COLUMNS} FROM outbox ORDER BY seq LIMIT 1").fetchone()
        contact = source.execute(f"SELECT {_FLOOR_CONTACT_COLUMNS} FROM contact_ledger LIMIT 1").fetchone()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            connection.execute(f"PRAGMA {pragma}")
        # The campaign and run the rows belong to (the outreaches' foreign key), copied from the release.
        with contextlib.closing(sqlite3.connect(template)) as source:
            campaign = source.execute("SELECT * FROM campaigns WHERE campaign_key = ?", (outreach[8],)).fetchone()
        connection.execute(f"INSERT INTO campaigns VALUES ({', '.join('?' for _ in campaign)})", campaign)
        cpu_before, started = time.thread_time(), time.perf_counter()
        for first in range(0, outreaches, RELEASE_PAGE_SIZE):
            numbers = range(first, min(first + RELEASE_PAGE_SIZE, outreaches))
            ids = [f"FLOOR-NOV-T00-{n + 1:07d}" for n in numbers]
            connection.execute("BEGIN IMMEDIATE")
            # As the release writes them (plumbing.sqlite_async.insert_rows): multi-row INSERTs.
            insert_values(
                connection,
                "outreaches",
                _FLOOR_OUTREACH_COLUMNS.split(", "),
                [(key, f"f{n:08d}", *outreach[2:3], n, *outreach[4:]) for key, n in zip(ids, numbers, strict=True)],
            )
            insert_values(
                connection, "outbox", _FLOOR_EVENT_COLUMNS.split(", "), [(f"{key}-created", *event[1:]) for key in ids]
            )
            insert_values(
                connection,
                "contact_ledger",
                _FLOOR_CONTACT_COLUMNS.split(", "),
                [(key, f"f{n:08d}", *contact[2:]) for key, n in zip(ids, numbers, strict=True)],
            )
            connection.execute("COMMIT")
        seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu_before
    finally:
        connection.close()
    return {
        "outreaches": outreaches,
        "seconds": round(seconds, 2),
        "outreach_per_s": round(outreaches / seconds, 1),
        "cpu_us_per_outreach": round(cpu / outreaches * 1e6, 1),
    }


async def floor(run_dir: Path, release_database: Path, outreaches: int) -> dict[str, Any]:
    """The floor: the release's rows written with sqlite3 alone into a fresh database of the same schema."""
    path = run_dir / "campaigns.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    try:
        await database.migrate(MIGRATIONS)
    finally:
        await database.dispose()
    return await asyncio.to_thread(_floor_inserts, path, release_database, outreaches)


@contextlib.asynccontextmanager
async def _campaigns(
    run_dir: Path, segments: SegmentsProcess, postgres: BenchPostgres | None = None
) -> AsyncIterator[tuple[ServiceProcess, service_pb2_grpc.CampaignsServiceStub, Bus]]:
    """A campaigns process with its own NATS server and a fresh database (a SQLite file, or one on `postgres`), a stub
    to it and a bus connection."""
    database_url = None
    if postgres is not None:
        await postgres.recreate_database("bench_campaigns")
        database_url = postgres.url("bench_campaigns")
    process = _campaigns_process(run_dir, segments.target, database_url)
    try:
        await process.start(timeout=120)
        bus = await Bus.connect(process.nats.url, name="bench")
        try:
            async with grpc.aio.insecure_channel(process.target) as channel:
                yield process, service_pb2_grpc.CampaignsServiceStub(channel), bus
        finally:
            await bus.drain()
    finally:
        process.stop()


async def run(
    context: Context,
    parts: Sequence[str] = PARTS,
    profile: Path | None = None,
    trigger_rate: float = TRIGGER_RATE,
    postgres: BenchPostgres | None = None,
) -> dict[str, Any] | None:
    """The parts named (all the backend's by default, at the goal's trigger rate: the only run that writes the result
    file); py-spy profiles into `profile`. On `postgres` the campaigns database is there, and only the trigger part
    runs (BACKEND_PARTS)."""
    backend = "sqlite" if postgres is None else "postgresql"
    if unsupported := set(parts) - set(BACKEND_PARTS[backend]):
        raise ValueError(f"the {backend} backend does not run {', '.join(sorted(unsupported))}")
    run_dir = context.run_dir / "campaigns"
    await asyncio.to_thread(shutil.rmtree, run_dir, True)
    segments = SegmentsProcess(run_dir)
    await segments.start()
    try:
        # Each part on a fresh campaigns process and database: a trigger backlog must not run beside a release.
        if "trigger" in parts:
            events = max(1000, int(FULL_TRIGGER_EVENTS * context.spec.scale))
            # First, in the same minutes: the floor (bare clients), so the service's latency reads against the
            # machine's.
            trigger_base = await trigger_floor(run_dir / "trigger-floor", events, trigger_rate, postgres)
            print(f"campaigns trigger floor (bare clients): {trigger_base}", flush=True)
            async with _campaigns(run_dir / "trigger", segments, postgres) as (process, stub, bus):
                with profiled(process.pid, profile and profile / "campaigns-trigger.txt"), collector_paused():
                    trigger = await trigger_latency(stub, bus, process, events, trigger_rate)
            # Read once the process has stopped and flushed its spans.
            trigger["batches"] = await asyncio.to_thread(trigger_batches, process.run_dir / "var")
            trigger["floor"] = trigger_base
            if trigger["p99_ms"] and trigger_base["p99_ms"]:
                trigger["p99_over_floor"] = round(trigger["p99_ms"] / trigger_base["p99_ms"], 2)
            print(f"campaigns trigger -> dispatch requested: {trigger}", flush=True)
        if "release" in parts:
            async with _campaigns(run_dir / "release", segments) as (process, stub, bus):
                audience = max(10_000, int(FULL_AUDIENCE * context.spec.scale))
                # A process grows ~40 MiB in its first release and the relay's drain of it (prepared statements,
                # caches, the allocator's pools reaching their working size) and keeps it; the goal is about growth
                # with the audience, so both measured releases run after it.
                warm_up = await release_rate(stub, process, audience // 10)
                print(f"campaigns release (warm-up, not measured): {warm_up}", flush=True)
                # Each measured release starts as the other does: the relay idle, every event before it published
                # (else the 100k one runs beside the relay publishing the warm-up's backlog, and the 1M one not).
                warm_up["seconds_until_published"] = await _published(process)
                small = await release_rate(stub, process, audience // 10)
                print(f"campaigns release: {small}", flush=True)
                small["seconds_until_published"] = await _published(process)
                with profiled(process.pid, profile and profile / "campaigns-release.txt"):
                    large = await release_rate(stub, process, audience)
                print(f"campaigns release: {large}", flush=True)
                large["seconds_until_published"] = await _published(process)
                personal = await release_rate(stub, process, audience // 10, per_person=True)
                print(f"campaigns release, the offer per person: {personal}", flush=True)
            base = await floor(run_dir / "floor", run_dir / "release" / "campaigns.db", audience)
            print(f"campaigns floor (sqlite3 alone, the same rows): {base}", flush=True)
    finally:
        segments.stop()
    if set(parts) != set(BACKEND_PARTS[backend]) or trigger_rate != TRIGGER_RATE:
        print("a partial run (--parts, or --trigger-rate other than the goal's) records no result file", flush=True)
        return None
    if postgres is not None:
        figures = {"trigger_to_dispatch": trigger}
        document = {"backend": backend, "figures": figures, "goal_met": trigger["goal_met"]}
        path = write_result(context, "campaigns-postgresql", document)
        print(f"wrote {path}", flush=True)
        return document
    outreach = {
        "unit": "outreach/s",
        "goal": f">= {GOAL_OUTREACH_PER_S} outreaches created per second while releasing an audience",
        "value": large["outreach_per_s"],
        "runs": [small, large],
        "warm_up": warm_up,
        "floor": base,
        # How many times the database's own cost the release spends per outreach, and its rate against the floor's.
        "cpu_over_floor": round(large["campaigns_cpu_us_per_outreach"] / base["cpu_us_per_outreach"], 2),
        "rate_of_floor": round(large["outreach_per_s"] / base["outreach_per_s"], 3),
        "goal_met": large["outreach_per_s"] >= GOAL_OUTREACH_PER_S,
    }
    rss = {
        "unit": "MiB",
        "goal": f"peak RSS of campaigns releasing {audience} people within {RSS_TOLERANCE:g}x of releasing "
        f"{audience // 10} (memory flat with audience size), both after a warm-up release of {audience // 10}",
        "value": large["peak_rss_mib"],
        "peak_rss_mib_by_audience": {
            str(small["audience"]): small["peak_rss_mib"],
            str(large["audience"]): large["peak_rss_mib"],
        },
        "ratio": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
        # The first release of the process, from cold: what the ratio was taken against before session 11 (27 November).
        "peak_rss_mib_cold_first_release": warm_up["peak_rss_mib"],
        "ratio_to_cold_first_release": round(large["peak_rss_mib"] / warm_up["peak_rss_mib"], 3),
        "goal_met": large["peak_rss_mib"] <= small["peak_rss_mib"] * RSS_TOLERANCE,
    }
    per_person = {
        "unit": "people/s",
        "goal": None,
        "note": "the cost of deciding the offer per person (an amount rule and an eligibility condition), against "
        f"the fixed offer's release of the same {audience // 10} people",
        "value": round(personal["audience"] / personal["seconds"], 1),
        "run": personal,
        "rate_of_fixed_offer": round(small["seconds"] / personal["seconds"], 3),
    }
    figures = {
        "trigger_to_dispatch": trigger,
        "outreach_creation": outreach,
        "peak_rss": rss,
        "offer_per_person": per_person,
    }
    document = {"figures": figures, "goal_met": all(f["goal_met"] for f in figures.values() if "goal_met" in f)}
    path = write_result(context, "campaigns", document)
    print(f"wrote {path}", flush=True)
    return document


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.campaigns", description=__doc__)
    parser.add_argument("--scale", type=float, default=None, help="1.0 = a 1M-person audience, 30k trigger events")
    parser.add_argument("--quick", action="store_true", help=f"--scale {QUICK_SCALE:g}: about two minutes")
    parser.add_argument("--var", type=Path, default=Path("var/bench"), help="run files (logs, databases)")
    parser.add_argument("--results", type=Path, default=Path("bench/results"), help="where campaigns.json goes")
    parser.add_argument(
        "--backend",
        choices=tuple(BACKEND_PARTS),
        default="sqlite",
        help="the campaigns database: a SQLite file, or the embedded PostgreSQL (the trigger part alone)",
    )
    parser.add_argument("--parts", default=None, help="run only these parts (no result file then)")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw profiles of the parts here")
    parser.add_argument(
        "--trigger-rate",
        type=float,
        default=TRIGGER_RATE,
        help=f"entries a second in the trigger part (the goal's {TRIGGER_RATE:g}; another records no result file)",
    )
    parser.add_argument("--serve-segments", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    runs = BACKEND_PARTS[args.backend]
    parts = [part for part in (args.parts or ",".join(runs)).split(",") if part]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; the parts are {', '.join(PARTS)}")
    if unsupported := set(parts) - set(runs):
        parser.error(
            f"--parts: --backend {args.backend} does not run {', '.join(sorted(unsupported))} (the release's floor and "
            f"its wait for the relay read the SQLite file); it runs {', '.join(runs)}"
        )
    if args.trigger_rate <= 0:
        parser.error("--trigger-rate must be above 0 entries a second, e.g. 1000 (the goal's) or 100")
    if args.serve_segments:
        await serve_segments(args.serve_segments)
        return 0
    scale = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)
    spec = generator.Spec(scale, 42, generator.default_anchor(datetime.now(UTC)))
    postgres = None
    if args.backend == "postgresql":
        # Its own cluster beside the run folders, kept between runs (initdb is slow); fresh databases each run.
        postgres = BenchPostgres(args.var.resolve() / "pg").start()
        try:
            await postgres.configure()
            await _run_main(args, spec, parts, postgres)
        finally:
            try:
                postgres.stop()
            except subprocess.CalledProcessError:
                print("postgresql: already stopped", flush=True)
        return 0
    await _run_main(args, spec, parts, None)
    return 0


async def _run_main(
    args: argparse.Namespace, spec: generator.Spec, parts: list[str], postgres: BenchPostgres | None
) -> None:
    scale = spec.scale
    context = Context(
        spec=spec,
        machine=await machine_info(postgres),
        results_dir=args.results if scale == 1.0 else args.results / f"scale-{scale:g}",
        run_dir=(args.var / "run" / spec.key).resolve(),
        datasets={},
        manifests={},
        postgres=postgres,
        figures=["campaigns"],
    )
    await run(context, parts, args.profile, args.trigger_rate, postgres)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
