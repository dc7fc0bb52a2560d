"""NATS handlers: DispatchRequested -> exactly one hand-over to the provider per campaign ID -> ack / nak / term."""

import functools
import itertools
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import structlog
from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncSession
from yarl import URL

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER, Delivery, PermanentError, RetryLater
from plumbing.db import Database
from plumbing.ids import new_id
from plumbing.metrics import tally
from plumbing.outbox import Outbox, utcnow
from plumbing.signing import signed_envelope_id
from plumbing.telemetry import HELD, TRACEPARENT, current_traceparent, hold_attributes, outreach_ids, outreach_span
from services import streams
from services.addresses import address_of
from services.channels import convert, store
from services.channels.composition import TrackingLinks, compose, message_id
from services.channels.consent import ConsentUnknown
from services.channels.delivery import (
    AMBIGUOUS_AFTER_CRASH,
    AMBIGUOUS_UNSETTLED,
    Accepted,
    DeliveryState,
    DispatchAction,
    Engagement,
    MalformedDispatch,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderThrottled,
    ProviderUnavailable,
    SendFailure,
    TimelineStep,
    dispatch_action,
    engagement_step,
    scrub,
    state_step,
    validate_email,
)
from services.channels.flow import Backoff, QuietHours, Throttle
from services.channels.ledger import Intent, Ledger, Outcome
from services.channels.outgoing import validate_push, validate_sms, validate_webhook, validate_whatsapp
from services.channels.providers.base import HttpAdapter
from services.channels.providers.google_oauth import AccessTokens, send_with_token
from services.channels.providers.http import HttpTransport
from services.channels.providers.push import FcmPush
from services.channels.providers.sms import ExotelSms
from services.channels.providers.webhook import SignedWebhook
from services.channels.providers.whatsapp import WhatsAppCloud
from services.channels.recipients import DEV_SECRET, recipient_key
from xsell.campaigns.v1.events_pb2 import DispatchRequested
from xsell.channels.v1.events_pb2 import DeliveryUpdated, EngagementRecorded

log = structlog.get_logger(__name__)

MAX_ID_LENGTH = 100  # the width of messages.campaign_id
MAX_PROFILE_ID_LENGTH = 128  # the width of messages.profile_id, as segments' profiles.profile_id
PROVIDER_MESSAGE_ID = "xsell.provider.message_id"
"""The span attribute of the id the provider knows the message by (an e-mail's Message-ID)."""
# What campaigns issues campaign IDs as: visible ASCII. It travels in headers (Idempotency-Key, Message-ID, NATS's
# Xsell-Campaign-Id), where a line break or a control character would write another header.
_CAMPAIGN_ID = re.compile(r"[!-~]+")

M = TypeVar("M")


class EmailSender(Protocol):
    async def send(self, payload: bytes, *, sender: str, recipient: str, envelope_id: str = "") -> str: ...


class SuppressionCheck(Protocol):
    async def suppressed(self, profile_id: str, channel: int, address: str = "") -> str | None: ...


class CampaignInFlight(Exception):
    """This replica is already handling the campaign ID; the duplicate is retried later, not marked ambiguous."""


@dataclass(frozen=True)
class EmailSettings:
    """What composing and handing over an e-mail needs besides the message."""

    from_address: str
    message_id_domain: str
    tracking_base_url: str
    tracking_secret: str
    smtp_peer: tuple[str, int]
    # The envelope sender, where bounces and complaints go back to (the From address when empty).
    return_path: str = ""
    # The ESP whose event webhook reports the e-mails ("sendgrid", "ses"), which names the outreach in a header.
    esp_events: str = ""
    # SES's configuration set whose event destination publishes those events (X-SES-CONFIGURATION-SET); "" for none.
    ses_configuration_set: str = ""


@dataclass
class Providers:
    """The adapters of every channel, the HTTP transport they share, and one throttle per provider."""

    email: EmailSender
    http: HttpTransport
    sms: ExotelSms
    whatsapp: WhatsAppCloud
    push: FcmPush
    webhook: SignedWebhook
    webhook_allowed_hosts: frozenset[str]
    throttles: Mapping[str, Throttle] = field(default_factory=dict)
    access_tokens: Mapping[str, AccessTokens] = field(default_factory=dict)
    """Bearer tokens minted at send time, by provider; a provider not named uses its adapter's fixed credentials."""


@dataclass(frozen=True)
class SendPolicy:
    """When a message may go and how often it is tried: retries, quiet hours per channel, suppressions."""

    backoff: Backoff = field(default_factory=Backoff)
    max_attempts: int = 8  # the dispatch durable's max_deliver; app.py passes the real one
    quiet_hours: Mapping[str, QuietHours] = field(default_factory=dict)
    suppressions: SuppressionCheck | None = None
    recheck_after_seconds: float = 1.0
    """A message kept this long by its token endpoint or throttle is checked again (quiet hours, suppressions)."""


@dataclass(frozen=True)
class Prepared:
    """One message ready for its provider: which provider, whether it deduplicates, and the hand-over itself."""

    provider: str
    deduplicates: bool
    hand_over: Callable[[], Awaitable[Accepted]]
    recipient_key: str | None = None
    """SMS and WhatsApp: the keyed hash of the number (recipients.py), kept on the message for inbound replies."""


@dataclass(frozen=True)
class Blocked:
    """Why a valid message may not go now: suppressed (never), or quiet hours (until `retry_in` seconds)."""

    reason: str
    retry_in: float | None = None


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
        providers: Providers,
        tracer: trace.Tracer,
        *,
        email: EmailSettings,
        policy: SendPolicy | None = None,
        recipient_secret: bytes = DEV_SECRET,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.providers = providers
        self.tracer = tracer
        self.email = email
        self.policy = policy or SendPolicy()
        # The key of the recipients' numbers' hashes (recipients.py): the same in every replica, never rotated
        # without losing the match of replies to messages sent before.
        self.recipient_secret = recipient_secret
        self.ledger = Ledger(db, outbox, tracer)
        # Bound once, after run_service configured structlog: the module's lazy proxy binds a new logger from the
        # configuration on every call (~4 µs even when the level filters the line out), and dispatch_sent is logged
        # for every message. The log context (campaign ID, trace ids) is still merged from contextvars per line.
        self._log = log.bind()
        self._in_flight: set[str] = set()
        # DeliveryUpdated event ids: unique to this handler (a ULID), then a counter.
        self._event_prefix = new_id("evt_")
        self._event_numbers = itertools.count(1)
        meter = metrics.get_meter("xsell.channels")
        self._outcomes = tally(
            "xsell.channels",
            "xsell.channels.dispatch.outcomes",
            labels=("provider", "outcome"),
            unit="{message}",
            description="Dispatch outcomes by provider and outcome (sent, rejected, ambiguous, retry, gave_up, "
            "suppressed, quiet_hours, malformed, dead_lettered).",
        )
        self._hand_over = meter.create_histogram(
            "xsell.channels.provider.duration",
            unit="ms",
            description="Time of one hand-over to a provider (SMTP transaction or HTTP call), by provider.",
        )
        self._provider_attributes: dict[str, dict[str, str]] = {}

    def _count(self, provider: str, outcome: str) -> None:
        self._outcomes.add((provider, outcome))

    async def __call__(self, event: DispatchRequested, delivery: Delivery) -> None:
        campaign_id = event.campaign_id.strip()
        if not campaign_id:
            raise PermanentError("DispatchRequested has no campaign_id; it cannot be delivered or keyed")
        if len(campaign_id) > MAX_ID_LENGTH:
            raise PermanentError(f"campaign_id is {len(campaign_id)} characters; at most {MAX_ID_LENGTH}")
        if not _CAMPAIGN_ID.fullmatch(campaign_id):
            raise PermanentError(
                "campaign_id holds a space, a control character or a character beyond ASCII; campaign IDs are visible "
                "ASCII, as campaigns issues them"
            )
        if len(event.profile_id) > MAX_PROFILE_ID_LENGTH:
            raise PermanentError(f"profile_id is {len(event.profile_id)} characters; at most {MAX_PROFILE_ID_LENGTH}")
        if campaign_id in self._in_flight:
            raise CampaignInFlight(f"campaign ID {campaign_id} is being sent by this replica")
        self._in_flight.add(campaign_id)
        try:
            if _continues_outreach(delivery, campaign_id):
                # The consumer's span already continues the outreach's trace (campaigns' relay sent its traceparent)
                # and has the campaign ID bound to the logs: the dispatch is described on it, one span fewer per
                # message. A request without that context gets a dispatch span of its own in the outreach's trace.
                await self._dispatch(campaign_id, event, delivery)
            else:
                with outreach_span(self.tracer, "channels.dispatch", campaign_id):
                    await self._dispatch(campaign_id, event, delivery)
        finally:
            self._in_flight.discard(campaign_id)

    async def dead_lettered(self, event: DispatchRequested, delivery: Delivery, reason: str) -> None:
        """Told by the consumer just before a request is dead-lettered (plumbing.bus.DeadLetterHook): its message
        says so, since nothing will handle it again. Not yet a message (refused before its row: a profile ID channels
        cannot send under): FAILED with the reason. QUEUED (held back, or a delivery that failed
        before its intent): FAILED. SENDING (a process stopped during the last allowed hand-over, or its outcome
        could not be written): AMBIGUOUS, listed for an operator and settled by the provider's receipt, as after a
        crash. Settled states are left as they are: the handler recorded its own refusal first."""
        campaign_id = event.campaign_id.strip()
        if len(campaign_id) > MAX_ID_LENGTH or not _CAMPAIGN_ID.fullmatch(campaign_id):
            # Not a key channels sends under: its events' headers would carry it (a line break writes a header).
            # The letter alone holds the reason.
            return
        if campaign_id in self._in_flight:
            return  # a copy that kept finding it in hand here (CampaignInFlight): that hand-over settles it
        channel = convert.channel_name(event.channel)
        profile_id = event.profile_id if len(event.profile_id) <= MAX_PROFILE_ID_LENGTH else ""
        why = scrub(reason)
        now = utcnow()
        async with self.db.transaction() as session:
            await store.insert_queued_if_absent(
                session, campaign_id=campaign_id, channel=channel, profile_id=profile_id, now=now
            )
            locked = await store.lock_state(session, campaign_id)
            assert locked is not None
            state = locked[0]
            if state is DeliveryState.QUEUED:
                await self._record(
                    session, campaign_id, channel, DeliveryState.FAILED, now, f"request dead-lettered: {why}"
                )
            elif state is DeliveryState.SENDING:
                reason = f"{AMBIGUOUS_UNSETTLED}; request dead-lettered: {why}"
                await self._record_ambiguous(session, campaign_id, channel, now, reason, delivery)
            else:
                return
        self._count("none", "dead_lettered")
        self._log.warning("dispatch_dead_lettered", state=state.value)

    async def _dispatch(self, campaign_id: str, event: DispatchRequested, delivery: Delivery) -> None:
        channel = convert.channel_name(event.channel)
        now = utcnow()
        prepared: Prepared | None = None
        malformed: str | None = None
        try:
            prepared = self._prepare(campaign_id, channel, event, now)
        except MalformedDispatch as error:
            malformed = error.reason
        except ValueError as error:
            # compose refuses header values that would add headers (a line break): its message names the field.
            malformed = str(error)
        try:
            blocked = None if prepared is None else await self._blocked(channel, event, now)
        except ConsentUnknown as unknown:
            assert prepared is not None
            await self._defer_unchecked(campaign_id, channel, event, prepared, unknown, delivery)
            return

        if prepared is None or blocked is not None:
            await self._hold(
                campaign_id, channel, event, delivery, now, prepared=prepared, malformed=malformed, blocked=blocked
            )
            return

        checked = time.monotonic()
        tokens = self.providers.access_tokens.get(prepared.provider)
        if tokens is not None:
            try:
                # Before the intent, like the throttle's wait: a token endpoint that is down or refuses the key
                # leaves the message QUEUED and retried, never SENDING (which a crash would turn AMBIGUOUS).
                await tokens.token()
            except ProviderUnavailable as failure:
                await self._defer_before_intent(campaign_id, channel, event.profile_id, prepared, failure, delivery)
                return
        throttle = self.providers.throttles.get(prepared.provider)
        held: Blocked | ConsentUnknown | None = None
        async with throttle or _NoThrottle():
            if time.monotonic() - checked >= self.policy.recheck_after_seconds:
                # The token endpoint or the throttle kept the message long enough for the person to say stop or
                # quiet hours to begin: checked again, holding the slot (one call to segments), so that what goes
                # is what was allowed at the moment of sending. Under a second apart, the first check stands: a
                # STOP takes about as long to reach segments.
                now = utcnow()
                try:
                    held = await self._blocked(channel, event, now)
                except ConsentUnknown as unknown:
                    held = unknown
            if held is None:
                await self._send(campaign_id, channel, event, delivery, now, prepared)
                return
        if isinstance(held, ConsentUnknown):
            await self._defer_unchecked(campaign_id, channel, event, prepared, held, delivery)
            return
        self._log.info("dispatch_held_after_wait", reason=held.reason)
        await self._hold(campaign_id, channel, event, delivery, now, prepared=prepared, malformed=None, blocked=held)

    async def _send(
        self,
        campaign_id: str,
        channel: str,
        event: DispatchRequested,
        delivery: Delivery,
        now: datetime,
        prepared: Prepared,
    ) -> None:
        """Intent, hand-over and outcome of a message allowed to go, inside its provider's throttle."""
        # After the throttle's wait, in one transaction with the intents of the other messages in flight.
        intent = Intent(
            campaign_id,
            channel,
            event.profile_id,
            prepared.deduplicates,
            now,
            _request_of(delivery),
            prepared.recipient_key,
        )
        claim = await self.ledger.claim(intent)
        if claim.action is DispatchAction.SKIP:
            self._log.info("dispatch_redelivery_skipped", state=claim.state.value)
            return
        if claim.action is DispatchAction.MARK_AMBIGUOUS:
            self._log.warning("dispatch_ambiguous", attempts=claim.attempts)
            return
        attempts = claim.attempts
        started = time.perf_counter()
        try:
            try:
                accepted = await prepared.hand_over()
            except SendFailure:
                raise
            except Exception as fault:
                # A fault of ours, not the provider's answer (the request and its checks are built before the
                # intent, so this is a bug): whether anything reached the provider is not known. Settled as an
                # unknown outcome is, never left SENDING to be tried again for ever.
                self._log.error("dispatch_fault", exc_info=fault)
                raise ProviderOutcomeUnknown(
                    f"the hand-over failed inside channels ({type(fault).__name__}); it may have reached the provider"
                ) from fault
        except ProviderOutcomeUnknown as failure:
            self._timed(prepared.provider, started)
            if not prepared.deduplicates:
                await self._settle_ambiguous(campaign_id, channel, failure.reason, delivery)
                self._count(prepared.provider, "ambiguous")
                self._log.warning("dispatch_ambiguous", reason=failure.reason)
                return
            # The provider drops a repeated campaign ID, so asking again settles the outcome.
            await self._retry_later(campaign_id, channel, prepared.provider, failure, attempts, delivery)
            return
        except ProviderRejected as failure:
            self._timed(prepared.provider, started)
            if failure.bounce:
                await self._settle_bounced(campaign_id, channel, event.profile_id, failure)
            else:
                await self._settle(campaign_id, channel, DeliveryState.FAILED, failure.reason)
            self._count(prepared.provider, "rejected")
            self._log.warning("dispatch_rejected", reason=failure.reason)
            return
        except ProviderUnavailable as failure:
            self._timed(prepared.provider, started)
            await self._retry_later(campaign_id, channel, prepared.provider, failure, attempts, delivery)
            return
        self._timed(prepared.provider, started)

        await self._settle(
            campaign_id,
            channel,
            DeliveryState.SENT,
            "",
            provider_message_id=accepted.provider_message_id,
            detail=accepted.detail,
        )
        self._count(prepared.provider, "sent")
        self._log.info("dispatch_sent", channel=channel, provider=prepared.provider, attempt=attempts + 1)

    async def _hold(
        self,
        campaign_id: str,
        channel: str,
        event: DispatchRequested,
        delivery: Delivery,
        now: datetime,
        *,
        prepared: Prepared | None,
        malformed: str | None,
        blocked: Blocked | None,
    ) -> None:
        """A message that does not go now: malformed or suppressed (FAILED for good), or in quiet hours (QUEUED and
        retried when they end, FAILED after the last attempt the durable allows)."""
        gave_up: str | None = None
        async with self.db.transaction() as session:
            attempts = await self._claim(
                session, campaign_id, channel, event.profile_id, now, prepared=prepared, delivery=delivery
            )
            if attempts is None:
                return
            if malformed is not None:
                await self._record(session, campaign_id, channel, DeliveryState.FAILED, now, malformed)
            elif blocked is not None and blocked.retry_in is None:
                await self._record(session, campaign_id, channel, DeliveryState.FAILED, now, blocked.reason)
            elif blocked is not None and delivery.num_delivered >= self.policy.max_attempts:
                # Held back on the last delivery the durable allows: no later one would come to send it, so the
                # message is FAILED with why, not left QUEUED saying when it would go.
                gave_up = f"gave up after {delivery.num_delivered} attempts: {blocked.reason}"
                await self._record(session, campaign_id, channel, DeliveryState.FAILED, now, gave_up)
            elif blocked is not None:
                await store.set_state(session, campaign_id, DeliveryState.QUEUED, now=now, reason=blocked.reason)
                await store.add_timeline(
                    session, campaign_id, [TimelineStep(state_step(DeliveryState.QUEUED), now, blocked.reason)]
                )
        provider = prepared.provider if prepared is not None else "none"
        if gave_up is not None:
            self._count(provider, "gave_up")
            self._log.error("dispatch_gave_up", attempts=delivery.num_delivered, reason=gave_up)
            raise PermanentError(f"campaign ID {campaign_id}: {gave_up}")
        if malformed is not None:
            self._count(provider, "malformed")
            self._log.warning("dispatch_malformed", reason=malformed)
            raise PermanentError(f"campaign ID {campaign_id}: {malformed}")
        assert blocked is not None
        if blocked.retry_in is None:
            self._count(provider, "suppressed")
            self._log.info("dispatch_suppressed", reason=blocked.reason)
            return
        self._count(provider, "quiet_hours")
        self._log.info("dispatch_quiet_hours", retry_in_s=round(blocked.retry_in))
        _say_held(campaign_id, blocked.reason, blocked.retry_in)
        raise RetryLater(blocked.reason, blocked.retry_in)

    def _timed(self, provider: str, started: float) -> None:
        attributes = self._provider_attributes.get(provider)
        if attributes is None:
            attributes = self._provider_attributes[provider] = {"provider": provider}
        self._hand_over.record((time.perf_counter() - started) * 1000, attributes)

    async def _claim(
        self,
        session: AsyncSession,
        campaign_id: str,
        channel: str,
        profile_id: str,
        now: datetime,
        *,
        prepared: Prepared | None,
        delivery: Delivery,
    ) -> int | None:
        """The attempts so far when this delivery may go on; None when it must not (handled or ambiguous).
        `prepared` is None for a malformed request."""
        await store.insert_queued_if_absent(
            session,
            campaign_id=campaign_id,
            channel=channel,
            profile_id=profile_id,
            now=now,
            recipient_key=prepared.recipient_key if prepared is not None else None,
        )
        locked = await store.lock_state(session, campaign_id)
        assert locked is not None
        state, attempts = locked
        action = dispatch_action(state, provider_deduplicates=prepared is not None and prepared.deduplicates)
        if action is DispatchAction.SKIP:
            self._log.info("dispatch_redelivery_skipped", state=state.value)
            return None
        if action is DispatchAction.MARK_AMBIGUOUS:
            # Resending here could reach the person twice; the provider's receipt (or an operator) settles it.
            await self._record_ambiguous(session, campaign_id, channel, now, AMBIGUOUS_AFTER_CRASH, delivery)
            self._log.warning("dispatch_ambiguous", attempts=attempts)
            return None
        return attempts

    async def _defer_unchecked(
        self,
        campaign_id: str,
        channel: str,
        event: DispatchRequested,
        prepared: Prepared,
        unknown: ConsentUnknown,
        delivery: Delivery,
    ) -> None:
        """Never sent unchecked; but never silent either: the ledger says why it waits, and after the last attempt the
        message is FAILED (its DeliveryUpdated published) before its request is dead-lettered."""
        reason = f"suppressions could not be checked ({unknown}); nothing is sent unchecked"
        await self._defer_before_intent(
            campaign_id, channel, event.profile_id, prepared, ProviderUnavailable(reason), delivery
        )

    async def _defer_before_intent(
        self,
        campaign_id: str,
        channel: str,
        profile_id: str,
        prepared: Prepared,
        failure: ProviderUnavailable,
        delivery: Delivery,
    ) -> None:
        """A failure before any intent (segments cannot be asked about suppressions, the token endpoint): QUEUED with
        its reason and retried with a backoff, or FAILED (with its DeliveryUpdated event) and dead-lettered after the
        last allowed attempt."""
        now = utcnow()
        gave_up: str | None = None
        async with self.db.transaction() as session:
            claimed = await self._claim(
                session, campaign_id, channel, profile_id, now, prepared=prepared, delivery=delivery
            )
            if claimed is None:
                return
            if delivery.num_delivered >= self.policy.max_attempts:
                gave_up = f"gave up after {delivery.num_delivered} attempts: {failure.reason}"
                await self._record(session, campaign_id, channel, DeliveryState.FAILED, now, gave_up)
            else:
                await store.set_state(session, campaign_id, DeliveryState.QUEUED, now=now, reason=failure.reason)
                await store.add_timeline(
                    session, campaign_id, [TimelineStep(state_step(DeliveryState.QUEUED), now, failure.reason)]
                )
        if gave_up is not None:
            self._count(prepared.provider, "gave_up")
            self._log.error("dispatch_gave_up", attempts=delivery.num_delivered, reason=failure.reason)
            raise PermanentError(f"campaign ID {campaign_id}: {gave_up}") from failure
        self._count(prepared.provider, "retry")
        self._log.warning("dispatch_deferred", reason=failure.reason, attempt=delivery.num_delivered)
        delay = self.policy.backoff.delay(delivery.num_delivered)
        _say_held(campaign_id, failure.reason, delay)
        raise RetryLater(failure.reason, delay) from failure

    async def _retry_later(
        self,
        campaign_id: str,
        channel: str,
        provider: str,
        failure: SendFailure,
        attempts: int,
        delivery: Delivery,
    ) -> None:
        """Back to QUEUED with a backoff, or FAILED and dead-lettered after the last allowed attempt."""
        attempt = attempts + 1
        at = utcnow()
        if delivery.num_delivered >= self.policy.max_attempts:
            # Counted as the other give-ups count (deliveries of the request); the hand-overs among them, when fewer
            # (the others held back before any: segments away, quiet hours), are said too.
            tries = delivery.num_delivered
            handed = "" if attempt == tries else f" ({attempt} handed over)"
            reason = f"gave up after {tries} attempts{handed}: {failure.reason}"
            if not await self._settle(campaign_id, channel, DeliveryState.FAILED, reason):
                return
            self._count(provider, "gave_up")
            self._log.error("dispatch_gave_up", attempts=attempt, reason=failure.reason)
            raise PermanentError(f"campaign ID {campaign_id}: {reason}")
        delay = self.policy.backoff.delay(attempt)
        if isinstance(failure, ProviderThrottled) and failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        # Back to QUEUED with no event: nothing a consumer of DeliveryUpdated needs to act on.
        if not await self.ledger.settle(Outcome(campaign_id, DeliveryState.QUEUED, at, failure.reason)):
            return
        self._count(provider, "retry")
        self._log.warning("dispatch_deferred", reason=failure.reason, attempt=attempt, retry_in_s=round(delay, 2))
        _say_held(campaign_id, failure.reason, delay)
        # Naks the event with this delay: JetStream redelivers it, and the row is QUEUED again.
        raise RetryLater(failure.reason, delay)

    async def _settle(
        self,
        campaign_id: str,
        channel: str,
        state: DeliveryState,
        reason: str,
        *,
        provider_message_id: str | None = None,
        detail: str | None = None,
    ) -> bool:
        """Records the hand-over's outcome; False when a delivery receipt settled the message meanwhile."""
        at = utcnow()
        # Built here, inside the outreach's span, so the event carries its trace; written with the batch.
        event = self._delivery_updated_row(convert.delivery_updated(campaign_id, channel, state, at, reason), at)
        outcome = Outcome(campaign_id, state, at, reason, detail or "", provider_message_id, event)
        if await self.ledger.settle(outcome):
            return True
        self._log.info("dispatch_settled_by_receipt")
        return False

    async def _settle_ambiguous(self, campaign_id: str, channel: str, reason: str, delivery: Delivery) -> None:
        """The hand-over's outcome is unknown (no answer, a dropped connection) from a provider that takes no
        idempotency key: AMBIGUOUS, with the request remembered for a hand-over again if no receipt comes (resend.py).
        Not through the ledger's batches: it is rare, and its request is written in the same transaction."""
        async with self.db.transaction() as session:
            locked = await store.lock_state(session, campaign_id)
            if locked is None or locked[0] is not DeliveryState.SENDING:
                self._log.info("dispatch_settled_by_receipt")
                return
            await self._record_ambiguous(session, campaign_id, channel, utcnow(), reason, delivery, count_attempt=True)

    async def _settle_bounced(self, campaign_id: str, channel: str, profile_id: str, failure: ProviderRejected) -> None:
        """FAILED, and the BOUNCED engagement a report of the same refusal would have made (segments suppresses the
        address on it), in one transaction. Not through the ledger's batches: it is rare."""
        at = utcnow()
        async with self.db.transaction() as session:
            locked = await store.lock_state(session, campaign_id)
            if locked is None or locked[0] is not DeliveryState.SENDING:
                self._log.info("dispatch_settled_by_receipt")
                return
            await self._record(session, campaign_id, channel, DeliveryState.FAILED, at, failure.reason)
            queued = await store.queued_at(session, campaign_id)
            await store.add_timeline(
                session, campaign_id, [TimelineStep(engagement_step(Engagement.BOUNCED), at, failure.bounce)]
            )
            await self.outbox.add(
                session,
                streams.ENGAGEMENT_RECORDED,
                EngagementRecorded(
                    campaign_id=campaign_id,
                    channel=convert.channel_value(channel),  # type: ignore[arg-type]
                    kind=convert.engagement_kind(Engagement.BOUNCED),  # type: ignore[arg-type]
                    occur_time=convert.timestamp(at),
                    profile_id=profile_id,
                    detail=failure.bounce,
                    queue_time=convert.timestamp(queued),
                ),
                campaign_id=campaign_id,
            )

    def _delivery_updated_row(self, update: DeliveryUpdated, at: datetime) -> dict[str, Any]:
        """The outbox row of a DeliveryUpdated, as Outbox.event writes it, with its traceparent the current span (the
        dispatch span). Written directly: the id is this replica's prefix and a counter rather than a new ULID,
        and the traceparent is formatted rather than injected by the propagator, which were half of settling."""
        event_id = f"{self._event_prefix}-{next(self._event_numbers):x}"
        update.event_id = event_id
        headers = {MSG_ID_HEADER: event_id, CAMPAIGN_ID_HEADER: update.campaign_id}
        traceparent = current_traceparent()
        if traceparent is not None:
            headers[TRACEPARENT] = traceparent
        return {
            "event_id": event_id,
            "subject": streams.DELIVERY_UPDATED,
            "payload": update.SerializeToString(),
            "headers": headers,
            "created_at": at,
        }

    async def _blocked(self, channel: str, event: DispatchRequested, now: datetime) -> Blocked | None:
        """Quiet hours and suppressions, checked at the moment of sending (campaigns checked them at release)."""
        quiet = self.policy.quiet_hours.get(channel)
        resume = quiet.resumes_at(now) if quiet is not None else None
        if quiet is not None and resume is not None:
            return Blocked(
                f"quiet hours {quiet.describe()}; sending resumes at {resume:%H:%M}",
                (resume - now).total_seconds(),
            )
        if self.policy.suppressions is not None and event.profile_id:
            # ConsentUnknown propagates: the event is naked and tried again, never sent unchecked.
            reason = await self.policy.suppressions.suppressed(event.profile_id, event.channel, address_of(event))
            if reason is not None:
                return Blocked(reason)
        return None

    def _prepare(self, campaign_id: str, channel: str, event: DispatchRequested, now: datetime) -> Prepared:
        """The validated message bound to its adapter; MalformedDispatch says what the request lacks."""
        if self.policy.suppressions is not None and not event.profile_id.strip():
            raise MalformedDispatch(
                "profile_id is empty: suppressions and consent cannot be checked at send time, and nothing is sent "
                "unchecked"
            )
        p = self.providers
        if channel == "CHANNEL_EMAIL":
            return self._prepare_email(campaign_id, channel, event, now)
        if channel == "CHANNEL_SMS":
            sms = validate_sms(convert.outgoing_sms(event))
            return self._http(campaign_id, event.profile_id, p.sms, sms, recipient=sms.to_number)
        if channel == "CHANNEL_WHATSAPP":
            message = validate_whatsapp(convert.outgoing_whatsapp(event))
            return self._http(campaign_id, event.profile_id, p.whatsapp, message, recipient=message.to_number)
        if channel == "CHANNEL_PUSH":
            return self._http(campaign_id, event.profile_id, p.push, validate_push(convert.outgoing_push(event)))
        if channel == "CHANNEL_WEBHOOK":
            if not event.HasField("webhook"):
                raise MalformedDispatch("channel is CHANNEL_WEBHOOK but the request carries no webhook message")
            webhook = validate_webhook(
                event.webhook.url, event.webhook.payload_json, allowed_hosts=p.webhook_allowed_hosts
            )
            return self._http(campaign_id, event.profile_id, p.webhook, webhook)
        raise MalformedDispatch(f"channel {channel} has no provider adapter")

    def _prepare_email(self, campaign_id: str, channel: str, event: DispatchRequested, now: datetime) -> Prepared:
        email = validate_email(channel, convert.outgoing_email(event))
        settings = self.email
        links = TrackingLinks(settings.tracking_base_url, settings.tracking_secret, campaign_id)
        message = compose(
            email,
            campaign_id=campaign_id,
            from_address=settings.from_address,
            message_id_domain=settings.message_id_domain,
            links=links,
            now=now,
            esp_events=settings.esp_events,
            ses_configuration_set=settings.ses_configuration_set,
        )

        async def hand_over() -> Accepted:
            reply = await self._send_email(campaign_id, message, recipient=email.to_address)
            return Accepted(message_id(campaign_id, settings.message_id_domain), reply)

        return Prepared("email", False, hand_over)

    def _http(
        self, campaign_id: str, profile_id: str, adapter: HttpAdapter[M], message: M, *, recipient: str = ""
    ) -> Prepared:
        async def hand_over() -> Accepted:
            # Built at the moment of sending: the webhook's signed timestamp must not age in the throttle's queue.
            request = adapter.request(campaign_id, profile_id, message)
            # The call is described on the outreach's dispatch span, not on a client span of its own: a span
            # fewer per message, and the dispatch span is already this hand-over's alone.
            span = trace.get_current_span()
            host, port = _peer(request.url)
            attributes: dict[str, str | int] = {
                "http.request.method": request.method,
                "server.address": host,
                "server.port": port,
                "xsell.provider": adapter.provider,
            }
            try:
                tokens = self.providers.access_tokens.get(adapter.provider)
                if tokens is None:
                    answer = await self.providers.http.send(request)
                else:
                    answer = await send_with_token(self.providers.http, request, tokens)
                attributes["http.response.status_code"] = answer.status
                return adapter.accepted(answer)
            except SendFailure as failure:
                _mark_failed(span, failure)
                raise
            finally:
                # Set once, after the answer: each set_attribute call checks its value and takes the span's lock.
                span.set_attributes(attributes)

        key = recipient_key(self.recipient_secret, recipient) if recipient else None
        return Prepared(adapter.provider, adapter.deduplicates, hand_over, key)

    async def _send_email(self, campaign_id: str, message: bytes, *, recipient: str) -> str:
        host, port = self.email.smtp_peer
        span = trace.get_current_span()  # the dispatch span, as for HTTP providers
        # Not messaging.*: the dispatch span is most often the NATS consumer's span, whose messaging.system,
        # operation and message id (the DispatchRequested's) those would overwrite with SMTP's.
        span.set_attributes(
            {
                "server.address": host,
                "server.port": port,
                "xsell.provider": "email",
                PROVIDER_MESSAGE_ID: message_id(campaign_id, self.email.message_id_domain),
            }
        )
        try:
            return await self.providers.email.send(
                message,
                sender=self.email.return_path or self.email.from_address,
                recipient=recipient,
                # Signed, so that the gateway's mailbox records only reports about e-mails we sent.
                envelope_id=signed_envelope_id(campaign_id, self.email.tracking_secret),
            )
        except SendFailure as failure:
            _mark_failed(span, failure)
            raise

    async def _record_ambiguous(
        self,
        session: AsyncSession,
        campaign_id: str,
        channel: str,
        at: datetime,
        reason: str,
        delivery: Delivery,
        *,
        count_attempt: bool = False,
    ) -> None:
        """AMBIGUOUS, with where its request is stored, for a hand-over again if no receipt comes (resend.py)."""
        await self._record(
            session, campaign_id, channel, DeliveryState.AMBIGUOUS, at, reason, count_attempt=count_attempt
        )
        request = [(campaign_id, *_request_of(delivery))]
        await session.run_sync(lambda sync: store.remember_requests(sync, request))

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


def _request_of(delivery: Delivery) -> tuple[str, int]:
    """Where the dispatch request is stored: the stream and sequence a hand-over again reads it back from."""
    return delivery.stream, delivery.stream_sequence


def _continues_outreach(delivery: Delivery, campaign_id: str) -> bool:
    """Whether the current span (the consumer's) is in `campaign_id`'s outreach trace and logs under it."""
    if delivery.campaign_id != campaign_id:
        return False
    context = trace.get_current_span().get_span_context()
    return context.is_valid and context.trace_id == outreach_ids(campaign_id)[0]


def _say_held(campaign_id: str, reason: str, retry_in: float) -> None:
    """On the dispatch span (in the outreach's trace): the message waits, why, and when it is tried again (the
    redelivery's delay). Only a held message pays for it."""
    until = utcnow() + timedelta(seconds=retry_in)
    trace.get_current_span().add_event(HELD, hold_attributes(campaign_id, reason, until))


def _mark_failed(span: trace.Span, failure: SendFailure) -> None:
    span.set_status(Status(StatusCode.ERROR, failure.reason))
    span.set_attribute("error.type", type(failure).__name__)


@functools.lru_cache(maxsize=256)
def _peer(url: str) -> tuple[str, int]:
    """Host and port of a request URL, cached by the whole URL (not by base URL): SMS, WhatsApp and push send every
    message to one URL each, so theirs is parsed once; a webhook's URL comes from its message, and past 256
    distinct ones the least recently used are parsed again."""
    parsed = URL(url)
    return parsed.host or "", parsed.port or 0


class _NoThrottle:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *_: Any) -> None:
        return None
