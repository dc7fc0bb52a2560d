"""Amazon SES's event publishing through SNS: an HTTPS subscription's signed posts become receipts and engagement.

SES publishes a configuration set's events (or an identity's notifications) to an SNS topic; SNS posts each to
`POST /webhooks/email/ses` as JSON whose `Type` is SubscriptionConfirmation, Notification or UnsubscribeConfirmation.
Each is signed (RSA PKCS#1 v1.5 over a string of some of its fields, SHA1 for SignatureVersion 1, SHA256 for 2) with
the key of the certificate at `SigningCertURL`, which must be one of SNS's own (XSELL_GATEWAY_SNS_CERT_URL_PATTERN); its
`TopicArn` must be one of XSELL_GATEWAY_SES_TOPIC_ARNS. A subscription confirmation is confirmed by getting its
`SubscribeURL`. Where the gateway may not reach SNS (the deployment's network policies let only channels leave the
cluster), the certificates are pinned instead (XSELL_GATEWAY_SNS_SIGNING_CERTIFICATES: nothing is fetched) and the
subscription confirmed by hand, from the SubscribeURL the gateway logs. A notification's `Message` is SES's event,
naming its outreach by the message tag channels sets (`xsell_campaign_id`, XSELL_CHANNELS_SMTP_ESP_EVENTS=ses) or by
the Message-ID channels wrote.

| SES event | becomes |
|---|---|
| Send | the receipt SENT: SES has the message (settles a hand-over whose answer was lost) |
| Delivery | the receipt DELIVERED |
| Bounce, Permanent | the receipt SENT, then BOUNCED with its status: "5.1.1 permanent" |
| Bounce, Transient or Undetermined | nothing (as a DSN's "delayed": SES gave up on a passing failure) |
| Reject, Rendering Failure | the receipt FAILED: SES did not send it ("ses reject: Bad content") |
| Complaint | COMPLAINED (its feedback type, "abuse", when the report gives one) |
| Open, Click | OPENED, CLICKED (when the configuration set tracks them) |
| DeliveryDelay, Subscription, anything else | nothing |
"""

import base64
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeGuard

import aiohttp
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from opentelemetry import trace

from gateway.esp_events import (
    campaign_id_in_message_id,
    is_campaign_id,
    is_stale,
    status_detail,
)
from gateway.webhooks import ChannelsRecorder, ReplayGuard, Unrecorded, record_item, untrusted_json
from xsell.channels.v1 import resources_pb2 as channels_resources
from xsell.channels.v1 import service_pb2_grpc as channels_grpc

log = structlog.get_logger(__name__)

SNS_CERT_URL_PATTERN = r"^https://sns\.[a-z]{2}(?:-[a-z]+)+-\d+\.amazonaws\.com(?:\.cn)?/"
"""Where SNS's signing certificates (and its SubscribeURLs) are: AWS's own SNS hosts, one a region (sns.ap-south-1,
sns.us-gov-west-1, sns.cn-north-1...amazonaws.com.cn), over HTTPS. The region's shape is spelled out: a looser
`sns.<anything>.amazonaws.com` also matches S3's virtual-hosted bucket "sns" (sns.s3.amazonaws.com), whose objects
anyone holding that bucket could write."""
CAMPAIGN_ID_TAG = "xsell_campaign_id"
"""The message tag (X-SES-MESSAGE-TAGS) channels gives every e-mail through SES; each event of it carries the tag."""
MAX_BODY = 1024 * 1024
"""An SNS message is at most 256 KiB; a post over this is refused (413) rather than read."""
CACHED_CERTIFICATES = 32
"""SNS signs with one certificate a region at a time; more URLs than this are another's, and the oldest is forgotten."""

NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"
# The fields signed, in byte order, by message type (AWS's "Verifying the signatures of Amazon SNS messages").
_SIGNED_FIELDS = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    UNSUBSCRIBE_CONFIRMATION: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
_OPTIONAL_FIELDS = frozenset({"Subject"})
_SIGNATURE_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# Honoured however late it comes, as a STOP is: dropping one would keep writing to someone who complained.
_OPT_OUTS = frozenset({"Complaint"})
_REJECTED = {"Reject": "reject", "Rendering Failure": "rendering failure"}


class CertificateUnavailable(Exception):
    """SNS's signing certificate could not be fetched now; SNS is asked to post again."""


class UntrustedCertificate(Exception):
    """What `SigningCertURL` points at is not a certificate to verify SNS's signature with."""


def string_to_sign(message: dict[str, Any]) -> bytes | None:
    """The string SNS signs: "<name>\\n<value>\\n" for each signed field of the message's Type, in order (Subject only
    when the notification has one); None for a message without them."""
    fields = _SIGNED_FIELDS.get(str(message.get("Type", "")))
    if fields is None:
        return None
    signed = []
    for name in fields:
        value = message.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            return None
        signed.append(f"{name}\n{value}\n")
    return "".join(signed).encode()


def signature_holds(key: rsa.RSAPublicKey, message: dict[str, Any]) -> bool:
    """Whether the message's `Signature` (base64) is RSA PKCS#1 v1.5 over its string to sign, with the hash of its
    `SignatureVersion` (1: SHA1, 2: SHA256)."""
    algorithm = _SIGNATURE_HASHES.get(str(message.get("SignatureVersion", "")))
    signed = string_to_sign(message)
    if algorithm is None or signed is None:
        return False
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        key.verify(signature, signed, padding.PKCS1v15(), algorithm())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def cert_url_allowed(url: Any, pattern: re.Pattern[str]) -> TypeGuard[str]:
    """Whether `url` (a SigningCertURL or a SubscribeURL) is on a host the pattern trusts, from its first character."""
    return isinstance(url, str) and pattern.match(url) is not None


def signing_key(pem: bytes, now: datetime) -> tuple[rsa.RSAPublicKey, datetime]:
    """The RSA key of a PEM certificate valid at `now`, and the end of its validity; UntrustedCertificate when it is
    not one."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise UntrustedCertificate("not a PEM certificate") from None
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise UntrustedCertificate("the certificate is not valid now")
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise UntrustedCertificate("not an RSA certificate (SNS signs with RSA)")
    return key, certificate.not_valid_after_utc


def pinned_certificates(pem_bundle: str) -> list[x509.Certificate]:
    """The certificates of a PEM bundle (SNS's signing certificates, pinned); ValueError when one is not an RSA
    certificate, or the bundle holds none."""
    if not pem_bundle.strip():
        return []
    try:
        certificates = x509.load_pem_x509_certificates(pem_bundle.encode())
    except ValueError:
        certificates = []
    if not certificates:
        raise ValueError("no PEM certificate in it (each from -----BEGIN CERTIFICATE----- to its END line)")
    for certificate in certificates:
        if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
            raise ValueError("not an RSA certificate (SNS signs with RSA)")
    return certificates


def campaign_id_of(mail: dict[str, Any], message_id_domain: str) -> str:
    """The outreach of SES's `mail` object: its xsell_campaign_id tag, else the Message-ID channels wrote (in its
    headers, or its common headers); "" when it names none."""
    tags = mail.get("tags")
    stated = tags.get(CAMPAIGN_ID_TAG) if isinstance(tags, dict) else None
    if isinstance(stated, list) and stated and is_campaign_id(stated[0]):
        return stated[0]
    headers = mail.get("headers")
    written = [
        header.get("value")
        for header in (headers if isinstance(headers, list) else [])
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id"
    ]
    common = mail.get("commonHeaders")
    if isinstance(common, dict):
        written.append(common.get("messageId"))
    for message_id in written:
        if isinstance(message_id, str) and (campaign_id := campaign_id_in_message_id(message_id, message_id_domain)):
            return campaign_id
    return ""


@dataclass(frozen=True)
class Receipt:
    request_id: str
    state: int
    reason: str = ""


@dataclass(frozen=True)
class Engagement:
    request_id: str
    kind: int
    detail: str
    url: str = ""


@dataclass(frozen=True)
class SesEvent:
    """What one SES event records about its outreach, in order."""

    name: str
    campaign_id: str
    ses_message_id: str
    records: tuple[Receipt | Engagement, ...]


def event_name(event: dict[str, Any]) -> str:
    """An event's type: `eventType` (event publishing) or `notificationType` (an identity's notifications)."""
    return str(event.get("eventType") or event.get("notificationType") or "")[:40]


def read_event(event: dict[str, Any], message_id_domain: str) -> SesEvent | None:
    """What an SES event records (SesEvent.records may be empty); None when it names no outreach of ours. Each
    request_id derives from SES's own message ID, so a replay at another gateway replica changes nothing."""
    name = event_name(event)
    mail = event.get("mail")
    mail = mail if isinstance(mail, dict) else {}
    campaign_id = campaign_id_of(mail, message_id_domain)
    ses_id = str(mail.get("messageId", ""))[:100]
    if not campaign_id or not ses_id:
        return None
    request_id = f"ses:{ses_id}:{name.lower().replace(' ', '-')}"
    return SesEvent(name, campaign_id, ses_id, tuple(_records(name, event, request_id)))


def _records(name: str, event: dict[str, Any], request_id: str) -> list[Receipt | Engagement]:
    details = event.get(name[:1].lower() + name[1:].replace(" ", ""))
    details = details if isinstance(details, dict) else {}
    if name == "Send":
        return [Receipt(request_id, channels_resources.DELIVERY_STATE_SENT)]
    if name == "Delivery":
        return [Receipt(request_id, channels_resources.DELIVERY_STATE_DELIVERED)]
    if name == "Bounce":
        if details.get("bounceType") != "Permanent":
            return []  # SES gave up on a passing failure, or cannot tell: nothing against the address
        recipients = details.get("bouncedRecipients")
        first = recipients[0] if isinstance(recipients, list) and recipients and isinstance(recipients[0], dict) else {}
        # A bounce proves SES had the message: it settles a hand-over whose answer was lost, as a DSN does. The
        # status alone: the diagnostic code quotes the receiving server, which names the address.
        return [
            Receipt(f"{request_id}:sent", channels_resources.DELIVERY_STATE_SENT),
            Engagement(
                request_id, channels_resources.ENGAGEMENT_KIND_BOUNCED, status_detail(first.get("status"), "permanent")
            ),
        ]
    if name in _REJECTED:
        # SES's reject reason is its own words ("Bad content"); a rendering failure's message quotes template data.
        said = str(details.get("reason", ""))[:60] if name == "Reject" else ""
        return [
            Receipt(request_id, channels_resources.DELIVERY_STATE_FAILED, f"ses {_REJECTED[name]}: {said}".strip(": "))
        ]
    if name == "Complaint":
        feedback = str(details.get("complaintFeedbackType") or "complaint")[:40]
        return [Engagement(request_id, channels_resources.ENGAGEMENT_KIND_COMPLAINED, feedback)]
    if name in ("Open", "Click"):
        # A message is opened and clicked many times: each event by its own time, stable across SES's retries.
        each = f"{request_id}:{str(details.get('timestamp', ''))[:40]}"
        if name == "Open":
            return [Engagement(each, channels_resources.ENGAGEMENT_KIND_OPENED, "open")]
        link = str(details.get("link", ""))[:2000]
        return [Engagement(each, channels_resources.ENGAGEMENT_KIND_CLICKED, "click", url=link)]
    return []


def sns_time(value: Any) -> float | None:
    """SNS's Timestamp ("2026-11-28T09:15:02.123Z") in epoch seconds; None when absent or malformed."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


class SigningCertificates:
    """SNS's signing keys by certificate URL, fetched once each and kept for the CACHED_CERTIFICATES latest URLs; or,
    pinned, the keys of the configured certificates, whatever the URL, and nothing fetched."""

    def __init__(self, timeout_seconds: float, clock: Callable[[], float] = time.time, pinned: str = "") -> None:
        self._timeout = timeout_seconds
        self._clock = clock
        self._keys: OrderedDict[str, tuple[rsa.RSAPublicKey, datetime]] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._pinned = pinned_certificates(pinned)

    async def keys(self, url: str) -> list[rsa.RSAPublicKey]:
        """The keys a post whose certificate is at `url` may be signed with: the pinned ones valid now, or the one
        fetched from `url`; CertificateUnavailable or UntrustedCertificate when there is none."""
        if not self._pinned:
            return [await self.key(url)]
        now = datetime.fromtimestamp(self._clock(), UTC)
        valid = [c for c in self._pinned if c.not_valid_before_utc <= now <= c.not_valid_after_utc]
        if not valid:
            raise UntrustedCertificate("no pinned certificate is valid now (XSELL_GATEWAY_SNS_SIGNING_CERTIFICATES)")
        return [c.public_key() for c in valid]  # type: ignore[misc]

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP client of SNS's URLs, made on first use (inside the running loop) and closed with the edge."""
        if self._session is None:
            # No redirects: a redirect could lead off the hosts the URL pattern trusts. trust_env: through the
            # cluster's forward proxy where HTTPS_PROXY names one (NO_PROXY honoured), as channels reaches providers.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout), trust_env=True)
        return self._session

    async def key(self, url: str) -> rsa.RSAPublicKey:
        """The RSA key of the certificate at `url`; CertificateUnavailable or UntrustedCertificate when none is."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        if (cached := self._keys.get(url)) is not None and now <= cached[1]:
            self._keys.move_to_end(url)
            return cached[0]
        key, valid_until = signing_key(await self._fetch(url), now)
        self._keys[url] = (key, valid_until)
        while len(self._keys) > CACHED_CERTIFICATES:
            self._keys.popitem(last=False)
        return key

    async def _fetch(self, url: str) -> bytes:
        try:
            async with self.session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise CertificateUnavailable(f"HTTP {response.status}")
                return await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise CertificateUnavailable(type(error).__name__) from error

    async def close(self, _app: web.Application | None = None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class SesEvents:
    """POST /webhooks/email/ses: an SNS post, verified, then confirmed (a subscription) or recorded (SES's event)."""

    def __init__(
        self,
        channels: channels_grpc.ChannelsServiceStub,
        *,
        topic_arns: Collection[str],
        cert_url_pattern: str,
        message_id_domain: str,
        timeout_seconds: float,
        max_age_seconds: float,
        pinned_certificates: str = "",
        tracer: trace.Tracer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._record = ChannelsRecorder(channels, timeout_seconds, tracer, "ses")
        self._topics = frozenset(topic_arns)
        self._cert_urls = re.compile(cert_url_pattern)
        self._domain = message_id_domain
        self._max_age = max_age_seconds
        self._clock = clock
        self._certificates = SigningCertificates(timeout_seconds, clock, pinned_certificates)
        self._replays = ReplayGuard(max_age_seconds)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/email/ses", self._post)
        app.on_cleanup.append(self._certificates.close)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413, text="an SNS message over 1 MiB\n")
        read, message = untrusted_json(await request.read())
        if not read:
            return web.Response(status=400, text="body is not JSON\n")
        if not isinstance(message, dict):
            return web.Response(status=400, text="body is not an SNS message\n")
        if (refused := await self._unverified(message)) is not None:
            return refused
        # The string SNS signed, not its MessageId alone: its fields are joined by newlines, so text moved between
        # Subject and MessageId keeps the signature and would change a MessageId key. SNS's retries repeat it whole.
        replay_key = b"ses:" + hashlib.sha256(string_to_sign(message) or b"").digest()
        if (replayed := self._replays.refusal(replay_key, "ses")) is not None:
            return replayed
        kind = message["Type"]
        if kind == SUBSCRIPTION_CONFIRMATION:
            answer = await self._confirm(message)
        elif kind == UNSUBSCRIBE_CONFIRMATION:
            # Unsubscribed on AWS's side (by an operator): nothing to do but say so; SES's events stop coming.
            log.warning("ses_unsubscribed", topic_arn=message["TopicArn"])
            answer = web.Response(text="ok\n")
        else:
            answer = await self._notification(message)
        if answer.status == 200:
            self._replays.remember(replay_key)
        return answer

    async def _unverified(self, message: dict[str, Any]) -> web.Response | None:
        """The refusal of a message that is not SNS's about an allowed topic (401), or 503 when its certificate
        cannot be fetched now; None once its signature holds."""
        cert_url = message.get("SigningCertURL")
        if not cert_url_allowed(cert_url, self._cert_urls):
            log.warning("webhook_rejected", provider="ses", reason="cert_url")
            return web.Response(status=401, text="SigningCertURL is not SNS's\n")
        topic = message.get("TopicArn")
        if not isinstance(topic, str) or topic not in self._topics:
            log.warning("webhook_rejected", provider="ses", reason="topic")
            return web.Response(status=401, text="TopicArn is not one of XSELL_GATEWAY_SES_TOPIC_ARNS\n")
        try:
            keys = await self._certificates.keys(cert_url)
        except CertificateUnavailable as error:
            # The URL, so that an operator can pin the certificate where the gateway may not reach SNS.
            log.warning(
                "webhook_not_recorded", provider="ses", reason="certificate", detail=str(error), cert_url=cert_url
            )
            return web.Response(status=503, text="the signing certificate cannot be fetched now\n")
        except UntrustedCertificate as error:
            log.warning("webhook_rejected", provider="ses", reason="certificate", detail=str(error), cert_url=cert_url)
            return web.Response(status=401, text="SigningCertURL is not a signing certificate\n")
        if not any(signature_holds(key, message) for key in keys):
            log.warning("webhook_rejected", provider="ses", reason="signature", cert_url=cert_url)
            return web.Response(status=401, text="Signature does not match the message\n")
        return None

    async def _confirm(self, message: dict[str, Any]) -> web.Response:
        """Subscribes this endpoint to the topic, by getting the SubscribeURL SNS signed (on SNS's own hosts)."""
        url = message.get("SubscribeURL")
        if not cert_url_allowed(url, self._cert_urls):
            log.warning("webhook_rejected", provider="ses", reason="subscribe_url")
            return web.Response(status=401, text="SubscribeURL is not SNS's\n")
        try:
            async with self._certificates.session.get(url, allow_redirects=False) as response:
                confirmed = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            confirmed = False
        if not confirmed:
            # The URL, so that an operator can confirm by hand where the gateway may not reach SNS.
            log.warning("ses_subscription_not_confirmed", topic_arn=message["TopicArn"], subscribe_url=url)
            return web.Response(status=503, text="the subscription cannot be confirmed now\n")
        log.info("ses_subscription_confirmed", topic_arn=message["TopicArn"])
        return web.Response(text="ok\n")

    async def _notification(self, message: dict[str, Any]) -> web.Response:
        _, event = untrusted_json(message["Message"])
        if not isinstance(event, dict):
            log.info("webhook_ignored", provider="ses", reason="not_an_ses_event")
            return web.Response(text="ok\n")
        name = event_name(event)
        if name not in _OPT_OUTS and is_stale(sns_time(message["Timestamp"]), self._clock(), self._max_age):
            log.warning("webhook_rejected", provider="ses", reason="stale")
            return web.Response(text="older than the accepted age; not recorded\n")
        read = read_event(event, self._domain)
        if read is None:
            log.info("webhook_ignored", provider="ses", reason="no_campaign_id", event_name=name)
            return web.Response(text="ok\n")
        try:
            for record in read.records:
                if isinstance(record, Receipt):
                    recording = self._record.receipt(
                        record.request_id, read.campaign_id, record.state, read.ses_message_id, record.reason
                    )
                else:
                    recording = self._record.engagement(
                        record.request_id, read.campaign_id, record.kind, record.detail, url=record.url
                    )
                await record_item("ses", recording)
        except Unrecorded:
            return web.Response(status=503, text="try again later\n")
        return web.Response(text="ok\n")
