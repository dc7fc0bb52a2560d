"""Times callers send as google.protobuf.Timestamp, read so that one outside a Timestamp's range is the caller's error.

protobuf refuses a Timestamp whose seconds fall outside years 1-9999 or whose nanos fall outside 0-999,999,999 with a
bare ValueError when it is read; unhandled, that answered INTERNAL (or failed a whole batch) for a caller's typo.
"""

from datetime import UTC, datetime

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


def utc_time_or(stamp: Timestamp, present: bool, default: datetime, field: str) -> datetime:
    """utc_time when the field is set, else `default`."""
    return utc_time(stamp, field) if present else default
