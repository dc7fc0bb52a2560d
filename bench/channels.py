"""Channels bench (issue 5): dispatch throughput to HTTP and SMTP sinks with exactly-once ledgering; latency at 1k/s.

    .venv/bin/python -m bench.channels                        # 30k HTTP, 10k e-mails, 20 s at 1k/s (goal scale)
    .venv/bin/python -m bench.channels --scale 0.1            # quick: 3k / 1k / 3 s + 3 s, about a minute
    .venv/bin/python -m bench.channels --backend postgresql   # the embedded PostgreSQL instead of SQLite

The real channels process (`python -m services.channels`, its own NATS server) sends to the local
provider servers (devstack/provider_sinks.py: Exotel SMS, WhatsApp Cloud, FCM, signed webhook) and
to a real aiosmtpd relay, both in this process. Four parts, each on a fresh start of the service:

1. **HTTP throughput**: a backlog of DispatchRequested spread over the four HTTP channels is
   published first; the rate is the backlog over the time from the first message a provider
   accepted to the moment the durable's ack floor passed the last one (every outcome committed).
2. **SMTP throughput**: the same with e-mails to the relay.
3. **Latency**: DispatchRequested published open-loop at `--rate` (1k/s), each timed from its
   publish to the moment its provider accepted it (the sink's clock is this process's).
4. **Latency below capacity**: the same at `--low-rate` (100/s), a rate the service keeps up with,
   so what remains is the path's own delay (not a goal of the issue; it shows what else limits p99).
5. **Receipts and engagement**: a provider reports every message (WhatsApp three times: sent,
   delivered, read), so `RecordDeliveryReceipt` and `RecordEngagement` meet a campaign's volume
   again. Each message of the HTTP part gets a DELIVERED receipt, then an OPENED engagement, over
   gRPC, `--receipt-concurrency` (64) calls in flight, from this process; each rate is its calls
   over their wall time, and every message must end DELIVERED, with its OPENED step, in the
   ledger (not goals of the issue: reported).

After each part the providers' logs are compared with the ledger (the service's messages table):
a campaign ID accepted twice is a DUPLICATE; one published and not SENT-and-accepted-once is LOST.
Both must be zero. The figure lands in bench/results/channels-<backend>.json (other scales:
bench/results/scale-<s>/), with every figure's unit, goal, verdict, the machine and package versions.
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from aiosmtpd.controller import Controller
from sqlalchemy import select

from bench.channels_floor import encode_http, encode_mail
from bench.postgres import BenchPostgres
from bench.results import collector_paused, machine_info
from bench.service import ServiceProcess, loop_lag
from devstack.nats_server import NatsServer, free_port
from devstack.provider_sinks import ProviderSinks
from devstack.samples import fill_http_message
from plumbing.bus import Bus
from plumbing.db import Database
from plumbing.telemetry import outreach_ids
from services import streams
from services.channels import convert, store
from services.channels.composition import TrackingLinks, compose
from services.channels.delivery import Engagement, engagement_step, validate_email
from services.channels.outgoing import validate_push, validate_sms, validate_webhook, validate_whatsapp
from services.channels.providers.push import FcmPush
from services.channels.providers.sms import ExotelSms
from services.channels.providers.webhook import SignedWebhook
from services.channels.providers.whatsapp import WhatsAppCloud
from services.channels.settings import ChannelsSettings
from xsell.campaigns.v1.events_pb2 import (
    DispatchRequested,
    EmailMessage,
)
from xsell.channels.v1 import resources_pb2
from xsell.channels.v1.service_pb2 import RecordDeliveryReceiptRequest, RecordEngagementRequest
from xsell.channels.v1.service_pb2_grpc import ChannelsServiceStub
from xsell.type.v1 import channel_pb2

HOST = "127.0.0.1"
SERVICE = "xsell.channels.v1.ChannelsService"
HTTP_CHANNELS = ("sms", "whatsapp", "push", "webhook")
GOALS = {"http_per_s": 5000.0, "smtp_per_s": 1000.0, "p99_ms": 30.0, "offered_per_s": 1000.0}
EXTRA_PACKAGES = ("aiohttp", "aiosmtplib", "aiosmtpd", "opentelemetry-sdk")
PUBLISH_CHUNK = 500
STALL_SECONDS = 60.0
REPOSITORY = Path(__file__).resolve().parent.parent
HTML = '<html><body><p>Your loan is pre-approved. <a href="https://bank.example.in/apply?o=T06">Apply</a></p></body></html>'


# --- the arithmetic (pure; tests/unit/bench/test_channels.py) ---


@dataclass(frozen=True)
class Tally:
    """The providers' logs against the ledger for a set of published campaign IDs."""

    published: int
    sent: int
    duplicates: int
    """Campaign IDs a provider accepted more than once."""
    lost: int
    """Campaign IDs published that are not SENT in the ledger with exactly one acceptance at a provider."""
    unknown: int
    """Acceptances of campaign IDs the ledger does not hold."""
    states: dict[str, int] = field(default_factory=dict)


def tally(published: Collection[str], accepted: Iterable[str], ledger: Mapping[str, str]) -> Tally:
    """Zero duplicates and zero lost is the exactly-once promise; `states` says where the others ended.

    `accepted` and `ledger` may hold more than `published` (earlier parts of the run); duplicates and
    lost are counted over `published`, unknown over everything accepted.
    """
    counts = Counter(accepted)
    duplicates = sum(1 for c in published if counts[c] > 1)
    sent = [c for c in published if ledger.get(c) == "SENT"]
    lost = len(published) - sum(1 for c in sent if counts[c] == 1)
    unknown = sum(1 for c in counts if c not in ledger)
    states = Counter(ledger.get(c, "MISSING") for c in published)
    return Tally(len(published), len(sent), duplicates, lost, unknown, dict(sorted(states.items())))


def nearest_rank(samples: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank (no interpolation: a reported p99 is a latency that happened)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))
    return ordered[index]


def per_second(count: int, started: float, finished: float) -> float:
    """`count` over the seconds between two perf_counter readings; 0 when no time passed."""
    elapsed = finished - started
    return round(count / elapsed, 1) if elapsed > 0 else 0.0


def figure(value: float, unit: str, goal: str, met: bool, **detail: Any) -> dict[str, Any]:
    return {"value": value, "unit": unit, "goal": goal, "met": "yes" if met else "no", **detail}


# --- the parts that run ---


class Mailbox:
    """aiosmtpd handler that keeps when each campaign ID's message was accepted (DATA answered 250); it offers
    PIPELINING (RFC 2920), as the relays of SES, SendGrid, Mailgun or Postfix do."""

    _CAMPAIGN = re.compile(rb"^X-Xsell-Campaign-Id: *(\S+)", re.MULTILINE | re.IGNORECASE)

    def __init__(self) -> None:
        self.accepted: list[tuple[str, float]] = []

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when the handler has no EHLO hook
        # aiosmtpd reads one command line at a time, so commands that come together are answered in turn.
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        found = self._CAMPAIGN.search(envelope.content)
        self.accepted.append((found.group(1).decode() if found else "", time.perf_counter()))
        return "250 2.0.0 Ok: queued"


def bench_campaign_id(run: str, index: int) -> str:
    return f"CSELL-BENCH-{run}-{index:07d}"


def dispatch(index: int, channel: str, run: str, webhook_url: str) -> DispatchRequested:
    """A valid DispatchRequested on `channel`, keyed by a campaign ID unique to this run."""
    campaign_id = bench_campaign_id(run, index)
    event = DispatchRequested(event_id=f"evt_{run}_{index}", campaign_id=campaign_id, profile_id=f"prf_{index}")
    if channel in HTTP_CHANNELS:
        fill_http_message(event, channel, webhook_url=webhook_url, device_token=f"fcm-token-{index}")
    elif channel == "email":
        event.channel = channel_pb2.CHANNEL_EMAIL
        event.email.CopyFrom(
            EmailMessage(
                to_address=f"person{index}@example.in",
                from_name="Acme Bank",
                subject="Pre-approved",
                html_body=HTML,
                text_body="Apply: https://bank.example.in/apply?o=T06\n",
            )
        )
    else:
        raise ValueError(channel)
    return event


def headers(event: DispatchRequested) -> dict[str, str]:
    """The headers campaigns' outbox relay sends: the event id, the campaign ID, and a traceparent in the outreach's
    trace (campaigns writes the event inside it), so the service continues that trace as it does in production."""
    trace_id, span_id = outreach_ids(event.campaign_id)
    return {
        "Nats-Msg-Id": event.event_id,
        "Xsell-Campaign-Id": event.campaign_id,
        "traceparent": f"00-{trace_id:032x}-{span_id:016x}-01",
    }


async def publish(bus: Bus, event: DispatchRequested) -> int:
    ack = await bus.js.publish(streams.DISPATCH_REQUESTED, event.SerializeToString(), headers=headers(event))
    return int(ack.seq)


async def preload(bus: Bus, events: Sequence[DispatchRequested]) -> int:
    """Publishes the backlog before the service starts; returns the last stream sequence."""
    last = 0
    for start in range(0, len(events), PUBLISH_CHUNK):
        sequences = await asyncio.gather(*(publish(bus, e) for e in events[start : start + PUBLISH_CHUNK]))
        last = max(last, *sequences)
    return last


async def all_handled(bus: Bus, last_seq: int) -> float:
    """Waits until the durable acked (or terminated) everything up to `last_seq`; returns when it saw that."""
    best, progressed = 0, time.monotonic()
    while True:
        info = await bus.js.consumer_info(streams.CAMPAIGNS_STREAM.name, streams.CHANNELS_DISPATCH.durable)
        floor = int(info.ack_floor.stream_seq)
        if floor >= last_seq:
            return time.perf_counter()
        if floor > best:
            best, progressed = floor, time.monotonic()
        elif time.monotonic() - progressed > STALL_SECONDS:
            raise TimeoutError(f"no dispatch acknowledged for {STALL_SECONDS:.0f}s (ack floor {floor} < {last_seq})")
        await asyncio.sleep(0.05)


async def ledger_states(url: str) -> dict[str, str]:
    """Every message's state in the service's ledger."""
    db = Database(url)
    try:
        async with db.snapshot() as session:
            rows = (await session.execute(select(store.messages.c.campaign_id, store.messages.c.state))).all()
    finally:
        await db.dispose()
    return {campaign_id: state for campaign_id, state in rows}


async def engagement_count(url: str, kind: str, campaign_ids: Collection[str]) -> int:
    """How many of the messages have an engagement step of `kind` on their timeline."""
    t = store.message_timeline.c
    db = Database(url)
    try:
        async with db.snapshot() as session:
            found = await session.execute(
                select(t.campaign_id).where(t.step == engagement_step(Engagement(kind))).distinct()
            )
            return len(set(found.scalars()) & set(campaign_ids))
    finally:
        await db.dispose()


def consumer_span_starts(
    lines: Iterable[str], campaign_ids: Collection[str], wall_minus_perf: float
) -> dict[str, float]:
    """When the service's consumer span of each request first started (perf_counter seconds), from its span lines."""
    starts: dict[str, float] = {}
    for line in lines:
        span = json.loads(line)
        campaign_id = span["attributes"].get("campaign.id")
        if span["kind"] != "CONSUMER" or campaign_id not in campaign_ids:
            continue
        started = span["start_ns"] / 1e9 - wall_minus_perf
        starts[campaign_id] = min(started, starts.get(campaign_id, started))
    return starts


def write_samples(
    path: Path,
    requested: Mapping[str, float],
    handler_started: Mapping[str, float],
    accepted: Mapping[str, float],
    wall_minus_perf: float,
) -> None:
    """Each request's publish, handler start and acceptance (wall-clock seconds, as the spans carry them), one JSON
    line each in publish order: to see whether slow requests come together, and what the service did then."""
    with path.open("wb") as file:
        for campaign_id, at in sorted(requested.items(), key=lambda item: item[1]):
            handler, done = handler_started.get(campaign_id), accepted.get(campaign_id)
            sample = {
                "campaign_id": campaign_id,
                "requested": at + wall_minus_perf,
                "handler": None if handler is None else handler + wall_minus_perf,
                "accepted": None if done is None else done + wall_minus_perf,
            }
            file.write(json.dumps(sample).encode() + b"\n")


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def floor_http_requests(events: Iterable[DispatchRequested], settings: ChannelsSettings) -> list[dict[str, Any]]:
    """The provider requests the service's adapters build for `events` (the floor sends these with bare aiohttp)."""
    sms = ExotelSms(
        settings.sms_base_url,
        settings.sms_account_sid,
        settings.sms_api_key,
        settings.sms_api_token.get_secret_value(),
        settings.sms_dlt_entity_id,
        settings.sms_type,
        settings.sms_status_callback_url,
    )
    whatsapp = WhatsAppCloud(
        settings.whatsapp_base_url,
        settings.whatsapp_api_version,
        settings.whatsapp_phone_number_id,
        settings.whatsapp_access_token.get_secret_value(),
    )
    push = FcmPush(settings.push_base_url, settings.fcm_project_id, settings.fcm_access_token.get_secret_value())
    webhook = SignedWebhook(settings.webhook_secret.get_secret_value())
    allowed_hosts = frozenset(settings.webhook_allowed_hosts)
    requests = []
    for event in events:
        if event.HasField("sms"):
            request = sms.request(event.campaign_id, event.profile_id, validate_sms(convert.outgoing_sms(event)))
        elif event.HasField("whatsapp"):
            message = validate_whatsapp(convert.outgoing_whatsapp(event))
            request = whatsapp.request(event.campaign_id, event.profile_id, message)
        elif event.HasField("push"):
            request = push.request(event.campaign_id, event.profile_id, validate_push(convert.outgoing_push(event)))
        else:
            target = validate_webhook(event.webhook.url, event.webhook.payload_json, allowed_hosts=allowed_hosts)
            request = webhook.request(event.campaign_id, event.profile_id, target)
        provider = convert.channel_name(event.channel).removeprefix("CHANNEL_").lower()
        requests.append(encode_http(provider, request.method, request.url, request.body, dict(request.headers)))
    return requests


def floor_mails(events: Iterable[DispatchRequested], settings: ChannelsSettings) -> list[dict[str, Any]]:
    """The e-mails the service composes for `events` (the floor sends these with bare aiosmtplib)."""
    now = datetime.now(UTC)
    mails = []
    for event in events:
        email = validate_email("CHANNEL_EMAIL", convert.outgoing_email(event))
        links = TrackingLinks(
            settings.tracking_base_url, settings.tracking_secret.get_secret_value(), event.campaign_id
        )
        payload = compose(
            email,
            campaign_id=event.campaign_id,
            from_address=settings.from_address,
            message_id_domain=settings.message_id_domain,
            links=links,
            now=now,
        )
        mails.append(encode_mail(email.to_address, payload))
    return mails


@dataclass
class Bench:
    """The NATS server, provider sinks, SMTP relay and service settings shared by the three parts."""

    args: argparse.Namespace
    var: Path
    url: str
    bus: Bus
    sinks: ProviderSinks
    mailbox: Mailbox
    smtp_port: int
    nats_url: str
    profiles: list[Path] = field(default_factory=list)

    def service(self, part: str) -> ServiceProcess:
        """A fresh channels process for one part, on the bench's NATS, database, sinks and relay."""
        limits = {name: self.args.provider_rate for name in (*HTTP_CHANNELS, "email")}
        # E-mail too: the SMTP sessions bound the transactions on the wire, not the messages whose intents are written.
        concurrency = {name: self.args.provider_concurrency for name in (*HTTP_CHANNELS, "email")}
        settings = {
            "SMTP_PORT": str(self.smtp_port),
            "DISPATCH_CONCURRENCY": str(self.args.concurrency),
            "PROVIDER_RATE_PER_SECOND": json.dumps(limits),
            "PROVIDER_CONCURRENCY": json.dumps(concurrency),
            "SMTP_CONNECTIONS": str(self.args.smtp_connections),
            **{name.upper(): str(value) for name, value in self.sinks.channels_settings().items()},
        }
        return ServiceProcess(
            "channels",
            self.var / part,
            self.url,
            {f"XSELL_CHANNELS_{name}": value for name, value in settings.items()},
            grpc_service=SERVICE,
            nats_url=self.nats_url,
        )

    def accepted(self) -> list[tuple[str, float]]:
        """Every acceptance at every provider so far: (campaign ID, when)."""
        http = [(r.campaign_id, r.accepted_at) for sink in self.sinks.all for r in sink.received]
        return http + list(self.mailbox.accepted)

    async def backlog(self, part: str, channels: Sequence[str], count: int) -> dict[str, Any]:
        """Throughput on a backlog published before the service starts."""
        webhook_url = self.sinks.webhook_url()
        events = [dispatch(i, channels[i % len(channels)], part, webhook_url) for i in range(count)]
        last_seq = await preload(self.bus, events)
        ids = {e.campaign_id for e in events}
        service = self.service(part)
        await service.start(timeout=60)
        profiler = self._profile(part, service.pid)
        cpu_before, bench_cpu_before = service.cpu_seconds(), time.process_time()
        # The service consumes the backlog from before it reports serving: what it had handed over by now cost CPU
        # that the readings above do not hold (a varying share, up to half the backlog, was counted at no cost).
        before = sum(1 for campaign_id, _ in self.accepted() if campaign_id in ids)
        try:
            finished = await all_handled(self.bus, last_seq)
            cpu = service.cpu_seconds() - cpu_before
            bench_cpu = time.process_time() - bench_cpu_before
        finally:
            await _stop_profiler(profiler)
            service.stop()
        times = [at for campaign_id, at in self.accepted() if campaign_id in ids]
        result = tally(ids, (c for c, _ in self.accepted()), await ledger_states(self.url))
        rate = per_second(len(ids), min(times), finished) if times else 0.0
        return {
            "per_s": rate,
            "messages": count,
            "seconds": round(finished - min(times), 2) if times else None,
            # CPU the service process spent per message (all its threads) while it handed over the messages after the
            # reading began: what bounds the rate on this machine.
            "service_cpu_ms_per_message": round(cpu * 1000 / max(1, count - before), 3),
            # This process meanwhile: mostly the provider servers (and the relay) answering the service.
            "bench_process_cpu_ms_per_message": round(bench_cpu * 1000 / max(1, count - before), 3),
            "accepted_before_cpu_reading": before,
            "tally": asdict(result),
        }

    async def floor(self, part: str, channels: Sequence[str], count: int) -> dict[str, Any]:
        """The same backlog through the bare clients (bench/channels_floor.py in a process of its own), no service,
        database or NATS: what this machine allows for the traffic alone."""
        webhook_url = self.sinks.webhook_url()
        events = [dispatch(i, channels[i % len(channels)], part, webhook_url) for i in range(count)]
        settings = ChannelsSettings(**self.sinks.channels_settings())
        job: dict[str, Any]
        if tuple(channels) == ("email",):
            job = {
                "kind": "smtp",
                "host": HOST,
                "port": self.smtp_port,
                "sessions": self.args.smtp_connections,
                "sender": settings.from_address,
                "mails": floor_mails(events, settings),
            }
        else:
            job = {
                "kind": "http",
                "concurrency": self.args.concurrency,
                "provider_concurrency": self.args.provider_concurrency,
                "requests": floor_http_requests(events, settings),
            }
        path = self.var / part / "floor-job.json"
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_text, json.dumps(job))
        bench_cpu_before = time.process_time()
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.channels_floor",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            cwd=REPOSITORY,
        )
        output, _ = await client.communicate()
        bench_cpu = time.process_time() - bench_cpu_before
        if client.returncode != 0:
            raise RuntimeError(f"the floor's client exited with {client.returncode}")
        sent = json.loads(output)
        ids = {e.campaign_id for e in events}
        counts = Counter(c for c, _ in self.accepted() if c in ids)
        self._forget(ids)
        return {
            "per_s": round(sent["sent"] / sent["seconds"], 1),
            "messages": count,
            "seconds": round(sent["seconds"], 2),
            "client_cpu_ms_per_message": round(sent["cpu_seconds"] * 1000 / count, 3),
            # This process meanwhile: the provider servers or the relay, answering the bare client.
            "bench_process_cpu_ms_per_message": round(bench_cpu * 1000 / count, 3),
            "refused": sent["refused"],
            "accepted_twice": sum(1 for n in counts.values() if n > 1),
            "not_accepted": len(ids) - len(counts),
        }

    def _forget(self, campaign_ids: Collection[str]) -> None:
        """Drops the floor's acceptances from the providers' logs: they are not the service's, nor in its ledger."""
        for sink in self.sinks.all:
            sink.received = [r for r in sink.received if r.campaign_id not in campaign_ids]
        self.mailbox.accepted = [(c, at) for c, at in self.mailbox.accepted if c not in campaign_ids]

    async def latency(self, part: str, rate: float, seconds: float) -> dict[str, Any]:
        """Open loop at `rate`: each request timed from its publish to its acceptance at the provider."""
        webhook_url = self.sinks.webhook_url()
        count = int(rate * seconds)
        events = [dispatch(i, HTTP_CHANNELS[i % len(HTTP_CHANNELS)], part, webhook_url) for i in range(count)]
        ids = {e.campaign_id for e in events}
        service = self.service(part)
        await service.start(timeout=60)
        lag_before = await service.loop_lag_readings()
        requested: dict[str, float] = {}
        last_seq = 0
        # Spans carry wall-clock nanoseconds; requests and acceptances are timed on perf_counter.
        wall_minus_perf = time.time() - time.perf_counter()
        try:
            # This process serves the providers: a full collection of its heap meanwhile would stall acceptances.
            with collector_paused():
                tick = 0.01
                began = time.perf_counter()
                publishing: list[asyncio.Task[int]] = []
                sent = 0
                while sent < count:
                    due = min(count, int((time.perf_counter() - began) * rate) + 1)
                    for event in events[sent:due]:
                        requested[event.campaign_id] = time.perf_counter()
                        publishing.append(asyncio.create_task(publish(self.bus, event)))
                    sent = due
                    await asyncio.sleep(tick)
                offered = per_second(count, began, time.perf_counter())
                last_seq = max(await asyncio.gather(*publishing))
                await all_handled(self.bus, last_seq)
            lag = loop_lag(lag_before, await service.loop_lag_readings())
        finally:
            service.stop()
        accepted = {c: at for c, at in self.accepted() if c in ids}
        latencies = [(accepted[c] - requested[c]) * 1000 for c in ids if c in accepted]
        result = tally(ids, (c for c, _ in self.accepted()), await ledger_states(self.url))
        # Where the time went: publish -> the service's handler starting (NATS, the consumer's queue), then handler
        # -> the provider accepting (ledger intent, hand-over), from the service's span of each request.
        spans = await asyncio.to_thread(read_lines, self.var / part / "var" / "traces" / "channels.jsonl")
        handler_started = consumer_span_starts(spans, ids, wall_minus_perf)
        samples = self.var / part / "latency-samples.jsonl"
        await asyncio.to_thread(write_samples, samples, requested, handler_started, accepted, wall_minus_perf)
        to_handler = [(handler_started[c] - requested[c]) * 1000 for c in ids if c in handler_started]
        in_handler = [(accepted[c] - handler_started[c]) * 1000 for c in ids if c in accepted and c in handler_started]
        return {
            "offered_per_s": offered,
            "messages": count,
            "p50_ms": round(nearest_rank(latencies, 0.50), 1),
            "p99_ms": round(nearest_rank(latencies, 0.99), 1),
            "max_ms": round(max(latencies), 1) if latencies else None,
            "publish_to_handler_p50_ms": round(nearest_rank(to_handler, 0.50), 1),
            "publish_to_handler_p99_ms": round(nearest_rank(to_handler, 0.99), 1),
            "handler_to_provider_p50_ms": round(nearest_rank(in_handler, 0.50), 1),
            "handler_to_provider_p99_ms": round(nearest_rank(in_handler, 0.99), 1),
            # How long work held the service's loop meanwhile (its xsell.event_loop.lag, read every 100 ms).
            "loop_lag": lag,
            "tally": asdict(result),
        }

    async def reports(self, part: str, campaign_ids: Sequence[str]) -> dict[str, Any]:
        """On one service: a DELIVERED receipt for each message (all SENT), then an OPENED engagement for each, each
        kind `--receipt-concurrency` calls in flight over gRPC, timed and its CPU read on its own."""
        service = self.service(part)
        await service.start(timeout=60)
        profiler = self._profile(part, service.pid)
        try:
            async with grpc.aio.insecure_channel(service.target) as channel:
                stub = ChannelsServiceStub(channel)

                def receipt(index: int, campaign_id: str) -> Awaitable[object]:
                    request = RecordDeliveryReceiptRequest(
                        request_id=f"bench-receipt-{index}",
                        campaign_id=campaign_id,
                        state=resources_pb2.DELIVERY_STATE_DELIVERED,
                    )
                    return stub.RecordDeliveryReceipt(request, timeout=60)

                def opened(index: int, campaign_id: str) -> Awaitable[object]:
                    request = RecordEngagementRequest(
                        request_id=f"bench-open-{index}",
                        campaign_id=campaign_id,
                        kind=resources_pb2.ENGAGEMENT_KIND_OPENED,
                    )
                    return stub.RecordEngagement(request, timeout=60)

                receipts = await self._timed_calls(service, receipt, campaign_ids)
                opens = await self._timed_calls(service, opened, campaign_ids)
        finally:
            await _stop_profiler(profiler)
            service.stop()
        states = await ledger_states(self.url)
        receipts["not_delivered_after"] = sum(1 for c in campaign_ids if states.get(c) != "DELIVERED")
        opens["not_recorded_after"] = len(campaign_ids) - await engagement_count(self.url, "OPENED", campaign_ids)
        return {"receipts": receipts, "opens": opens}

    async def _timed_calls(
        self,
        service: ServiceProcess,
        call: Callable[[int, str], Awaitable[object]],
        campaign_ids: Sequence[str],
    ) -> dict[str, Any]:
        """One call per campaign ID, `--receipt-concurrency` in flight: the rate and the CPU each call cost."""
        in_flight = asyncio.Semaphore(self.args.receipt_concurrency)

        async def one(index: int, campaign_id: str) -> None:
            async with in_flight:
                await call(index, campaign_id)

        cpu_before, bench_cpu_before = service.cpu_seconds(), time.process_time()
        began = time.perf_counter()
        with collector_paused():
            await asyncio.gather(*(one(i, c) for i, c in enumerate(campaign_ids)))
        finished = time.perf_counter()
        count = len(campaign_ids)
        return {
            "per_s": per_second(count, began, finished),
            "calls": count,
            "seconds": round(finished - began, 2),
            "in_flight": self.args.receipt_concurrency,
            "service_cpu_ms_per_call": round((service.cpu_seconds() - cpu_before) * 1000 / max(1, count), 3),
            # This process meanwhile: the gRPC client making the calls.
            "bench_process_cpu_ms_per_call": round((time.process_time() - bench_cpu_before) * 1000 / max(1, count), 3),
        }

    def _profile(self, part: str, pid: int) -> subprocess.Popen[bytes] | None:
        if self.args.profile is None:
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        output = self.args.profile / f"channels-{part}.txt"
        self.profiles.append(output)
        spy = Path(sys.executable).parent / "py-spy"
        return subprocess.Popen(
            [
                str(spy),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--output",
                str(output),
                "--rate",
                "200",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


async def _stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    """py-spy writes its profile when interrupted."""
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        await asyncio.to_thread(profiler.wait, 60)


async def main(args: argparse.Namespace) -> int:
    var = args.var.resolve() / args.backend
    await asyncio.to_thread(shutil.rmtree, var, True)
    var.mkdir(parents=True)
    postgres = None
    if args.backend == "postgresql":
        # Its own cluster beside the run folder, kept between runs (initdb is slow); a fresh database each run.
        postgres = BenchPostgres(args.var.resolve() / "pg").start()
        await postgres.configure()
        await postgres.recreate_database("bench_channels")
        url = postgres.url("bench_channels")
    else:
        url = f"sqlite+aiosqlite:///{var / 'channels.db'}"
    nats = NatsServer(var / "nats").start(var / "nats.log")
    sinks = await ProviderSinks().start()
    mailbox = Mailbox()
    relay = Controller(mailbox, hostname=HOST, port=free_port(HOST))
    await asyncio.to_thread(relay.start)
    bus = await Bus.connect(nats.url, name="bench-channels")
    try:
        await bus.ensure_streams(streams.ALL_STREAMS)
        bench = Bench(args, var, url, bus, sinks, mailbox, relay.port, nats.url)
        http_count = max(500, int(30_000 * args.scale))
        smtp_count = max(200, int(10_000 * args.scale))
        seconds = max(3.0, 20.0 * args.scale)
        http = smtp = latency = low = receipts = None
        if "http" in args.parts:
            http = await _throughput_part(bench, "http", HTTP_CHANNELS, http_count)
        if "receipts" in args.parts:
            receipts = await _reports_part(bench, [bench_campaign_id("http", i) for i in range(http_count)])
        if "smtp" in args.parts:
            smtp = await _throughput_part(bench, "smtp", ("email",), smtp_count)
        if "latency" in args.parts:
            latency = await _latency_part(bench, "latency", args.rate, seconds)
        if "low" in args.parts:
            low = await _latency_part(bench, "low", args.low_rate, seconds)
        if http is None or smtp is None or latency is None or low is None or receipts is None:
            print("a partial run (--parts) records no result file", flush=True)
            return 0
        document = await result_document(args, bench, http, smtp, latency, low, receipts, postgres)
    finally:
        await bus.drain()
        await asyncio.to_thread(relay.stop)
        await sinks.stop()
        nats.stop()
        if postgres is not None:
            try:
                postgres.stop()
            except subprocess.CalledProcessError:
                print("postgresql: already stopped")
    results = args.results if args.scale == 1.0 else args.results / f"scale-{args.scale:g}"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"channels-{args.backend}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    verdicts = {name: entry["met"] for name, entry in document["figures"].items()}
    print(f"{path}: {verdicts}", flush=True)
    return 0


async def _throughput_part(bench: Bench, part: str, channels: Sequence[str], count: int) -> dict[str, Any]:
    """The floor (bare clients), then the service, on backlogs of the same traffic; the service's result holds both."""
    print(f"{bench.args.backend}: {part} floor (bare client, no service) on {count} messages", flush=True)
    floor = await bench.floor(f"{part}-floor", channels, count)
    print(
        f"  {floor['per_s']} messages/s, {floor['client_cpu_ms_per_message']} ms client CPU each, "
        f"{floor['bench_process_cpu_ms_per_message']} ms in the sinks' process; {floor}",
        flush=True,
    )
    print(f"{bench.args.backend}: {part} throughput of the service on a backlog of {count}", flush=True)
    result = await bench.backlog(part, channels, count)
    result["floor"] = floor
    result["service_over_floor_rate"] = round(result["per_s"] / floor["per_s"], 3) if floor["per_s"] else None
    result["service_over_floor_cpu"] = (
        round(result["service_cpu_ms_per_message"] / floor["client_cpu_ms_per_message"], 1)
        if floor["client_cpu_ms_per_message"]
        else None
    )
    print(
        f"  {result['per_s']} messages/s, {result['service_cpu_ms_per_message']} ms CPU each "
        f"({result['bench_process_cpu_ms_per_message']} ms in the sinks' process; "
        f"{result['accepted_before_cpu_reading']} handed over before the CPU reading); service / floor: rate "
        f"{result['service_over_floor_rate']}, CPU per message {result['service_over_floor_cpu']}; {result['tally']}",
        flush=True,
    )
    return result


async def _reports_part(bench: Bench, campaign_ids: Sequence[str]) -> dict[str, Any]:
    print(
        f"{bench.args.backend}: reports, a DELIVERED then an OPENED for each of the {len(campaign_ids)} HTTP messages"
    )
    result = await bench.reports("receipts", campaign_ids)
    for name, figures in result.items():
        left = figures.get("not_delivered_after", figures.get("not_recorded_after"))
        print(
            f"  {name}: {figures['per_s']}/s, {figures['service_cpu_ms_per_call']} ms CPU each in the service "
            f"({figures['bench_process_cpu_ms_per_call']} ms in the client), {figures['in_flight']} in flight; "
            f"{left} not recorded after",
            flush=True,
        )
    return result


async def _latency_part(bench: Bench, part: str, rate: float, seconds: float) -> dict[str, Any]:
    print(f"{bench.args.backend}: latency at {rate:g}/s offered for {seconds:g}s", flush=True)
    result = await bench.latency(part, rate, seconds)
    to_handler = f"{result['publish_to_handler_p50_ms']} / {result['publish_to_handler_p99_ms']}"
    to_provider = f"{result['handler_to_provider_p50_ms']} / {result['handler_to_provider_p99_ms']}"
    print(
        f"  p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms at {result['offered_per_s']}/s (p50 / p99: publish -> "
        f"handler {to_handler} ms, handler -> provider {to_provider} ms); loop lag {result['loop_lag']}; "
        f"{result['tally']}",
        flush=True,
    )
    return result


async def result_document(
    args: argparse.Namespace,
    bench: Bench,
    http: dict[str, Any],
    smtp: dict[str, Any],
    latency: dict[str, Any],
    low: dict[str, Any],
    receipts: dict[str, Any],
    postgres: BenchPostgres | None,
) -> dict[str, Any]:
    tallies = [http["tally"], smtp["tally"], latency["tally"], low["tally"]]
    duplicates = sum(t["duplicates"] for t in tallies)
    lost = sum(t["lost"] for t in tallies)
    figures = {
        "http_throughput": figure(
            http["per_s"],
            "messages/s",
            f">= {GOALS['http_per_s']:g}",
            http["per_s"] >= GOALS["http_per_s"],
            messages=http["messages"],
            seconds=http["seconds"],
            channels=list(HTTP_CHANNELS),
            service_cpu_ms_per_message=http["service_cpu_ms_per_message"],
            bench_process_cpu_ms_per_message=http["bench_process_cpu_ms_per_message"],
            # The same traffic through the bare client, no service, database or NATS, in this run.
            floor=http["floor"],
            service_over_floor_rate=http["service_over_floor_rate"],
            service_over_floor_cpu=http["service_over_floor_cpu"],
        ),
        "smtp_throughput": figure(
            smtp["per_s"],
            "messages/s",
            f">= {GOALS['smtp_per_s']:g}",
            smtp["per_s"] >= GOALS["smtp_per_s"],
            messages=smtp["messages"],
            seconds=smtp["seconds"],
            service_cpu_ms_per_message=smtp["service_cpu_ms_per_message"],
            bench_process_cpu_ms_per_message=smtp["bench_process_cpu_ms_per_message"],
            # The same traffic through the bare client, no service, database or NATS, in this run.
            floor=smtp["floor"],
            service_over_floor_rate=smtp["service_over_floor_rate"],
            service_over_floor_cpu=smtp["service_over_floor_cpu"],
        ),
        "dispatch_to_accepted_p50": figure(
            latency["p50_ms"],
            "ms",
            "reported",
            True,
            offered_per_s=latency["offered_per_s"],
        ),
        "dispatch_to_accepted_p99": figure(
            latency["p99_ms"],
            "ms",
            f"<= {GOALS['p99_ms']:g} at {GOALS['offered_per_s']:g}/s offered",
            latency["p99_ms"] <= GOALS["p99_ms"] and latency["offered_per_s"] >= 0.95 * GOALS["offered_per_s"],
            offered_per_s=latency["offered_per_s"],
            max_ms=latency["max_ms"],
            messages=latency["messages"],
            **_split(latency),
            loop_lag=latency["loop_lag"],
        ),
        # Not a goal of the issue: the latency when the service keeps up with what is offered.
        "dispatch_to_accepted_p99_low_rate": figure(
            low["p99_ms"],
            "ms",
            "reported",
            True,
            offered_per_s=low["offered_per_s"],
            p50_ms=low["p50_ms"],
            max_ms=low["max_ms"],
            messages=low["messages"],
            **_split(low),
        ),
        # Not goals of the issue: a provider's reports meet the campaign's volume again; WhatsApp sends three a message.
        "receipts_throughput": figure(
            receipts["receipts"]["per_s"],
            "receipts/s",
            "reported; every message DELIVERED after",
            receipts["receipts"]["not_delivered_after"] == 0,
            **{k: v for k, v in receipts["receipts"].items() if k != "per_s"},
        ),
        "engagement_throughput": figure(
            receipts["opens"]["per_s"],
            "engagements/s",
            "reported; every message OPENED after",
            receipts["opens"]["not_recorded_after"] == 0,
            **{k: v for k, v in receipts["opens"].items() if k != "per_s"},
        ),
        "duplicates": figure(duplicates, "messages", "0 in every run", duplicates == 0),
        "lost": figure(lost, "messages", "0 in every run", lost == 0),
    }
    versions = {}
    for name in EXTRA_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    machine = await machine_info(postgres)
    machine["packages"] = {**machine["packages"], **versions}
    return {
        "name": "channels",
        "backend": args.backend,
        "scale": args.scale,
        "figures": figures,
        "goal_met": all(entry["met"] == "yes" for entry in figures.values()),
        "tallies": {"http": http["tally"], "smtp": smtp["tally"], "latency": latency["tally"], "low": low["tally"]},
        "service_settings": {
            "dispatch_concurrency": args.concurrency,
            "provider_concurrency": args.provider_concurrency,
            "provider_rate_per_second": args.provider_rate,
            "smtp_connections": args.smtp_connections,
            "receipt_concurrency": args.receipt_concurrency,
        },
        "profiles": [str(p) for p in bench.profiles],
        "machine": machine,
        # Other work on the same machine slows every figure; the 1/5/15-minute load average says how much.
        "load_average_at_write": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


SPLIT = (
    "publish_to_handler_p50_ms",
    "publish_to_handler_p99_ms",
    "handler_to_provider_p50_ms",
    "handler_to_provider_p99_ms",
)
"""The latency parts' split at the service's consumer span, as the result file keeps it."""


def _split(latency: Mapping[str, Any]) -> dict[str, Any]:
    """A latency part's time before the service's handler and in it, as the result file keeps it."""
    return {key: latency[key] for key in SPLIT}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.channels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 30k HTTP, 10k e-mails, 20 s at --rate")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rate", type=float, default=GOALS["offered_per_s"], help="offered rate of the latency part")
    parser.add_argument("--concurrency", type=int, default=128, help="the service's dispatch_concurrency")
    parser.add_argument("--provider-concurrency", type=int, default=64, help="calls in flight per HTTP provider")
    parser.add_argument("--provider-rate", type=float, default=100_000.0, help="token-bucket rate per provider")
    # 32: within what relays allow one sender (SendGrid 10,000 concurrent connections, Postfix's default 50 per
    # client; SocketLabs, at 10 per account, would need fewer) and enough that the sessions, not the ledger's
    # transactions in between, carry the e-mails (8 -> 32: 1.30-1.36 -> 0.76-1.03 ms CPU per e-mail).
    parser.add_argument("--smtp-connections", type=int, default=32, help="SMTP sessions the service keeps open")
    parser.add_argument("--low-rate", type=float, default=100.0, help="offered rate of the below-capacity latency part")
    parser.add_argument("--receipt-concurrency", type=int, default=64, help="receipt calls in flight (receipts part)")
    parser.add_argument(
        "--parts", default="http,receipts,smtp,latency,low", help="run only these parts (no result file then)"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy raw profiles of the backlog and receipts parts here"
    )
    parser.add_argument("--var", type=Path, default=Path("var/bench/channels"))
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    args.parts = [part for part in args.parts.split(",") if part]
    unknown = set(args.parts) - {"http", "receipts", "smtp", "latency", "low"}
    if unknown:
        parser.error(f"unknown part {sorted(unknown)[0]}; one of http, receipts, smtp, latency, low")
    if "receipts" in args.parts and "http" not in args.parts:
        parser.error("the receipts part reports on the http part's messages: name both")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
