"""Provider webhooks on the HTTP edge: WhatsApp Cloud API (signed by Meta) and Exotel SMS status callbacks.

- `GET /webhooks/whatsapp`: Meta's subscription check (hub.mode, hub.verify_token, hub.challenge).
- `POST /webhooks/whatsapp`: statuses and inbound messages. `X-Hub-Signature-256` is
  `sha256=<hex HMAC-SHA256(app secret, raw body)>`; a body that does not match is refused with 401
  and nothing is recorded. `delivered` and `failed` statuses become delivery receipts, `read`
  becomes an open, an inbound message becomes a reply (STOP / UNSUBSCRIBE an unsubscribe). The campaign ID
  comes from `biz_opaque_callback_data`, or from the quoted wamid; an inbound message that quotes none of ours
  (a "YES" or "STOP" typed fresh) answers the last WhatsApp message sent to its sender's number (channels finds
  it by a keyed hash of the number, within 30 days). A failed status whose code says something about the person
  rather than the message is recorded too: 131026 (the number is not on WhatsApp, or its app is too old) and 130472
  (the number is in Meta's marketing experiment) become a BOUNCED "UNREACHABLE whatsapp <code>", which segments turns
  into an `unreachable` suppression on WhatsApp for a while (so a campaign's fallback channel reaches them); 131050
  (they stopped marketing messages from this business) becomes an unsubscribe. So does a `user_preferences` change
  whose value is `stop` (the person stopped marketing messages in WhatsApp's own settings). A template Meta pauses,
  disables or rejects (`message_template_status_update`) pauses the campaigns sending it (gateway.whatsapp_templates).
- `POST /webhooks/sms/exotel/{token}`: Exotel's StatusCallback (form fields SmsSid, Status,
  DetailedStatus, DateSent, CustomField = the campaign ID). The URL carries a secret token compared in
  constant time; with `sms_callback_secret` set, the callback must also carry `X-Twilio-Signature`, the
  Twilio-style HMAC (base64 HMAC-SHA1 of the URL followed by every form field's name and value in name
  order), as SMS gateways that sign their callbacks send it; a missing or mismatching one is refused.
- `POST` or `GET /webhooks/sms/exotel/{token}/inbound`: an SMS to the institution's number, as Exotel forwards it
  (fields SmsSid, From, To, Date, Body), verified the same way. It answers the last SMS sent to the sender's number:
  an opt-out keyword ("STOP", "STOP ALL", "UNSUBSCRIBE", "OPTOUT", "CANCEL", "END", "QUIT", as the first word,
  any case and punctuation) becomes an unsubscribe, and so a suppression in segments; anything else a reply.

Stale and replayed callbacks are refused without being recorded, and acknowledged (200) so that a
provider does not retry them for days: a WhatsApp status or message whose own `timestamp`, or an SMS
callback whose `DateSent`, is older than `max_age_seconds`; a signed body (WhatsApp) or a signature (SMS)
this gateway already accepted within that window. The replay memory is per gateway replica and bounded;
behind it, every record call carries a request_id derived from the provider's own ids (the wamid and
status, the SmsSid and status) and channels records a request_id once, so a replay that reaches another
replica changes nothing either.

A post is answered as a whole: 200 once each of its items is recorded or deliberately not, 503 when channels cannot
record one now (the provider posts it again, and what was recorded is recorded once). An item that cannot be recorded
at all is logged and skipped rather than holding back the items after it for as long as the provider retries: one
without the provider's id for it (`webhook_ignored`), one whose content cannot be carried (a lone surrogate in a text,
a number past a float: `webhook_item_refused`), and one whose request_id channels already recorded with other content
(`webhook_conflict`: Meta reporting a second `failed` with another code for one message). A body that is not JSON, or
nests deeper or holds a longer number than Python reads, is refused with 400. The Twilio-style signature joins names and
values without a separator, so a captured stale SMS callback's time (`DateSent`, or `Date` inbound) could be moved
into another field under the same signature and the callback pass as fresh: one without its own time that shows such
a move (a field named "D"... "DateSen", a value ending with "DateSent" and a date) is refused with 400.
"""

import base64
import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import structlog
from aiohttp import web
from opentelemetry import trace

from gateway.whatsapp_templates import TemplatesUnavailable, on_template_status
from plumbing.bounces import DND, INVALID_NUMBER, WHATSAPP_MARKETING_SETTING, whatsapp_unreachable
from plumbing.telemetry import outreach_span
from xsell.campaigns.v1 import service_pb2_grpc as campaigns_grpc
from xsell.channels.v1 import resources_pb2 as channels_resources
from xsell.channels.v1 import service_pb2 as channels_pb2
from xsell.channels.v1 import service_pb2_grpc as channels_grpc
from xsell.type.v1 import channel_pb2

log = structlog.get_logger(__name__)

# An inbound message whose first word is one of these (after upper-casing and dropping punctuation) opts out: "Stop",
# "STOP ALL", "stop sending these", "STOP 56161" (a DLT sender's short code). "OPT OUT" is two words.
OPT_OUT_FIRST_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "OPTOUT", "CANCEL", "END", "QUIT"})
# An inbound message that is, whole, one of these (upper-cased, punctuation dropped) declines the offer: "No.",
# "no thanks", a "Not interested" quick-reply button, "Nahi". Only a bare refusal: anything longer ("No, call me
# on Monday") stays a reply, which is a lead an RM reads; a refusal read as a lead costs an RM a call, a lead read
# as a refusal costs the sale.
DECLINES = frozenset(
    {
        "N",
        "NO",
        "NOPE",
        "NAH",
        "NO THANKS",
        "NO THANK YOU",
        "NO THANKYOU",
        "NO THX",
        "NO NEED",
        "NOT INTERESTED",
        "NOT NOW",
        "NOT REQUIRED",
        "NOT NEEDED",
        "NAHI",
        "NAHIN",
        "NAHI CHAHIYE",
        "नहीं",
        "नही",
    }
)
# Exotel's Status values that settle a message (sent = delivered to the handset; undelivered and expired are final
# failures: the operator could not deliver it within its validity).
EXOTEL_DELIVERED = frozenset({"sent", "delivered"})
# They stopped marketing messages from this business in WhatsApp (131050): an opt-out, which Meta itself enforces.
WHATSAPP_STOPPED_MARKETING = "131050"
_PREFERENCE_KINDS = {
    "stop": channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED,
    "resume": channels_resources.ENGAGEMENT_KIND_RESUBSCRIBED,
}
"""What a `user_preferences` change to marketing messages records on the person's last WhatsApp message."""
EXOTEL_DND = "failed-dnd"
EXOTEL_FAILED = frozenset({"failed", EXOTEL_DND, "undelivered", "expired"})
# Exotel's DetailedStatus values that say the number does not exist: a bad address, as 5.1.1 is for e-mail.
EXOTEL_INVALID_NUMBER = frozenset({"FAILED_INVALID_NUMBER", "INVALID_NUMBER"})


EXOTEL_ZONE = timezone(timedelta(hours=5, minutes=30))
"""Exotel writes DateSent as India's wall-clock time, without a zone."""
REPLAY_MEMORY = 100_000
"""At most this many accepted callbacks are remembered for replay refusal (the oldest are forgotten first)."""


def meta_signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def twilio_signature(secret: str, url: str, fields: Iterable[tuple[str, str]]) -> str:
    """Twilio's request signature: base64(HMAC-SHA1(secret, url + name1 + value1 + name2 + value2 ...)), the form
    fields in name order."""
    payload = url + "".join(f"{name}{value}" for name, value in sorted(fields))
    return base64.b64encode(hmac.new(secret.encode(), payload.encode(), hashlib.sha1).digest()).decode()


class ReplayGuard:
    """Remembers what was accepted, for `max_age_seconds`, so that the same callback is not accepted twice."""

    def __init__(self, max_age_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age_seconds
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def seen(self, key: bytes) -> bool:
        self._forget_expired()
        return key in self._seen

    def refusal(self, key: bytes, provider: str) -> web.Response | None:
        """The answer to a callback accepted before (acknowledged, so the provider stops, and not recorded again)."""
        if not self.seen(key):
            return None
        log.warning("webhook_rejected", provider=provider, reason="replay")
        return web.Response(text="already accepted; not recorded again\n")

    def remember(self, key: bytes) -> None:
        self._seen[key] = self._clock() + self._max_age
        self._seen.move_to_end(key)
        while len(self._seen) > REPLAY_MEMORY:
            self._seen.popitem(last=False)

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._seen and next(iter(self._seen.values())) <= now:
            self._seen.popitem(last=False)


class Unrecorded(Exception):
    """Channels could not record a callback now; the provider is asked to send it again."""


def untrusted_json(body: bytes | str) -> tuple[bool, Any]:
    """(True, the document) for a provider's JSON body; (False, None) for one that is not JSON, is not UTF-8, nests
    deeper than Python recurses or holds an integer longer than Python reads (4,300 digits), which json.loads raises
    as ValueError or RecursionError rather than JSONDecodeError."""
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False, None


UNCARRIED = (ValueError, TypeError, OverflowError)
"""What building a record call raises for an item whose content cannot be carried: protobuf refusing a lone surrogate
(UnicodeEncodeError), a number past a float or a timestamp (OverflowError, ValueError)."""


async def record_item(provider: str, recording: Awaitable[None]) -> None:
    """Records one item of a post; one whose content cannot be carried is logged and skipped, so the post's other items
    are recorded (and the provider, answered 200, does not post the same item again for days). Unrecorded passes."""
    try:
        await recording
    except UNCARRIED as error:
        log.warning("webhook_item_refused", provider=provider, error=type(error).__name__)


class ProviderWebhooks:
    """The webhook routes; each callback becomes RecordDeliveryReceipt or RecordEngagement on channels."""

    def __init__(
        self,
        channels: channels_grpc.ChannelsServiceStub,
        *,
        campaigns: campaigns_grpc.CampaignsServiceStub | None = None,
        whatsapp_app_secret: str,
        whatsapp_verify_token: str,
        sms_callback_token: str,
        timeout_seconds: float,
        sms_callback_secret: str = "",
        max_age_seconds: float = 2 * 86400,
        public_base_url: str = "",
        tracer: trace.Tracer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._record = ChannelsRecorder(channels, timeout_seconds, tracer, "webhook")
        self._campaigns = campaigns
        self._app_secret = whatsapp_app_secret
        self._verify_token = whatsapp_verify_token
        self._sms_token = sms_callback_token
        self._sms_secret = sms_callback_secret
        self._timeout = timeout_seconds
        self._max_age = max_age_seconds
        self._public_base_url = public_base_url.rstrip("/")
        self._clock = clock
        self._replays = ReplayGuard(max_age_seconds)

    def _stale(self, occurred_at: float | None) -> bool:
        """Older than the accepted age (a callback without a time of its own is judged by its signature alone)."""
        return occurred_at is not None and self._clock() - occurred_at > self._max_age

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/webhooks/whatsapp", self._whatsapp_subscribe)
        app.router.add_post("/webhooks/whatsapp", self._whatsapp)
        app.router.add_post("/webhooks/sms/exotel/{token}", self._exotel)
        app.router.add_post("/webhooks/sms/exotel/{token}/inbound", self._exotel_inbound)
        app.router.add_get("/webhooks/sms/exotel/{token}/inbound", self._exotel_inbound)

    async def _whatsapp_subscribe(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        token = query.get("hub.verify_token", "")
        verified = bool(self._verify_token) and _same(token, self._verify_token)
        if query.get("hub.mode") == "subscribe" and verified:
            return web.Response(text=query.get("hub.challenge", ""))
        return web.Response(status=403, text="verify token does not match\n")

    async def _whatsapp(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        presented = request.headers.get("X-Hub-Signature-256", "")
        if not self._app_secret or not _same(meta_signature(self._app_secret, body), presented):
            log.warning("webhook_rejected", provider="whatsapp", reason="signature")
            return web.Response(status=401, text="X-Hub-Signature-256 does not match the body\n")
        digest = hashlib.sha256(body).digest()
        if (replayed := self._replays.refusal(digest, "whatsapp")) is not None:
            return replayed
        read, document = untrusted_json(body)
        if not read:
            return web.Response(status=400, text="body is not JSON\n")
        stale = 0
        try:
            for field, value in _whatsapp_values(document):
                if field == TEMPLATE_STATUS_FIELD:
                    if self._campaigns is not None:
                        await on_template_status(self._campaigns, value, digest.hex()[:32], self._timeout)
                    continue
                for status in _objects(value, "statuses"):
                    if self._stale(_unix_time(status.get("timestamp"))):
                        stale += 1
                    else:
                        await record_item("whatsapp", self._whatsapp_status(status))
                for message in _objects(value, "messages"):
                    # An opt-out is honoured however late it comes (Meta retries for days after an outage): dropping
                    # one would keep messaging someone who said stop, and a replayed one only opts a person out.
                    if self._stale(_unix_time(message.get("timestamp"))) and not _opts_out(message):
                        stale += 1
                    else:
                        await record_item("whatsapp", self._whatsapp_message(message))
                for preference in _objects(value, "user_preferences"):
                    # An opt-out, honoured however late it comes, as a typed STOP is.
                    await record_item("whatsapp", self._whatsapp_preference(preference))
        except (Unrecorded, TemplatesUnavailable):
            return web.Response(status=503, text="try again later\n")
        if stale:
            log.warning("webhook_rejected", provider="whatsapp", reason="stale", items=stale)
        self._replays.remember(digest)
        return web.Response(text="ok\n")

    async def _whatsapp_status(self, status: dict[str, Any]) -> None:
        campaign_id = str(status.get("biz_opaque_callback_data") or "")
        wamid, state = str(status.get("id") or ""), status.get("status")
        if not campaign_id:
            log.info("webhook_ignored", provider="whatsapp", reason="no_campaign_id", status=state)
            return
        if not wamid:
            # Its request_id would be every id-less status's: the first would stand for all of them.
            log.info("webhook_ignored", provider="whatsapp", reason="no_message_id", status=state)
            return
        request_id = f"wa:{wamid}:{state}"
        if state == "sent":
            # Meta accepted it: settles a hand-over whose answer was lost (resend.py waits for this report).
            await self._record.receipt(request_id, campaign_id, channels_resources.DELIVERY_STATE_SENT, wamid, "")
        elif state == "delivered":
            await self._record.receipt(request_id, campaign_id, channels_resources.DELIVERY_STATE_DELIVERED, wamid, "")
        elif state == "failed":
            errors = _objects(status, "errors") or [{}]
            code = str(errors[0].get("code", ""))
            reason = f"whatsapp {code} {errors[0].get('title', '')}".strip()
            await self._record.receipt(request_id, campaign_id, channels_resources.DELIVERY_STATE_FAILED, wamid, reason)
            await self._whatsapp_refusal(wamid, campaign_id, code)
        elif state == "read":
            await self._record.send_engagement(
                channels_pb2.RecordEngagementRequest(
                    request_id=request_id, campaign_id=campaign_id, kind=channels_resources.ENGAGEMENT_KIND_OPENED
                )
            )

    async def _whatsapp_refusal(self, wamid: str, campaign_id: str, code: str) -> None:
        """What a failure code says about the person, recorded beside the FAILED receipt, like Exotel's failed-dnd."""
        if unreachable := whatsapp_unreachable(code):
            # A bounce segments suppresses WhatsApp on for a while (bounces.UNREACHABLE): they may join WhatsApp.
            engagement = channels_pb2.RecordEngagementRequest(
                request_id=f"wa:{wamid}:unreachable",
                kind=channels_resources.ENGAGEMENT_KIND_BOUNCED,
                detail=unreachable,
            )
        elif code == WHATSAPP_STOPPED_MARKETING:
            engagement = channels_pb2.RecordEngagementRequest(
                request_id=f"wa:{wamid}:stopped",
                kind=channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED,
                detail=WHATSAPP_MARKETING_SETTING,
            )
        else:
            return
        engagement.campaign_id = campaign_id
        await self._record.send_engagement(engagement)

    async def _whatsapp_preference(self, preference: Any) -> None:
        """A person stopped marketing messages from this business in WhatsApp's settings: an unsubscribe from the last
        WhatsApp message sent to their number, as a typed STOP is. A `resume` is a resubscribe, which lifts only the
        opt-out that WhatsApp's setting made (both carry WHATSAPP_MARKETING_SETTING): one the person gave another way
        stays until the institution lifts it (RemoveSuppression)."""
        if not isinstance(preference, dict) or preference.get("category") != "marketing_messages":
            return
        kind = _PREFERENCE_KINDS.get(str(preference.get("value")))
        if kind is None:
            return
        wa_id = str(preference.get("wa_id", ""))
        # The request_id must not carry the number: a keyed hash of it, the change and its moment, stable across Meta's
        # retries.
        moment = f"{wa_id}:{preference.get('value')}:{preference.get('timestamp', '')}".encode()
        key = hmac.new(self._app_secret.encode(), moment, hashlib.sha256).hexdigest()[:32]
        await self._record.send_engagement(
            channels_pb2.RecordEngagementRequest(
                request_id=f"wa:preference:{key}",
                kind=kind,  # type: ignore[arg-type]
                inbound_from=wa_id,
                inbound_channel=channel_pb2.CHANNEL_WHATSAPP,
                detail=WHATSAPP_MARKETING_SETTING,
            )
        )

    async def _whatsapp_message(self, message: dict[str, Any]) -> None:
        message_id = str(message.get("id") or "")
        if not message_id:
            log.info("webhook_ignored", provider="whatsapp", reason="no_message_id")
            return
        quoted = str(_object(message, "context").get("id", ""))
        text = _reply_text(message)
        request = channels_pb2.RecordEngagementRequest(
            request_id=f"wa:{message_id}", kind=_reply_kind(text), reply_text=text[:1000]
        )
        if quoted:
            request.provider_message_id = quoted
        else:
            # Typed fresh: it answers the last message sent to the sender's number (channels matches its hash).
            request.inbound_from = str(message.get("from", ""))
            request.inbound_channel = channel_pb2.CHANNEL_WHATSAPP
        await self._record.send_engagement(request)

    async def _exotel_form(self, request: web.Request) -> tuple[dict[str, str], bytes] | web.Response:
        """An Exotel callback's fields and its replay key, once its token and signature check out; otherwise the
        answer to give (401 for a wrong token or signature, 200 for a replay, which is not recorded again)."""
        if not self._sms_token or not _same(request.match_info["token"], self._sms_token):
            log.warning("webhook_rejected", provider="sms", reason="token")
            return web.Response(status=401, text="unknown callback token\n")
        # A GET carries its fields in the query, which the signed URL already holds; a POST in its form.
        try:
            form = {} if request.method == "GET" else await request.post()
        except (ValueError, LookupError):  # not UTF-8 (UnicodeDecodeError), a charset Python does not know
            return web.Response(status=400, text="the form is not UTF-8 form fields\n")
        fields = [(name, str(value)) for name, value in form.items()]
        if self._sms_secret:
            presented = request.headers.get("X-Twilio-Signature", "")
            expected = twilio_signature(self._sms_secret, self._public_url(request), fields)
            if not _same(expected, presented):
                log.warning("webhook_rejected", provider="sms", reason="signature")
                return web.Response(status=401, text="X-Twilio-Signature does not match the URL and fields\n")
            moment = "Date" if request.path.endswith("/inbound") else "DateSent"
            stated = [*fields, *request.query.items()]
            if _exotel_time(dict(stated).get(moment, "")) is None and _re_split(stated, moment):
                # The signature joins names and values without a separator: a captured stale callback whose time was
                # moved into another field ("D" = "ateSent2026-...") keeps its signature and would pass as fresh.
                log.warning("webhook_rejected", provider="sms", reason="re_split")
                return web.Response(status=400, text=f"{moment} is split across other fields\n")
            replay_key = b"sms:" + presented.encode()
        else:
            every = [*fields, *((name, value) for name, value in request.query.items())]
            replay_key = b"sms:" + hashlib.sha256(json.dumps(sorted(every)).encode()).digest()
        if (replayed := self._replays.refusal(replay_key, "sms")) is not None:
            return replayed
        return {**dict(request.query), **dict(fields)}, replay_key

    async def _exotel(self, request: web.Request) -> web.StreamResponse:
        verified = await self._exotel_form(request)
        if isinstance(verified, web.Response):
            return verified
        form, replay_key = verified
        if self._stale(_exotel_time(form.get("DateSent", ""))):
            log.warning("webhook_rejected", provider="sms", reason="stale")
            return web.Response(text="older than the accepted age; not recorded\n")
        campaign_id, sid = form.get("CustomField", ""), form.get("SmsSid", "")
        status = str(form.get("Status", "")).lower()
        if not campaign_id or status not in EXOTEL_DELIVERED | EXOTEL_FAILED:
            return web.Response(text="ok\n")
        if not sid:
            # Its request_id would be every sid-less callback's: the first would stand for all of them.
            return web.Response(status=400, text="SmsSid is required\n")
        state = (
            channels_resources.DELIVERY_STATE_DELIVERED
            if status in EXOTEL_DELIVERED
            else channels_resources.DELIVERY_STATE_FAILED
        )
        detailed = str(form.get("DetailedStatus", "")).strip().upper()
        reason = "" if status in EXOTEL_DELIVERED else f"exotel {status} {detailed}".strip()
        try:
            await self._record.receipt(f"exotel:{sid}:{status}", campaign_id, state, sid, reason)
            if bounce := _exotel_bounce(status, detailed):
                suffix, detail = bounce
                await self._record.send_engagement(
                    channels_pb2.RecordEngagementRequest(
                        request_id=f"exotel:{sid}:{suffix}",
                        campaign_id=campaign_id,
                        kind=channels_resources.ENGAGEMENT_KIND_BOUNCED,
                        detail=detail,
                    )
                )
        except Unrecorded:
            return web.Response(status=503, text="try again later\n")
        self._replays.remember(replay_key)
        return web.Response(text="ok\n")

    async def _exotel_inbound(self, request: web.Request) -> web.StreamResponse:
        """An SMS to the institution's number: a reply to, or an opt-out from, the last SMS sent to the sender."""
        verified = await self._exotel_form(request)
        if isinstance(verified, web.Response):
            return verified
        form, replay_key = verified
        sender, sid, text = form.get("From", ""), form.get("SmsSid", ""), form.get("Body", "")
        kind = _reply_kind(text)
        # An opt-out is honoured however late it comes; an old reply is not recorded.
        if kind != channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED and self._stale(_exotel_time(form.get("Date", ""))):
            log.warning("webhook_rejected", provider="sms", reason="stale")
            return web.Response(text="older than the accepted age; not recorded\n")
        if not sender or not sid:
            return web.Response(status=400, text="From and SmsSid are required\n")
        try:
            await self._record.send_engagement(
                channels_pb2.RecordEngagementRequest(
                    request_id=f"exotel-in:{sid}",
                    kind=kind,
                    reply_text=text[:1000],
                    inbound_from=sender,
                    inbound_channel=channel_pb2.CHANNEL_SMS,
                )
            )
        except Unrecorded:
            return web.Response(status=503, text="try again later\n")
        self._replays.remember(replay_key)
        # Exotel sends an SMS passthru's answer body back to the sender; an empty one sends nothing.
        return web.Response(text="")

    def _public_url(self, request: web.Request) -> str:
        """The URL the provider called, as it signed it: behind an ingress the gateway sees another scheme and host."""
        if self._public_base_url:
            return self._public_base_url + request.rel_url.raw_path_qs
        return str(request.url)


def _same(expected: str, presented: str) -> bool:
    """A constant-time comparison of a secret with what a caller presented, in UTF-8: compare_digest refuses a str
    that is not ASCII with TypeError, which would answer a caller's stray character with 500 instead of 401."""
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogateescape"))


class ChannelsRecorder:
    """A provider's reports as record calls on channels (record_call: Unrecorded asks the provider for a retry).
    `source` names the reports' way in on each call's span ("webhook", "sendgrid", "ses")."""

    def __init__(
        self, channels: channels_grpc.ChannelsServiceStub, timeout_seconds: float, tracer: trace.Tracer, source: str
    ) -> None:
        self._channels = channels
        self._timeout = timeout_seconds
        self._tracer = tracer
        self._source = source

    async def receipt(self, request_id: str, campaign_id: str, state: Any, provider_id: str, reason: str) -> None:
        request = channels_pb2.RecordDeliveryReceiptRequest(
            request_id=request_id,
            campaign_id=campaign_id,
            state=state,
            provider_message_id=provider_id,
            reason=reason,
        )
        span_name = f"gateway {self._source} receipt"
        await record_call(self._channels.RecordDeliveryReceipt, request, self._timeout, self._tracer, span_name)

    async def engagement(self, request_id: str, campaign_id: str, kind: Any, detail: str, url: str = "") -> None:
        await self.send_engagement(
            channels_pb2.RecordEngagementRequest(
                request_id=request_id, campaign_id=campaign_id, kind=kind, detail=detail, url=url
            )
        )

    async def send_engagement(self, request: channels_pb2.RecordEngagementRequest) -> None:
        """An engagement whose request names its message otherwise (a provider's id, an inbound sender's number)."""
        await record_call(
            self._channels.RecordEngagement, request, self._timeout, self._tracer, f"gateway {self._source} engagement"
        )


NOTHING_TO_RETRY = frozenset(
    {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
)
"""Channels' answers about a callback that no retry can change: a message it does not know (another system on the
account), a request it cannot take, a message no provider was given."""


async def record_call(method: Any, request: Any, timeout: float, tracer: trace.Tracer, span_name: str) -> bool:
    """One record call to channels: True when recorded, False when channels does not know the message (ignored);
    Unrecorded when it cannot record now, so the provider is asked to send the callback again.

    A report that names its campaign ID is recorded in that outreach's trace, as a click is (gateway.tracking): the
    call and channels' receipt or engagement follow the provider's hand-over there. Without the span each report was
    a trace of its own, which `make trace` of the campaign ID never showed. A report named otherwise (a provider's id,
    a sender's number) stays in its own trace; channels links the outreach's span to it."""
    campaign_id = getattr(request, "campaign_id", "")
    if not campaign_id:
        return await _record_call(method, request, timeout)
    with outreach_span(tracer, span_name, campaign_id):
        return await _record_call(method, request, timeout)


async def _record_call(method: Any, request: Any, timeout: float) -> bool:
    try:
        await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        if error.code() in NOTHING_TO_RETRY:
            log.info("webhook_ignored", reason=error.code().name, detail=error.details())
            return False
        if error.code() == grpc.StatusCode.ABORTED and (error.details() or "").startswith("request_id:"):
            # Its request_id was recorded with other content (Meta reporting a second failure of one message with
            # another code): what was recorded first stands, and retrying would be refused for ever.
            log.warning("webhook_conflict", request_id=getattr(request, "request_id", ""))
            return False
        log.warning("webhook_not_recorded", code=error.code().name)
        raise Unrecorded(error.code().name) from error
    return True


def _unix_time(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _exotel_bounce(status: str, detailed: str) -> tuple[str, str] | None:
    """The bounce an Exotel failure also is (request_id suffix, detail), when it says something about the number:
    on the DND registry, a bounce segments suppresses SMS on for a while (bounces.DND); a number that does not exist,
    a bad address suppressed until the phone changes (bounces.INVALID_NUMBER)."""
    if status == EXOTEL_DND or detailed == "FAILED_DND":
        return "dnd", f"{DND} {status}"
    if status in EXOTEL_FAILED and detailed in EXOTEL_INVALID_NUMBER:
        return "invalid", f"{INVALID_NUMBER} exotel {detailed}"
    return None


def _exotel_time(value: str) -> float | None:
    """DateSent ("2026-11-28 09:15:02", India's time) in epoch seconds; None when absent, malformed, or Exotel's
    placeholder for a message it never sent ("1970-01-01 05:30:00", the epoch in India's time): a DND or invalid-number
    failure written so is judged by its signature, not dropped as 56 years stale."""
    try:
        at = datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=EXOTEL_ZONE).timestamp()
    except ValueError:
        return None
    return at if at > EXOTEL_NO_TIME else None


EXOTEL_NO_TIME = 86_400.0
"""A DateSent within a day of the epoch is no time at all (Exotel's placeholder), not a very old one."""
_EXOTEL_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}")


def _re_split(fields: list[tuple[str, str]], moment: str) -> bool:
    """Whether a callback without its own time shows it moved into other fields under the same signature: a field named
    as the start of `moment` ("D", "Da", ... "DateSen"), or a value ending with `moment` and a date. Twilio's scheme
    signs names and values joined without a separator, so either keeps a captured callback's signature."""
    return any(
        (name and moment.startswith(name) and name != moment)
        or (moment in value and _EXOTEL_STAMP.match(value.rpartition(moment)[2]) is not None)
        for name, value in fields
    )


# The webhook fields read: statuses and inbound messages, marketing preferences, and templates' status.
TEMPLATE_STATUS_FIELD = "message_template_status_update"
WHATSAPP_FIELDS = frozenset({"messages", "user_preferences", TEMPLATE_STATUS_FIELD})


def _objects(value: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The JSON objects of a list field of a webhook value; anything else in it is skipped."""
    items = value.get(key)
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _object(value: dict[str, Any], key: str) -> dict[str, Any]:
    """An object field of a webhook item; {} when it is absent or not an object (read as saying nothing)."""
    found = value.get(key)
    return found if isinstance(found, dict) else {}


def _whatsapp_values(document: Any) -> list[tuple[str, dict[str, Any]]]:
    """(field, value) of each change of the document in a field this gateway reads."""
    if not isinstance(document, dict) or document.get("object") != "whatsapp_business_account":
        return []
    values = []
    for entry in _objects(document, "entry"):
        for change in _objects(entry, "changes"):
            field, value = change.get("field"), change.get("value")
            if field in WHATSAPP_FIELDS and isinstance(value, dict):
                values.append((str(field), value))
    return values


def _opts_out(message: dict[str, Any]) -> bool:
    return opts_out(_reply_text(message))


def opts_out(text: str) -> bool:
    """Whether an inbound text is an opt-out: its first word, upper-cased and without punctuation, is an opt-out
    keyword ("Stop.", "STOP ALL", "stop 56161"), or it is "OPT OUT" / "OPT-OUT"."""
    words = _WORDS.findall(text.upper())
    if not words:
        return False
    return words[0] in OPT_OUT_FIRST_WORDS or words[:2] == ["OPT", "OUT"]


_WORDS = re.compile(r"[A-Z0-9]+")
_DEVANAGARI_WORDS = re.compile(r"[\u0900-\u0963\u0971-\u097f]+")


def declines(text: str) -> bool:
    """Whether an inbound text is only a refusal of the offer (DECLINES), in any case and with any punctuation."""
    upper = text.upper()
    words = _WORDS.findall(upper) or _DEVANAGARI_WORDS.findall(upper)
    return " ".join(words) in DECLINES


def _reply_kind(text: str) -> Any:
    if opts_out(text):
        return channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED
    if declines(text):
        return channels_resources.ENGAGEMENT_KIND_DECLINED
    return channels_resources.ENGAGEMENT_KIND_REPLIED


def _reply_text(message: dict[str, Any]) -> str:
    kind = message.get("type")
    if kind == "text":
        return str(_object(message, "text").get("body", ""))
    if kind == "button":
        return str(_object(message, "button").get("text", ""))
    if kind == "interactive":
        interactive = _object(message, "interactive")
        reply = _object(interactive, "button_reply") or _object(interactive, "list_reply")
        return str(reply.get("title", ""))
    return ""
