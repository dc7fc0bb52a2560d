"""A caller's Timestamp outside what one may hold is the caller's error, naming the field, not INTERNAL."""

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.errors import InvalidArgument, enum_name
from plumbing.times import duration_of, time_field, utc_time
from xsell.attribution.v1 import service_pb2 as attribution_service
from xsell.campaigns.v1 import resources_pb2

DEFAULT = datetime(2026, 11, 29, tzinfo=UTC)


def test_a_valid_time_reads_as_aware_utc() -> None:
    assert utc_time(Timestamp(seconds=1_764_374_400, nanos=5_000), "occur_time") == datetime(
        2025, 11, 29, 0, 0, 0, 5, tzinfo=UTC
    )
    unset = attribution_service.RecordDisbursementRequest()
    assert time_field(unset, "disburse_time", DEFAULT) is DEFAULT
    given = attribution_service.RecordDisbursementRequest(disburse_time=Timestamp(seconds=1_764_374_400))
    assert time_field(given, "disburse_time", DEFAULT) == datetime(2025, 11, 29, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(2**40, 0), (-(2**40), 0), (253_402_300_800, 0), (0, -1), (0, 1_000_000_000)],
    ids=["far-future", "far-past", "year-10000", "negative-nanos", "a-second-of-nanos"],
)
def test_a_time_no_timestamp_holds_names_the_field_and_the_range(seconds: int, nanos: int) -> None:
    with pytest.raises(InvalidArgument) as raised:
        time_field(
            attribution_service.RecordDisbursementRequest(disburse_time=Timestamp(seconds=seconds, nanos=nanos)),
            "disburse_time",
            DEFAULT,
        )
    assert raised.value.field == "disburse_time"
    assert "from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z" in raised.value.message


@pytest.mark.parametrize(
    ("seconds", "nanos", "says"),
    [
        (10**14, 0, "is not a duration"),
        (2**63 - 1, 0, "is not a duration"),
        (1, -1, "is not a duration"),
        (0, 1_000_000_000, "is not a duration"),
        (10**9, 0, "must be at most 7776000s"),
        (7_776_000, 1, "must be at most 7776000s"),
    ],
)
def test_a_duration_that_is_none_or_too_long_names_the_field(seconds: int, nanos: int, says: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        duration_of(Duration(seconds=seconds, nanos=nanos), "campaign.resend.delay", at_most=timedelta(days=90))
    assert raised.value.field == "campaign.resend.delay"
    assert says in raised.value.message


def test_a_valid_duration_reads_as_a_timedelta() -> None:
    assert duration_of(Duration(seconds=172_800, nanos=5_000), "d", at_most=timedelta(days=90)) == timedelta(
        days=2, microseconds=5
    )
    assert duration_of(Duration(seconds=-1, nanos=-500_000_000), "d", at_most=timedelta(days=1)) == timedelta(
        seconds=-1.5
    )


def test_an_unknown_enum_value_names_the_field_and_the_names() -> None:
    assert enum_name(resources_pb2.CapScope, resources_pb2.CAP_SCOPE_ALL, "cap.scope") == "CAP_SCOPE_ALL"
    with pytest.raises(InvalidArgument) as raised:
        enum_name(resources_pb2.CapScope, 99, "campaign.frequency_caps[0].scope")
    assert raised.value.field == "campaign.frequency_caps[0].scope"
    assert "99 is not one of CAP_SCOPE_UNSPECIFIED" in raised.value.message
