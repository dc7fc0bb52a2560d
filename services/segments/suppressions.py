"""Suppressions: who must not be contacted, on which channel, why and until when; a suppression always wins."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from plumbing.errors import InvalidArgument
from plumbing.times import utc_time
from services.addresses import same_address
from services.segments.records import RecordProblem, id_problem
from services.segments.values import Value
from xsell.segments.v1 import resources_pb2
from xsell.type.v1 import channel_pb2

EVERY_CHANNEL = "ALL"
MAX_PROFILE_ID = 128
MAX_NOTE = 500
_REASON_PREFIX = "SUPPRESSION_REASON_"
_CHANNEL_PREFIX = "CHANNEL_"


@dataclass(frozen=True)
class Suppression:
    profile_id: str
    channel: str  # EVERY_CHANNEL or a channel name without its prefix, e.g. "EMAIL"
    reason: str  # the reason's name without its prefix, e.g. "OPT_OUT"
    expire_time: datetime | None
    note: str

    def in_force(self, at: datetime) -> bool:
        """An expired suppression no longer counts; one without expiry counts for ever."""
        return self.expire_time is None or self.expire_time > at


def reason_key(reason: int) -> str:
    return resources_pb2.SuppressionReason.Name(reason).removeprefix(_REASON_PREFIX)  # type: ignore[arg-type]


# Mail to the address bounced permanently; a new address lifts it (SegmentsApi.UpsertProfiles).
HARD_BOUNCE = reason_key(resources_pb2.SUPPRESSION_REASON_HARD_BOUNCE)
# The suppressions about an address rather than the person: a new address lifts them, and a bounce of an address the
# person has replaced since the message was queued makes none.
ADDRESS_REASONS = (
    HARD_BOUNCE,
    reason_key(resources_pb2.SUPPRESSION_REASON_DND_REGISTRY),
    reason_key(resources_pb2.SUPPRESSION_REASON_UNREACHABLE),
)


def replaced_address(address: str, stored: Value | None) -> bool:
    """Whether `address`, which a message was made for, is no longer the person's: their profile holds another one.
    A profile without the attribute has not replaced it (attributes are replaced, never removed)."""
    return stored is not None and stored.text is not None and not same_address(stored.text, address)


class UnknownChannel(ValueError):
    """A channel number this version does not know."""


def channel_key(channel: int) -> str:
    """How a channel is stored: CHANNEL_UNSPECIFIED is every channel (a global suppression)."""
    if channel == channel_pb2.CHANNEL_UNSPECIFIED:
        return EVERY_CHANNEL
    try:
        return channel_pb2.Channel.Name(channel).removeprefix(_CHANNEL_PREFIX)  # type: ignore[arg-type]
    except ValueError:
        raise UnknownChannel(f"unknown channel {channel}") from None


def channel_number(key: str) -> int:
    return channel_pb2.CHANNEL_UNSPECIFIED if key == EVERY_CHANNEL else channel_pb2.Channel.Value(_CHANNEL_PREFIX + key)


def channels_applying(channel: int) -> tuple[str, ...]:
    """The stored channels that forbid contact on `channel`: global ones always, and that channel's own."""
    key = channel_key(channel)
    return (EVERY_CHANNEL,) if key == EVERY_CHANNEL else (EVERY_CHANNEL, key)


_REASON_NUMBERS = frozenset(resources_pb2.SuppressionReason.values())


def reason_number(key: str) -> int:
    return resources_pb2.SuppressionReason.Value(_REASON_PREFIX + key)


def _reasons() -> str:
    return ", ".join(name for name, _ in resources_pb2.SuppressionReason.items() if not name.endswith("UNSPECIFIED"))


def in_force(suppressions: Iterable[Suppression], channel: int, at: datetime) -> list[Suppression]:
    """The suppressions that forbid contact with the person on `channel` at `at`."""
    applying = channels_applying(channel)
    return [s for s in suppressions if s.channel in applying and s.in_force(at)]


def validate(
    given: Sequence[resources_pb2.Suppression], now: datetime, field: str = "suppressions"
) -> tuple[list[Suppression], list[RecordProblem]]:
    """Accepted suppressions (a later one for the same person, channel and reason replaces an earlier one)
    and a problem for each rejected record."""
    accepted: dict[tuple[str, str, str], Suppression] = {}
    problems: list[RecordProblem] = []
    for index, item in enumerate(given):
        parsed = _parse(item, now)
        if isinstance(parsed, tuple):
            name, why = parsed
            problems.append(RecordProblem(index, item.profile_id, f"{field}[{index}].{name}", why))
        else:
            accepted[(parsed.profile_id, parsed.channel, parsed.reason)] = parsed
    return list(accepted.values()), problems


def _parse(item: resources_pb2.Suppression, now: datetime) -> Suppression | tuple[str, str]:
    """The suppression, or the field at fault and why."""
    if not item.profile_id:
        return "profile_id", "profile_id is required: the institution's id of the person"
    if len(item.profile_id) > MAX_PROFILE_ID:
        return "profile_id", f"profile_id must be at most {MAX_PROFILE_ID} characters"
    if problem := id_problem(item.profile_id, "profile_id"):
        # A NUL failed the whole batch on PostgreSQL; spaces or a line break suppressed nobody.
        return "profile_id", problem
    try:
        channel = channel_key(item.channel)
    except UnknownChannel:
        return "channel", f"unknown channel {item.channel}; use CHANNEL_UNSPECIFIED for every channel, or one channel"
    if item.reason == resources_pb2.SUPPRESSION_REASON_UNSPECIFIED or item.reason not in _REASON_NUMBERS:
        return "reason", f"reason is required; one of {_reasons()}"
    expire_time = None
    if item.HasField("expire_time"):
        try:
            expire_time = utc_time(item.expire_time, "expire_time")
        except InvalidArgument as error:
            return "expire_time", error.message
        if expire_time <= now:
            return "expire_time", "expire_time must be in the future; leave it unset for no expiry"
    if len(item.note) > MAX_NOTE:
        return "note", f"note must be at most {MAX_NOTE} characters and hold no personal data"
    if "\x00" in item.note:
        return "note", "note holds a NUL character, which no text may hold; remove it"
    return Suppression(item.profile_id, channel, reason_key(item.reason), expire_time, item.note)
