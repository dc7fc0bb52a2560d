"""Ambiguous hand-overs reconciled with the provider's silence: handed over again, once, when no receipt came in time.

A message is AMBIGUOUS when the process stopped (or the connection dropped) after handing it to a provider that
takes no idempotency key and before recording the answer: the provider may or may not have it. Sending it again at
once could reach the person twice, so nothing is resent blind. But the providers named in
`resend_without_receipt_seconds` report every message they accept, with the campaign ID in the report (WhatsApp's
`sent` status, with biz_opaque_callback_data; Exotel's StatusCallback, with CustomField; with `smtp_delivery_reports`,
the SMTP relay's delivery status notifications, with the campaign ID as ENVID), and a report settles the message
(RecordDeliveryReceipt). When none came within that provider's window, the provider never had the message: this loop
hands the original request over again, once.

Each hand-over again is one transaction: the message AMBIGUOUS -> QUEUED, marked resent (so never a second time, by
any replica), and the original DispatchRequested, read back from its stream, queued in the outbox on
`xsell.channels.dispatch_resent`; channels' own durable consumer delivers it to the same dispatch handler, with
JetStream's redelivery if the process stops again. A hand-over again that ends AMBIGUOUS stays so, for the receipt
or an operator (ListAmbiguousMessages).

The window is the trade: a report later than it means the person may get the message twice. It is per provider,
and a provider not named is never handed over again. Silence counts only while reports are coming: a message is
handed over again only when some report of its provider was recorded after the message was created
(`provider_reports`): reports were coming while its own should have, so a wrong webhook secret or the gateway down
never reads as "it never had the message".
"""

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import structlog
from google.protobuf.message import DecodeError
from opentelemetry import trace

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER, Bus
from plumbing.db import Database
from plumbing.metrics import tally
from plumbing.outbox import Outbox, utcnow
from plumbing.polling import Poller
from plumbing.telemetry import TRACEPARENT, current_traceparent, outreach_span
from services import streams
from services.channels import store
from services.channels.delivery import DeliveryState, TimelineStep, state_step
from xsell.campaigns.v1.events_pb2 import DispatchRequested

log = structlog.get_logger(__name__)

# The providers whose reports cover every message they accept, by the channel their messages are stored under; e-mail
# only when every e-mail reports back (smtp_delivery_reports: a DSN; smtp_esp_events: the ESP's event webhook).
REPORTING_PROVIDERS = {"sms": "CHANNEL_SMS", "whatsapp": "CHANNEL_WHATSAPP", "email": "CHANNEL_EMAIL"}


def resend_reason(provider: str, window_seconds: float) -> str:
    return (
        f"no report from {provider} within {window_seconds:g} s of an ambiguous hand-over: it never had the message; "
        "handed over again, once"
    )


def request_gone_reason(provider: str, window_seconds: float) -> str:
    return (
        f"no report from {provider} within {window_seconds:g} s of an ambiguous hand-over, and its request is no "
        "longer in the stream to hand over again: an operator settles it (ResolveAmbiguousMessage)"
    )


class Resender:
    """A polling loop over AMBIGUOUS messages past their provider's window; safe to run in every replica."""

    def __init__(
        self,
        db: Database,
        bus: Bus,
        outbox: Outbox,
        windows: Mapping[str, float],
        tracer: trace.Tracer,
        *,
        poll_interval: float = 5.0,
        page_size: int = 100,
        clock: Callable[[], datetime] = utcnow,
        email_reports: bool = False,
    ) -> None:
        reporting = set(REPORTING_PROVIDERS) if email_reports else set(REPORTING_PROVIDERS) - {"email"}
        unknown = sorted(set(windows) - reporting)
        if unknown:
            raise ValueError(
                f"resend_without_receipt_seconds names {', '.join(unknown)}: only providers that report every "
                f"message they accept ({', '.join(sorted(reporting))}; email with smtp_delivery_reports or "
                "smtp_esp_events) may be handed "
                "a message again"
            )
        self.db = db
        self.bus = bus
        self.outbox = outbox
        self.windows = dict(windows)
        self.poll_interval = poll_interval
        self.page_size = page_size
        self.clock = clock
        self.tracer = tracer
        self._outcomes = tally(
            "xsell.channels",
            "xsell.channels.resend.outcomes",
            labels=("provider", "outcome"),
            unit="{message}",
            description="AMBIGUOUS messages past their provider's window with no report: handed_over_again, or "
            "request_gone (left for an operator).",
        )
        self._poller = Poller(self.step, poll_interval, "resend_poll_failed")

    async def run(self) -> None:
        await self._poller.run()

    async def stop(self) -> None:
        await self._poller.stop()

    async def step(self) -> int:
        """One pass over every named provider; returns how many messages were handed over again."""
        resent = 0
        for provider, window in self.windows.items():
            channel = REPORTING_PROVIDERS[provider]
            async with self.db.snapshot() as session:
                heard = await store.last_report(session, channel)
            if heard is None:
                continue  # no report ever: silence says nothing about one message
            # Past its window, and reports of messages handed over after it came: its own would have come too.
            before = self.clock() - timedelta(seconds=window)
            while not self._poller.stopping:
                async with self.db.transaction() as session:
                    due = await store.due_resends(
                        session, channel, ambiguous_before=before, created_before=heard, limit=self.page_size
                    )
                for campaign_id, stream, sequence in due:
                    resent += await self._resend(provider, window, campaign_id, stream, sequence)
                if len(due) < self.page_size:
                    break
        return resent

    async def _resend(self, provider: str, window: float, campaign_id: str, stream: str, sequence: int) -> int:
        with outreach_span(self.tracer, "channels.resend", campaign_id, attributes={"xsell.provider": provider}):
            return await self._resend_traced(provider, window, campaign_id, stream, sequence)

    async def _resend_traced(self, provider: str, window: float, campaign_id: str, stream: str, sequence: int) -> int:
        stored = await self.bus.stored_message(stream, sequence)
        request = _dispatch_request(stored, campaign_id)
        if stored is None or request is None:
            async with self.db.transaction() as session:
                await store.forget_request(session, campaign_id)
                # Said on its timeline too: the message stays AMBIGUOUS, and only an operator settles it now.
                step = TimelineStep(
                    state_step(DeliveryState.AMBIGUOUS), self.clock(), request_gone_reason(provider, window)
                )
                await store.add_timeline(session, campaign_id, [step])
            self._outcomes.add((provider, "request_gone"))
            log.warning("resend_request_gone", stream=stream, seq=sequence)
            return 0
        _, payload, headers = stored
        now = self.clock()
        reason = resend_reason(provider, window)
        event_id = f"resend-{campaign_id}"
        event_headers = {MSG_ID_HEADER: event_id, CAMPAIGN_ID_HEADER: campaign_id}
        # The hand-over again continues the outreach's trace under this span, as the first one did under campaigns'.
        traceparent = current_traceparent() or headers.get(TRACEPARENT)
        if traceparent:
            event_headers[TRACEPARENT] = traceparent
        row = {
            "event_id": event_id,
            "subject": streams.DISPATCH_RESENT,
            "payload": payload,
            "headers": event_headers,
            "created_at": now,
        }
        async with self.db.transaction() as session:
            if not await store.mark_resent(session, campaign_id, now=now, reason=reason):
                return 0  # a receipt, an operator or another replica was first
            step = TimelineStep(state_step(DeliveryState.QUEUED), now, reason)
            await store.add_timeline(session, campaign_id, [step])
            await self.outbox.add_rows(session, [row])
        self._outcomes.add((provider, "handed_over_again"))
        log.warning("dispatch_handed_over_again", provider=provider)
        return 1


def _dispatch_request(stored: tuple[str, bytes, dict[str, str]] | None, campaign_id: str) -> DispatchRequested | None:
    """The stored message as the DispatchRequested of `campaign_id`; None when it is not one (never sent blind)."""
    if stored is None:
        return None
    try:
        request = DispatchRequested.FromString(stored[1])
    except DecodeError:
        return None
    return request if request.campaign_id.strip() == campaign_id else None
