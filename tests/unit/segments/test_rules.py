"""Rule validation paths and the reference evaluator's meaning of each kind of condition."""

from datetime import UTC, datetime, timedelta

import pytest

from services.segments.rules import (
    AllOf,
    EventRecord,
    RuleError,
    SegmentReference,
    World,
    dependency_order,
    inputs,
    members,
    parse_rule,
)
from services.segments.values import Value
from tests.unit.segments.builders import (
    all_,
    any_,
    attr,
    b,
    event,
    money,
    n,
    not_,
    prop,
    s,
    segment,
    sip_only,
    ss,
)
from xsell.segments.v1 import resources_pb2 as r

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _nested(depth: int) -> r.Rule:
    rule = attr("x", "EXISTS")
    for _ in range(depth):
        rule = not_(rule)
    return rule


@pytest.mark.parametrize(
    ("rule", "path", "fragment"),
    [
        (r.Rule(), "segment.rule", "rule has no kind"),
        (all_(), "segment.rule.all.rules", "AND group needs at least one rule"),
        (not_(any_()), "segment.rule.negate.any.rules", "OR group needs at least one rule"),
        (
            all_(event("sip_registered", days=365), event("lumpsum_invested", days=0)),
            "segment.rule.all.rules[1].event.window.last",
            "positive duration",
        ),
        (
            attr("total_aum", "BETWEEN", n(1)),
            "segment.rule.attribute.values",
            "OPERATOR_BETWEEN needs exactly 2 values",
        ),
        (attr("total_aum", "BETWEEN", n(5), n(1)), "segment.rule.attribute.values", "lower bound must not exceed"),
        (
            attr("total_aum", "BETWEEN", n(1), money(5)),
            "segment.rule.attribute.values",
            "bounds must be of one kind",
        ),
        (attr("Total AUM", "EXISTS"), "segment.rule.attribute.attribute", "lower_snake_case"),
        (attr("", "EXISTS"), "segment.rule.attribute.attribute", "attribute is required"),
        (attr("plan_type", "UNSPECIFIED", s("x")), "segment.rule.attribute.operator", "operator is required"),
        (
            attr("plan_type", "EXISTS", s("x")),
            "segment.rule.attribute.values",
            "OPERATOR_EXISTS takes no values, got 1",
        ),
        (attr("plan_type", "EQUALS"), "segment.rule.attribute.values", "OPERATOR_EQUALS needs exactly 1 value, got 0"),
        (attr("plan_type", "EQUALS", s("a"), s("b")), "segment.rule.attribute.values", "use OPERATOR_IN"),
        (attr("plan_type", "IN"), "segment.rule.attribute.values", "OPERATOR_IN needs 1 to 1000 values, got 0"),
        (attr("plan_type", "EQUALS", r.Value()), "segment.rule.attribute.values[0]", "value is empty"),
        (attr("plan_type", "EQUALS", n(float("nan"))), "segment.rule.attribute.values[0]", "finite"),
        (attr("plan_type", "GREATER_THAN", s("a")), "segment.rule.attribute.values[0]", "needs a number_value"),
        (attr("fund_categories", "CONTAINS_ANY", n(1)), "segment.rule.attribute.values[0]", "needs string_value"),
        (attr("fund_categories", "IN", ss("a")), "segment.rule.attribute.values[0]", "single values"),
        (attr("fund_categories", "EQUALS", ss()), "segment.rule.attribute.values[0]", "at least one value"),
        (attr("fund_categories", "CONTAINS", s("")), "segment.rule.attribute.values[0]", "non-empty string_value"),
        (attr("amount", "EQUALS", money(1, "rupees")), "segment.rule.attribute.values[0]", "ISO 4217"),
        (event(""), "segment.rule.event.event_name", "event_name is required"),
        (event("SIP Registered"), "segment.rule.event.event_name", "lower_snake_case"),
        (
            r.Rule(event=r.EventCondition(event_name="sip_registered")),
            "segment.rule.event.performance",
            "PERFORMANCE_PERFORMED or PERFORMANCE_NOT_PERFORMED",
        ),
        (
            event("session_start", count=("GREATER_THAN", 3)),
            "segment.rule.event.count.operator",
            "OPERATOR_GREATER_THAN cannot compare counts",
        ),
        (event("session_start", count=("BETWEEN", 5, 2)), "segment.rule.event.count.upper_value", "at least value"),
        (event("session_start", count=("EQUALS", 2, 3)), "segment.rule.event.count.upper_value", "only used with"),
        (event("session_start", count=("EQUALS", -1)), "segment.rule.event.count.value", "zero or more"),
        (
            event("sip_registered", between=(NOW, NOW - timedelta(days=1))),
            "segment.rule.event.window.between.end_time",
            "after start_time",
        ),
        (
            event("txn", filters=[prop("tags", "CONTAINS_ANY", s("a"))]),
            "segment.rule.event.property_filters[0].values[0]",
            "not to event properties",
        ),
        (
            event("txn", filters=[prop("amount", "GREATER_OR_EQUAL", n(1)), prop("Amc", "EXISTS")]),
            "segment.rule.event.property_filters[1].property",
            "lower_snake_case",
        ),
        (segment(""), "segment.rule.segment.segment_id", "segment_id is required"),
        (_nested(20), "segment.rule" + ".negate" * 16, "at most 16 levels"),
    ],
)
def test_invalid_rule_points_at_the_offending_node(rule: r.Rule, path: str, fragment: str) -> None:
    with pytest.raises(RuleError) as raised:
        parse_rule(rule)
    assert raised.value.path == path
    assert fragment in raised.value.message


def test_a_window_time_outside_what_a_timestamp_holds_points_at_it() -> None:
    rule = event("sip_registered", between=(NOW - timedelta(days=1), NOW))
    rule.event.window.between.end_time.nanos = -1
    with pytest.raises(RuleError) as raised:
        parse_rule(rule)
    assert raised.value.path == "segment.rule.event.window.between.end_time"
    assert "nanos from 0 to 999,999,999" in raised.value.message


def test_event_window_without_kind_is_rejected() -> None:
    rule = event("sip_registered")
    rule.event.window.SetInParent()
    with pytest.raises(RuleError) as raised:
        parse_rule(rule)
    assert raised.value.path == "segment.rule.event.window"
    assert "last or between" in raised.value.message


def test_valid_rule_becomes_a_domain_tree_with_reference_paths() -> None:
    tree = parse_rule(all_(sip_only(), not_(segment("seg_hni"))))
    assert isinstance(tree, AllOf)
    reference = tree.rules[1].rule  # type: ignore[union-attr]
    assert reference == SegmentReference("seg_hni")
    assert reference.path == "segment.rule.all.rules[1].negate.segment.segment_id"


def _days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def test_sip_only_investors() -> None:
    world = World(
        attributes={"sip": {}, "both": {}, "old_lumpsum": {}, "lumpsum": {}, "stale_sip": {}, "nothing": {}},
        events={
            "sip": [EventRecord("sip_registered", _days_ago(10))],
            "both": [EventRecord("sip_registered", _days_ago(10)), EventRecord("lumpsum_invested", _days_ago(100))],
            "old_lumpsum": [
                EventRecord("sip_registered", _days_ago(364)),
                EventRecord("lumpsum_invested", _days_ago(366)),
            ],
            "lumpsum": [EventRecord("lumpsum_invested", _days_ago(1))],
            "stale_sip": [EventRecord("sip_registered", _days_ago(400))],
        },
    )
    assert members(parse_rule(sip_only()), world, NOW) == {"sip", "old_lumpsum"}


def test_negative_operators_match_people_without_the_attribute() -> None:
    world = World(
        attributes={
            "regular": {"plan_type": Value.string("Regular")},
            "direct": {"plan_type": Value.string("Direct")},
            "unknown": {},
            "numeric": {"plan_type": Value.num(1)},
        }
    )
    assert members(parse_rule(attr("plan_type", "NOT_EQUALS", s("Regular"))), world, NOW) == {
        "direct",
        "unknown",
        "numeric",
    }
    assert members(parse_rule(attr("plan_type", "NOT_CONTAINS", s("Reg"))), world, NOW) == {
        "direct",
        "unknown",
        "numeric",
    }
    assert members(parse_rule(attr("plan_type", "NOT_EXISTS")), world, NOW) == {"unknown"}
    assert members(parse_rule(attr("plan_type", "IN", s("Direct"), n(1))), world, NOW) == {"direct", "numeric"}


def test_string_set_operators() -> None:
    world = World(
        attributes={
            "equity": {"fund_categories": Value.string_set({"Equity"})},
            "mixed": {"fund_categories": Value.string_set({"Equity", "ELSS", "Debt"})},
            "empty": {"fund_categories": Value.string_set(set())},
            "none": {},
        }
    )

    def who(rule: r.Rule) -> set[str]:
        return members(parse_rule(rule), world, NOW)

    assert who(attr("fund_categories", "EQUALS", ss("Equity"))) == {"equity"}
    assert who(attr("fund_categories", "CONTAINS", s("ELSS"))) == {"mixed"}
    assert who(attr("fund_categories", "NOT_CONTAINS", s("ELSS"))) == {"equity", "empty", "none"}
    assert who(attr("fund_categories", "CONTAINS_ANY", s("Debt"), s("Equity"))) == {"equity", "mixed"}
    assert who(attr("fund_categories", "CONTAINS_ALL", s("Debt"), s("Equity"))) == {"mixed"}
    assert who(attr("fund_categories", "CONTAINS_NONE", s("Debt"))) == {"equity", "empty", "none"}
    assert who(attr("fund_categories", "EXISTS")) == {"equity", "mixed", "empty"}


def test_comparisons_respect_kind_and_currency() -> None:
    world = World(
        attributes={
            "rich": {"total_aum": Value.money(5_000_000_00, "INR")},
            "usd": {"total_aum": Value.money(5_000_000_00, "USD")},
            "small": {"total_aum": Value.money(10_000_00, "INR")},
            "number": {"total_aum": Value.num(5_000_000_00)},
        }
    )
    assert members(parse_rule(attr("total_aum", "GREATER_OR_EQUAL", money(1_000_000_00))), world, NOW) == {"rich"}
    assert members(parse_rule(attr("total_aum", "BETWEEN", money(0), money(10_000_00))), world, NOW) == {"small"}
    assert members(parse_rule(attr("has_stp", "EQUALS", b(False))), world, NOW) == set()


def test_event_counts_windows_and_property_filters() -> None:
    world = World(
        attributes={"engaged": {}, "once": {}, "big": {}, "small": {}},
        events={
            "engaged": [EventRecord("session_start", _days_ago(d)) for d in (1, 2, 3)],
            "once": [EventRecord("session_start", _days_ago(1)), EventRecord("session_start", _days_ago(40))],
            "big": [EventRecord("transaction_success", _days_ago(5), {"amount": Value.num(150000)})],
            "small": [EventRecord("transaction_success", _days_ago(5), {"amount": Value.num(5000)})],
        },
    )

    def who(rule: r.Rule) -> set[str]:
        return members(parse_rule(rule), world, NOW)

    assert who(event("session_start", days=30, count=("GREATER_OR_EQUAL", 3))) == {"engaged"}
    assert who(event("session_start", days=30, count=("EQUALS", 1))) == {"once"}
    assert who(event("session_start", days=30, count=("LESS_OR_EQUAL", 1))) == {"once", "big", "small"}
    assert who(event("session_start", count=("BETWEEN", 2, 2))) == {"once"}
    assert who(event("session_start", performed=False, days=30, count=("GREATER_OR_EQUAL", 3))) == {
        "once",
        "big",
        "small",
    }
    big = prop("amount", "GREATER_OR_EQUAL", n(100000))
    assert who(event("transaction_success", days=30, filters=[big])) == {"big"}
    assert who(event("transaction_success", filters=[prop("amount", "NOT_EQUALS", n(5000))])) == {"big"}
    assert who(event("transaction_success", filters=[prop("amc", "NOT_EXISTS")])) == {"big", "small"}
    window = (_days_ago(5), _days_ago(1))
    assert who(event("session_start", between=window)) == {"engaged"}


def test_segment_references_use_memberships() -> None:
    world = World(attributes={"a": {}, "b": {}}, memberships={"seg_1": {"a"}})
    assert members(parse_rule(segment("seg_1")), world, NOW) == {"a"}
    assert members(parse_rule(not_(segment("seg_1"))), world, NOW) == {"b"}


def test_dependency_order_puts_referenced_segments_first() -> None:
    rules = {
        "seg_a": parse_rule(all_(segment("seg_c"), segment("seg_b"))),
        "seg_b": parse_rule(segment("seg_c")),
        "seg_c": parse_rule(attr("x", "EXISTS")),
        "seg_d": parse_rule(segment("seg_gone")),
    }
    order = dependency_order(rules)
    assert sorted(order) == sorted(rules)
    assert order.index("seg_c") < order.index("seg_b") < order.index("seg_a")


def test_a_rule_names_everything_it_reads_so_refresh_can_skip_the_rest() -> None:
    since = event("sip_registered")
    since.event.window.since_attribute = "kyc_completed_at"
    rule = all_(
        attr("investment_type", "EQUALS", s("SIP")),
        any_(not_(segment("engaged")), event("transaction_success", days=90, filters=[prop("amc", "EXISTS")])),
        since,
    )
    found = inputs(parse_rule(rule))
    assert found.events == {"transaction_success", "sip_registered"}
    assert found.attributes == {"investment_type", "kyc_completed_at"}
    assert found.segments == {"engaged"}


def test_a_rule_wider_than_max_rules_is_refused_before_anything_reads_it() -> None:
    """1,200 conditions could be approved and never published (SQLite's expression depth); a preview's cost grows with
    the square of the width."""
    from services.segments.rules import MAX_RULES

    wide = r.Rule(all=r.RuleGroup(rules=[event("session_start") for _ in range(MAX_RULES)]))
    with pytest.raises(RuleError) as raised:
        parse_rule(wide)
    assert raised.value.path == "segment.rule"
    assert f"at most {MAX_RULES} rules" in raised.value.message
    fits = r.Rule(all=r.RuleGroup(rules=[event("session_start") for _ in range(MAX_RULES - 1)]))
    assert parse_rule(fits)
