"""SendGrid's Event Webhook, and what every ESP's webhook shares: an ESP's reports of the e-mails it took, as the bounce
mailbox reads a relay's DSNs (SES's, through SNS, is gateway/ses_events.py).

An ESP (SendGrid, SES) reports through its own signed webhook, not by DSN mail to the return path. SendGrid posts a
JSON array of events, signed with ECDSA P-256 over the timestamp header and the raw body (SHA-256; the signature in
X-Twilio-Email-Event-Webhook-Signature, base64 DER; the verification key from its mail settings, base64 DER). Each
event names its outreach by the unique arg channels sets (`xsell_campaign_id`, XSELL_CHANNELS_SMTP_ESP_EVENTS=sendgrid)
or by its `smtp-id`, the Message-ID channels wrote (<campaign ID@message_id_domain>).

| event | becomes |
|---|---|
| processed | the receipt SENT: SendGrid has the message (settles a hand-over whose answer was lost) |
| delivered | the receipt DELIVERED |
| bounce (type bounce or blocked) | the receipt SENT, then BOUNCED with its status: "5.1.1 permanent", "5.7.1 blocked" |
| dropped | the receipt FAILED: SendGrid did not send it ("sendgrid dropped: Bounced Address") |
| spamreport | COMPLAINED |
| unsubscribe, group_unsubscribe | UNSUBSCRIBED |
| open, click | OPENED, CLICKED (when SendGrid's own tracking is on) |
| deferred, group_resubscribe, anything else | nothing |
"""

import base64
import hashlib
import re
import time
from collections.abc import Callable
from typing import Any, TypeGuard

import structlog
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from opentelemetry import trace

from gateway.webhooks import ChannelsRecorder, ReplayGuard, Unrecorded, record_item, untrusted_json
from xsell.channels.v1 import resources_pb2 as channels_resources
from xsell.channels.v1 import service_pb2_grpc as channels_grpc

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
CAMPAIGN_ID_ARG = "xsell_campaign_id"
"""The unique arg (X-SMTPAPI) channels gives every e-mail through SendGrid; every event of the message carries it."""
MAX_BODY = 5 * 1024 * 1024
"""SendGrid batches events by size or time; a batch over this is refused (413) rather than read."""

_CAMPAIGN_ID = re.compile(r"^[!-?A-~]{1,200}$")
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_ENGAGEMENT = {
    "spamreport": channels_resources.ENGAGEMENT_KIND_COMPLAINED,
    "unsubscribe": channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED,
    "group_unsubscribe": channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED,
    "open": channels_resources.ENGAGEMENT_KIND_OPENED,
    "click": channels_resources.ENGAGEMENT_KIND_CLICKED,
}
# Honoured however late they come, as a STOP is: dropping one would keep writing to someone who said stop.
_OPT_OUTS = frozenset({"spamreport", "unsubscribe", "group_unsubscribe"})


def verification_key(encoded: str) -> ec.EllipticCurvePublicKey:
    """The key SendGrid's mail settings show (base64 of the DER SubjectPublicKeyInfo); ValueError when it is not one."""
    try:
        key = load_der_public_key(base64.b64decode(encoded.strip(), validate=True))
    except (ValueError, TypeError) as error:
        raise ValueError(f"not a base64 DER public key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve key (SendGrid signs with ECDSA P-256)")
    return key


def signature_holds(key: ec.EllipticCurvePublicKey, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether `signature` (base64 DER) is SendGrid's ECDSA-SHA256 over the timestamp header then the raw body."""
    try:
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def campaign_id_of(event: dict[str, Any], message_id_domain: str) -> str:
    """The event's outreach: its unique arg, else its smtp-id's local part (campaign_id_in_message_id); "" when it
    names none."""
    stated = event.get(CAMPAIGN_ID_ARG)
    if is_campaign_id(stated):
        return stated
    smtp_id = event.get("smtp-id")
    return campaign_id_in_message_id(smtp_id, message_id_domain) if isinstance(smtp_id, str) else ""


def is_campaign_id(value: Any) -> TypeGuard[str]:
    """Whether an ESP's field could be a campaign ID channels wrote: visible ASCII, as campaigns issues them."""
    return isinstance(value, str) and _CAMPAIGN_ID.match(value) is not None


def campaign_id_in_message_id(message_id: str, message_id_domain: str) -> str:
    """The local part of a Message-ID channels wrote (<campaign ID@message_id_domain>), in `message_id_domain` or in
    any when that is empty (channels answers for IDs it does not know); "" for another's Message-ID."""
    local, _, domain = message_id.strip().strip("<>").rpartition("@")
    if (not message_id_domain or domain.lower() == message_id_domain.lower()) and is_campaign_id(local):
        return local
    return ""


def bounce_detail(event: dict[str, Any]) -> str:
    """A bounce's step detail: its status and kind ("5.1.1 permanent", "5.7.1 blocked"); never SendGrid's reason text,
    which quotes the receiving server and names the address."""
    return status_detail(event.get("status", ""), "blocked" if event.get("type") == "blocked" else "permanent")


def status_detail(status: Any, kind: str) -> str:
    """ "<status> <kind>", as segments reads a bounce (plumbing/bounces.py): a status that is not an SMTP enhanced
    status code (RFC 3463) becomes 5.0.0, so nothing else a provider wrote there is kept."""
    text = str(status).strip()
    return f"{text if _STATUS.match(text) else '5.0.0'} {kind}"


def is_stale(occurred_at: float | None, now: float, max_age: float) -> bool:
    """Older than the accepted age; an event without a time of its own is judged by its signature alone."""
    return occurred_at is not None and now - occurred_at > max_age


class SendGridEvents:
    """POST /webhooks/email/sendgrid: verified, then each event becomes a channels call, in the order posted."""

    def __init__(
        self,
        channels: channels_grpc.ChannelsServiceStub,
        *,
        verification_key: str,
        message_id_domain: str,
        timeout_seconds: float,
        max_age_seconds: float,
        tracer: trace.Tracer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._record = ChannelsRecorder(channels, timeout_seconds, tracer, "sendgrid")
        self._key = _key_or_none(verification_key)
        self._domain = message_id_domain
        self._max_age = max_age_seconds
        self._clock = clock
        self._replays = ReplayGuard(max_age_seconds)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/email/sendgrid", self._events)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413, text="a batch of events over 5 MiB\n")
        body = await request.read()
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if self._key is None or not signature_holds(self._key, timestamp, body, signature):
            log.warning("webhook_rejected", provider="sendgrid", reason="signature")
            return web.Response(status=401, text=f"{SIGNATURE_HEADER} does not match the timestamp and body\n")
        replay_key = b"sendgrid:" + hashlib.sha256(timestamp.encode() + body).digest()
        if (replayed := self._replays.refusal(replay_key, "sendgrid")) is not None:
            return replayed
        read, events = untrusted_json(body)
        if not read:
            return web.Response(status=400, text="body is not JSON\n")
        if not isinstance(events, list):
            return web.Response(status=400, text="body is not a JSON array of events\n")
        stale = 0
        try:
            for event in events:
                if not isinstance(event, dict):
                    continue
                name = str(event.get("event", ""))
                if name not in _OPT_OUTS and self._stale(event.get("timestamp")):
                    stale += 1
                    continue
                await record_item("sendgrid", self._event(name, event))
        except Unrecorded:
            return web.Response(status=503, text="try again later\n")
        if stale:
            log.warning("webhook_rejected", provider="sendgrid", reason="stale", items=stale)
        self._replays.remember(replay_key)
        return web.Response(text="ok\n")

    def _stale(self, occurred_at: Any) -> bool:
        try:
            at = float(occurred_at)
        except (TypeError, ValueError, OverflowError):
            return False  # judged by the signature alone
        return is_stale(at, self._clock(), self._max_age)

    async def _event(self, name: str, event: dict[str, Any]) -> None:
        campaign_id = campaign_id_of(event, self._domain)
        event_id = str(event.get("sg_event_id") or "")[:100]
        if not campaign_id or not event_id:
            log.info("webhook_ignored", provider="sendgrid", reason="no_campaign_id", event_name=name[:30])
            return
        request_id = f"sendgrid:{event_id}"
        provider_id = str(event.get("sg_message_id", ""))[:300]
        if name == "processed":
            await self._record.receipt(request_id, campaign_id, channels_resources.DELIVERY_STATE_SENT, provider_id, "")
        elif name == "delivered":
            await self._record.receipt(
                request_id, campaign_id, channels_resources.DELIVERY_STATE_DELIVERED, provider_id, ""
            )
        elif name == "dropped":
            reason = f"sendgrid dropped: {str(event.get('reason', ''))[:100]}".strip(": ")
            await self._record.receipt(
                request_id, campaign_id, channels_resources.DELIVERY_STATE_FAILED, provider_id, reason
            )
        elif name == "bounce":
            # A bounce proves SendGrid had the message: it settles a hand-over whose answer was lost, as a DSN does.
            sent = channels_resources.DELIVERY_STATE_SENT
            await self._record.receipt(f"{request_id}:sent", campaign_id, sent, provider_id, "")
            await self._record.engagement(
                request_id, campaign_id, channels_resources.ENGAGEMENT_KIND_BOUNCED, bounce_detail(event)
            )
        elif name in _ENGAGEMENT:
            url = str(event.get("url", "")) if name == "click" else ""
            await self._record.engagement(request_id, campaign_id, _ENGAGEMENT[name], name, url=url)


def _key_or_none(encoded: str) -> ec.EllipticCurvePublicKey | None:
    """No key: every post is refused (the settings check a configured one when the gateway starts)."""
    return verification_key(encoded) if encoded.strip() else None
