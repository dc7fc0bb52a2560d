"""Local HTTP servers that check requests in the providers' real formats and answer like them, errors included.

One aiohttp server per provider, on 127.0.0.1:

- `sms`: Exotel's Send SMS API (POST /v1/Accounts/<sid>/Sms/send.json, form fields, basic auth, DLT);
- `whatsapp`: the WhatsApp Business Cloud API (POST /<version>/<phone-number-id>/messages, template, bearer);
- `push`: FCM HTTP v1 (POST /v1/projects/<project>/messages:send, bearer);
- `webhook`: a receiver of xsell's signed webhooks (HMAC-SHA256 over "<timestamp>.<raw body>").

A request in the wrong shape gets the provider's own error answer, so a test that sends a wrong
request fails. Inputs the provider would refuse are refused the same way (an Indian mobile number
that cannot exist, a template that is not approved, an unregistered device token), and
`fail_next` scripts throttling (429 + Retry-After), outages (5xx) and dropped connections after
the provider took the message. Every accepted message is kept in `received` (the sink's log, to
compare with the ledger) and, when a log directory is given, appended to <dir>/<provider>.jsonl.
Like the providers, the SMS sink posts the final status to the request's `StatusCallback`, and the
WhatsApp sink posts `sent` and `delivered` statuses, signed with the app secret, to
`whatsapp_webhook_url`.

These servers deliberately share no code with the adapters in services/channels: they check the
format as the provider documents it, not as xsell happens to build it.
"""

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

Json = dict[str, Any]


class Fault(Enum):
    """What the next request to a sink meets instead of the normal answer."""

    THROTTLE = "throttle"
    """429 with Retry-After (WhatsApp: its throughput error 130429)."""
    UNAVAILABLE = "unavailable"
    """503, the provider's "try again later"."""
    ACCEPT_THEN_DROP = "accept_then_drop"
    """The provider takes the message, then the connection breaks before the answer: an ambiguous outcome."""
    DROP_UNTAKEN = "drop_untaken"
    """The connection breaks and the provider never takes the message: just as ambiguous to the caller."""
    ACCEPT_THEN_GATEWAY_TIMEOUT = "accept_then_gateway_timeout"
    """The provider takes the message, but its edge (a load balancer) gave up waiting and answers 504 in HTML."""


@dataclass(frozen=True)
class Received:
    """One message a sink accepted."""

    provider: str
    campaign_id: str
    path: str
    headers: Mapping[str, str]
    body: Json
    accepted_at: float = 0.0
    """time.perf_counter() when the sink took the message: the end of "dispatch requested → provider accepted"."""


class Refusal(Exception):
    """A request the provider refuses, with the provider's own status and error document."""

    def __init__(self, status: int, document: Json, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.document = document
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class SinkCredentials:
    """What the sinks accept; the defaults are the channels service's local settings."""

    sms_account_sid: str = "xsell-dev"
    sms_api_key: str = "dev-key"
    sms_api_token: str = "dev-token"
    whatsapp_api_version: str = "v21.0"
    whatsapp_phone_number_id: str = "100000000000001"
    whatsapp_access_token: str = "dev-whatsapp-token"
    fcm_project_id: str = "xsell-dev"
    fcm_access_token: str = "dev-fcm-token"
    webhook_secret: str = "dev-webhook-secret-change-me"
    whatsapp_app_secret: str = "dev-whatsapp-app-secret"


# Templates approved on DLT (SMS) and by Meta (WhatsApp, with their number of body parameters).
DEFAULT_SMS_TEMPLATES = frozenset({"1107161234567890123", "1107169876543210987", "1107165550001234567"})
# The WhatsApp ones include those of campaigns' registry (services/campaigns/catalogs/templates.yaml), so a campaign
# made with them on `make run` goes through.
DEFAULT_WHATSAPP_TEMPLATES: Mapping[str, int] = {
    "preapproved_loan_offer": 2,
    "sip_top_up_nudge": 1,
    "hello_world": 0,
    "lumpsum_offer_v2": 3,
    "fund_ideas_v1": 4,
}

NOT_ON_WHATSAPP = frozenset({"919800000000"})
"""The number `make run`'s WhatsApp sink treats as not on WhatsApp (+91 98000 00000): a message to it fails with
131026, which shows a campaign's fallback_on_failure reaching the person by SMS."""

# An Indian mobile number starts with 6, 7, 8 or 9 after the country code; others cannot exist.
_INDIAN_MOBILE = re.compile(r"\+?91[6-9]\d{9}")
INDIA = timezone(timedelta(hours=5, minutes=30))
_E164 = re.compile(r"\+[1-9]\d{6,14}")
WEBHOOK_TOLERANCE_SECONDS = 300


class GoogleTokenEndpoint:
    """Google's OAuth 2.0 token_uri for one service account: a JWT bearer grant signed RS256 -> an access token.

    Checks what Google checks (grant type, signature against the account's public key, iss, aud,
    scope, iat/exp within an hour and not stale) and answers with Google's documents, `invalid_grant`
    included. Tokens it issued are what the push sink accepts, until they expire or are revoked.
    """

    SCOPE = "https://www.googleapis.com/auth/firebase.messaging"

    def __init__(self, client_email: str, public_key_pem: bytes, token_uri: str, lifetime_seconds: int = 3599) -> None:
        self.client_email = client_email
        self.public_key = serialization.load_pem_public_key(public_key_pem)
        self.token_uri = token_uri
        self.lifetime_seconds = lifetime_seconds
        self.issued: dict[str, float] = {}
        self.requests = 0

    def valid(self, token: str) -> bool:
        return self.issued.get(token, 0.0) > time.time()

    def revoke_all(self) -> None:
        """Every token issued so far is refused from now on (as after a key rotation)."""
        self.issued.clear()

    def answer(self, raw: bytes) -> web.Response:
        self.requests += 1
        form = {k: v[-1] for k, v in parse_qs(raw.decode(errors="replace")).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _oauth_error("unsupported_grant_type", "Invalid grant_type")
        claims = self._verified_claims(form.get("assertion", ""))
        if isinstance(claims, str):
            return _oauth_error("invalid_grant", claims)
        if claims.get("scope") != self.SCOPE:
            return _oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = f"ya29.sink-{secrets.token_urlsafe(24)}"
        self.issued[token] = time.time() + self.lifetime_seconds
        return web.json_response({"access_token": token, "expires_in": self.lifetime_seconds, "token_type": "Bearer"})

    def _verified_claims(self, assertion: str) -> Json | str:
        parts = assertion.split(".")
        if len(parts) != 3:
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
        try:
            header, claims = (json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in parts[:2])
            signature = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        except ValueError:
            return "Invalid JWT: malformed."
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            return "Invalid JWT: alg must be RS256."
        assert isinstance(self.public_key, rsa.RSAPublicKey)
        try:
            signed = f"{parts[0]}.{parts[1]}".encode()
            self.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "Invalid JWT Signature."
        if claims.get("iss") != self.client_email:
            return "Invalid JWT: iss is not a known service account."
        if claims.get("aud") != self.token_uri:
            return "Invalid JWT: aud must be the token URI."
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int) or not (0 < exp - iat <= 3600):
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
        if exp <= now or iat > now + 60:
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
        return claims


def _oauth_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)


class ProviderSink:
    """One provider's local server: shape checks, scripted faults, and the log of what it accepted."""

    def __init__(
        self,
        provider: str,
        handle: Callable[["ProviderSink", web.Request, bytes], Awaitable[tuple[str | None, Json, Json]]],
        *,
        sms_templates: set[str] | None = None,
        whatsapp_templates: dict[str, int] | None = None,
    ) -> None:
        self.provider = provider
        self._handle = handle
        # Approved templates: DLT template ids (SMS); Meta template names with their body parameter count (WhatsApp).
        self.sms_templates = sms_templates if sms_templates is not None else set(DEFAULT_SMS_TEMPLATES)
        self.whatsapp_templates = (
            whatsapp_templates if whatsapp_templates is not None else dict(DEFAULT_WHATSAPP_TEMPLATES)
        )
        self.received: list[Received] = []
        self.refused: list[tuple[int, Json]] = []
        self.duplicates = 0
        # Receivers of xsell's webhooks drop a second call with the same Idempotency-Key.
        self.deduplicates = provider == "webhook"
        self._answered: dict[str, Json] = {}
        self.faults: deque[Fault] = deque()
        self.retry_after_seconds = 1
        self.port = 0
        self.log_path: Path | None = None
        self._runner: web.AppRunner | None = None
        # Called after a message is accepted, like a provider's delivery report; failures are kept, not raised.
        self.on_accept: Callable[[Received, Json], Awaitable[None]] | None = None
        # While `held` is set, requests wait before they are answered: tests watch how many a client has in flight.
        self.held: asyncio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self.dropped = 0
        self.callback_errors: list[str] = []
        # Pauses before each try again of a report the receiver did not take (an error status or no connection), as
        # providers retry their callbacks (Meta for days); after the last, the error is kept in callback_errors.
        self.callback_retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
        self._callbacks: set[asyncio.Task[None]] = set()
        # The provider's message ids (SmsSid, wamid, FCM names): from a random start, as a provider's never repeat.
        # Numbered from 1, every `make run` gave its messages the last run's ids, the gateway's webhooks record a
        # callback once per (id, status), and channels refused the second run's receipts as request_ids already used:
        # its SMS stayed SENT.
        self._ids = itertools.count(secrets.randbits(48))
        # Push only: Google's token endpoint for a service account, served at /token; None accepts the fixed token.
        self.oauth: GoogleTokenEndpoint | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, *faults: Fault) -> None:
        """The next requests meet these faults, in order, after their shape has been checked."""
        self.faults.extend(faults)

    def for_campaign(self, campaign_id: str) -> list[Received]:
        return [r for r in self.received if r.campaign_id == campaign_id]

    def next_id(self) -> int:
        return next(self._ids)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        # Reports still being tried again are abandoned: their receiver may be gone already.
        for task in self._callbacks:
            task.cancel()
        if self._callbacks:
            await asyncio.gather(*self._callbacks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _report(self, received: Received, answer: Json) -> None:
        if self.on_accept is None:
            return

        async def report(callback: Callable[[Received, Json], Awaitable[None]]) -> None:
            for delay in (*self.callback_retry_delays, None):
                try:
                    await callback(received, answer)
                    return
                except Exception as error:  # noqa: BLE001 - a report that cannot be delivered is kept for the test
                    if delay is None:
                        self.callback_errors.append(f"{type(error).__name__}: {error}")
                        return
                await asyncio.sleep(delay)

        task = asyncio.get_running_loop().create_task(report(self.on_accept))
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    def hold(self) -> None:
        """Requests wait unanswered until `release`."""
        self.held = asyncio.Event()

    def release(self) -> None:
        if self.held is not None:
            self.held.set()
            self.held = None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.held is not None:
                try:
                    await self.held.wait()
                except asyncio.CancelledError:
                    self.dropped += 1  # the server cancelled the handler when the caller went away
                    raise
                if request.transport is None or request.transport.is_closing():
                    # The caller went away while the request waited: like a provider behind a load balancer that
                    # dropped it, this one never takes the message.
                    self.dropped += 1
                    return web.Response(status=499)
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if self.oauth is not None and request.path == "/token" and request.method == "POST":
            return self.oauth.answer(raw)
        fault: Fault | None = None
        if self.faults and self.faults[0] is Fault.DROP_UNTAKEN:
            self.faults.popleft()
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=200)
        try:
            campaign_id, body, answer = await self._handle(self, request, raw)
            fault = self.faults.popleft() if self.faults else None
            if fault is not None and fault not in _FAULTS_AFTER_TAKING:
                raise _fault_refusal(self.provider, fault, self.retry_after_seconds)
        except Refusal as refusal:
            self.refused.append((refusal.status, refusal.document))
            return web.json_response(refusal.document, status=refusal.status, headers=refusal.headers)
        if self.deduplicates and campaign_id in self._answered:
            # A repeated key is acknowledged with the first answer and not acted on again.
            self.duplicates += 1
            return web.json_response({**self._answered[campaign_id], "duplicate": True}, status=200)
        if campaign_id is not None:
            self._answered[campaign_id] = answer
            received = Received(
                self.provider, campaign_id, request.path, dict(request.headers), body, time.perf_counter()
            )
            self._keep(received)
            self._report(received, answer)
        if fault is Fault.ACCEPT_THEN_DROP:
            # The provider has the message; the caller never hears so.
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=200)
        if fault is Fault.ACCEPT_THEN_GATEWAY_TIMEOUT:
            # The provider has the message; its edge answers for it, as a load balancer does.
            return web.Response(status=504, text=GATEWAY_TIMEOUT_PAGE, content_type="text/html")
        return web.json_response(answer, status=200)

    def _keep(self, received: Received) -> None:
        self.received.append(received)
        if self.log_path is not None:
            line = {"provider": received.provider, "campaign_id": received.campaign_id, "body": received.body}
            with self.log_path.open("a") as log:
                log.write(json.dumps(line, ensure_ascii=False) + "\n")


# The faults that strike after the provider took the message.
_FAULTS_AFTER_TAKING = frozenset({Fault.ACCEPT_THEN_DROP, Fault.ACCEPT_THEN_GATEWAY_TIMEOUT})
GATEWAY_TIMEOUT_PAGE = (
    "<html><head><title>504 Gateway Time-out</title></head><body><h1>504 Gateway Time-out</h1></body></html>"
)


def _fault_refusal(provider: str, fault: Fault, retry_after: int) -> Refusal:
    throttle = fault is Fault.THROTTLE
    if provider == "sms":
        status, text = (429, "Too many requests") if throttle else (503, "Service temporarily unavailable")
        document: Json = {"RestException": {"Status": status, "Message": text, "Code": status}}
    elif provider == "whatsapp":
        # The Graph API reports throughput limits as error 130429 on HTTP 400, with no Retry-After.
        if throttle:
            return Refusal(400, _graph_error(130429, "Rate limit hit", "Cloud API message throughput has been reached"))
        return Refusal(503, _graph_error(131016, "Service unavailable", "A service is temporarily unavailable."))
    elif provider == "push":
        if throttle:
            document = _google_error(
                429, "RESOURCE_EXHAUSTED", "Quota exceeded for sending messages.", "QUOTA_EXCEEDED"
            )
            status = 429
        else:
            document = _google_error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE")
            status = 503
    else:
        status = 429 if throttle else 503
        document = {"error": "slow down" if throttle else "temporarily unavailable"}
    headers = {"Retry-After": str(retry_after)} if throttle else {}
    return Refusal(status, document, headers)


def _exotel_error(status: int, message: str, code: int | str) -> Refusal:
    return Refusal(status, {"RestException": {"Status": status, "Message": message, "Code": code}})


async def _sms(
    sink: ProviderSink, request: web.Request, raw: bytes, credentials: SinkCredentials
) -> tuple[str, Json, Json]:
    sid = credentials.sms_account_sid
    if request.method != "POST" or request.path not in {
        f"/v1/Accounts/{sid}/Sms/send",
        f"/v1/Accounts/{sid}/Sms/send.json",
    }:
        raise _exotel_error(404, f"No resource at {request.method} {request.path}", 404)
    expected = base64.b64encode(f"{credentials.sms_api_key}:{credentials.sms_api_token}".encode()).decode()
    if request.headers.get("Authorization") != f"Basic {expected}":
        raise _exotel_error(401, "Authentication failed. Invalid API Key or Token.", "UNAUTHORIZED")
    if not request.content_type == "application/x-www-form-urlencoded":
        raise _exotel_error(400, "Parameters must be form-encoded", 400)
    form = {key: values[-1] for key, values in parse_qs(raw.decode(), keep_blank_values=True).items()}
    for required in ("From", "To", "Body", "DltEntityId", "DltTemplateId"):
        if not form.get(required, "").strip():
            raise _exotel_error(400, f"Missing parameter {required}", 400)
    if not re.fullmatch(r"\d{19}", form["DltEntityId"]):
        raise _exotel_error(400, "DltEntityId is not a DLT entity id", 400)
    if not _E164.fullmatch(form["To"]) or (form["To"].startswith("+91") and not _INDIAN_MOBILE.fullmatch(form["To"])):
        raise _exotel_error(400, f"Invalid Recipient [{form['To']}]", 400)
    if len(form["Body"]) > 2000:
        raise _exotel_error(400, "Body is longer than 2000 characters", 400)
    if form["DltTemplateId"] not in sink.sms_templates:
        raise _exotel_error(
            400, f"DltTemplateId {form['DltTemplateId']} is not an approved template for this sender", 400
        )
    if form.get("SmsType", "transactional") not in {"transactional", "transactional_opt_in", "promotional"}:
        raise _exotel_error(400, "SmsType must be transactional, transactional_opt_in or promotional", 400)
    sms_sid = f"{hashlib.sha1(f'{sink.next_id()}'.encode()).hexdigest()[:24]}sms"
    answer = {
        "SMSMessage": {
            "Sid": sms_sid,
            "AccountSid": sid,
            "From": form["From"],
            "To": form["To"],
            "Body": form["Body"],
            "Status": "queued",
            "DetailedStatus": "PENDING_TO_OPERATOR",
            "SmsUnits": 1 + len(form["Body"]) // 153,
            "Priority": form.get("Priority", "normal"),
            "Uri": f"/v1/Accounts/{sid}/SMS/Messages/{sms_sid}.json",
        }
    }
    return form.get("CustomField", ""), dict(form), answer


def _graph_error(code: int, title: str, details: str, status: int = 400) -> Json:
    return {
        "error": {
            "message": f"({code}) {title}",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": "AbCdEfGhIjKl",
        }
    }


async def _whatsapp(
    sink: ProviderSink, request: web.Request, raw: bytes, credentials: SinkCredentials
) -> tuple[str, Json, Json]:
    path = f"/{credentials.whatsapp_api_version}/{credentials.whatsapp_phone_number_id}/messages"
    if request.method != "POST" or request.path != path:
        raise Refusal(400, _graph_error(100, "Unsupported post request", f"no endpoint {request.path}"))
    if request.headers.get("Authorization") != f"Bearer {credentials.whatsapp_access_token}":
        raise Refusal(401, _graph_error(190, "Invalid OAuth access token", "The access token could not be decrypted"))
    document = _json_object(raw, lambda: Refusal(400, _graph_error(100, "Invalid parameter", "body is not JSON")))

    def invalid(details: str) -> Refusal:
        return Refusal(400, _graph_error(100, "Invalid parameter", details))

    if document.get("messaging_product") != "whatsapp":
        raise invalid("messaging_product must be whatsapp")
    if document.get("recipient_type", "individual") != "individual":
        raise invalid("recipient_type must be individual")
    to = document.get("to")
    if not isinstance(to, str) or not re.fullmatch(r"\d{8,15}", to):
        raise invalid("to must be the recipient's number with country code, digits only")
    if document.get("type") != "template":
        raise Refusal(
            400,
            _graph_error(
                131047, "Re-engagement message", "More than 24 hours have passed; only template messages may be sent"
            ),
        )
    template = document.get("template")
    if not isinstance(template, dict) or not isinstance(template.get("name"), str):
        raise invalid("template.name is required")
    language = template.get("language")
    if not isinstance(language, dict) or not isinstance(language.get("code"), str) or not language["code"]:
        raise invalid("template.language.code is required")
    approved = sink.whatsapp_templates
    if template["name"] not in approved:
        raise Refusal(
            400,
            _graph_error(
                132001,
                "Template name does not exist in the translation",
                f"template name ({template['name']}) does not exist in {language['code']}",
            ),
        )
    texts: list[str] = []
    for component in template.get("components", []):
        if not isinstance(component, dict) or component.get("type") not in {"header", "body", "button"}:
            raise invalid("components[].type must be header, body or button")
        for parameter in component.get("parameters", []):
            if (
                not isinstance(parameter, dict)
                or parameter.get("type") != "text"
                or not isinstance(parameter.get("text"), str)
            ):
                raise invalid("parameters[] must be {type: text, text: string}")
            if component["type"] == "body":
                texts.append(parameter["text"])
    if len(texts) != approved[template["name"]]:
        raise Refusal(
            400,
            _graph_error(
                132000,
                "Number of parameters does not match the expected number of params",
                f"body: number of localizable_params ({len(texts)}) does not match the expected number of params "
                f"({approved[template['name']]})",
            ),
        )
    if to.startswith("91") and not _INDIAN_MOBILE.fullmatch(to):
        raise Refusal(400, _graph_error(131026, "Message undeliverable", "The recipient is not a WhatsApp user"))
    wamid = f"wamid.{base64.b64encode(f'{to}:{sink.next_id()}'.encode()).decode().rstrip('=')}"
    answer = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to}],
        "messages": [{"id": wamid, "message_status": "accepted"}],
    }
    campaign_id = document.get("biz_opaque_callback_data", "")
    return campaign_id if isinstance(campaign_id, str) else "", document, answer


def _google_error(code: int, status: str, message: str, fcm_error: str | None = None) -> Json:
    error: Json = {"code": code, "message": message, "status": status}
    if fcm_error:
        error["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_error}]
    return {"error": error}


async def _push(
    sink: ProviderSink, request: web.Request, raw: bytes, credentials: SinkCredentials
) -> tuple[str, Json, Json]:
    if request.method != "POST" or request.path != f"/v1/projects/{credentials.fcm_project_id}/messages:send":
        raise Refusal(404, _google_error(404, "NOT_FOUND", f"Requested entity was not found: {request.path}"))
    authorization = request.headers.get("Authorization", "")
    bearer = authorization.removeprefix("Bearer ")
    # With a service account configured only the tokens it minted are good, as at FCM; otherwise the fixed one.
    valid = sink.oauth.valid(bearer) if sink.oauth is not None else bearer == credentials.fcm_access_token
    if not authorization.startswith("Bearer ") or not valid:
        raise Refusal(
            401,
            _google_error(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", "THIRD_PARTY_AUTH_ERROR"
            ),
        )

    def invalid(message: str) -> Refusal:
        return Refusal(400, _google_error(400, "INVALID_ARGUMENT", message, "INVALID_ARGUMENT"))

    document = _json_object(raw, lambda: invalid("Invalid JSON payload received."))
    unknown = set(document) - {"message", "validate_only"}
    if unknown:
        raise invalid(f"Invalid JSON payload received. Unknown name {sorted(unknown)[0]!r}: Cannot find field.")
    message = document.get("message")
    if not isinstance(message, dict):
        raise invalid("Request contains an invalid argument: message is required.")
    targets = [key for key in ("token", "topic", "condition") if key in message]
    if len(targets) != 1:
        raise invalid("Exactly one of message.token, message.topic or message.condition must be set.")
    notification = message.get("notification", {})
    if not isinstance(notification, dict) or set(notification) - {"title", "body", "image"}:
        raise invalid("Invalid value at 'message.notification'.")
    if any(not isinstance(value, str) for value in notification.values()):
        raise invalid("Invalid value at 'message.notification': values must be strings.")
    data = message.get("data", {})
    if not isinstance(data, dict):
        raise invalid("Invalid value at 'message.data'.")
    for index, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            raise invalid(f"Invalid value at 'message.data[{index}].value' ({key}): TYPE_STRING expected.")
    android = message.get("android", {})
    if not isinstance(android, dict) or set(android) - {"collapse_key", "priority", "ttl", "notification", "data"}:
        raise invalid("Invalid value at 'message.android'.")
    token = message.get("token", "")
    if not isinstance(token, str) or not token:
        raise invalid("The registration token is not a valid FCM registration token")
    if token.startswith("unregistered"):
        raise Refusal(404, _google_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"))
    answer = {"name": f"projects/{credentials.fcm_project_id}/messages/0:{sink.next_id()}%31bd1c9631bd1c96"}
    campaign_id = data.get("campaign_id", "")
    return campaign_id, document, answer


async def _webhook(
    sink: ProviderSink, request: web.Request, raw: bytes, credentials: SinkCredentials
) -> tuple[str | None, Json, Json]:
    if request.method != "POST":
        raise Refusal(405, {"error": "POST only"})
    if request.content_type != "application/json":
        raise Refusal(415, {"error": "Content-Type must be application/json"})
    timestamp = request.headers.get("X-Xsell-Timestamp", "")
    presented = request.headers.get("X-Xsell-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > WEBHOOK_TOLERANCE_SECONDS:
        raise Refusal(401, {"error": "X-Xsell-Timestamp missing or more than 5 minutes away"})
    expected = (
        "v1="
        + hmac.new(credentials.webhook_secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    )
    if not hmac.compare_digest(expected, presented):
        raise Refusal(401, {"error": "X-Xsell-Signature does not match the body"})
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        raise Refusal(400, {"error": "Idempotency-Key is required"})
    document = _json_object(raw, lambda: Refusal(400, {"error": "body is not a JSON object"}))
    if document.get("campaign_id") != key or not isinstance(document.get("payload"), dict):
        raise Refusal(400, {"error": "body must be {campaign_id: <Idempotency-Key>, profile_id, payload: {...}}"})
    receipt = f"task-{sink.next_id()}"
    return key, document, {"id": receipt}


def _json_object(raw: bytes, refusal: Callable[[], Refusal]) -> Json:
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise refusal() from None
    if not isinstance(document, dict):
        raise refusal()
    return document


@dataclass
class ProviderSinks:
    """The four provider servers, started and stopped together."""

    credentials: SinkCredentials = field(default_factory=SinkCredentials)
    log_dir: Path | None = None
    whatsapp_webhook_url: str = ""
    """Where the WhatsApp sink posts signed status webhooks (sent, delivered), as Meta does; empty posts none."""
    not_on_whatsapp: frozenset[str] = frozenset()
    """Numbers (digits, as the Cloud API takes them) that are not on WhatsApp: Meta takes a message to one, then posts
    its `failed` status with error 131026 instead of `sent` and `delivered`."""

    def __post_init__(self) -> None:
        c = self.credentials
        self.sms = ProviderSink("sms", lambda s, r, b: _sms(s, r, b, c))
        self.whatsapp = ProviderSink("whatsapp", lambda s, r, b: _whatsapp(s, r, b, c))
        self.push = ProviderSink("push", lambda s, r, b: _push(s, r, b, c))
        self.webhook = ProviderSink("webhook", lambda s, r, b: _webhook(s, r, b, c))
        self._session: aiohttp.ClientSession | None = None
        self.sms.on_accept = self._exotel_status_callback
        self.whatsapp.on_accept = self._whatsapp_status_webhooks

    async def _exotel_status_callback(self, received: Received, answer: Json) -> None:
        """Exotel posts the final status to the request's StatusCallback (unsigned, form-encoded)."""
        url = received.body.get("StatusCallback")
        if not url or self._session is None:
            return
        sms = answer["SMSMessage"]
        form = {
            "SmsSid": sms["Sid"],
            "To": sms["To"],
            "Status": "sent",
            "DetailedStatus": "DELIVERED_TO_HANDSET",
            "DetailedStatusCode": "20005",
            "CustomField": received.body.get("CustomField", ""),
            "SmsUnits": str(sms["SmsUnits"]),
            # India's wall-clock time, without a zone, as Exotel writes it.
            "DateSent": f"{datetime.now(INDIA):%Y-%m-%d %H:%M:%S}",
        }
        async with self._session.post(str(url), data=form) as response:
            if response.status >= 300:
                raise RuntimeError(f"StatusCallback answered {response.status}")

    async def _whatsapp_status_webhooks(self, received: Received, answer: Json) -> None:
        """Meta posts `sent` then `delivered` statuses, signed with the app secret, to the app's webhook; for a number
        not on WhatsApp, `failed` with error 131026."""
        if not self.whatsapp_webhook_url or self._session is None:
            return
        wamid = answer["messages"][0]["id"]
        undeliverable = received.body["to"] in self.not_on_whatsapp
        for status in ("failed",) if undeliverable else ("sent", "delivered"):
            entry: Json = {
                "id": wamid,
                "status": status,
                "timestamp": str(int(time.time())),
                "recipient_id": received.body["to"],
                "biz_opaque_callback_data": received.body.get("biz_opaque_callback_data", ""),
            }
            if undeliverable:
                entry["errors"] = [
                    {
                        "code": 131026,
                        "title": "Message undeliverable",
                        "error_data": {"details": "Message Undeliverable."},
                    }
                ]
            value = {
                "messaging_product": "whatsapp",
                "metadata": {"phone_number_id": self.credentials.whatsapp_phone_number_id},
                "statuses": [entry],
            }
            document = {
                "object": "whatsapp_business_account",
                "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
            }
            body = json.dumps(document).encode()
            digest = hmac.new(self.credentials.whatsapp_app_secret.encode(), body, hashlib.sha256).hexdigest()
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}
            async with self._session.post(self.whatsapp_webhook_url, data=body, headers=headers) as response:
                if response.status >= 300:
                    raise RuntimeError(f"WhatsApp webhook answered {response.status}")

    @property
    def all(self) -> tuple[ProviderSink, ...]:
        return (self.sms, self.whatsapp, self.push, self.webhook)

    async def start(self, ports: Mapping[str, int] | None = None, host: str = "127.0.0.1") -> "ProviderSinks":
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession()
        try:
            for sink in self.all:
                if self.log_dir is not None:
                    sink.log_path = self.log_dir / f"{sink.provider}.jsonl"
                await sink.start(host, (ports or {}).get(sink.provider, 0))
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        for sink in self.all:
            await sink.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def channels_settings(self) -> dict[str, Any]:
        """ChannelsSettings fields that point the channels service at these sinks with matching credentials."""
        c = self.credentials
        return {
            "sms_base_url": self.sms.base_url,
            "sms_account_sid": c.sms_account_sid,
            "sms_api_key": c.sms_api_key,
            "sms_api_token": c.sms_api_token,
            "whatsapp_base_url": self.whatsapp.base_url,
            "whatsapp_api_version": c.whatsapp_api_version,
            "whatsapp_phone_number_id": c.whatsapp_phone_number_id,
            "whatsapp_access_token": c.whatsapp_access_token,
            "push_base_url": self.push.base_url,
            "fcm_project_id": c.fcm_project_id,
            "fcm_access_token": c.fcm_access_token,
            "webhook_secret": c.webhook_secret,
        }

    def webhook_url(self, path: str = "/crm/tasks") -> str:
        return f"{self.webhook.base_url}{path}"


class SinksThread:
    """The sinks on their own event loop in a daemon thread, for `make run` (whose main thread is synchronous)."""

    def __init__(self, sinks: ProviderSinks, ports: Mapping[str, int]) -> None:
        self.sinks = sinks
        self.ports = dict(ports)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="provider-sinks", daemon=True)

    def start(self) -> "SinksThread":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sinks.start(self.ports), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sinks.stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
