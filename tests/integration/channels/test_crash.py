"""The channels process killed (SIGKILL) at random points while it sends, then restarted: the provider servers' logs
match the ledger, with no message lost and none sent twice.

Every channel at once. On SMS, WhatsApp, e-mail and the signed webhook, whose providers either deduplicate on the
campaign ID (the webhook) or report every message they accept (Exotel's StatusCallback, WhatsApp's `sent` status, both
through the real gateway's webhooks; the SMTP relay's delivery status notifications, asked for with
smtp_delivery_reports, through the gateway's return-path mailbox), a message a kill left AMBIGUOUS is settled by its
report, or handed over again once when no report came in its window: each is at its provider exactly once. Push (FCM)
reports nothing, so what a kill leaves AMBIGUOUS on it stays so, listed for an operator (test_receipts.py,
docs/channels.md): never sent twice, and never silently lost."""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, select

from devstack.nats_server import free_ports
from devstack.provider_sinks import ProviderSinks
from devstack.smtp_sink import ReportReturner
from gateway.app import build as build_gateway
from gateway.settings import GatewaySettings
from plumbing.bus import Bus
from plumbing.db import Database
from services import streams
from services.channels import store
from services.channels.delivery import DeliveryState
from tests.integration.channels.conftest import SmtpRelay
from tests.integration.channels.support import dispatch, dispatch_on, new_campaign_id, publish
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[3]
MESSAGES = 3000
REPORTED = ("sms", "whatsapp", "webhook", "email")
UNREPORTED = ("push",)
CHANNELS = REPORTED + UNREPORTED
KILLS = 3
CONCURRENCY = 16
"""Hand-overs in flight at once: at a kill each one to a provider without an idempotency key may end AMBIGUOUS."""
REPORT_WINDOW_SECONDS = 20.0
"""How long an AMBIGUOUS message waits for its provider's report before it is handed over again: far above the time
a report waits for a restarted channels (the sinks try a report again for ~60 s, as providers do)."""
CALLBACK_TOKEN = "crash-callback-token"
SMTP_SESSIONS = 4
"""The default: e-mails whose intent is written wait for a turn on one of these, at most two per session."""


class ChannelsProcess:
    """`python -m services.channels` as its own process, so it can be killed without a chance to clean up."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.channels"], env=self.env, cwd=REPO, stdout=log, stderr=log
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
async def channels_process(
    database_url: str, nats_url: str, tmp_path: Path, provider_sinks: ProviderSinks, smtp_relay: SmtpRelay
) -> AsyncIterator[ChannelsProcess]:
    """Channels with its provider's reports coming back through a real gateway, which outlives every kill."""
    grpc_port, gateway_http = free_ports(2)
    gateway = await build_gateway(
        GatewaySettings(
            grpc_port=0,
            http_port=gateway_http,
            var_dir=tmp_path / "gateway",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
            channels_target=f"127.0.0.1:{grpc_port}",
            whatsapp_app_secret=provider_sinks.credentials.whatsapp_app_secret,  # type: ignore[arg-type]
            sms_callback_token=CALLBACK_TOKEN,  # type: ignore[arg-type]
            bounce_mailbox_port=0,
            message_id_domain="mail.test.in",
            log_level="warning",
        ),
        TracerProvider(),
    )
    await gateway.start()
    # The relay offers DSN and reports each delivery to the gateway's mailbox, trying a report again for ~60 s.
    smtp_relay.mailbox.reports = ReportReturner("127.0.0.1", gateway.mailbox.port)  # type: ignore[attr-defined]
    provider_sinks.whatsapp_webhook_url = f"http://127.0.0.1:{gateway_http}/webhooks/whatsapp"
    for sink in (provider_sinks.sms, provider_sinks.whatsapp):
        sink.callback_retry_delays = (0.2, 0.5, 1.0, 2.0, *[4.0] * 14)
    env = {key: value for key, value in os.environ.items() if not key.startswith("XSELL_")}
    settings = {
        "GRPC_PORT": str(grpc_port),
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "VAR_DIR": str(tmp_path / "var"),
        "LOG_LEVEL": "warning",
        "RETRY_BASE_SECONDS": "0.05",
        "RETRY_CAP_SECONDS": "0.5",
        "DISPATCH_CONCURRENCY": str(CONCURRENCY),
        "PROVIDER_RATE_PER_SECOND": json.dumps({name: 100_000 for name in CHANNELS}),
        # E-mail is left to its default: twice the SMTP sessions, so a kill leaves at most that many AMBIGUOUS.
        "PROVIDER_CONCURRENCY": json.dumps({name: CONCURRENCY for name in CHANNELS if name != "email"}),
        "SMTP_PORT": str(smtp_relay.port),
        "SMTP_CONNECTIONS": str(SMTP_SESSIONS),
        "SMTP_DELIVERY_REPORTS": "true",
        "RETURN_PATH": "bounces@mail.test.in",
        "MESSAGE_ID_DOMAIN": "mail.test.in",
        "RESEND_WITHOUT_RECEIPT_SECONDS": json.dumps(
            {name: REPORT_WINDOW_SECONDS for name in ("sms", "whatsapp", "email")}
        ),
        "RESEND_POLL_SECONDS": "0.5",
        "SMS_STATUS_CALLBACK_URL": f"http://127.0.0.1:{gateway_http}/webhooks/sms/exotel/{CALLBACK_TOKEN}",
        **{name.upper(): str(value) for name, value in provider_sinks.channels_settings().items()},
    }
    env.update({f"XSELL_CHANNELS_{name}": value for name, value in settings.items()})
    # The repository and its generated stubs, whatever the virtualenv's .pth says.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "gen")])
    process = ChannelsProcess(env, tmp_path / "channels.log")
    try:
        yield process
    finally:
        process.stop()
        await gateway.stop(0)


async def _wait_for(condition: Callable[[], bool]) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, timeout=120.0, interval=0.01)


async def test_killed_at_random_points_no_message_is_lost_or_sent_twice(
    channels_process: ChannelsProcess,
    provider_sinks: ProviderSinks,
    smtp_relay: SmtpRelay,
    nats_bus: Bus,
    database_url: str,
) -> None:
    await nats_bus.ensure_streams(streams.ALL_STREAMS)
    rng = random.Random()
    sinks = {
        "sms": provider_sinks.sms,
        "whatsapp": provider_sinks.whatsapp,
        "webhook": provider_sinks.webhook,
        "push": provider_sinks.push,
    }
    channels_of = {new_campaign_id(): rng.choice(CHANNELS) for _ in range(MESSAGES)}
    for campaign_id, channel in channels_of.items():
        if channel == "email":
            event = dispatch(campaign_id)
        else:
            event = dispatch_on(channel, campaign_id, webhook_url=provider_sinks.webhook_url())
        await publish(nats_bus, event)
    mailbox = smtp_relay.mailbox

    def sent() -> int:
        return sum(len(sink.received) for sink in sinks.values()) + len(mailbox.messages)

    channels_process.start()
    # Kill points: after a random number of hand-overs in each quarter of the run, so the kill lands wherever the
    # process happens to be (intent written, request in flight, outcome being recorded, a report being recorded).
    # Each kill may leave up to CONCURRENCY messages AMBIGUOUS that reach a provider only after the report window,
    # so a point is kept below what the sinks can reach before it.
    share = MESSAGES // (KILLS + 1)
    reachable = share - KILLS * CONCURRENCY
    kill_points = [rng.randrange(k * share, k * share + reachable) for k in range(1, KILLS + 1)]
    reporting = (provider_sinks.sms, provider_sinks.whatsapp)
    for number, point in enumerate(kill_points):
        await _wait_for(lambda point=point: sent() >= point)  # type: ignore[misc]
        # Every other kill finds the SMS and WhatsApp servers holding their requests, which they then never take
        # (the connection is gone): messages AMBIGUOUS that no report will settle, handed over again after the
        # window. The other kills find the SMTP relay holding e-mails whose data it has, which it then queues and
        # reports: AMBIGUOUS e-mails settled by their reports. Each kill also leaves whatever else it happens to.
        holding = number % 2 == 0
        if holding:
            for sink in reporting:
                sink.hold()
            await _wait_for(lambda: any(sink.in_flight for sink in reporting))
        else:
            mailbox.hold()
            await _wait_for(lambda: mailbox.in_flight > 0)
        channels_process.kill()
        if holding:
            await asyncio.sleep(0.5)  # for the servers to see the connections closed
            for sink in reporting:
                sink.release()
        else:
            mailbox.release()
        channels_process.start()
    db = Database(database_url)
    try:

        async def settled() -> dict[str, str] | None:
            async with db.transaction() as session:
                query = select(store.messages.c.campaign_id, store.messages.c.state)
                ledger = dict((await session.execute(query)).all())
            unsettled = [
                c
                for c, state in ledger.items()
                if state in {"QUEUED", "SENDING"} or (state == "AMBIGUOUS" and channels_of[c] in REPORTED)
            ]
            return ledger if len(ledger) == MESSAGES and not unsettled else None

        ledger = await eventually(settled, timeout=240.0, interval=0.5)
        assert ledger is not None
        async with db.transaction() as session:
            resent = (
                await session.execute(select(func.count()).where(store.messages.c.resent_at.is_not(None)))
            ).scalar_one()
            # Messages some kill left AMBIGUOUS, by channel: each then settled by its report or handed over again.
            once_ambiguous = Counter(
                channels_of[c]
                for c in (
                    await session.execute(
                        select(store.message_timeline.c.campaign_id)
                        .where(store.message_timeline.c.step == "delivery:AMBIGUOUS")
                        .distinct()
                    )
                ).scalars()
            )
    finally:
        await db.dispose()

    received = Counter(r.campaign_id for sink in sinks.values() for r in sink.received)
    received.update(message["X-Xsell-Campaign-Id"] for message in list(mailbox.messages))
    states = Counter(ledger.values())
    # Zero duplicates: no campaign ID reached a provider twice, on any channel.
    assert [campaign_id for campaign_id, count in received.items() if count > 1] == []
    assert set(received) <= set(channels_of) == set(ledger)
    # Zero lost where the provider reports: every message reached its provider, and the ledger says so.
    reported = {c for c, channel in channels_of.items() if channel in REPORTED}
    assert reported <= set(received)
    assert {ledger[c] for c in reported} <= {DeliveryState.SENT.value, DeliveryState.DELIVERED.value}
    # Where it does not: a message is SENT and at its provider, or AMBIGUOUS (at most what was in flight at the
    # kills) and listed for an operator, never silently missing.
    unreported = set(channels_of) - reported
    assert [c for c in unreported if ledger[c] == DeliveryState.SENT.value and c not in received] == []
    assert {ledger[c] for c in unreported} <= {DeliveryState.SENT.value, DeliveryState.AMBIGUOUS.value}
    ambiguous = [c for c in unreported if ledger[c] == DeliveryState.AMBIGUOUS.value]
    assert len(ambiguous) <= KILLS * CONCURRENCY
    for sink in sinks.values():
        assert [r.campaign_id for r in sink.received if channels_of[r.campaign_id] != sink.provider] == []
    assert provider_sinks.sms.callback_errors == provider_sinks.whatsapp.callback_errors == []
    assert smtp_relay.mailbox.reports is not None and smtp_relay.mailbox.reports.failed == []
    # The held kills left messages no provider took, each handed over again once (never twice: no duplicates).
    dropped = sum(sink.dropped for sink in reporting)
    assert dropped > 0 and resent >= dropped
    by_channel = Counter((channels_of[c], c in received) for c in ambiguous)
    print(
        f"kills at {kill_points}; ledger {dict(states)}; AMBIGUOUS at some point {dict(once_ambiguous)}; "
        f"never taken {dropped}, handed over again {resent}; "
        f"AMBIGUOUS (channel, at the provider): {dict(by_channel)}"
    )
