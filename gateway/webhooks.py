"""Provider webhooks on the HTTP edge: WhatsApp Cloud API (signed by Meta) and Exotel SMS status callbacks.

- `GET /webhooks/whatsapp`: Meta's subscription check (hub.mode, hub.verify_token, hub.challenge).
- `POST /webhooks/whatsapp`: statuses and inbound messages. `X-Hub-Signature-256` is
  `sha256=<hex HMAC-SHA256(app secret, raw body)>`; a body that does not match is refused with 401
  and nothing is recorded. `delivered` and `failed` statuses become delivery receipts, `read`
  becomes an open, an inbound message quoting one of ours becomes a reply (STOP / UNSUBSCRIBE an
  unsubscribe). The campaign ID comes from `biz_opaque_callback_data`, or from the quoted wamid.
- `POST /webhooks/sms/exotel/{token}`: Exotel's StatusCallback (form fields SmsSid, Status,
  DetailedStatus, CustomField = the campaign ID). Exotel does not sign callbacks, so the URL carries
  a secret token compared in constant time.

Replays are harmless rather than refused: every record call carries a request_id derived from
the provider's own ids (the wamid and status, the SmsSid and status), and channels records a
request_id once. Meta signs no timestamp and retries for days, so "stale" cannot be told apart
from "late"; nothing is refused for age.
"""

import hashlib
import hmac
import json
from typing import Any

import grpc
import structlog
from aiohttp import web

from xsell.channels.v1 import resources_pb2 as channels_resources
from xsell.channels.v1 import service_pb2 as channels_pb2
from xsell.channels.v1 import service_pb2_grpc as channels_grpc

log = structlog.get_logger(__name__)

UNSUBSCRIBE_WORDS = frozenset({"STOP", "UNSUBSCRIBE", "STOP ALL", "OPT OUT"})
# Exotel's Status values that settle a message (sent = delivered to the handset).
EXOTEL_DELIVERED = frozenset({"sent", "delivered"})
EXOTEL_FAILED = frozenset({"failed", "failed-dnd"})


def meta_signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


class Unrecorded(Exception):
    """Channels could not record a callback now; the provider is asked to send it again."""


class ProviderWebhooks:
    """The webhook routes; each callback becomes RecordDeliveryReceipt or RecordEngagement on channels."""

    def __init__(
        self,
        channels: channels_grpc.ChannelsServiceStub,
        *,
        whatsapp_app_secret: str,
        whatsapp_verify_token: str,
        sms_callback_token: str,
        timeout_seconds: float,
    ) -> None:
        self._channels = channels
        self._app_secret = whatsapp_app_secret
        self._verify_token = whatsapp_verify_token
        self._sms_token = sms_callback_token
        self._timeout = timeout_seconds

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/webhooks/whatsapp", self._whatsapp_subscribe)
        app.router.add_post("/webhooks/whatsapp", self._whatsapp)
        app.router.add_post("/webhooks/sms/exotel/{token}", self._exotel)

    async def _whatsapp_subscribe(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        token = query.get("hub.verify_token", "")
        verified = bool(self._verify_token) and hmac.compare_digest(token, self._verify_token)
        if query.get("hub.mode") == "subscribe" and verified:
            return web.Response(text=query.get("hub.challenge", ""))
        return web.Response(status=403, text="verify token does not match\n")

    async def _whatsapp(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        presented = request.headers.get("X-Hub-Signature-256", "")
        if not self._app_secret or not hmac.compare_digest(meta_signature(self._app_secret, body), presented):
            log.warning("webhook_rejected", provider="whatsapp", reason="signature")
            return web.Response(status=401, text="X-Hub-Signature-256 does not match the body\n")
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.Response(status=400, text="body is not JSON\n")
        try:
            for value in _whatsapp_values(document):
                for status in value.get("statuses") or []:
                    await self._whatsapp_status(status)
                for message in value.get("messages") or []:
                    await self._whatsapp_message(message)
        except Unrecorded:
            return web.Response(status=503, text="try again later\n")
        return web.Response(text="ok\n")

    async def _whatsapp_status(self, status: dict[str, Any]) -> None:
        campaign_id = status.get("biz_opaque_callback_data") or ""
        wamid, state = str(status.get("id", "")), status.get("status")
        if not campaign_id:
            log.info("webhook_ignored", provider="whatsapp", reason="no_campaign_id", status=state)
            return
        request_id = f"wa:{wamid}:{state}"
        if state == "delivered":
            await self._receipt(request_id, campaign_id, channels_resources.DELIVERY_STATE_DELIVERED, wamid, "")
        elif state == "failed":
            errors = status.get("errors") or [{}]
            reason = f"whatsapp {errors[0].get('code', '')} {errors[0].get('title', '')}".strip()
            await self._receipt(request_id, campaign_id, channels_resources.DELIVERY_STATE_FAILED, wamid, reason)
        elif state == "read":
            await self._engagement(
                channels_pb2.RecordEngagementRequest(
                    request_id=request_id, campaign_id=campaign_id, kind=channels_resources.ENGAGEMENT_KIND_OPENED
                )
            )

    async def _whatsapp_message(self, message: dict[str, Any]) -> None:
        quoted = (message.get("context") or {}).get("id", "")
        if not quoted:
            # A message that does not answer one of ours belongs to no outreach.
            log.info("webhook_ignored", provider="whatsapp", reason="not_a_reply")
            return
        text = _reply_text(message)
        kind = (
            channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED
            if text.strip().upper() in UNSUBSCRIBE_WORDS
            else channels_resources.ENGAGEMENT_KIND_REPLIED
        )
        await self._engagement(
            channels_pb2.RecordEngagementRequest(
                request_id=f"wa:{message.get('id', '')}", provider_message_id=quoted, kind=kind, reply_text=text[:1000]
            )
        )

    async def _exotel(self, request: web.Request) -> web.StreamResponse:
        if not self._sms_token or not hmac.compare_digest(request.match_info["token"], self._sms_token):
            log.warning("webhook_rejected", provider="sms", reason="token")
            return web.Response(status=401, text="unknown callback token\n")
        form = await request.post()
        campaign_id, sid = str(form.get("CustomField", "")), str(form.get("SmsSid", ""))
        status = str(form.get("Status", "")).lower()
        if not campaign_id or status not in EXOTEL_DELIVERED | EXOTEL_FAILED:
            return web.Response(text="ok\n")
        state = (
            channels_resources.DELIVERY_STATE_DELIVERED
            if status in EXOTEL_DELIVERED
            else channels_resources.DELIVERY_STATE_FAILED
        )
        reason = "" if status in EXOTEL_DELIVERED else f"exotel {status} {form.get('DetailedStatus', '')}".strip()
        try:
            await self._receipt(f"exotel:{sid}:{status}", campaign_id, state, sid, reason)
        except Unrecorded:
            return web.Response(status=503, text="try again later\n")
        return web.Response(text="ok\n")

    async def _receipt(self, request_id: str, campaign_id: str, state: Any, provider_id: str, reason: str) -> None:
        await self._call(
            self._channels.RecordDeliveryReceipt,
            channels_pb2.RecordDeliveryReceiptRequest(
                request_id=request_id,
                campaign_id=campaign_id,
                state=state,
                provider_message_id=provider_id,
                reason=reason,
            ),
        )

    async def _engagement(self, request: channels_pb2.RecordEngagementRequest) -> None:
        await self._call(self._channels.RecordEngagement, request)

    async def _call(self, method: Any, request: Any) -> None:
        try:
            await method(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}:
                # About a message channels does not know (another system on the account): retrying cannot help.
                log.info("webhook_ignored", reason=error.code().name, detail=error.details())
                return
            log.warning("webhook_not_recorded", code=error.code().name)
            raise Unrecorded(error.code().name) from error


def _whatsapp_values(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or document.get("object") != "whatsapp_business_account":
        return []
    values = []
    for entry in document.get("entry") or []:
        for change in (entry or {}).get("changes") or []:
            value = (change or {}).get("value")
            if (change or {}).get("field") == "messages" and isinstance(value, dict):
                values.append(value)
    return values


def _reply_text(message: dict[str, Any]) -> str:
    kind = message.get("type")
    if kind == "text":
        return str((message.get("text") or {}).get("body", ""))
    if kind == "button":
        return str((message.get("button") or {}).get("text", ""))
    if kind == "interactive":
        interactive = message.get("interactive") or {}
        reply = interactive.get("button_reply") or interactive.get("list_reply") or {}
        return str(reply.get("title", ""))
    return ""
