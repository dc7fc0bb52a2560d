"""Figures 1, 3 and 4 against the running service: ingest rate, incremental membership latency, streaming RSS.

Per backend: a fresh copy of the cached dataset, the service as its own process with its own NATS,
every recipe segment published through the API (maker-checker where it is on), then the figures
in the order latency, ingest, rss (the two audience segments of rss are published last, so they do
not weigh on the others).
"""

import asyncio
import contextlib
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

import grpc
import nats
import psutil
from google.protobuf.timestamp_pb2 import Timestamp

from bench import generator, recipe
from bench.results import Context, write_result
from bench.service import SegmentsProcess, channel, publish, raw_unary
from services import streams
from xsell.segments.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc

INGEST_GOAL = 20_000
LATENCY_GOAL_MS = 5.0
LATENCY_RATE = 1_000
BATCH = 1_000
CLIENTS = 4
IN_FLIGHT = 64
UNLOADED_CALLS = 100
SPAN_FLUSH_SECONDS = 6.0
EXAMPLES = Path("examples/segments")
# The NATS bulk path (issue 3, ingest side); names come from services.streams once they are there.
INGEST_SUBJECT = getattr(streams, "INGEST_EVENTS", "xsell.ingest.events")
BULK_COMPLETED_SUBJECT = getattr(streams, "BULK_INGEST_COMPLETED", "xsell.segments.bulk_ingest_completed")


def _durations(scale: float) -> dict[str, float]:
    """Seconds of load per figure: long enough to be sustained at full scale, short for quick runs."""
    full = scale >= 1.0
    return {"ingest": 30.0 if full else 10.0, "latency": 10.0 if full else 5.0, "ingest_timeout": 180.0}


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class EventFactory:
    """Fresh events shaped like the dataset's, for existing people (power-law: some people are far busier)."""

    def __init__(self, spec: generator.Spec, run: str, seed: int) -> None:
        self.spec = spec
        self.run = run
        self.rng = random.Random(f"{spec.seed}/live/{run}/{seed}")
        self.sequence = 0

    def _profile(self) -> str:
        index = min(int(self.rng.paretovariate(0.8)) - 1, self.spec.profile_count - 1)
        # Spread the busy people over the id space instead of piling them on the first ids.
        return generator.profile_id((index * 7_919 + self.rng.randrange(16)) % self.spec.profile_count)

    def event(self, now: datetime, profile_id: str | None = None, name: str | None = None) -> resources_pb2.Event:
        self.sequence += 1
        name = name or generator.EVENT_NAMES[int(self.rng.random() ** 1.8 * len(generator.EVENT_NAMES))]
        event = resources_pb2.Event(
            event_id=f"bench-{self.run}-{self.sequence}",
            profile_id=profile_id or self._profile(),
            name=name,
            occur_time=_timestamp(now - timedelta(seconds=self.rng.random() * 3600)),
        )
        if name in ("transaction_success", "lumpsum_invested", "sip_registered", "redemption_completed"):
            event.properties["amc"].string_value = generator.AMCS[int(self.rng.random() ** 2 * len(generator.AMCS))]
            amount = event.properties["amount"].money_value
            amount.minor_units = 100 * int(500 + self.rng.random() ** 3 * 200_000)
            amount.currency_code = generator.CURRENCY
        elif name == "session_start":
            event.properties["platform"].string_value = generator.PLATFORMS[int(self.rng.random() * 3)]
        return event

    def batches(self, count: int, size: int) -> list[tuple[str, bytes]]:
        now = datetime.now(UTC)
        result = []
        for _ in range(count):
            request_id = f"bench-{self.run}-batch-{self.sequence}"
            request = service_pb2.IngestEventsRequest(
                request_id=request_id, events=[self.event(now) for _ in range(size)]
            )
            result.append((request_id, request.SerializeToString()))
        return result


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- figure 3: incremental membership latency -------------------------------------------------


async def measure_latency(
    process: SegmentsProcess,
    stub: Any,
    opened: grpc.aio.Channel,
    segments: dict[str, resources_pb2.Segment],
    seconds: float,
) -> dict[str, Any]:
    """Paced single-event IngestEvents calls that each change a membership; per call and until NATS says so."""
    sip_only = segments.get("sip_only_investors")
    leaving: list[str] = []
    if sip_only is not None:
        page = await stub.ListSegmentMembers(
            service_pb2.ListSegmentMembersRequest(segment_id=sip_only.segment_id, page_size=5000)
        )
        leaving = [member.profile_id for member in page.members]
    run = f"lat{int(time.time())}"
    factory = EventFactory(generator.Spec(1, 0, datetime.now(UTC)), run, 3)
    total = int(seconds * LATENCY_RATE)
    requests: list[tuple[str, bytes]] = []
    changed_profiles: dict[str, int] = {}
    now = datetime.now(UTC)
    for i in range(total):
        # Alternate: a SIP-only member invests a lumpsum (exits SIP-only), and a new investor registers
        # a SIP (enters SIP-only and the "does not contain" segments).
        if i % 2 == 0 and leaving:
            profile_id, name = leaving.pop(), "lumpsum_invested"
        else:
            profile_id, name = f"{run}-new-{i:06d}", "sip_registered"
        event = factory.event(now, profile_id=profile_id, name=name)
        request = service_pb2.IngestEventsRequest(request_id=f"{run}-{i}", events=[event])
        requests.append((profile_id, request.SerializeToString()))
        changed_profiles[profile_id] = i
    ingest = raw_unary(opened, "IngestEvents", service_pb2.IngestEventsResponse)

    sent_at: list[float] = [0.0] * total
    committed_ms: list[float] = [float("nan")] * total
    seen_ms: list[float] = [float("nan")] * total
    failures: dict[str, int] = {}
    nc = await nats.connect(process.nats.url)

    all_seen = asyncio.Event()
    unseen = len(changed_profiles)

    async def on_change(message: Any) -> None:
        nonlocal unseen
        change = events_pb2.MembershipChanged.FromString(message.data)
        index = changed_profiles.get(change.profile_id)
        if index is not None and sent_at[index] and seen_ms[index] != seen_ms[index]:
            seen_ms[index] = (time.perf_counter() - sent_at[index]) * 1000
            unseen -= 1
            if unseen == 0:
                all_seen.set()

    subscription = await nc.subscribe(streams.MEMBERSHIP_CHANGED, cb=on_change)
    in_flight = asyncio.Semaphore(IN_FLIGHT)

    async def call(index: int, payload: bytes) -> None:
        sent_at[index] = time.perf_counter()
        try:
            await ingest(payload, timeout=30)
            committed_ms[index] = (time.perf_counter() - sent_at[index]) * 1000
        except grpc.aio.AioRpcError as error:
            failures[error.code().name] = failures.get(error.code().name, 0) + 1

    async def paced_call(index: int, payload: bytes) -> None:
        try:
            await call(index, payload)
        finally:
            in_flight.release()

    # Unloaded first: one call at a time, the service time of one membership-changing event.
    unloaded: list[float] = []
    for index in range(min(UNLOADED_CALLS, total)):
        await call(index, requests[index][1])
        if committed_ms[index] == committed_ms[index]:
            unloaded.append(committed_ms[index])
    started = time.perf_counter()
    deadline = started + seconds
    tasks = []
    for index in range(len(unloaded), total):
        # Open loop at LATENCY_RATE; when IN_FLIGHT calls wait, the next ones start late (and count late).
        delay = started + (index - len(unloaded)) / LATENCY_RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # The slot is taken before the call starts, so a service that cannot keep up slows the loop
        # down (the achieved rate drops) instead of piling up calls.
        await in_flight.acquire()
        if time.perf_counter() >= deadline:
            in_flight.release()
            break
        tasks.append(asyncio.create_task(paced_call(index, requests[index][1])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_seen.wait(), 10)
    await subscription.unsubscribe()
    await nc.close()
    loaded = slice(len(unloaded), len(unloaded) + len(tasks))
    committed = [m for m in committed_ms[loaded] if m == m]
    seen = [m for m in seen_ms[loaded] if m == m]
    result = {
        "unloaded_calls": len(unloaded),
        "unloaded_p50_ms": round(_percentile(unloaded, 0.50), 2),
        "unloaded_p99_ms": round(_percentile(unloaded, 0.99), 2),
        "offered_rate_per_s": LATENCY_RATE,
        "max_in_flight": IN_FLIGHT,
        "achieved_rate_per_s": round(len(committed) / elapsed, 1),
        "calls": len(tasks),
        "failed_calls": failures,
        "committed_p50_ms": round(_percentile(committed, 0.50), 2),
        "committed_p99_ms": round(_percentile(committed, 0.99), 2),
        "committed_max_ms": round(max(committed), 2) if committed else None,
        "nats_seen": len(seen),
        "nats_p50_ms": round(_percentile(seen, 0.50), 2) if seen else None,
        "nats_p99_ms": round(_percentile(seen, 0.99), 2) if seen else None,
    }
    result["goal_met"] = bool(committed) and _percentile(committed, 0.99) <= LATENCY_GOAL_MS and not failures
    return result


# --- figure 1: ingest rate --------------------------------------------------------------------


def _windows(completions: list[tuple[float, int]], started: float, width: float = 5.0) -> list[float]:
    """Events per second in consecutive windows of `width` seconds (the last partial window is dropped)."""
    if not completions:
        return []
    end = max(t for t, _ in completions)
    buckets = [0] * int((end - started) // width)
    for moment, count in completions:
        slot = int((moment - started) // width)
        if slot < len(buckets):
            buckets[slot] += count
    return [round(b / width, 1) for b in buckets]


async def measure_grpc_ingest(
    opened: grpc.aio.Channel, factory: EventFactory, seconds: float, timeout: float
) -> dict[str, Any]:
    """CLIENTS concurrent callers send BATCH-event IngestEvents calls; the figure counts committed events."""
    planned = int(INGEST_GOAL * seconds * 1.25 / BATCH) + CLIENTS
    batches = factory.batches(planned, BATCH)
    ingest = raw_unary(opened, "IngestEvents", service_pb2.IngestEventsResponse)
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for _, payload in batches:
        queue.put_nowait(payload)
    completions: list[tuple[float, int]] = []
    rejected = 0
    started = time.perf_counter()
    stop_at = started + seconds

    failures: dict[str, int] = {}

    async def client() -> None:
        nonlocal rejected
        while time.perf_counter() < stop_at and not queue.empty():
            payload = queue.get_nowait()
            try:
                response = await ingest(payload, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                # A failed batch is counted, not retried: the figure is what got through.
                failures[error.code().name] = failures.get(error.code().name, 0) + 1
                continue
            completions.append((time.perf_counter(), response.accepted_count))
            rejected += len(response.errors)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    elapsed = time.perf_counter() - started
    accepted = sum(count for _, count in completions)
    windows = _windows(completions, started)
    return {
        "transport": "grpc IngestEvents",
        "batch_size": BATCH,
        "concurrent_clients": CLIENTS,
        "events": accepted,
        "rejected": rejected,
        "failed_batches": failures,
        "seconds": round(elapsed, 2),
        "events_per_s": round(accepted / elapsed, 1),
        "min_5s_window_events_per_s": min(windows) if windows else None,
        "median_batch_ms": round(
            median((b - a) * 1000 for (a, _), (b, _) in zip(completions, completions[CLIENTS:], strict=False)),
            1,
        )
        if len(completions) > CLIENTS
        else None,
        "windows_events_per_s": windows,
    }


async def measure_nats_ingest(
    process: SegmentsProcess, factory: EventFactory, seconds: float, timeout: float, expected_rate: float
) -> dict[str, Any]:
    """Publish IngestEventsRequest batches to the bulk subject; done when every BulkIngestCompleted is seen.

    As many batches as the goal rate needs for `seconds`, or as the gRPC rate gets through in them when
    that is lower, so the figure stays bounded in time.
    """
    count = max(4, int(min(INGEST_GOAL, 1.2 * expected_rate) * seconds / BATCH))
    batches = factory.batches(count, BATCH)
    nc = await nats.connect(process.nats.url)
    js = nc.jetstream()
    try:
        try:
            await js.find_stream_name_by_subject(INGEST_SUBJECT)
        except nats.js.errors.NotFoundError:
            return {"transport": "nats bulk subject", "subject": INGEST_SUBJECT, "skipped": "no stream takes it yet"}
        pending = {request_id for request_id, _ in batches}
        completions: list[tuple[float, int]] = []
        done = asyncio.Event()

        async def on_completed(message: Any) -> None:
            completed = events_pb2.BulkIngestCompleted.FromString(message.data)
            if completed.request_id in pending:
                pending.discard(completed.request_id)
                completions.append((time.perf_counter(), completed.accepted_count))
                if not pending:
                    done.set()

        subscription = await nc.subscribe(BULK_COMPLETED_SUBJECT, cb=on_completed)
        started = time.perf_counter()
        for start in range(0, len(batches), 32):
            await asyncio.gather(
                *(
                    js.publish(INGEST_SUBJECT, payload, headers={"Nats-Msg-Id": request_id})
                    for request_id, payload in batches[start : start + 32]
                )
            )
        published = time.perf_counter() - started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
        elapsed = (max(t for t, _ in completions) if completions else time.perf_counter()) - started
        await subscription.unsubscribe()
        accepted = sum(n for _, n in completions)
        windows = _windows(completions, started)
        return {
            "transport": "nats bulk subject",
            "subject": INGEST_SUBJECT,
            "batch_size": BATCH,
            "batches": len(batches),
            "batches_completed": len(completions),
            "events": accepted,
            "publish_seconds": round(published, 2),
            "seconds": round(elapsed, 2),
            "events_per_s": round(accepted / elapsed, 1) if elapsed > 0 else None,
            "min_5s_window_events_per_s": min(windows) if windows else None,
            "windows_events_per_s": windows,
            "timed_out": bool(pending),
        }
    finally:
        await nc.close()


# --- figure 4: RSS while streaming ------------------------------------------------------------


async def measure_stream_rss(process: SegmentsProcess, stub: Any, segment: resources_pb2.Segment) -> dict[str, Any]:
    """Drain StreamSegmentMembers while sampling the service's RSS every 10 ms."""
    service = psutil.Process(process.pid)
    baseline = service.memory_info().rss
    peak = baseline
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, service.memory_info().rss)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    members = 0
    started = time.perf_counter()
    try:
        stream = stub.StreamSegmentMembers(
            service_pb2.StreamSegmentMembersRequest(
                segment_id=segment.segment_id, attribute_names=["customer_tier", "total_aum"]
            ),
            timeout=1800,
        )
        async for response in stream:
            members += len(response.members)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            return {"skipped": "StreamSegmentMembers is UNIMPLEMENTED in this build"}
        raise
    finally:
        sampling = False
        await sampler
    elapsed = time.perf_counter() - started
    return {
        "segment": segment.display_name,
        "members_streamed": members,
        "member_count": segment.member_count,
        "seconds": round(elapsed, 2),
        "members_per_s": round(members / elapsed, 1) if elapsed else None,
        "baseline_rss_mb": round(baseline / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "growth_mb": round((peak - baseline) / 2**20, 1),
    }


# --- where the service spends the time -----------------------------------------------------------


class Observation:
    """The service's CPU use and its spans (the local span store) during one measurement: what limits it."""

    def __init__(self, process: SegmentsProcess) -> None:
        self.process = process
        self.service = psutil.Process(process.pid)

    def __enter__(self) -> "Observation":
        self.started_ns = time.time_ns()
        self.started = time.perf_counter()
        self.cpu = self.service.cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended_ns = time.time_ns()
        self.elapsed = time.perf_counter() - self.started
        cpu = self.service.cpu_times()
        self.cpu_seconds = (cpu.user + cpu.system) - (self.cpu.user + self.cpu.system)

    async def summary(self, top: int = 8) -> dict[str, Any]:
        # The span processor exports in batches every 5 s; wait for the last batch of the window.
        await asyncio.sleep(SPAN_FLUSH_SECONDS)
        path = self.process.run_dir / "var" / "traces" / "segments.jsonl"
        totals: dict[str, list[float]] = {}
        if path.exists():
            with path.open(encoding="utf-8") as spans:
                for line in spans:
                    span = json.loads(line)
                    if self.started_ns <= span["start_ns"] <= self.ended_ns:
                        totals.setdefault(span["name"], []).append((span["end_ns"] - span["start_ns"]) / 1e6)
        ranked = sorted(totals.items(), key=lambda item: -sum(item[1]))[:top]
        return {
            "cpu_cores_used": round(self.cpu_seconds / self.elapsed, 2) if self.elapsed else None,
            "spans": {
                name: {
                    "count": len(durations),
                    "mean_ms": round(sum(durations) / len(durations), 2),
                    "p99_ms": round(_percentile(durations, 0.99), 2),
                    "share_of_wall_time": round(sum(durations) / 1000 / self.elapsed, 2),
                }
                for name, durations in ranked
            },
        }


# --- one backend, all live figures ------------------------------------------------------------


async def run_backend(context: Context, backend: str, figures: list[str]) -> dict[str, dict[str, Any]]:
    url = await context.working_copy(backend)
    process = SegmentsProcess(context.run_dir / backend, url)
    results: dict[str, dict[str, Any]] = {}
    try:
        await process.start()
        async with channel(process.target) as opened:
            stub = service_pb2_grpc.SegmentsServiceStub(opened)
            segments_list, source = recipe.load(EXAMPLES)
            started = time.perf_counter()
            live: dict[str, resources_pb2.Segment] = {}
            for segment in segments_list:
                live[segment.key] = await publish(stub, segment.key, segment.display_name, segment.rule)
            publish_s = time.perf_counter() - started
            print(f"{backend}: published {len(live)} recipe segments in {publish_s:.1f}s", flush=True)
            durations = _durations(context.spec.scale)
            setup = {"published_segments": len(live), "publish_seconds": round(publish_s, 1), "rule_source": source}
            if "latency" in figures:
                with Observation(process) as seen:
                    latency = await measure_latency(process, stub, opened, live, durations["latency"])
                results["latency"] = {**setup, **latency, "service": await seen.summary()}
                print(
                    f"latency {backend}: committed p50 {latency['committed_p50_ms']} ms, "
                    f"p99 {latency['committed_p99_ms']} ms; MembershipChanged on NATS p50 {latency['nats_p50_ms']} ms, "
                    f"p99 {latency['nats_p99_ms']} ms; achieved {latency['achieved_rate_per_s']}/s",
                    flush=True,
                )
            if "ingest" in figures:
                factory = EventFactory(context.spec, f"ing{int(time.time())}", 1)
                with Observation(process) as seen_grpc:
                    grpc_result = await measure_grpc_ingest(
                        opened, factory, durations["ingest"], durations["ingest_timeout"]
                    )
                grpc_result["service"] = await seen_grpc.summary()
                print(f"ingest {backend} grpc: {grpc_result['events_per_s']} events/s", flush=True)
                with Observation(process) as seen_nats:
                    nats_result = await measure_nats_ingest(
                        process, factory, durations["ingest"], durations["ingest_timeout"], grpc_result["events_per_s"]
                    )
                nats_result["service"] = await seen_nats.summary()
                print(
                    f"ingest {backend} nats: {nats_result.get('events_per_s', nats_result.get('skipped'))} events/s",
                    flush=True,
                )
                rates = [r["events_per_s"] for r in (grpc_result, nats_result) if r.get("events_per_s")]
                results["ingest"] = {
                    **setup,
                    "grpc": grpc_result,
                    "nats": nats_result,
                    "goal_met": bool(rates) and min(rates) >= INGEST_GOAL,
                }
            if "rss" in figures:
                results["rss"] = await _rss(context, process, stub, backend)
    finally:
        await asyncio.to_thread(process.stop)
    return results


async def _rss(context: Context, process: SegmentsProcess, stub: Any, backend: str) -> dict[str, Any]:
    everyone = resources_pb2.Rule(
        attribute=resources_pb2.AttributeCondition(attribute="customer_tier", operator=resources_pb2.OPERATOR_EXISTS)
    )
    premium = resources_pb2.Rule(
        attribute=resources_pb2.AttributeCondition(
            attribute="customer_tier",
            operator=resources_pb2.OPERATOR_IN,
            values=[resources_pb2.Value(string_value="Premium"), resources_pb2.Value(string_value="HNI")],
        )
    )
    sizes = {}
    for key, name, rule in (
        ("audience_all", "Every investor (RSS bench)", everyone),
        ("audience_premium", "Premium and HNI investors (RSS bench)", premium),
    ):
        started = time.perf_counter()
        segment = await publish(stub, key, name, rule)
        print(
            f"rss {backend}: published {name} ({segment.member_count} members) in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        sizes[key] = await measure_stream_rss(process, stub, segment)
        print(f"rss {backend}: {sizes[key]}", flush=True)
    small, large = sizes["audience_premium"], sizes["audience_all"]
    if "skipped" in large:
        return {"skipped": large["skipped"], "goal_met": False}
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    ratio = large["members_streamed"] / max(1, small["members_streamed"])
    return {
        "small_audience": small,
        "large_audience": large,
        "peak_difference_mb": round(growth, 1),
        "audience_ratio": round(ratio, 2),
        # Bounded: the larger audience's peak is within 25% (and 64 MB) of the smaller one's.
        "goal_met": growth <= max(64.0, 0.25 * small["peak_rss_mb"]),
    }


GOALS = {
    "ingest": (f">= {INGEST_GOAL} events/s sustained, gRPC and NATS, memberships current", "events/s"),
    "latency": (f"p99 <= {LATENCY_GOAL_MS} ms event accepted -> membership committed at {LATENCY_RATE}/s", "ms"),
    "rss": ("bounded: no growth of peak RSS with audience size", "MB"),
}
FIGURE_NAMES = {
    "ingest": "event ingest rate end to end until memberships are current",
    "latency": "incremental membership latency at 1k events/s",
    "rss": "peak RSS of the service while streaming members",
}

_collected: dict[str, dict[str, Any]] = {}


async def run(figure: str, context: Context) -> None:
    """Live figures share one service session per backend: the first of them runs all the selected ones."""
    if figure in _collected:
        _write(figure, context, _collected.pop(figure))
        return
    selected: list[str] = [f for f in ("latency", "ingest", "rss") if f in context.figures]
    per_backend: dict[str, dict[str, dict[str, Any]]] = {}
    for backend in context.datasets:
        per_backend[backend] = await run_backend(context, backend, selected)
    for name in selected:
        _collected[name] = {backend: results.get(name, {}) for backend, results in per_backend.items()}
    _write(figure, context, _collected.pop(figure))


def _write(figure: str, context: Context, backends: dict[str, Any]) -> None:
    goal, unit = GOALS[figure]
    met = bool(backends) and all(result.get("goal_met") for result in backends.values())
    path = write_result(
        context,
        figure,
        {"figure": FIGURE_NAMES[figure], "unit": unit, "goal": goal, "goal_met": met, "backends": backends},
    )
    print(f"{figure}: goal {'met' if met else 'NOT met'} -> {path}", flush=True)
