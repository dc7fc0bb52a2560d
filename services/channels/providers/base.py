"""What every HTTP adapter shares: the request it builds, the answer it reads, and how HTTP statuses are classified."""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import orjson

from services.channels.delivery import (
    Accepted,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderThrottled,
    ProviderUnavailable,
    SendFailure,
    scrub,
)

M_contra = TypeVar("M_contra", contravariant=True)


@dataclass(frozen=True)
class ProviderRequest:
    """One HTTP call to a provider, ready to send."""

    method: str
    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def with_header(self, name: str, value: str) -> "ProviderRequest":
        return ProviderRequest(self.method, self.url, self.body, {**self.headers, name: value})


@dataclass(frozen=True)
class ProviderAnswer:
    """The provider's HTTP answer, as received."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        try:
            value = orjson.loads(self.body or b"{}")
        except orjson.JSONDecodeError:  # a ValueError, as json's; invalid UTF-8 is one too
            return {}
        return value if isinstance(value, dict) else {}


class HttpAdapter(Protocol, Generic[M_contra]):
    """A provider's request format and answer semantics; no I/O."""

    provider: str
    """Short name for limits, spans and settings: sms, whatsapp, push, webhook."""

    deduplicates: bool
    """True when the provider drops a second request with the same campaign ID (its idempotency key)."""

    def request(self, campaign_id: str, profile_id: str, message: M_contra) -> ProviderRequest: ...

    def accepted(self, answer: ProviderAnswer) -> Accepted:
        """The accepted message's id; raises a SendFailure when the answer is an error."""
        ...


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds; the HTTP-date form is not used by these providers and reads as no hint."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# 502 Bad Gateway and 504 Gateway Timeout come from a proxy in front of the provider (a load balancer, an API edge)
# about a request it had passed on: the provider may have taken the message, and the answer was lost one hop further
# than a read timeout of ours. The provider's own 500 and 503 say it did not take it (its documentation: try again).
ANSWER_LOST_BEYOND_THE_EDGE = frozenset({502, 504})


def failure_for_status(provider: str, answer: ProviderAnswer, detail: str) -> SendFailure:
    """The usual meaning of an HTTP error status: 429 slow down, 408 / 500 / 503 try later, other 4xx never; 502 and
    504 may have been accepted (ANSWER_LOST_BEYOND_THE_EDGE), as when our own read times out.

    401 and 403 are about our credentials, not the message: they are retried (and dead-lettered
    after the last attempt) so that fixing an expired token does not mean re-running campaigns.
    """
    if answer.status in ANSWER_LOST_BEYOND_THE_EDGE:
        # Its body is the edge's page, not the provider's answer: nothing in it says more.
        return ProviderOutcomeUnknown(
            f"{provider} HTTP {answer.status} from an edge: the provider may have the message"
        )
    reason = f"{provider} HTTP {answer.status}: {scrub(detail)}".strip()
    if answer.status == 429:
        return ProviderThrottled(reason, retry_after_seconds(answer.headers))
    if answer.status in {401, 403, 408} or answer.status >= 500:
        return ProviderUnavailable(reason)
    return ProviderRejected(reason)


def json_body(document: object) -> bytes:
    """Compact UTF-8 JSON, as json.dumps(ensure_ascii=False, separators=(",", ":")) writes it, with orjson (a few
    times its speed); a webhook payload orjson cannot write (an integer past 64 bits) goes through json."""
    try:
        return orjson.dumps(document)
    except TypeError:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
