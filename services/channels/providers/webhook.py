"""A generic signed webhook for CRM tasks and relationship-manager next-best-actions.

POST <url> with a JSON body `{"campaign_id", "profile_id", "payload"}` and the headers
`X-Xsell-Timestamp` (Unix seconds), `X-Xsell-Signature: v1=<hex HMAC-SHA256(secret,
"<timestamp>.<raw body>")>` (the Stripe / Slack scheme: the timestamp is signed so that a captured
call cannot be replayed later), `Idempotency-Key: <campaign ID>` and `X-Xsell-Campaign-Id`.
The receiver answers 2xx when it has the call, and drops a second call with an Idempotency-Key it
has seen (answering 2xx again): that is what lets channels retry an ambiguous call safely.
"""

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.channels.delivery import Accepted
from services.channels.outgoing import OutgoingWebhook
from services.channels.providers.base import ProviderAnswer, ProviderRequest, failure_for_status, json_body

SIGNATURE_HEADER = "X-Xsell-Signature"
TIMESTAMP_HEADER = "X-Xsell-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
CAMPAIGN_ID_HEADER = "X-Xsell-Campaign-Id"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def signature_valid(secret: str, timestamp: str, body: bytes, presented: str) -> bool:
    return hmac.compare_digest(signature(secret, timestamp, body), presented)


@dataclass(frozen=True)
class SignedWebhook:
    """The webhook adapter; `clock` gives Unix seconds (tests pass a fixed one)."""

    secret: str
    clock: Callable[[], float] = time.time

    provider = "webhook"
    deduplicates = True

    def request(self, campaign_id: str, profile_id: str, message: OutgoingWebhook) -> ProviderRequest:
        body = json_body({"campaign_id": campaign_id, "profile_id": profile_id, "payload": message.payload})
        timestamp = str(int(self.clock()))
        return ProviderRequest(
            "POST",
            message.url,
            body,
            {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: signature(self.secret, timestamp, body),
                IDEMPOTENCY_HEADER: campaign_id,
                CAMPAIGN_ID_HEADER: campaign_id,
            },
        )

    def accepted(self, answer: ProviderAnswer) -> Accepted:
        if 200 <= answer.status < 300:
            document = answer.json()
            receipt = document.get("id")
            return Accepted(str(receipt) if receipt else "", f"webhook HTTP {answer.status}")
        if answer.status == 409:
            # Some receivers answer a repeated Idempotency-Key with 409: they already have the call.
            return Accepted("", "webhook HTTP 409: already received")
        raise failure_for_status(self.provider, answer, answer.body[:200].decode(errors="replace"))
