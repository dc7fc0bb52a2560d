"""NATS handlers: DispatchRequested -> exactly one hand-over to the provider per campaign ID -> ack / nak / term."""

from datetime import datetime
from email.message import EmailMessage
from typing import Protocol

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.bus import Delivery, PermanentError
from plumbing.db import Database
from plumbing.outbox import Outbox, utcnow
from plumbing.telemetry import CAMPAIGN_ID, outreach_span
from services import streams
from services.channels import convert, store
from services.channels.composition import TrackingLinks, compose, message_id
from services.channels.delivery import (
    AMBIGUOUS_AFTER_CRASH,
    DeliveryState,
    DispatchAction,
    MalformedDispatch,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderUnavailable,
    TimelineStep,
    dispatch_action,
    state_step,
    validate_email,
)
from xsell.campaigns.v1.events_pb2 import DispatchRequested

log = structlog.get_logger(__name__)

MAX_ID_LENGTH = 100  # the width of messages.campaign_id and messages.profile_id


class EmailSender(Protocol):
    async def send(self, message: EmailMessage, *, sender: str, recipient: str) -> str: ...


class CampaignInFlight(Exception):
    """This replica is already handling the campaign ID; the duplicate is retried later, not marked ambiguous."""


class DispatchHandler:
    """Delivers one DispatchRequested: intent, hand-over, outcome, each step durable before the next.

    No inbox claim here: the messages row keyed by campaign ID is the idempotency record, and a
    claim committed with the intent would make the retry after a transient failure look like a
    redelivery and drop the message.
    """

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        sender: EmailSender,
        tracer: trace.Tracer,
        *,
        from_address: str,
        message_id_domain: str,
        tracking_base_url: str,
        tracking_secret: str,
        smtp_peer: tuple[str, int],
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.sender = sender
        self.tracer = tracer
        self.from_address = from_address
        self.message_id_domain = message_id_domain
        self.tracking_base_url = tracking_base_url
        self.tracking_secret = tracking_secret
        self.smtp_peer = smtp_peer
        self._in_flight: set[str] = set()

    async def __call__(self, event: DispatchRequested, delivery: Delivery) -> None:
        campaign_id = event.campaign_id.strip()
        if not campaign_id:
            raise PermanentError("DispatchRequested has no campaign_id; it cannot be delivered or keyed")
        if len(campaign_id) > MAX_ID_LENGTH or len(event.profile_id) > MAX_ID_LENGTH:
            raise PermanentError(f"campaign_id and profile_id must be at most {MAX_ID_LENGTH} characters")
        if campaign_id in self._in_flight:
            raise CampaignInFlight(f"campaign ID {campaign_id} is being sent by this replica")
        self._in_flight.add(campaign_id)
        try:
            with outreach_span(self.tracer, "channels.dispatch", campaign_id):
                await self._dispatch(campaign_id, event)
        finally:
            self._in_flight.discard(campaign_id)

    async def _dispatch(self, campaign_id: str, event: DispatchRequested) -> None:
        channel = convert.channel_name(event.channel)
        now = utcnow()
        malformed: str | None = None
        message: EmailMessage | None = None
        recipient = ""
        try:
            email = validate_email(channel, convert.outgoing_email(event))
            recipient = email.to_address
            links = TrackingLinks(self.tracking_base_url, self.tracking_secret, campaign_id)
            message = compose(
                email,
                campaign_id=campaign_id,
                from_address=self.from_address,
                message_id_domain=self.message_id_domain,
                links=links,
                now=now,
            )
        except MalformedDispatch as error:
            malformed = error.reason
        except ValueError:
            # The email library refuses header values with line breaks (header injection).
            malformed = "email.subject or email.from_name contains a line break"

        async with self.db.transaction() as session:
            await store.insert_queued_if_absent(
                session, campaign_id=campaign_id, channel=channel, profile_id=event.profile_id, now=now
            )
            locked = await store.lock_state(session, campaign_id)
            assert locked is not None
            state, attempts = locked
            action = dispatch_action(state)
            if action is DispatchAction.SKIP:
                log.info("dispatch_redelivery_skipped", state=state.value)
                return
            if action is DispatchAction.MARK_AMBIGUOUS:
                # Reconciliation of AMBIGUOUS messages is a later step; resending here could reach the person twice.
                await self._record(session, campaign_id, channel, DeliveryState.AMBIGUOUS, now, AMBIGUOUS_AFTER_CRASH)
                log.warning("dispatch_ambiguous", attempts=attempts)
                return
            if malformed is not None:
                await self._record(session, campaign_id, channel, DeliveryState.FAILED, now, malformed)
            else:
                await store.set_state(session, campaign_id, DeliveryState.SENDING, now=now)
                await store.add_timeline(
                    session,
                    campaign_id,
                    [TimelineStep(state_step(DeliveryState.SENDING), now, f"attempt {attempts + 1}")],
                )
        if malformed is not None or message is None:
            log.warning("dispatch_malformed", reason=malformed)
            raise PermanentError(f"campaign ID {campaign_id}: {malformed}")

        try:
            reply = await self._send(campaign_id, message, recipient=recipient)
        except ProviderUnavailable as failure:
            deferred_at = utcnow()
            async with self.db.transaction() as session:
                await store.set_state(
                    session,
                    campaign_id,
                    DeliveryState.QUEUED,
                    now=deferred_at,
                    reason=failure.reason,
                    count_attempt=True,
                )
                await store.add_timeline(
                    session, campaign_id, [TimelineStep(state_step(DeliveryState.QUEUED), deferred_at, failure.reason)]
                )
            log.warning("dispatch_deferred", reason=failure.reason, attempt=attempts + 1)
            # Raising naks the event: JetStream redelivers it with backoff, and the row is QUEUED again.
            raise
        except (ProviderRejected, ProviderOutcomeUnknown) as failure:
            outcome = DeliveryState.FAILED if isinstance(failure, ProviderRejected) else DeliveryState.AMBIGUOUS
            async with self.db.transaction() as session:
                await self._record(session, campaign_id, channel, outcome, utcnow(), failure.reason, count_attempt=True)
            log.warning("dispatch_not_sent", state=outcome.value, reason=failure.reason)
            return

        sent_at = utcnow()
        async with self.db.transaction() as session:
            await self._record(
                session,
                campaign_id,
                channel,
                DeliveryState.SENT,
                sent_at,
                "",
                provider_message_id=message_id(campaign_id, self.message_id_domain),
                detail=reply,
                count_attempt=True,
            )
        log.info("dispatch_sent", channel=channel, attempt=attempts + 1)

    async def _send(self, campaign_id: str, message: EmailMessage, *, recipient: str) -> str:
        host, port = self.smtp_peer
        attributes: dict[str, str | int] = {
            CAMPAIGN_ID: campaign_id,
            "messaging.system": "smtp",
            "messaging.operation.type": "send",
            "messaging.message.id": message_id(campaign_id, self.message_id_domain),
            "server.address": host,
            "server.port": port,
            "net.peer.name": host,
            "net.peer.port": port,
        }
        with self.tracer.start_as_current_span(
            "smtp.send",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await self.sender.send(message, sender=self.from_address, recipient=recipient)
            except (ProviderUnavailable, ProviderRejected, ProviderOutcomeUnknown) as failure:
                span.set_status(Status(StatusCode.ERROR, failure.reason))
                span.set_attribute("error.type", type(failure).__name__)
                raise

    async def _record(
        self,
        session: AsyncSession,
        campaign_id: str,
        channel: str,
        state: DeliveryState,
        at: datetime,
        reason: str,
        *,
        provider_message_id: str | None = None,
        detail: str | None = None,
        count_attempt: bool = False,
    ) -> None:
        """A new delivery state, its timeline step and its DeliveryUpdated event, in the caller's transaction."""
        await store.set_state(
            session,
            campaign_id,
            state,
            now=at,
            reason=reason,
            provider_message_id=provider_message_id,
            count_attempt=count_attempt,
        )
        await store.add_timeline(session, campaign_id, [TimelineStep(state_step(state), at, detail or reason)])
        await self.outbox.add(
            session,
            streams.DELIVERY_UPDATED,
            convert.delivery_updated(campaign_id, channel, state, at, reason),
            campaign_id=campaign_id,
        )
