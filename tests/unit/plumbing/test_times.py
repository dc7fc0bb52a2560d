"""A caller's Timestamp outside what one may hold is the caller's error, naming the field, not INTERNAL."""

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.errors import InvalidArgument
from plumbing.times import utc_time, utc_time_or

DEFAULT = datetime(2026, 11, 29, tzinfo=UTC)


def test_a_valid_time_reads_as_aware_utc() -> None:
    assert utc_time(Timestamp(seconds=1_764_374_400, nanos=5_000), "occur_time") == datetime(
        2025, 11, 29, 0, 0, 0, 5, tzinfo=UTC
    )
    assert utc_time_or(Timestamp(), False, DEFAULT, "occur_time") is DEFAULT


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(2**40, 0), (-(2**40), 0), (253_402_300_800, 0), (0, -1), (0, 1_000_000_000)],
    ids=["far-future", "far-past", "year-10000", "negative-nanos", "a-second-of-nanos"],
)
def test_a_time_no_timestamp_holds_names_the_field_and_the_range(seconds: int, nanos: int) -> None:
    with pytest.raises(InvalidArgument) as raised:
        utc_time_or(Timestamp(seconds=seconds, nanos=nanos), True, DEFAULT, "disburse_time")
    assert raised.value.field == "disburse_time"
    assert "from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z" in raised.value.message
