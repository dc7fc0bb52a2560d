"""An ESP's side of its event webhook, for a local relay that plays the ESP: for each message the relay accepts it posts
the message's events to the gateway as the ESP does, again after a delay while the receiver answers otherwise than 2xx
or cannot be reached.

- SendGrid (SendGridEventPoster): `processed` then `delivered`, a JSON array, each event with the message's unique
  args and smtp-id, signed with ECDSA P-256 over the timestamp header and the body; retried as SendGrid does for
  24 hours.
- SES through SNS (SesEventPoster): SES's `Send` then `Delivery` (or a permanent `Bounce` for a recipient the
  receiving server refuses), each an SNS Notification signed with RSA over SNS's string to sign, whose certificate
  this poster serves on a local HTTP server (with the SubscribeURL of its subscription confirmations); retried as
  SNS's HTTP delivery policy does.
"""

import asyncio
import base64
import functools
import json
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from aiosmtpd.smtp import Envelope
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
DEFAULT_RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, *[4.0] * 10)
SES_TOPIC_ARN = "arn:aws:sns:ap-south-1:123456789012:xsell-ses-events"
"""The topic this poster's notifications come from (the gateway's XSELL_GATEWAY_SES_TOPIC_ARNS)."""

Post = Callable[[], tuple[bytes, dict[str, str]]]
"""One post's body and headers, made again for each attempt (SendGrid signs afresh; SNS posts the same message)."""


class RetryingPoster:
    """Posts to `url` in the background, in order, each post again after a delay while the receiver answers otherwise
    than 2xx or cannot be reached; a post that never went through ends the ones after it (its reason in `failed`)."""

    def __init__(self, url: str, *, retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS) -> None:
        self.url = url
        self.retry_delays = tuple(retry_delays)
        self.posted = 0
        self.failed: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def queue(self, posts: Sequence[Post]) -> None:
        """Posts `posts`, one after the other, on the running loop."""
        task = asyncio.get_running_loop().create_task(self._post_each(posts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_each(self, posts: Sequence[Post]) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for post in posts:
                if not await self._post(session, post):
                    return

    async def _post(self, session: aiohttp.ClientSession, post: Post) -> bool:
        reason = ""
        for delay in (*self.retry_delays, None):
            body, headers = post()
            try:
                async with session.post(self.url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        self.posted += 1
                        return True
                    reason = f"HTTP {response.status}"
            except (aiohttp.ClientError, OSError) as error:
                reason = type(error).__name__
            if delay is None:
                self.failed.append(reason)
                return False
            await asyncio.sleep(delay)
        return False


class SendGridEventPoster(RetryingPoster):
    """Posts the events of each accepted message to `url` (the gateway's /webhooks/email/sendgrid)."""

    def __init__(self, url: str, *, retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS) -> None:
        super().__init__(url, retry_delays=retry_delays)
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def verification_key(self) -> str:
        """What SendGrid's mail settings show for the key: base64 of the DER public key."""
        public = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(public).decode()

    def report(self, envelope: Envelope) -> None:
        """Queues the events of the message in `envelope`, which the relay accepted, on the running loop."""
        events = accepted_events(envelope)
        if events:
            self.queue([lambda: self.signed(events)])  # signed afresh each time, as SendGrid does

    def signed(self, events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one post, as SendGrid sends it (the body ends with CRLF)."""
        body = (json.dumps(events, separators=(",", ":")) + "\r\n").encode()
        timestamp = str(int(time.time()))
        signature = self._key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            TIMESTAMP_HEADER: timestamp,
        }
        return body, headers


def accepted_events(envelope: Envelope) -> list[dict[str, Any]]:
    """`processed` and `delivered` for each recipient of the message in `envelope`, with its unique args (X-SMTPAPI,
    which SendGrid takes off the message) and its Message-ID as smtp-id."""
    message = _message(envelope)
    try:
        unique_args = json.loads(str(message.get("X-SMTPAPI", "{}"))).get("unique_args", {})
    except (json.JSONDecodeError, AttributeError):
        unique_args = {}
    message_id = str(message.get("Message-ID", "")).strip()
    sg_message_id = f"{uuid.uuid4().hex[:22]}.filterdrecv-local-1"
    events = []
    for recipient in envelope.rcpt_tos:
        for name in ("processed", "delivered"):
            event = {
                "email": recipient,
                "timestamp": int(time.time()),
                "event": name,
                "smtp-id": message_id,
                "sg_event_id": uuid.uuid4().hex,
                "sg_message_id": sg_message_id,
                **({"response": "250 OK"} if name == "delivered" else {}),
                **(unique_args if isinstance(unique_args, dict) else {}),
            }
            events.append(event)
    return events


def _message(envelope: Envelope) -> EmailMessage:
    content = envelope.original_content or envelope.content or b""
    raw = content.encode() if isinstance(content, str) else content
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


# The fields SNS signs, by message type, in the order it signs them.
_SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


class SesEventPoster(RetryingPoster):
    """Plays SES and SNS for a local relay: posts SES's events of each accepted message to `url` (the gateway's
    /webhooks/email/ses) as signed SNS notifications, and serves the signing certificate and the SubscribeURL of
    the subscription confirmations it makes on 127.0.0.1 (start() before use, stop() after)."""

    def __init__(
        self,
        url: str,
        *,
        topic_arn: str = SES_TOPIC_ARN,
        signature_version: str = "2",
        bounces: frozenset[str] = frozenset(),
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
    ) -> None:
        super().__init__(url, retry_delays=retry_delays)
        self.topic_arn = topic_arn
        self.signature_version = signature_version
        # Recipients SES takes a message for but the receiving server refuses: their message bounces (5.1.1).
        self.bounces = bounces
        # The tokens of the subscription confirmations whose SubscribeURL was got (the subscriber confirmed).
        self.confirmed: list[str] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> "SesEventPoster":
        app = web.Application()
        app.router.add_get("/SimpleNotificationService-local.pem", self._certificate)
        app.router.add_get("/confirm", self._confirm)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cert_url(self) -> str:
        return f"{self.base_url}/SimpleNotificationService-local.pem"

    @property
    def cert_url_pattern(self) -> str:
        """The gateway's XSELL_GATEWAY_SNS_CERT_URL_PATTERN for this poster's certificate and SubscribeURLs."""
        return rf"^http://127\.0\.0\.1:{self.port}/"

    def report(self, envelope: Envelope) -> None:
        """Queues SES's events of the message in `envelope`, which the relay accepted, on the running loop: one
        notification each, posted again as it was while the gateway does not take it, as SNS retries."""
        notifications = [self.notification(event) for event in accepted_ses_events(envelope, self.bounces)]
        self.queue([partial(sns_post, notification) for notification in notifications])

    def notification(self, event: dict[str, Any], *, age: float = 0.0, message_id: str = "") -> dict[str, Any]:
        """SES's `event` as the signed SNS notification that carries it, published `age` seconds ago."""
        return self.signed(
            {
                "Type": "Notification",
                "MessageId": message_id or str(uuid.uuid4()),
                "TopicArn": self.topic_arn,
                "Message": json.dumps(event),
                "Timestamp": _sns_timestamp(age),
                "UnsubscribeURL": f"{self.base_url}/unsubscribe",
            }
        )

    def subscription_confirmation(self, token: str) -> dict[str, Any]:
        """The signed message SNS posts to a new HTTP(S) subscription, to be confirmed by getting its SubscribeURL."""
        return self.signed(
            {
                "Type": "SubscriptionConfirmation",
                "MessageId": str(uuid.uuid4()),
                "Token": token,
                "TopicArn": self.topic_arn,
                "Message": f"You have chosen to subscribe to the topic {self.topic_arn}.",
                "SubscribeURL": f"{self.base_url}/confirm?Action=ConfirmSubscription&Token={token}",
                "Timestamp": _sns_timestamp(0.0),
            }
        )

    def signed(self, message: dict[str, Any]) -> dict[str, Any]:
        """`message` with SNS's signature fields: signed over its string to sign with this poster's key."""
        signed = {**message, "SignatureVersion": self.signature_version, "SigningCertURL": self.cert_url}
        string_to_sign = "".join(
            f"{name}\n{signed[name]}\n" for name in _SNS_SIGNED[signed["Type"]] if signed.get(name) is not None
        )
        algorithm = hashes.SHA1() if self.signature_version == "1" else hashes.SHA256()
        signature = self._key.sign(string_to_sign.encode(), padding.PKCS1v15(), algorithm)
        return {**signed, "Signature": base64.b64encode(signature).decode()}

    @functools.cached_property
    def certificate_pem(self) -> str:
        """The signing certificate (self-signed, valid for a year from yesterday), as SNS serves it at cert_url."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.local")])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode()

    async def _certificate(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.certificate_pem, content_type="text/plain")

    async def _confirm(self, request: web.Request) -> web.Response:
        self.confirmed.append(request.query.get("Token", ""))
        return web.Response(text="<ConfirmSubscriptionResponse/>", content_type="text/xml")


def _sns_timestamp(age: float) -> str:
    moment = datetime.now(UTC) - timedelta(seconds=age)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def sns_post(message: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The body and headers SNS posts an HTTP(S) subscription `message` with."""
    headers = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": str(message.get("Type", ""))}
    return json.dumps(message).encode(), headers


def accepted_ses_events(envelope: Envelope, bounces: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """SES's `Send` then `Delivery` (a permanent `Bounce` for a recipient in `bounces`) for each recipient of the
    message in `envelope`, with its message tags (X-SES-MESSAGE-TAGS and X-SES-CONFIGURATION-SET, which SES takes off
    the message) and its headers."""
    message = _message(envelope)
    tags: dict[str, list[str]] = {}
    for pair in str(message.get("X-SES-MESSAGE-TAGS", "")).split(","):
        name, _, value = pair.strip().partition("=")
        if name and value:
            tags[name] = [value]
    if configuration_set := str(message.get("X-SES-CONFIGURATION-SET", "")).strip():
        tags["ses:configuration-set"] = [configuration_set]
    message_id = str(message.get("Message-ID", "")).strip()
    events = []
    for recipient in envelope.rcpt_tos:
        mail = {
            "timestamp": _sns_timestamp(0.0),
            "source": envelope.mail_from,
            "messageId": f"0109{uuid.uuid4().hex}-000000",
            "destination": [recipient],
            "headersTruncated": False,
            "headers": [{"name": "Message-ID", "value": message_id}],
            "commonHeaders": {"messageId": message_id, "to": [recipient]},
            "tags": tags,
        }
        events.append({"eventType": "Send", "mail": mail, "send": {}})
        if recipient in bounces:
            refused = {"emailAddress": recipient, "action": "failed", "status": "5.1.1", "diagnosticCode": "smtp; 550"}
            bounce = {"bounceType": "Permanent", "bounceSubType": "General", "bouncedRecipients": [refused]}
            events.append({"eventType": "Bounce", "mail": mail, "bounce": bounce})
        else:
            delivery = {"recipients": [recipient], "smtpResponse": "250 2.0.0 OK", "timestamp": _sns_timestamp(0.0)}
            events.append({"eventType": "Delivery", "mail": mail, "delivery": delivery})
    return events
