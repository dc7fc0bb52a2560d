"""gRPC servicer of xsell.channels.v1.ChannelsService: proto in -> store / domain -> proto out."""

import bisect
import contextvars
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from plumbing.db import Database
from plumbing.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from plumbing.group_commit import GroupCommit, synchronous_batches
from plumbing.grpc_server import only_channel_of
from plumbing.idempotency import Idempotency, RequestKey, request_fingerprint, require_request_id, scope_in
from plumbing.metrics import tally
from plumbing.outbox import Outbox, utcnow
from plumbing.page_tokens import decode_token, encode_token, page_size
from plumbing.telemetry import outreach_span
from plumbing.times import time_field
from services import streams
from services.channels import convert, store
from services.channels.delivery import (
    DeliveryState,
    Engagement,
    MessageRecord,
    TimelineStep,
    engagement_step,
    link_host,
    link_without_query,
    receipt_outcome,
    scrub,
    state_step,
)
from services.channels.recipients import DEV_SECRET, recipient_key
from xsell.channels.v1 import events_pb2, service_pb2, service_pb2_grpc
from xsell.type.v1 import channel_pb2

log = structlog.get_logger(__name__)

RECEIPTS_METRIC = "xsell.channels.receipts"
"""Prometheus: xsell_channels_receipts_total{channel, state}."""

R = TypeVar("R", bound=Message)

_KINDS = ", ".join(kind.value for kind in Engagement)
MAX_DETAIL = 100
MAX_PROVIDER_MESSAGE_ID = 300
"""The width of messages.provider_message_id."""
MAX_CAMPAIGN_ID = 100
"""The width of messages.campaign_id."""
MAX_REPLY = 1000
"""What an EngagementRecorded keeps of a reply's text."""
"""What an engagement step keeps of the caller's detail (a bounce's status, a complaint's type)."""
DEFAULT_AMBIGUOUS_PAGE, MAX_AMBIGUOUS_PAGE = 100, 500
SETTLED_BY_HAND = frozenset({DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.FAILED})
INBOUND_CHANNELS = ("CHANNEL_SMS", "CHANNEL_WHATSAPP")
INBOUND_MATCH = timedelta(days=30)
"""How far back an inbound message that quotes none of ours looks for the message it answers."""
ABOUT_THE_PERSON = frozenset({Engagement.UNSUBSCRIBED, Engagement.RESUBSCRIBED})
"""Engagement that is about the person rather than one message (a STOP, WhatsApp's stop or resume): recorded on the
last message to their number however long ago it went, since a suppressed person gets no newer one."""


def _campaign_id(value: str) -> str:
    campaign_id = value.strip()
    if not campaign_id:
        raise InvalidArgument(
            "campaign_id is required: the outreach's campaign ID, e.g. CSELL-NOV-T06-0884", field="campaign_id"
        )
    if len(campaign_id) > MAX_CAMPAIGN_ID:
        # Not echoed: 10,000 characters twice (message and details) passed gRPC's 16 KiB limit on trailers.
        raise InvalidArgument(
            f"campaign_id is {len(campaign_id)} characters; a campaign ID has at most {MAX_CAMPAIGN_ID}",
            field="campaign_id",
        )
    return campaign_id


def _without_number(request: service_pb2.RecordEngagementRequest, secret: bytes) -> service_pb2.RecordEngagementRequest:
    """The request with its inbound sender's number replaced by the number's keyed hash: an unkeyed hash of a request
    holding a phone number can be reversed by trying every number."""
    if not request.inbound_from:
        return request
    keyed = service_pb2.RecordEngagementRequest()
    keyed.CopyFrom(request)
    keyed.inbound_from = f"key:{recipient_key(secret, request.inbound_from)}"
    return keyed


REPORT_CLOCK_SKEW = timedelta(minutes=5)
"""How far ahead of ours a provider's clock may run: a report timed later than that happened when it reached us."""


def _reported_time(request: service_pb2.RecordEngagementRequest | service_pb2.RecordDeliveryReceiptRequest) -> datetime:
    """When the reported thing happened: the report's occur_time, unless unset or further ahead of our clock than
    REPORT_CLOCK_SKEW (a provider's clock in 2030 would put it after everything the person does next), then now.
    Never refused: the report is a fact about the message, which a provider would only send again."""
    now = utcnow()
    at = time_field(request, "occur_time", now)
    if at > now + REPORT_CLOCK_SKEW:
        log.warning("report_time_ahead", ahead_s=round((at - now).total_seconds()), field="occur_time")
        return now
    return at


def _handed_over_at(record: MessageRecord) -> datetime:
    """When the message left for its provider: its first SENT step, else its first SENDING, else its first step."""
    for state in (DeliveryState.SENT, DeliveryState.SENDING):
        step = state_step(state)
        found = next((entry.at for entry in record.timeline if entry.step == step), None)
        if found is not None:
            return found
    return record.timeline[0].at


class _Engagement(NamedTuple):
    request: service_pb2.RecordEngagementRequest
    fingerprinted: service_pb2.RecordEngagementRequest  # its idempotency form: the sender's number keyed
    campaign_id: str
    kind: Engagement
    at: datetime
    only_channel: str | None = None


class _Receipt(NamedTuple):
    request: service_pb2.RecordDeliveryReceiptRequest
    campaign_id: str
    receipt: DeliveryState
    at: datetime
    only_channel: str | None = None


@dataclass
class _ReceiptWrites:
    """What a batch of receipts writes, gathered in arrival order and written at the end, one statement each."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    steps: list[tuple[str, TimelineStep]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    answered: list[tuple[str, service_pb2.RecordDeliveryReceiptRequest, service_pb2.RecordDeliveryReceiptResponse]] = (
        field(default_factory=list)
    )


def _outside(only_channel: str | None, record: MessageRecord) -> PermissionDenied | None:
    """The refusal of a caller held to one channel (an app.events key: push) reporting on another's message; it says
    nothing of that message (not its channel): such a key must learn nothing of the other channels' messages."""
    if only_channel is None or record.channel == only_channel:
        return None
    return PermissionDenied(f"this API key reports on {only_channel} messages only", field="campaign_id")


_HANDED_OVER = frozenset({DeliveryState.SENDING, DeliveryState.AMBIGUOUS, DeliveryState.SENT, DeliveryState.DELIVERED})
"""The steps only a message given to a provider has in its timeline (an intent, or what came of one)."""


def _never_handed_over(record: MessageRecord, refused: str) -> FailedPrecondition | None:
    """The refusal of a receipt or an engagement about a message no provider was given: refused or suppressed before
    its hand-over (FAILED), or waiting for its first (QUEUED). Either could only be forged or mistaken: a receipt
    applied would mark delivered what never went, and make the waiting one's send a skip; an engagement would be
    published (EngagementRecorded) to segments, campaigns and attribution as something the person did with a message
    they never got. `refused` says which of them cannot be recorded."""
    # Any step past QUEUED is the sign of a hand-over, whatever came after it: a crash marked AMBIGUOUS counts no
    # attempt, resend.py takes such a message back to QUEUED, and an operator may have settled it FAILED by hand, while
    # the provider's report of that first hand-over is still on its way.
    if (
        record.state not in {DeliveryState.QUEUED, DeliveryState.FAILED}
        or record.attempts
        or any(step.delivery_state in _HANDED_OVER for step in record.timeline)
    ):
        return None
    return FailedPrecondition(
        f"campaign ID {record.campaign_id} was never handed to a provider (it is {record.state.value}); {refused}",
        field="campaign_id",
        subject=f"messages/{record.campaign_id}",
    )


def _no_message(campaign_id: str) -> NotFound:
    """A campaign ID with no row. Not "the ID is wrong": a request channels has not taken yet (waiting in its stream
    behind a backlog) or is holding for its provider's rate has no row until its intent is written."""
    return NotFound(
        f"channels has no record of campaign ID {campaign_id} yet: its request may still be waiting in the stream or "
        "for the provider's rate, or the ID may be wrong",
        field="campaign_id",
    )


class ChannelsApi(service_pb2_grpc.ChannelsServiceServicer):
    """Delivery records and engagement recording."""

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        idempotency: Idempotency,
        tracer: trace.Tracer,
        *,
        recipient_secret: bytes = DEV_SECRET,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.idempotency = idempotency
        # The dispatch handler's key of recipients' numbers (recipients.py): inbound senders are hashed the same way.
        self.recipient_secret = recipient_secret
        self.tracer = tracer
        # Receipts come one callback per message and status (WhatsApp: sent, delivered, read): concurrent ones share a
        # transaction, applied in arrival order, each as it would be alone.
        write, alone = synchronous_batches(self.db.run_in_transaction, self._apply_receipts)
        self.receipts: GroupCommit[_Receipt, tuple[service_pb2.RecordDeliveryReceiptResponse, bool]] = GroupCommit(
            "channels.record_receipts", write, alone=alone, tracer=tracer, alone_after=(IntegrityError,)
        )
        # Engagement comes as densely (WhatsApp's read of every message, opens, clicks): the same, in its own batches.
        write_engagement, engagement_alone = synchronous_batches(self.db.run_in_transaction, self._apply_engagements)
        self.engagements: GroupCommit[_Engagement, service_pb2.RecordEngagementResponse] = GroupCommit(
            "channels.record_engagements",
            write_engagement,
            alone=engagement_alone,
            tracer=tracer,
            # A concurrent duplicate (a webhook's retry at another replica) committed its request_id first: alone,
            # the item reads its answer, as a receipt's does.
            alone_after=(IntegrityError,),
        )
        # What providers report after taking a message: dispatch outcomes count the hand-over only, so a template Meta
        # accepts and then fails (132001), or an SMS the operator drops, was in no metric.
        self.receipts_counted = tally(
            "xsell.channels",
            RECEIPTS_METRIC,
            labels=("channel", "state"),
            unit="{message}",
            description="Messages a provider's report moved to SENT, DELIVERED or FAILED, by channel (webhooks, the "
            "return-path mailbox, an app's push receipts); a repeated report counts nothing.",
        )
        # Every series from the start, at 0: the XsellProviderFailingAccepted alert's ratio has its denominator, and
        # a process that has had no report yet still shows the metric.
        for name, value in channel_pb2.Channel.items():
            if value != channel_pb2.CHANNEL_UNSPECIFIED:
                for state in (DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.FAILED):
                    self.receipts_counted.add((name.removeprefix("CHANNEL_").lower(), state.value.lower()), 0)

    async def GetMessage(
        self, request: service_pb2.GetMessageRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetMessageResponse:
        campaign_id = _campaign_id(request.campaign_id)
        async with self.db.snapshot() as session:
            record = await store.load_message(session, campaign_id)
        if record is None:
            raise _no_message(campaign_id)
        return service_pb2.GetMessageResponse(message=convert.message_proto(record))

    async def _engaged_message(self, request: service_pb2.RecordEngagementRequest, kind: Engagement) -> str:
        """The campaign ID named by the request, or found by the provider's id for the message, or by the number an
        inbound message came from."""
        provider_message_id = request.provider_message_id.strip()
        if len(provider_message_id) > MAX_PROVIDER_MESSAGE_ID:
            raise InvalidArgument(
                f"provider_message_id must be at most {MAX_PROVIDER_MESSAGE_ID} characters, as the provider wrote it",
                field="provider_message_id",
            )
        if not request.campaign_id.strip() and not provider_message_id and request.inbound_from.strip():
            return await self._answered_message(request, None if kind in ABOUT_THE_PERSON else INBOUND_MATCH)
        if request.campaign_id.strip() or not provider_message_id:
            return _campaign_id(request.campaign_id)
        # A read: on SQLite a snapshot does not queue behind the ledger's writes for the write lock, as a transaction
        # (BEGIN IMMEDIATE) would, once for every reply that quotes its message.
        async with self.db.snapshot() as session:
            campaign_id = await store.campaign_id_of(session, provider_message_id)
        if campaign_id is None:
            raise NotFound(
                f"provider_message_id {provider_message_id} matches no message; it may have been sent by another "
                "system on the same account",
                field="provider_message_id",
            )
        return campaign_id

    async def _answered_message(self, request: service_pb2.RecordEngagementRequest, within: timedelta | None) -> str:
        """The last message handed to the inbound sender's number on its channel, within `within` (ever: None)."""
        channel = convert.channel_name(request.inbound_channel)
        if channel not in INBOUND_CHANNELS:
            raise InvalidArgument(
                f"inbound_channel must be {' or '.join(INBOUND_CHANNELS)} with inbound_from, not {channel}",
                field="inbound_channel",
            )
        key = recipient_key(self.recipient_secret, request.inbound_from)
        if key is None:
            raise InvalidArgument("inbound_from must be a phone number, e.g. +919876543210", field="inbound_from")
        async with self.db.snapshot() as session:
            since = None if within is None else utcnow() - within
            campaign_id = await store.last_message_to(session, channel, key, since=since)
        if campaign_id is None:
            # The number is not repeated: it is personal data, and the caller has it.
            when = "ever" if within is None else f"in the last {within.days} days"
            raise NotFound(f"no {channel} message was handed to inbound_from's number {when}", field="inbound_from")
        return campaign_id

    async def RecordEngagement(
        self, request: service_pb2.RecordEngagementRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordEngagementResponse:
        require_request_id(request)  # before the message is looked up: a bad request is INVALID_ARGUMENT, not NOT_FOUND
        kind = convert.engagement_from_proto(request.kind)
        if kind is None:
            raise InvalidArgument(f"kind must be set to one of {_KINDS}", field="kind")
        only_channel = only_channel_of(context)
        if only_channel is not None and not request.campaign_id.strip():
            # Looking a message up by the provider's id or a sender's number would tell such a key which number got
            # which channel's message, and its campaign ID: it names its push message by campaign ID alone.
            raise PermissionDenied(
                f"this API key reports on {only_channel} messages by campaign_id only; provider_message_id and "
                "inbound_from are for the provider webhooks",
                field="campaign_id",
            )
        campaign_id = await self._engaged_message(request, kind)
        at = _reported_time(request)
        # The idempotency record keeps a fingerprint (an unkeyed hash) of the request: never of a sender's number.
        fingerprinted = _without_number(request, self.recipient_secret)
        with outreach_span(
            self.tracer, "channels.engagement", campaign_id, attributes={"engagement.kind": kind.value}
        ) as span:
            item = _Engagement(request, fingerprinted, campaign_id, kind, at, only_channel)
            response = await self.engagements.submit(item)
            log.info("engagement_recorded", kind=kind.value)
            if kind is Engagement.BOUNCED:
                span.set_status(Status(StatusCode.ERROR, f"bounced: {scrub(request.detail)}"))
            return response

    def _apply_engagements(
        self, session: Session, items: Sequence[tuple["_Engagement", contextvars.Context]]
    ) -> list[service_pb2.RecordEngagementResponse | DomainError]:
        """Engagement applied as each would be alone, in arrival order, in a handful of statements whatever their
        number, as _apply_receipts does: the answers given and the messages read once; each one's refusal its own; the
        timeline steps, EngagementRecorded events (each in its caller's trace) and answers written once each."""
        method, response_type = "RecordEngagement", service_pb2.RecordEngagementResponse
        stored = self.idempotency.stored_sync(
            session, method, [(scope_in(context), item.fingerprinted) for item, context in items]
        )
        records = store.messages_sync(session, {item.campaign_id for item, _ in items})
        steps: list[tuple[str, TimelineStep]] = []
        events: list[dict[str, Any]] = []
        answered: list[tuple[str, service_pb2.RecordEngagementRequest, service_pb2.RecordEngagementResponse]] = []
        answers: list[service_pb2.RecordEngagementResponse | DomainError] = []
        for item, context in items:
            request, scope = item.fingerprinted, scope_in(context)
            found = self._answered_or_record(method, (scope, request), stored, response_type, records, item)
            if not isinstance(found, MessageRecord):
                answers.append(found)
                continue
            record = found
            refused = _never_handed_over(record, "no engagement can be recorded on it: nobody received it")
            if refused is not None:
                answers.append(refused)
                continue
            step, event = context.copy().run(self._engagement_recorded, record, item)
            steps.append((record.campaign_id, step))
            events.append(event)
            # Where a reload would show it: the timeline is ordered by time, then by when each step was written.
            timeline = list(record.timeline)
            bisect.insort_right(timeline, step, key=lambda s: s.at)
            record = records[item.campaign_id] = dataclasses.replace(record, timeline=timeline)
            response = response_type(message=convert.message_proto(record))
            answered.append((scope, request, response))
            # A copy of the request later in the batch gets this answer, as it would from the table.
            stored[scope, request.request_id] = (request_fingerprint(request), response.SerializeToString())
            answers.append(response)
        store.add_timeline_steps(session, steps)
        self.outbox.add_rows_sync(session, events)
        self.idempotency.remember_many_sync(session, method, answered)
        return answers

    def _answered_or_record(
        self,
        method: str,
        scoped: tuple[str, Message],
        stored: dict[RequestKey, tuple[str, bytes]],
        response_type: type[R],
        records: dict[str, MessageRecord],
        item: "_Engagement | _Receipt",
    ) -> R | DomainError | MessageRecord:
        """A batched call's answer when it has one already (its request_id's stored answer in its scope, or its
        refusal: a reused request_id, an unknown campaign ID, another channel's message); else the message it applies
        to."""
        scope, request = scoped
        key = (scope, getattr(request, "request_id", ""))
        if key in stored:
            return self.idempotency.answer(method, request, stored[key], response_type)
        record = records.get(item.campaign_id)
        if record is None:
            return _no_message(item.campaign_id)
        return _outside(item.only_channel, record) or record

    def _engagement_recorded(self, record: MessageRecord, item: "_Engagement") -> tuple[TimelineStep, dict[str, Any]]:
        """The engagement's timeline step and its EngagementRecorded outbox row (in the current context: its trace)."""
        request, kind = item.request, item.kind
        # The timeline keeps only the clicked link's host: paths and queries can carry personal data.
        detail = link_host(request.url) if kind is Engagement.CLICKED else scrub(request.detail, MAX_DETAIL)
        event = events_pb2.EngagementRecorded(
            campaign_id=record.campaign_id,
            channel=convert.channel_value(record.channel),  # type: ignore[arg-type]
            kind=convert.engagement_kind(kind),  # type: ignore[arg-type]
            # Events stay 14 days in the stream: the link without its query or fragment, the reply without numbers or
            # addresses (either can carry personal data; the timeline keeps less).
            url=link_without_query(request.url),
            reply_text=scrub(request.reply_text, MAX_REPLY),
            profile_id=record.profile_id,
            detail=detail,
        )
        at = item.at
        if record.timeline:
            # Its QUEUED step: segments ignores a bounce of an address the person has replaced since.
            event.queue_time.CopyFrom(convert.timestamp(record.timeline[0].at))
            # Nobody opens a message before it left: a report timed so (a provider's clock, a 1970 default) reads
            # from its hand-over (the provider's acceptance, else our sending it), on the timeline and downstream.
            at = max(at, _handed_over_at(record))
        event.occur_time.CopyFrom(convert.timestamp(at))
        row = self.outbox.event(streams.ENGAGEMENT_RECORDED, event, campaign_id=record.campaign_id)
        return TimelineStep(engagement_step(kind), at, detail[: store.MAX_STEP_DETAIL]), row

    async def RecordDeliveryReceipt(
        self, request: service_pb2.RecordDeliveryReceiptRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordDeliveryReceiptResponse:
        campaign_id = _campaign_id(request.campaign_id)
        receipt = convert.delivery_state_from_proto(request.state)
        if receipt not in {DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.FAILED}:
            raise InvalidArgument(
                "state must be DELIVERY_STATE_SENT, DELIVERY_STATE_DELIVERED or DELIVERY_STATE_FAILED", field="state"
            )
        if receipt is DeliveryState.FAILED and not scrub(request.reason).strip():
            # What is kept of it (scrubbed) is the FAILED message's reason, its timeline step and its DeliveryUpdated:
            # a failure nobody can read, as ResolveAmbiguousMessage's is required too.
            raise InvalidArgument(
                "reason is required with DELIVERY_STATE_FAILED: the provider's status or error code, e.g. "
                "'exotel failed-dnd FAILED_DND' or 'whatsapp 131049'",
                field="reason",
            )
        require_request_id(request)
        if len(request.provider_message_id) > MAX_PROVIDER_MESSAGE_ID:
            raise InvalidArgument(
                f"provider_message_id must be at most {MAX_PROVIDER_MESSAGE_ID} characters, as the provider wrote it",
                field="provider_message_id",
            )
        at = _reported_time(request)
        with outreach_span(
            self.tracer, "channels.receipt", campaign_id, attributes={"delivery.state": receipt.value}
        ) as span:
            item = _Receipt(request, campaign_id, receipt, at, only_channel_of(context))
            response, changed = await self.receipts.submit(item)
            log.info("delivery_receipt_recorded", state=receipt.value, changed=changed)
            if changed:
                channel = convert.channel_name(response.message.channel).removeprefix("CHANNEL_").lower()
                self.receipts_counted.add((channel, receipt.value.lower()))
            if changed and receipt is DeliveryState.FAILED and response.message.timeline:
                # What an SRE looks for in the outreach's trace: the failure, with the provider's (scrubbed) reason.
                span.set_status(Status(StatusCode.ERROR, response.message.timeline[-1].detail))
            return response

    def _apply_receipts(
        self, session: Session, items: Sequence[tuple["_Receipt", contextvars.Context]]
    ) -> list[tuple[service_pb2.RecordDeliveryReceiptResponse, bool] | DomainError]:
        """Receipts applied as each would be alone, in arrival order, in a handful of statements whatever their number.

        Read: the answers already given to their request_ids, and their messages with timelines, locked in campaign ID
        order. Then in memory, in arrival order: each receipt's refusal (a reused request_id, an unknown campaign ID,
        another channel's message) is its own and writes nothing; a receipt that changes the state moves the message
        on for the receipts after it (WhatsApp's sent then delivered, in one batch). Written: the new states, timeline
        steps, DeliveryUpdated events (each built in its caller's context, so in its outreach's trace), the providers
        whose reports came, and the answers: one statement each."""
        method, response_type = "RecordDeliveryReceipt", service_pb2.RecordDeliveryReceiptResponse
        stored = self.idempotency.stored_sync(
            session, method, [(scope_in(context), item.request) for item, context in items]
        )
        records = store.messages_sync(session, {item.campaign_id for item, _ in items}, lock=True)
        written = _ReceiptWrites()
        answers: list[tuple[service_pb2.RecordDeliveryReceiptResponse, bool] | DomainError] = []
        for item, context in items:
            request, scope = item.request, scope_in(context)
            found = self._answered_or_record(method, (scope, request), stored, response_type, records, item)
            if not isinstance(found, MessageRecord):
                answers.append(found if isinstance(found, DomainError) else (found, False))
                continue
            record = found
            if (refused := _never_handed_over(record, "no receipt can settle it")) is not None:
                answers.append(refused)
                continue
            outcome = receipt_outcome(record.state, item.receipt)
            if outcome is not None:
                record = records[item.campaign_id] = context.copy().run(
                    self._receipt_applied, record, item, outcome, written
                )
            if item.only_channel is None:
                # The provider's reports are coming (an app's report about a push says nothing of FCM's).
                written.reported.add(record.channel)
            response = response_type(message=convert.message_proto(record))
            written.answered.append((scope, request, response))
            # A copy of the request later in the batch gets this answer, as it would from the table.
            stored[scope, request.request_id] = (request_fingerprint(request), response.SerializeToString())
            answers.append((response, outcome is not None))
        store.set_states(session, written.changes)
        store.add_timeline_steps(session, written.steps)
        self.outbox.add_rows_sync(session, written.events)
        _note_reports(session, written.reported)
        self.idempotency.remember_many_sync(session, method, written.answered)
        return answers

    def _receipt_applied(
        self, record: MessageRecord, item: "_Receipt", outcome: DeliveryState, written: "_ReceiptWrites"
    ) -> MessageRecord:
        """The message after the receipt moved it to `outcome`, and what that writes. The provider's id is kept only
        when none was recorded; a receipt timed before the message's last step (a provider's clock behind ours, one that
        raced the hand-over's own record) still reads after it."""
        reason = scrub(item.request.reason)
        step_name = f"receipt after {record.state.value}" if record.state is not DeliveryState.SENT else "receipt"
        at = max(item.at, record.timeline[-1].at) if record.timeline else item.at
        kept_reason = reason[: store.MAX_REASON] if outcome is DeliveryState.FAILED else ""
        new_provider_id = None if record.provider_message_id else item.request.provider_message_id or None
        written.changes.append(
            {
                "campaign_id": record.campaign_id,
                "state": outcome,
                "at": at,
                "reason": kept_reason,
                "provider_message_id": new_provider_id,
                "count_attempt": False,
            }
        )
        step = TimelineStep(state_step(outcome), at, f"{step_name}: {reason}".strip(": ")[: store.MAX_STEP_DETAIL])
        written.steps.append((record.campaign_id, step))
        event = convert.delivery_updated(record.campaign_id, record.channel, outcome, at, reason)
        written.events.append(self.outbox.event(streams.DELIVERY_UPDATED, event, campaign_id=record.campaign_id))
        return dataclasses.replace(
            record,
            state=outcome,
            reason=kept_reason,
            provider_message_id=record.provider_message_id or new_provider_id or "",
            timeline=[*record.timeline, step],
        )

    def _settle_sync(
        self,
        session: Session,
        campaign_id: str,
        outcome: DeliveryState,
        at: datetime,
        reason: str,
        step_detail: str,
        *,
        provider_message_id: str = "",
    ) -> None:
        """A message's new state from outside the send (a receipt, an operator): the state, its timeline step and its
        DeliveryUpdated, in the caller's transaction. The provider's id is kept only when none was recorded."""
        record = store.load_message_sync(session, campaign_id)
        assert record is not None
        if record.timeline and record.timeline[-1].at > at:
            # A receipt that raced the hand-over's own record (or a provider clock behind ours) still reads after the
            # state it settles.
            at = record.timeline[-1].at
        store.set_state_sync(
            session,
            campaign_id,
            outcome,
            now=at,
            reason=reason if outcome is DeliveryState.FAILED else "",
            provider_message_id=None if record.provider_message_id else provider_message_id or None,
        )
        store.add_timeline_sync(session, campaign_id, [TimelineStep(state_step(outcome), at, step_detail)])
        event = convert.delivery_updated(campaign_id, record.channel, outcome, at, reason)
        self.outbox.add_rows_sync(
            session, [self.outbox.event(streams.DELIVERY_UPDATED, event, campaign_id=campaign_id)]
        )

    async def ListAmbiguousMessages(
        self, request: service_pb2.ListAmbiguousMessagesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListAmbiguousMessagesResponse:
        limit = page_size(request.page_size, DEFAULT_AMBIGUOUS_PAGE, MAX_AMBIGUOUS_PAGE)
        cursor = decode_token("ListAmbiguousMessages", request.page_token, {}, "after")
        after = _ambiguous_cursor(cursor) if cursor is not None else None
        async with self.db.snapshot() as session:
            page = await store.ambiguous_page(session, after, limit)
        response = service_pb2.ListAmbiguousMessagesResponse(
            messages=[convert.message_proto(record) for record, _ in page]
        )
        if len(page) == limit:
            record, since = page[-1]
            # Campaign IDs are visible ASCII without spaces: the first space ends the time.
            response.next_page_token = encode_token(
                "ListAmbiguousMessages", {"after": f"{since.isoformat()} {record.campaign_id}"}
            )
        return response

    async def ResolveAmbiguousMessage(
        self, request: service_pb2.ResolveAmbiguousMessageRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ResolveAmbiguousMessageResponse:
        campaign_id = _campaign_id(request.campaign_id)
        outcome = convert.delivery_state_from_proto(request.state)
        if outcome not in SETTLED_BY_HAND:
            raise InvalidArgument(
                "state must be DELIVERY_STATE_SENT, DELIVERY_STATE_DELIVERED or DELIVERY_STATE_FAILED: what the "
                "provider's own records say happened",
                field="state",
            )
        reason = scrub(request.reason, MAX_DETAIL * 3)
        if not reason.strip():
            raise InvalidArgument(
                "reason is required: what was found and where, e.g. 'in the relay's log: queued as 4F1A3C0123'",
                field="reason",
            )
        with outreach_span(self.tracer, "channels.resolve", campaign_id, attributes={"delivery.state": outcome.value}):
            async with self.db.transaction() as session:
                previous = await self.idempotency.previous(
                    session, "ResolveAmbiguousMessage", request, service_pb2.ResolveAmbiguousMessageResponse
                )
                if previous is not None:
                    return previous
                locked = await store.lock_state(session, campaign_id)
                if locked is None:
                    raise _no_message(campaign_id)
                current, _ = locked
                if current is not DeliveryState.AMBIGUOUS:
                    raise FailedPrecondition(
                        f"campaign ID {campaign_id} is {current.value}, not AMBIGUOUS: only a message whose outcome "
                        "is unknown is settled by hand (a receipt may have settled it meanwhile)",
                        field="campaign_id",
                        subject=f"messages/{campaign_id}",
                    )
                now = utcnow()
                await session.run_sync(
                    lambda sync: self._settle_sync(
                        sync, campaign_id, outcome, now, reason, f"settled by hand: {reason}"
                    )
                )
                updated = await store.load_message(session, campaign_id)
                assert updated is not None
                response = service_pb2.ResolveAmbiguousMessageResponse(message=convert.message_proto(updated))
                await self.idempotency.remember(session, "ResolveAmbiguousMessage", request, response)
            log.warning("ambiguous_message_resolved", state=outcome.value)
            return response


def _ambiguous_cursor(cursor: str) -> tuple[datetime, str]:
    since, _, campaign_id = cursor.partition(" ")
    try:
        return datetime.fromisoformat(since), campaign_id
    except ValueError as error:
        raise InvalidArgument(
            "page_token is not one this service issued; pass next_page_token unchanged", field="page_token"
        ) from error


def _note_reports(session: Session, channels: set[str]) -> None:
    """Once a transaction, for each provider that reported in it: a batch of WhatsApp's callbacks is one upsert, not one
    each (on PostgreSQL, one row that every batch would lock)."""
    now = utcnow()
    for channel in sorted(channels):
        store.note_report(session, channel, now)
