"""Campaign IDs: format, the month in the campaign's zone, and sequence blocks."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from plumbing.errors import InvalidArgument
from services.campaigns.campaign_ids import (
    SequenceBlock,
    format_campaign_id,
    month_code,
    normalise_programme,
    normalise_trigger_code,
    parse_campaign_id,
)


def test_format_matches_the_institutions_records() -> None:
    assert format_campaign_id("CSELL", "NOV", "T06", 884) == "CSELL-NOV-T06-0884"


def test_sequence_is_padded_to_four_digits_and_grows_past_9999() -> None:
    assert format_campaign_id("CSELL", "JAN", "T00", 1) == "CSELL-JAN-T00-0001"
    assert format_campaign_id("CSELL", "JAN", "T00", 9999) == "CSELL-JAN-T00-9999"
    assert format_campaign_id("CSELL", "JAN", "T00", 10000) == "CSELL-JAN-T00-10000"


def test_sequence_starts_at_one() -> None:
    with pytest.raises(ValueError):
        format_campaign_id("CSELL", "JAN", "T00", 0)


def test_parse_round_trips_and_rejects_malformed_ids() -> None:
    parts = parse_campaign_id("CSELL-NOV-T06-0884")
    assert parts is not None
    assert (parts.programme, parts.month, parts.trigger_code, parts.sequence) == ("CSELL", "NOV", "T06", 884)
    assert parse_campaign_id("CSELL-NOV-T06-12345") is not None
    for bad in ("CSELL-XYZ-T06-0884", "csell-NOV-T06-0884", "CSELL-NOV-T6-0884", "CSELL-NOV-T06-884", "C-NOV-T06-0001"):
        assert parse_campaign_id(bad) is None


def test_month_is_read_in_the_campaigns_time_zone() -> None:
    # 31 Oct 20:00 UTC is 1 Nov 01:30 in India: an Indian campaign's outreaches are NOV.
    instant = datetime(2026, 10, 31, 20, 0, tzinfo=UTC)
    assert month_code(instant, "Asia/Kolkata") == "NOV"
    assert month_code(instant, "UTC") == "OCT"
    # and the other way round: 1 Dec 03:00 UTC is still 30 Nov in New York.
    assert month_code(datetime(2026, 12, 1, 3, 0, tzinfo=UTC), "America/New_York") == "NOV"


def test_month_at_the_exact_local_midnight_belongs_to_the_new_month() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    assert month_code(datetime(2027, 1, 1, 0, 0, tzinfo=ist), "Asia/Kolkata") == "JAN"
    assert month_code(datetime(2026, 12, 31, 23, 59, 59, tzinfo=ist), "Asia/Kolkata") == "DEC"


def test_year_end_in_utc_is_already_january_in_india() -> None:
    assert month_code(datetime(2026, 12, 31, 18, 30, tzinfo=UTC), "Asia/Kolkata") == "JAN"
    assert month_code(datetime(2026, 12, 31, 18, 29, tzinfo=UTC), "Asia/Kolkata") == "DEC"


def test_every_month_has_its_english_abbreviation() -> None:
    months = [month_code(datetime(2026, m, 15, tzinfo=UTC), "UTC") for m in range(1, 13)]
    assert months == ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError):
        month_code(datetime(2026, 11, 1), "Asia/Kolkata")


def test_programme_and_trigger_defaults_and_rules() -> None:
    assert normalise_programme("") == "CSELL"
    assert normalise_programme("UPSELL") == "UPSELL"
    assert normalise_trigger_code("") == "T00"
    assert normalise_trigger_code("T06") == "T06"
    for bad in ("C", "csell", "CSELL1", "ABCDEFGHIJK", "CS-LL"):
        with pytest.raises(InvalidArgument) as error:
            normalise_programme(bad)
        assert error.value.field == "campaign.programme"
    for bad in ("T6", "T006", "X06", "t06"):
        with pytest.raises(InvalidArgument) as error:
            normalise_trigger_code(bad)
        assert error.value.field == "campaign.trigger_code"


def test_sequence_block_from_the_counter_update() -> None:
    block = SequenceBlock.ending_at(last=1000, size=3)
    assert (block.first, block.last, len(block)) == (998, 1000, 3)
    assert list(block.numbers()) == [998, 999, 1000]
