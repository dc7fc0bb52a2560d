"""Profile and event files: JSON Lines and CSV map onto the protos, and every unreadable line is named by number."""

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cli.loading import batches
from cli.record_files import (
    Line,
    RecordFileError,
    csv_has_untyped_columns,
    file_format,
    local_field,
    parse_records,
)
from xsell.segments.v1 import resources_pb2 as r
from xsell.type.v1 import money_pb2

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def _json(*lines: str, kind: str = "profiles") -> tuple[list[Line], list[tuple[int, str, str, str]]]:
    records, refusals = parse_records(io.StringIO("\n".join(lines) + "\n"), kind, fmt="jsonl", now=NOW)  # type: ignore[arg-type]
    return records, [(x.line, x.record_id, x.field, x.reason) for x in refusals]


def test_a_profile_line_carries_every_value_shorthand() -> None:
    (line,), refused = _json(
        '{"profile_id": "p1", "attributes": {"first_name": "Asha", "number_of_schemes": 2, "has_stp": false,'
        ' "fund_categories": ["Equity", "Debt"], "total_aum": {"inr": 250000.5}, "held": {"paise": 120},'
        ' "usd": {"minor_units": 500, "currency": "USD"}, "last_sip": {"timestamp": "2025-04-01T09:00:00+05:30"}}}'
    )
    assert refused == []
    profile = line.record
    assert isinstance(profile, r.Profile) and (line.number, profile.profile_id) == (1, "p1")
    values = profile.attributes
    assert values["first_name"] == r.Value(string_value="Asha")
    assert values["number_of_schemes"] == r.Value(number_value=2)
    assert values["has_stp"] == r.Value(bool_value=False)
    assert list(values["fund_categories"].string_set_value.values) == ["Equity", "Debt"]
    assert values["total_aum"].money_value == money_pb2.Money(minor_units=25000050, currency_code="INR")
    assert values["held"].money_value == money_pb2.Money(minor_units=120, currency_code="INR")
    assert values["usd"].money_value == money_pb2.Money(minor_units=500, currency_code="USD")
    assert values["last_sip"].timestamp_value.ToDatetime(tzinfo=UTC) == datetime(2025, 4, 1, 3, 30, tzinfo=UTC)


def test_an_event_time_may_be_an_age_counted_back_from_the_load() -> None:
    (ago, exact), refused = _json(
        '{"event_id": "e1", "profile_id": "p1", "name": "sip_registered", "occur_time": "30d ago",'
        ' "properties": {"amount": {"inr": 5000}, "amc": "Axis"}}',
        '{"event_id": "e2", "profile_id": "p1", "name": "session_start", "occur_time": "2025-11-01T10:00:00Z"}',
        kind="events",
    )
    assert refused == []
    assert isinstance(ago.record, r.Event) and isinstance(exact.record, r.Event)
    assert ago.record.occur_time.ToDatetime(tzinfo=UTC) == NOW - timedelta(days=30)
    assert ago.record.properties["amc"].string_value == "Axis"
    assert exact.record.occur_time.ToDatetime(tzinfo=UTC) == datetime(2025, 11, 1, 10, tzinfo=UTC)


def test_unreadable_lines_are_refused_by_number_and_the_rest_kept() -> None:
    records, refused = _json(
        '{"profile_id": "p1", "attributes": {"tier": "HNI"}}',
        "",
        '{"profile_id": "p2", "attributes": {"tier": "HNI"}',
        '{"profile_id": "p3", "atributes": {}}',
        '{"profile_id": "p4", "attributes": {"total_aum": {"inr": 1.005}}}',
        '{"profile_id": "p5", "attributes": {"age": null}}',
        '["p6"]',
        '{"attributes": {"tier": "HNI"}}',
        '{"profile_id": "p9", "attributes": {"tier": "Premium"}}',
    )
    assert [line.number for line in records] == [1, 9]
    assert [(line, record_id, field) for line, record_id, field, _ in refused] == [
        (3, "", ""),
        (4, "p3", "atributes"),
        (5, "p4", "attributes.total_aum.inr"),
        (6, "p5", "attributes.age"),
        (7, "", ""),
        (8, "", "profile_id"),
    ]
    reasons = {line: reason for line, _, _, reason in refused}
    assert reasons[3].startswith("not valid JSON")
    assert "unknown field 'atributes'" in reasons[4]
    assert "at most 2 decimals" in reasons[5]
    assert "leave a value out" in reasons[6]
    assert reasons[8] == "profile_id is required"


def test_a_bad_event_time_says_both_forms() -> None:
    _, refused = _json(
        '{"event_id": "e1", "profile_id": "p1", "name": "x", "occur_time": "2025-11-01 10:00"}', kind="events"
    )
    assert refused == [
        (
            1,
            "e1",
            "occur_time",
            "an ISO 8601 time with a zone (2025-04-01T09:00:00+05:30) or e.g. '30d ago', got '2025-11-01 10:00'",
        )
    ]


def test_csv_columns_take_the_header_type_then_the_catalog_then_text() -> None:
    text = io.StringIO(
        "profile_id,first_name,total_aum,number_of_schemes:number,fund_categories:string_set,has_stp:boolean\n"
        "p1,Asha,250000,2,Equity|Debt,yes\n"
        "p2,Ravi,,,,\n"
        "p3,Meera,lots,1,,no\n"
        "p4,Dev,100\n"
    )
    records, refused = parse_records(
        text, "profiles", fmt="csv", now=NOW, catalog={"total_aum": "inr", "first_name": "string"}, source="p.csv"
    )
    assert [line.number for line in records] == [2, 3]
    first, second = (line.record for line in records)
    assert isinstance(first, r.Profile) and isinstance(second, r.Profile)
    assert first.attributes["total_aum"].money_value.minor_units == 25_000_000
    assert first.attributes["number_of_schemes"].number_value == 2
    assert list(first.attributes["fund_categories"].string_set_value.values) == ["Equity", "Debt"]
    assert first.attributes["has_stp"].bool_value is True
    assert dict(second.attributes) == {"first_name": r.Value(string_value="Ravi")}, "empty cells are left out"
    assert [(x.line, x.record_id, x.field) for x in refused] == [(4, "p3", "total_aum"), (5, "p4", "")]
    assert refused[1].reason == "3 cells, the header has 6"


def test_csv_events_need_their_own_columns() -> None:
    with pytest.raises(RecordFileError, match=r"e\.csv:1: the header lacks occur_time"):
        parse_records(io.StringIO("event_id,profile_id,name\n"), "events", fmt="csv", now=NOW, source="e.csv")
    with pytest.raises(RecordFileError, match="the type is one of"):
        parse_records(io.StringIO("profile_id,age:int\n"), "profiles", fmt="csv", now=NOW, source="p.csv")
    (line,), _ = parse_records(
        io.StringIO("event_id,profile_id,name,occur_time,amount:inr,amc\ne1,p1,transaction_success,2h ago,500,Axis\n"),
        "events",
        fmt="csv",
        now=NOW,
    )
    assert isinstance(line.record, r.Event)
    assert line.record.occur_time.ToDatetime(tzinfo=UTC) == NOW - timedelta(hours=2)
    assert line.record.properties["amount"].money_value.minor_units == 50_000
    assert line.record.properties["amc"].string_value == "Axis"
    assert csv_has_untyped_columns(["event_id", "profile_id", "name", "occur_time", "amount:inr"], "events") is False
    assert csv_has_untyped_columns(["profile_id", "total_aum"], "profiles") is True


def test_service_field_paths_read_as_the_file_names_them() -> None:
    assert local_field("profiles[3].attributes.total_aum", csv_columns=False) == "attributes.total_aum"
    assert local_field("profiles[3].attributes.total_aum", csv_columns=True) == "total_aum"
    assert local_field("events[0].occur_time", csv_columns=True) == "occur_time"


def test_the_format_comes_from_the_name_or_the_flag() -> None:
    assert file_format(Path("a.jsonl"), None) == "jsonl"
    assert file_format(Path("a.CSV"), None) == "csv"
    assert file_format(Path("a.txt"), "csv") == "csv"
    with pytest.raises(RecordFileError, match="--format"):
        file_format(Path("a.txt"), None)


def test_batches_hold_at_most_the_size_and_keep_the_order() -> None:
    lines = [Line(n, r.Profile(profile_id=f"p{n}")) for n in range(1, 8)]
    assert [[line.number for line in batch] for batch in batches(lines, 3)] == [[1, 2, 3], [4, 5, 6], [7]]
    big = [Line(n, r.Profile(profile_id="x" * 100)) for n in range(4)]
    assert [len(batch) for batch in batches(big, 1000, max_bytes=250)] == [2, 2]


def test_times_amounts_and_nesting_past_what_can_be_read_are_that_lines_problem() -> None:
    """Each escaped as a traceback that ended the whole load (OverflowError, RecursionError), or was kept as 0 paise."""
    records, refused = _json(
        '{"event_id": "e1", "profile_id": "p1", "name": "sip", "occur_time": "800000d ago"}',
        '{"event_id": "e2", "profile_id": "p1", "name": "sip", "occur_time": "99999999999d ago"}',
        '{"event_id": "e3", "profile_id": "p1", "name": "sip", "occur_time": "0001-01-01T00:00:00+05:30"}',
        '{"event_id": "e4", "profile_id": "p1", "name": "sip", "occur_time": "1d ago", '
        '"properties": {"amount": {"inr": "1e-999999999999"}}}',
        "[" * 100_000 + "]" * 100_000,
        '{"event_id": "e6", "profile_id": "p1", "name": "sip", "occur_time": "1d ago"}',
        kind="events",
    )
    assert [line.number for line in records] == [6]
    assert [(line, field) for line, _, field, _ in refused] == [
        (1, "occur_time"),
        (2, "occur_time"),
        (3, "occur_time"),
        (4, "properties.amount.inr"),
        (5, ""),
    ]
    assert "at most 2 decimals" in refused[3][3] and "nested too deep" in refused[4][3]


def test_a_csv_header_naming_a_column_twice_is_refused() -> None:
    """One of the two cells was dropped without a word."""
    with pytest.raises(RecordFileError, match=r"p\.csv:1: the header names city more than once"):
        parse_records(
            io.StringIO("profile_id,city,city\np1,Pune,Mumbai\n"), "profiles", fmt="csv", now=NOW, source="p.csv"
        )
