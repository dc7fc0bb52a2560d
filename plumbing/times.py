"""Times and durations callers send as google.protobuf.Timestamp and Duration, read so that one outside what it may
hold is the caller's error, naming the field.

protobuf refuses a Timestamp whose seconds fall outside years 1-9999 or whose nanos fall outside 0-999,999,999 with a
bare ValueError when it is read, and reads any Duration into a timedelta that may overflow; unhandled, that answered
INTERNAL (or failed a whole batch) for a caller's typo.
"""

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.errors import InvalidArgument

TIMESTAMP_RANGE = "from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, with nanos from 0 to 999,999,999"


def utc_time(stamp: Timestamp, field: str) -> datetime:
    """The Timestamp as an aware UTC datetime; InvalidArgument naming `field` and the range when it holds none."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{field} (seconds {stamp.seconds}, nanos {stamp.nanos}) is not a time: it must lie {TIMESTAMP_RANGE}",
            field=field,
        ) from None


def time_field(message: Message, field: str, default: datetime) -> datetime:
    """The message's Timestamp `field` as utc_time reads it when it is set, else `default`."""
    return utc_time(getattr(message, field), field) if message.HasField(field) else default


MAX_DURATION_SECONDS = 315_576_000_000
"""The most a google.protobuf.Duration may hold: 10,000 years."""


def duration_of(given: Duration, field: str, *, at_most: timedelta) -> timedelta:
    """A caller's Duration as a timedelta; InvalidArgument naming `field` when it is not a valid Duration (seconds
    beyond 10,000 years, nanos outside ±999,999,999 or of the other sign than the seconds) or is longer than
    `at_most`. protobuf's ToTimedelta checks nothing: 10**14 seconds raised OverflowError (INTERNAL), and a resend delay
    of 34,800 years was stored, then overflowed the campaign's follow-up loop at every poll."""
    seconds, nanos = given.seconds, given.nanos
    valid = (
        abs(seconds) <= MAX_DURATION_SECONDS
        and abs(nanos) <= 999_999_999
        and not (seconds and nanos and (seconds > 0) != (nanos > 0))
    )
    if not valid:
        raise InvalidArgument(
            f"{field} (seconds {seconds}, nanos {nanos}) is not a duration: seconds within 10,000 years, nanos within "
            "±999,999,999 and of the seconds' sign",
            field=field,
        )
    if seconds > at_most.total_seconds() or (seconds == at_most.total_seconds() and nanos > 0):
        raise InvalidArgument(f"{field} must be at most {int(at_most.total_seconds())}s", field=field)
    return timedelta(seconds=seconds, microseconds=nanos // 1000)
