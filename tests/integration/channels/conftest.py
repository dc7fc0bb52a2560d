"""Real parts for the channels tests: an aiosmtpd relay, the channels process on port 0, and NATS listeners."""

import asyncio
import email
import email.policy
import threading
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devstack.esp_sink import SendGridEventPoster, SesEventPoster
from devstack.nats_server import free_port
from devstack.provider_sinks import ProviderSinks
from devstack.smtp_sink import DsnController, ReportReturner, offering_dsn, report_delivery
from plumbing.bus import Bus
from plumbing.db import Database
from plumbing.runtime import ServiceProcess
from services import streams
from services.channels.app import build
from services.channels.settings import ChannelsSettings
from tests.waiting import eventually
from xsell.channels.v1 import service_pb2_grpc

TRACKING_BASE = "https://t.example.in"
TRACKING_SECRET = "integration-secret"


class Mailbox:
    """An aiosmtpd handler that keeps every message it accepts and refuses chosen recipients with 550; it offers
    PIPELINING (RFC 2920) as the relays of SES, SendGrid or Postfix do, unless told not to. With `reports`, it offers
    DSN (RFC 3461) too, and reports each delivery whose sender asked for it to the return path's mailbox."""

    def __init__(
        self,
        refuse: frozenset[str] = frozenset(),
        *,
        pipelining: bool = True,
        reports: ReportReturner | None = None,
        events: SendGridEventPoster | SesEventPoster | None = None,
    ) -> None:
        self.refuse = refuse
        self.pipelining = pipelining
        self.reports = reports
        # Playing an ESP's relay (SendGrid's, SES's): the events of each message it accepts, posted to the gateway.
        self.events = events
        # The next message's connection is dropped in DATA: after the relay queued it (it holds the message, the
        # client never hears) or before (it holds nothing); either way the client cannot tell.
        self.drop_next: str | None = None
        # While set, each message waits, its data received, before the relay queues it and answers (hold()).
        self._released = threading.Event()
        self._released.set()
        self.in_flight = 0
        self.messages: list[EmailMessage] = []
        # The envelope sender (MAIL FROM) of each message: where bounces go back to.
        self.senders: list[str] = []
        # The client's address and port of the SMTP session each message came in: one per connection.
        self.sessions: list[tuple[str, int]] = []
        # The ESMTP parameters of each message's MAIL and RCPT (the DSN request, RFC 3461).
        self.options: list[tuple[list[str], list[str]]] = []

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when the handler has no EHLO hook
        if self.reports is not None:
            responses = offering_dsn(responses)
        if not self.pipelining:
            return responses
        # aiosmtpd reads one command line at a time, so commands that come together are answered in turn.
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def hold(self) -> None:
        """Messages wait with their data received and unanswered, until release(): then each is queued (and
        reported) whether or not its client is still there, as an MTA that has the whole message does."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_flight += 1
        try:
            if not self._released.is_set():  # the test's thread releases it
                await asyncio.to_thread(self._released.wait, 60.0)
        finally:
            self.in_flight -= 1
        drop, self.drop_next = self.drop_next, None
        if drop == "before_queue":
            server.transport.abort()
            return "451 4.3.0 never heard"
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.senders.append(envelope.mail_from)
        self.sessions.append(tuple(session.peer))
        self.options.append((list(envelope.mail_options), list(envelope.rcpt_options)))
        report_delivery(self.reports, envelope, "relay.test.in")
        if self.events is not None:
            self.events.report(envelope)
        if drop == "after_queue":
            server.transport.abort()
        return "250 2.0.0 Ok: queued"

    def for_campaign(self, campaign_id: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["X-Xsell-Campaign-Id"] == campaign_id]


@dataclass
class SmtpRelay:
    mailbox: Mailbox
    port: int
    controller: DsnController | None = None

    async def start(self) -> None:
        self.controller = DsnController(self.mailbox, hostname="127.0.0.1", port=self.port)
        # Controller.start blocks until its own thread serves; keep the test's event loop free meanwhile.
        await asyncio.to_thread(self.controller.start)
        self.port = self.controller.port

    async def stop(self) -> None:
        if self.controller is not None:
            await asyncio.to_thread(self.controller.stop)
            self.controller = None


@pytest.fixture
async def smtp_relay() -> AsyncIterator[SmtpRelay]:
    relay = SmtpRelay(Mailbox(refuse=frozenset({"nobody@bank.example.in"})), port=0)
    await relay.start()
    yield relay
    await relay.stop()


@pytest.fixture(params=[True, False], ids=["pipelining", "one-command-at-a-time"])
async def either_smtp_relay(request: pytest.FixtureRequest) -> AsyncIterator[SmtpRelay]:
    """The relay with and without PIPELINING: the service sends over both (its own protocol, or aiosmtplib's)."""
    relay = SmtpRelay(Mailbox(refuse=frozenset({"nobody@bank.example.in"}), pipelining=request.param), port=0)
    await relay.start()
    yield relay
    await relay.stop()


@pytest.fixture
def unstarted_smtp_relay() -> SmtpRelay:
    """A relay whose port is reserved for the service but nothing listens on it yet."""
    return SmtpRelay(Mailbox(), port=free_port())


@dataclass
class Channels:
    process: ServiceProcess
    stub: service_pb2_grpc.ChannelsServiceStub
    db: Database
    spans: InMemorySpanExporter


class StartChannels(Protocol):
    def __call__(self, smtp_port: int, **settings: Any) -> Awaitable[Channels]: ...


@pytest.fixture
async def provider_sinks(tmp_path: Path) -> AsyncIterator[ProviderSinks]:
    """The SMS, WhatsApp, push and webhook provider servers on free ports."""
    sinks = await ProviderSinks(log_dir=tmp_path / "providers").start()
    yield sinks
    await sinks.stop()


@pytest.fixture
async def start_channels(
    database_url: str, nats_url: str, tmp_path: Path, nats_bus: Bus
) -> AsyncIterator[StartChannels]:
    await nats_bus.ensure_streams(streams.ALL_STREAMS)
    started: list[tuple[Channels, grpc.aio.Channel]] = []

    async def start(smtp_port: int, **overrides: Any) -> Channels:
        settings = ChannelsSettings(
            grpc_port=0,
            database_url=database_url,
            nats_url=nats_url,
            var_dir=tmp_path,
            smtp_port=smtp_port,
            smtp_timeout_seconds=5.0,
            tracking_base_url=TRACKING_BASE,
            tracking_secret=TRACKING_SECRET,  # type: ignore[arg-type]
            message_id_domain="mail.test.in",
            # Short backoff steps: the retry tests wait for the redelivery, and jitter keeps them short.
            retry_base_seconds=0.05,
            retry_cap_seconds=0.5,
            **overrides,
        )
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        process = await build(settings, provider)
        port = await process.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels = Channels(process, service_pb2_grpc.ChannelsServiceStub(channel), Database(database_url), spans)
        started.append((channels, channel))
        return channels

    yield start
    for channels, channel in started:
        await channel.close()
        await channels.process.stop(1)
        await channels.db.dispose()


@dataclass
class Heard:
    subject: str
    headers: dict[str, str]
    data: bytes


@dataclass
class Listener:
    """Everything published on some subjects while a test runs."""

    heard: list[Heard] = field(default_factory=list)

    def on(self, subject: str, campaign_id: str) -> list[Heard]:
        return [h for h in self.heard if h.subject == subject and h.headers.get("Xsell-Campaign-Id") == campaign_id]

    async def eventually_on(self, subject: str, campaign_id: str) -> list[Heard]:
        """What was heard on `subject` about the outreach, once something is (tests.waiting.eventually)."""

        async def heard() -> list[Heard]:
            return self.on(subject, campaign_id)

        return await eventually(heard)


@pytest.fixture
async def listener(nats_bus: Bus) -> AsyncIterator[Listener]:
    heard = Listener()

    async def collect(msg: Any) -> None:
        heard.heard.append(Heard(msg.subject, dict(msg.headers or {}), msg.data))

    subscriptions = [
        await nats_bus.nc.subscribe(subject, cb=collect)
        for subject in ("xsell.channels.>", f"{streams.DEAD_LETTER_PREFIX}.{streams.CHANNELS_DISPATCH.durable}")
    ]
    await nats_bus.nc.flush()
    yield heard
    for subscription in subscriptions:
        await subscription.unsubscribe()
