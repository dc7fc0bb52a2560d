"""The mapping between channels records and protobuf messages."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.channels import convert


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 11, 27, 17, 30, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 11, 27, 12, 0, 0, 999999),  # naive: UTC, as FromDatetime reads it
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch: negative seconds, positive nanos
        datetime(1970, 1, 1, tzinfo=UTC),
    ],
)
def test_a_timestamp_is_what_from_datetime_makes(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert convert.timestamp(value) == expected
