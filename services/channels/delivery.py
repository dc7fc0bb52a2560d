"""The rules of delivering one outreach: what a dispatch does in each state, and what a provider's answer means."""

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, StrEnum
from urllib.parse import urlsplit

from plumbing.bounces import bad_address_status
from plumbing.logging import NUMBER_SEPARATORS, replace_addresses
from services.addresses import MAX_ADDRESS


class DeliveryState(StrEnum):
    """Where a message is on its way to the person (mirrors xsell.channels.v1.DeliveryState)."""

    QUEUED = "QUEUED"
    SENDING = "SENDING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    AMBIGUOUS = "AMBIGUOUS"


class Engagement(StrEnum):
    """Something the person did with a message (mirrors xsell.channels.v1.EngagementKind)."""

    OPENED = "OPENED"
    CLICKED = "CLICKED"
    REPLIED = "REPLIED"
    UNSUBSCRIBED = "UNSUBSCRIBED"
    BOUNCED = "BOUNCED"
    COMPLAINED = "COMPLAINED"
    DECLINED = "DECLINED"
    RESUBSCRIBED = "RESUBSCRIBED"


class DispatchAction(Enum):
    """What handling a DispatchRequested does, given the message's current state."""

    SEND = "send"
    SKIP = "skip"
    MARK_AMBIGUOUS = "mark_ambiguous"


# The provider has decided (or may have decided) about these; a redelivered request changes nothing.
_DECIDED = frozenset({DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.AMBIGUOUS})

AMBIGUOUS_UNSETTLED = (
    "the last allowed hand-over's answer was never recorded (a process stopped, or the outcome could not be written): "
    "it may have reached the provider; the provider's receipt or an operator settles it, never resent blind"
)
AMBIGUOUS_AFTER_CRASH = (
    "a previous attempt stopped between writing its intent and recording the provider's answer: the message may have "
    "reached the provider; the provider's receipt or an operator settles it, never resent blind"
)


def dispatch_action(state: DeliveryState | None, *, provider_deduplicates: bool = False) -> DispatchAction:
    """The campaign ID is the idempotency key: a message is handed to the provider at most once.

    SENDING means an earlier attempt wrote its intent and then died before recording the outcome:
    the provider may or may not have the message. Sending again could reach the person twice, so
    the message becomes AMBIGUOUS and waits for reconciliation (SMTP, the SMS gateway, WhatsApp
    and FCM take no idempotency key; their delivery receipts, which carry the campaign ID, settle
    it). A provider that deduplicates on the campaign ID (the signed webhook) is simply asked
    again: a second copy of the same key is dropped on its side.
    """
    if state is None or state is DeliveryState.QUEUED:
        return DispatchAction.SEND
    if state is DeliveryState.SENDING:
        return DispatchAction.SEND if provider_deduplicates else DispatchAction.MARK_AMBIGUOUS
    if state in _DECIDED:
        return DispatchAction.SKIP
    raise ValueError(f"unknown delivery state {state!r}")


def receipt_outcome(current: DeliveryState, receipt: DeliveryState) -> DeliveryState | None:
    """The state a provider's receipt moves a message to, or None when it changes nothing.

    A receipt is the provider saying what it did, so it wins over what we could only guess:
    it settles AMBIGUOUS, and it settles QUEUED / SENDING too (a crash after the hand-over, the
    receipt arriving before the redelivery), which then makes the redelivery a skip instead of a
    second send. SENT (the provider accepted the message: WhatsApp's `sent` status) only settles a
    message whose hand-over has no recorded outcome; DELIVERED is final; a FAILED receipt does not
    undo a delivery.
    """
    if receipt not in _RECEIPTS:
        raise ValueError(f"a receipt is SENT, DELIVERED or FAILED, not {receipt.value}")
    if receipt is DeliveryState.SENT:
        return receipt if current in _UNSETTLED else None
    if current is DeliveryState.DELIVERED or current is receipt:
        return None
    return receipt


_RECEIPTS = frozenset({DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.FAILED})
# The states in which the outcome of a hand-over (or of the one to come) is not known yet.
_UNSETTLED = frozenset({DeliveryState.QUEUED, DeliveryState.SENDING, DeliveryState.AMBIGUOUS})


class MalformedDispatch(Exception):
    """The dispatch request cannot be delivered as it is; retrying cannot help."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def within_address_limit(address: str, field: str) -> str:
    """The address as given, or MalformedDispatch naming `field` when segments would refuse to check suppressions for
    it (services.addresses.MAX_ADDRESS): asking again could not help, and nothing is sent unchecked. Measured as
    given, spaces and all, since that is what segments is asked about."""
    if len(address) > MAX_ADDRESS:
        raise MalformedDispatch(
            f"{field} is {len(address)} characters; at most {MAX_ADDRESS}, the longest address segments checks "
            "suppressions for"
        )
    return address


@dataclass(frozen=True)
class OutgoingEmail:
    """A rendered e-mail, as campaigns handed it over."""

    to_address: str
    from_name: str
    subject: str
    html_body: str
    text_body: str


def validate_email(channel: str, email: OutgoingEmail | None) -> OutgoingEmail:
    """The e-mail to send, or MalformedDispatch saying what the request lacks."""
    if channel != "CHANNEL_EMAIL":
        raise MalformedDispatch(f"channel is {channel} but the request was read as an e-mail; only CHANNEL_EMAIL is")
    if email is None:
        raise MalformedDispatch("channel is CHANNEL_EMAIL but the request carries no email message")
    address = within_address_limit(email.to_address, "email.to_address").strip()
    if not address:
        raise MalformedDispatch("email.to_address is empty")
    if (
        address.count("@") != 1
        or any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in address)
        or not address.isascii()
        or any(char in _NOT_IN_ONE_ADDRESS for char in address)
    ):
        raise MalformedDispatch(
            "email.to_address is not one plain ASCII address of the form local@domain (no spaces, control "
            "characters, commas or brackets)"
        )
    if not email.html_body.strip() and not email.text_body.strip():
        raise MalformedDispatch("email has neither html_body nor text_body")
    return OutgoingEmail(address, email.from_name, email.subject, email.html_body, email.text_body)


# What would make the To header list more than one address, or a display name: one recipient per message.
_NOT_IN_ONE_ADDRESS = frozenset(',;<>()[]"\\')


class SendFailure(Exception):
    """The provider did not take the message; `reason` carries no personal data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderUnavailable(SendFailure):
    """The provider certainly did not accept the message (refused, timed out before DATA, 4xx): retry later."""


class ProviderThrottled(ProviderUnavailable):
    """The provider asked us to slow down (HTTP 429, a throughput error code); `retry_after` is its hint, if any."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class ProviderRejected(SendFailure):
    """The provider refused the message for good (5xx on the sender, recipient or content). `bounce` is set when the
    refusal says the recipient's address is bad (an SMTP relay's 5.1.1 at RCPT): a bounce, as a report would be."""

    def __init__(self, reason: str, bounce: str = "") -> None:
        super().__init__(reason)
        self.bounce = bounce


class ProviderOutcomeUnknown(SendFailure):
    """The message may have been accepted (the connection was lost during DATA): never resend blindly."""


@dataclass(frozen=True)
class Accepted:
    """The provider took the message: its id for it, and what it said (no personal data)."""

    provider_message_id: str
    detail: str = ""


SESSION_REFUSED = frozenset({530, 538})
"""Replies about the session, not the message: the relay wants AUTH or TLS first (RFC 4954 530, RFC 3207's 530,
538 encryption required). Our settings are wrong, and every message would fail alike until they are fixed."""


def failure_for_reply(code: int, command: str, text: str) -> SendFailure:
    """An SMTP error reply to a command of the mail transaction: 4xx is temporary, 5xx permanent (RFC 5321 4.2.1),
    except a session refused for want of AUTH or TLS, and a sender refused by the relay's policy (5.7.x on MAIL:
    "sender address rejected: not owned by user"), which are about our settings, not this message: they wait,
    retried, for the settings to be fixed, as HTTP 401 / 403 do."""
    reason = f"SMTP {code} on {command}: {scrub(text)}".strip()
    if code in SESSION_REFUSED:
        return ProviderUnavailable(f"{reason} (the relay wants AUTH or TLS: check XSELL_CHANNELS_SMTP_*)")
    if command == "MAIL" and 500 <= code < 600 and text.lstrip().startswith("5.7."):
        return ProviderUnavailable(
            f"{reason} (the relay's policy refuses our sender: check XSELL_CHANNELS_SMTP_*, FROM_ADDRESS and "
            "RETURN_PATH)"
        )
    if 500 <= code < 600:
        bad_address = bad_address_status(text) if "RCPT" in command else None
        return ProviderRejected(reason, bounce=f"{bad_address} permanent" if bad_address else "")
    return ProviderUnavailable(reason)


def redact(text: str, limit: int = 300) -> str:
    """Provider text without addresses (relays echo the recipient back), shortened for storage. Only the first
    READ_PER_LIMIT × limit characters are read: a caller's detail may be megabytes long."""
    return _without_addresses(text, limit)[:limit]


def _without_addresses(text: str, limit: int) -> str:
    read = limit * READ_PER_LIMIT
    bounded = text[:read]
    if len(text) > read:
        # Cut at the bound, the text may end in the head of an address or a number ("ravi.kumar@exa",
        # "+91 98765"), which neither pattern knows as one: its last word goes, and what of a number precedes it.
        tail = _CUT_TAIL.match(bounded[::-1])
        bounded = bounded[: read - (tail.end() if tail else 0)]
    return replace_addresses(" ".join(bounded.split()), "[address]")


READ_PER_LIMIT = 8
"""How much of a text scrub and redact read, per character they keep: enough for the addresses and numbers they
replace to shrink it, bounded whatever a caller sends."""
# A run of digits and what may split one number (any whitespace, any dash, the invisible characters: the logs'
# NUMBER_SEPARATORS) or write it (brackets, dots, slashes, also full-width), from a digit (or "+") not preceded by
# one, to a digit; a number when it holds at least 8 digits ("+91 98765 43210", "(+91)98765/43210", "98765.43210",
# "98765\u201343210"), so an SMTP status ("550 5.1.1") or a version stays. Linear: one character class, no nested
# quantifier, and a run is read from its start only.
_DIGIT_RUN = re.compile(rf"(?<![\d+\uff0b])[+\uff0b]?\d[\d{NUMBER_SEPARATORS}()./\uff08\uff09\uff0e\uff0f]*\d")
_NUMBER_DIGITS = 8
# Read backwards from a cut: the last word, then whatever a number is written with. Anchored, one pass: linear.
_CUT_TAIL = re.compile(rf"\S*[\d+\uff0b{NUMBER_SEPARATORS}()./\uff08\uff09\uff0e\uff0f]*")


_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_ISO_DATE = re.compile(r"(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])")


def _number_or_kept(found: re.Match[str]) -> str:
    run = found.group(0)
    if _IPV4.fullmatch(run):
        return run  # a relay's address in its refusal ("client [203.0.113.5] blocked"), not a person's number
    if _ISO_DATE.fullmatch(run):
        return run  # a date ("retry after 2026-11-29T10:00:00Z", "expired on 2026-11-29"): no phone is written so
    return "[number]" if sum(char.isdigit() for char in run) >= _NUMBER_DIGITS else run


def scrub(text: str, limit: int = 300) -> str:
    """Provider text without phone numbers or addresses (error messages and receipts echo the recipient). Addresses
    first, as in the logs: a mailbox named by a number ("9876543210@sms.example.in") goes whole, not as
    "[number]@sms.example.in"."""
    return _DIGIT_RUN.sub(_number_or_kept, _without_addresses(text, limit))[:limit]


def link_host(url: str) -> str:
    """The host of a clicked link: what the timeline may keep of it (paths and queries can carry personal data)."""
    try:
        return urlsplit(url.strip()).hostname or ""
    except ValueError:
        return ""


def link_without_query(url: str) -> str:
    """A clicked link as EngagementRecorded carries it: scheme, host and path, without the query or fragment (where
    personal data is most often put: ?email=, ?mobile=, a customer id)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return ""
    return parts._replace(query="", fragment="").geturl()


def state_step(state: DeliveryState) -> str:
    return f"delivery:{state.value}"


def engagement_step(kind: Engagement) -> str:
    return f"engagement:{kind.value}"


@dataclass(frozen=True)
class TimelineStep:
    """One thing that happened to a message: a delivery state or an engagement."""

    step: str
    at: datetime
    detail: str = ""

    @property
    def delivery_state(self) -> DeliveryState | None:
        kind, _, value = self.step.partition(":")
        return DeliveryState(value) if kind == "delivery" else None

    @property
    def engagement(self) -> Engagement | None:
        kind, _, value = self.step.partition(":")
        return Engagement(value) if kind == "engagement" else None


@dataclass(frozen=True)
class MessageRecord:
    """The delivery record of one outreach with its timeline, oldest first."""

    campaign_id: str
    channel: str
    profile_id: str
    state: DeliveryState
    provider_message_id: str
    attempts: int
    reason: str
    timeline: list[TimelineStep] = field(default_factory=list)
