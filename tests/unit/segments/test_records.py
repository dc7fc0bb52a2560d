"""Per-record validation of profile and event batches."""

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from services.segments.catalog import Catalog, Definition
from services.segments.records import validate_events, validate_profiles
from services.segments.values import Kind, Value
from tests.unit.segments.builders import n, s, ss
from xsell.segments.v1 import resources_pb2 as r

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CATALOG = Catalog(
    Definition(name, kind, "", False)
    for name, kind in [
        ("investment_type", Kind.STRING),
        ("total_aum", Kind.MONEY),
        ("number_of_schemes", Kind.NUMBER),
        ("fund_categories", Kind.STRING_SET),
        ("kyc_time", Kind.TIMESTAMP),
    ]
)


def _event(event_id: str, occur: datetime | None, name: str = "sip_registered", profile_id: str = "p1") -> r.Event:
    e = r.Event(event_id=event_id, profile_id=profile_id, name=name)
    if occur is not None:
        e.occur_time.FromDatetime(occur)
    return e


def test_bad_profiles_are_reported_one_by_one_and_good_ones_kept() -> None:
    batch = [
        r.Profile(profile_id="p1", attributes={"investment_type": s("SIP")}),
        r.Profile(profile_id="", attributes={"investment_type": s("SIP")}),
        r.Profile(profile_id="p3", attributes={"total_aum": r.Value()}),
        r.Profile(profile_id="p4", attributes={"Total-AUM": n(1)}),
        r.Profile(profile_id="x" * 129),
        r.Profile(profile_id="p6", attributes={"number_of_schemes": n(float("inf"))}),
        r.Profile(profile_id="p1", attributes={"fund_categories": ss("Equity"), "investment_type": s("Both")}),
    ]
    updates, problems = validate_profiles(batch, CATALOG)
    assert [(p.index, p.record_id, p.field) for p in problems] == [
        (1, "", "profiles[1].profile_id"),
        (2, "p3", "profiles[2].attributes.total_aum"),
        (3, "p4", "profiles[3].attributes.Total-AUM"),
        (4, "x" * 128, "profiles[4].profile_id"),
        (5, "p6", "profiles[5].attributes.number_of_schemes"),
    ]
    assert "value is empty" in problems[1].reason
    assert "lower_snake_case" in problems[2].reason
    assert "at most 128" in problems[3].reason
    # The two records of p1 merge, the later one winning for the attribute both name.
    assert [(u.profile_id, u.attributes) for u in updates] == [
        ("p1", {"investment_type": Value.string("Both"), "fund_categories": Value.string_set({"Equity"})})
    ]


def test_bad_events_are_reported_with_the_field_and_a_valid_alternative() -> None:
    batch = [
        _event("e1", NOW - timedelta(days=1)),
        _event("e2", None),
        _event("e3", NOW + timedelta(minutes=10)),
        _event("e4", NOW - timedelta(days=800)),
        _event("e5", NOW, name="SIP registered"),
        _event("", NOW),
        _event("e7", NOW, profile_id=""),
        _event("e1", NOW - timedelta(days=2)),
        _event("e9", NOW + timedelta(minutes=4)),
    ]
    accepted, problems = validate_events(batch, NOW, retention=timedelta(days=730), future_skew=timedelta(minutes=5))
    assert [(p.index, p.field) for p in problems] == [
        (1, "events[1].occur_time"),
        (2, "events[2].occur_time"),
        (3, "events[3].occur_time"),
        (4, "events[4].name"),
        (5, "events[5].event_id"),
        (6, "events[6].profile_id"),
    ]
    assert "in the future" in problems[1].reason
    assert "730-day retention" in problems[2].reason
    # A repeated id in the same batch is accepted once, as the first occurrence.
    assert [(e.event_id, e.occurred_at) for e in accepted] == [
        ("e1", NOW - timedelta(days=1)),
        ("e9", NOW + timedelta(minutes=4)),
    ]


def test_event_properties_are_validated() -> None:
    e = _event("e1", NOW)
    e.properties["amount"].CopyFrom(r.Value())
    _, problems = validate_events([e], NOW, retention=timedelta(days=730), future_skew=timedelta(minutes=5))
    assert [(p.field, p.record_id) for p in problems] == [("events[0].properties.amount", "e1")]


def test_a_timestamp_outside_what_one_may_hold_is_that_records_problem_and_the_others_are_kept() -> None:
    """protobuf refuses to read seconds past year 9999 or nanos outside 0-999,999,999 with a bare ValueError, which
    failed the whole batch with INTERNAL."""
    batch = [
        r.Profile(profile_id="p1", attributes={"kyc_time": r.Value(timestamp_value=Timestamp(seconds=2**40))}),
        r.Profile(profile_id="p2", attributes={"kyc_time": r.Value(timestamp_value=Timestamp(seconds=0, nanos=-1))}),
        r.Profile(profile_id="p3", attributes={"investment_type": s("SIP")}),
    ]
    updates, problems = validate_profiles(batch, CATALOG)
    assert [(p.record_id, p.field) for p in problems] == [
        ("p1", "profiles[0].attributes.kyc_time"),
        ("p2", "profiles[1].attributes.kyc_time"),
    ]
    assert all("it must lie from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z" in p.reason for p in problems)
    assert [u.profile_id for u in updates] == ["p3"]


def test_an_event_time_outside_what_a_timestamp_holds_is_that_events_problem() -> None:
    events = [_event("good1", NOW - timedelta(days=1)), _event("bad", None), _event("bad2", None)]
    events[1].occur_time.seconds = 2**40
    events[2].occur_time.nanos = -1
    accepted, problems = validate_events(events, NOW, retention=timedelta(days=400), future_skew=timedelta(minutes=5))
    assert [e.event_id for e in accepted] == ["good1"]
    assert [(p.record_id, p.field) for p in problems] == [
        ("bad", "events[1].occur_time"),
        ("bad2", "events[2].occur_time"),
    ]


def test_an_id_of_spaces_or_with_a_control_character_is_that_records_problem() -> None:
    batch = [
        r.Profile(profile_id="   ", attributes={"investment_type": s("SIP")}),
        r.Profile(profile_id="a\x00\x1bb", attributes={"investment_type": s("SIP")}),
        r.Profile(profile_id="p-ok", attributes={"investment_type": s("SIP")}),
    ]
    updates, problems = validate_profiles(batch, CATALOG)
    assert [(p.index, p.field) for p in problems] == [(0, "profiles[0].profile_id"), (1, "profiles[1].profile_id")]
    assert "only spaces" in problems[0].reason and "control character" in problems[1].reason
    assert [u.profile_id for u in updates] == ["p-ok"]


def test_a_text_value_holding_a_nul_is_that_records_problem_and_the_others_are_kept() -> None:
    """PostgreSQL refuses a NUL in text: one such attribute or property failed the whole batch there."""
    profiles = [
        r.Profile(profile_id="p1", attributes={"investment_type": s("SIP")}),
        r.Profile(profile_id="p2", attributes={"investment_type": s("S\x00IP")}),
        r.Profile(profile_id="p3", attributes={"fund_categories": ss("Equity", "Debt\x00")}),
    ]
    updates, problems = validate_profiles(profiles, CATALOG)
    assert [u.profile_id for u in updates] == ["p1"]
    assert [(p.index, p.field) for p in problems] == [
        (1, "profiles[1].attributes.investment_type"),
        (2, "profiles[2].attributes.fund_categories"),
    ]
    assert "NUL" in problems[0].reason
    event = _event("e1", NOW - timedelta(hours=1))
    event.properties["amc"].string_value = "HDFC\x00"
    _, event_problems = validate_events([event], NOW, retention=timedelta(days=730), future_skew=timedelta(minutes=5))
    assert [p.field for p in event_problems] == ["events[0].properties.amc"]
