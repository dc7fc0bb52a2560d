"""Since-attribute windows: validation and the reference evaluator's meaning."""

from datetime import UTC, datetime, timedelta

import pytest

from services.segments.rules import EventCondition, EventRecord, RuleError, SinceWindow, World, members, parse_rule
from services.segments.values import Value
from xsell.segments.v1 import resources_pb2 as r

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SIP = NOW - timedelta(days=40)


def _since(attribute: str, *, performed: bool = True, count: int | None = None) -> r.Rule:
    condition = r.EventCondition(
        event_name="session_start",
        performance=r.PERFORMANCE_PERFORMED if performed else r.PERFORMANCE_NOT_PERFORMED,
        window=r.TimeWindow(since_attribute=attribute),
    )
    if count is not None:
        condition.count.CopyFrom(r.CountComparison(operator=r.OPERATOR_EQUALS, value=count))
    return r.Rule(event=condition)


def test_since_window_parses_to_the_attribute_it_names() -> None:
    tree = parse_rule(_since("last_sip_date"))
    assert isinstance(tree, EventCondition)
    assert tree.window == SinceWindow("last_sip_date")


@pytest.mark.parametrize(("attribute", "fragment"), [("", "since_attribute is required"), ("Last SIP", "snake_case")])
def test_since_window_needs_an_attribute_name(attribute: str, fragment: str) -> None:
    with pytest.raises(RuleError) as raised:
        parse_rule(_since(attribute))
    assert raised.value.path == "segment.rule.event.window.since_attribute"
    assert fragment in raised.value.message
    assert "timestamp attribute" in raised.value.message


WORLD = World(
    attributes={
        "after": {"last_sip_date": Value.timestamp(SIP)},
        "at": {"last_sip_date": Value.timestamp(SIP)},
        "before": {"last_sip_date": Value.timestamp(SIP)},
        "missing": {},
        "text": {"last_sip_date": Value.string("2025-04-22")},
        "later": {"last_sip_date": Value.timestamp(NOW - timedelta(days=1))},
    },
    events={
        "after": [EventRecord("session_start", SIP + timedelta(days=1)), EventRecord("session_start", NOW)],
        "at": [EventRecord("session_start", SIP), EventRecord("sip_registered", SIP + timedelta(days=2))],
        "before": [EventRecord("session_start", SIP - timedelta(microseconds=1))],
        "missing": [EventRecord("session_start", NOW - timedelta(days=1))],
        "text": [EventRecord("session_start", NOW - timedelta(days=1))],
        "later": [EventRecord("session_start", NOW - timedelta(days=2))],
    },
)


def test_events_at_or_after_the_attribute_count() -> None:
    assert members(parse_rule(_since("last_sip_date")), WORLD, NOW) == {"after", "at"}
    assert members(parse_rule(_since("last_sip_date", count=2)), WORLD, NOW) == {"after"}


def test_people_without_a_timestamp_value_have_performed_nothing() -> None:
    assert members(parse_rule(_since("last_sip_date", count=0)), WORLD, NOW) == {"before", "missing", "text", "later"}
    assert members(parse_rule(_since("last_sip_date", performed=False)), WORLD, NOW) == {
        "before",
        "missing",
        "text",
        "later",
    }
