"""SendGrid's side of its Event Webhook, for a local relay that plays SendGrid: for each message the relay accepts it
posts `processed` then `delivered` as SendGrid does (a JSON array, each event with the message's unique args and
smtp-id, signed with ECDSA P-256 over the timestamp header and the body), again after a delay while the receiver
answers otherwise than 2xx or cannot be reached, as SendGrid retries for 24 hours."""

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Sequence
from email import message_from_bytes, policy
from typing import Any

import aiohttp
from aiosmtpd.smtp import Envelope
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


class SendGridEventPoster:
    """Posts the events of each accepted message to `url` (the gateway's /webhooks/email/sendgrid)."""

    def __init__(self, url: str, *, retry_delays: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0, *[4.0] * 10)) -> None:
        self.url = url
        self.retry_delays = tuple(retry_delays)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.posted = 0
        self.failed: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def verification_key(self) -> str:
        """What SendGrid's mail settings show for the key: base64 of the DER public key."""
        public = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(public).decode()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def report(self, envelope: Envelope) -> None:
        """Queues the events of the message in `envelope`, which the relay accepted, on the running loop."""
        events = accepted_events(envelope)
        if not events:
            return
        task = asyncio.get_running_loop().create_task(self._post(events))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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

    async def _post(self, events: list[dict[str, Any]]) -> None:
        reason = ""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for delay in (*self.retry_delays, None):
                body, headers = self.signed(events)  # signed afresh each time, as SendGrid does
                try:
                    async with session.post(self.url, data=body, headers=headers) as response:
                        if 200 <= response.status < 300:
                            self.posted += 1
                            return
                        reason = f"HTTP {response.status}"
                except (aiohttp.ClientError, OSError) as error:
                    reason = type(error).__name__
                if delay is None:
                    self.failed.append(reason)
                    return
                await asyncio.sleep(delay)


def accepted_events(envelope: Envelope) -> list[dict[str, Any]]:
    """`processed` and `delivered` for each recipient of the message in `envelope`, with its unique args (X-SMTPAPI,
    which SendGrid takes off the message) and its Message-ID as smtp-id."""
    content = envelope.original_content or envelope.content or b""
    raw = content.encode() if isinstance(content, str) else content
    message = message_from_bytes(raw, policy=policy.default)
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
