"""Segment files: each form parses to its proto rule and renders back the same; errors point into the file."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration

from services.segments.rule_files import (
    RuleFileError,
    SegmentFile,
    load_segment_file,
    parse_segment_text,
    render_segment_text,
    rule_from_data,
    rule_to_data,
)
from tests.unit.segments.builders import all_, any_, attr, b, event, money, n, not_, prop, s, segment, ss, ts
from xsell.segments.v1 import resources_pb2 as r

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "segments"
APRIL = datetime(2025, 4, 1, tzinfo=UTC)
JULY = datetime(2025, 7, 1, tzinfo=UTC)


def _rule(text: str) -> r.Rule:
    return parse_segment_text(f"name: test\nrule:\n{text}").rule


def test_the_issue_example_parses_to_the_proto_rule() -> None:
    rule = _rule(
        """
  all:
    - event: {name: sip_registered, performed: true, in_last: 365d}
    - event: {name: lumpsum_invested, performed: false, in_last: 365d}
    - event: {name: session_start, performed: true, in_last: 30d, count: {gte: 3}}
    - attribute: {name: fund_categories, contains_none: [ELSS]}
    - not: {attribute: {name: plan_type, equals: Direct}}
    - segment: seg_hni
"""
    )
    assert rule == all_(
        event("sip_registered", days=365),
        event("lumpsum_invested", performed=False, days=365),
        event("session_start", days=30, count=("GREATER_OR_EQUAL", 3)),
        attr("fund_categories", "CONTAINS_NONE", s("ELSS")),
        not_(attr("plan_type", "EQUALS", s("Direct"))),
        segment("seg_hni"),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("attribute: {name: plan_type, equals: Regular}", attr("plan_type", "EQUALS", s("Regular"))),
        ("attribute: {name: fund_categories, equals: [Equity]}", attr("fund_categories", "EQUALS", ss("Equity"))),
        (
            "attribute: {name: fund_categories, not_equals: [Equity, Debt]}",
            attr("fund_categories", "NOT_EQUALS", ss("Equity", "Debt")),
        ),
        ("attribute: {name: plan_type, contains: Reg}", attr("plan_type", "CONTAINS", s("Reg"))),
        ("attribute: {name: fund_categories, not_contains: ELSS}", attr("fund_categories", "NOT_CONTAINS", s("ELSS"))),
        ("attribute: {name: customer_tier, in: [Premium, HNI]}", attr("customer_tier", "IN", s("Premium"), s("HNI"))),
        ("attribute: {name: number_of_schemes, not_in: [1, 2.5]}", attr("number_of_schemes", "NOT_IN", n(1), n(2.5))),
        ("attribute: {name: number_of_amcs, gt: 1}", attr("number_of_amcs", "GREATER_THAN", n(1))),
        ("attribute: {name: total_aum, gte: {inr: 100000}}", attr("total_aum", "GREATER_OR_EQUAL", money(10_000_000))),
        ("attribute: {name: total_aum, lt: {paise: 1050}}", attr("total_aum", "LESS_THAN", money(1050))),
        ("attribute: {name: total_aum, lte: {inr: 99.5}}", attr("total_aum", "LESS_OR_EQUAL", money(9950))),
        (
            "attribute: {name: usd_aum, lte: {minor_units: 500, currency: USD}}",
            attr("usd_aum", "LESS_OR_EQUAL", money(500, "USD")),
        ),
        ("attribute: {name: number_of_schemes, between: [1, 3]}", attr("number_of_schemes", "BETWEEN", n(1), n(3))),
        ("attribute: {name: last_login, gt: 2025-04-01T00:00:00Z}", attr("last_login", "GREATER_THAN", ts(APRIL))),
        ("attribute: {name: last_login, gt: 2025-04-01}", attr("last_login", "GREATER_THAN", ts(APRIL))),
        ("attribute: {name: last_login, gt: 2025-04-01T05:30:00+05:30}", attr("last_login", "GREATER_THAN", ts(APRIL))),
        (
            'attribute: {name: last_login, gt: {timestamp: "2025-04-01T00:00:00Z"}}',
            attr("last_login", "GREATER_THAN", ts(APRIL)),
        ),
        ('attribute: {name: plan_type, equals: "2025-04-01"}', attr("plan_type", "EQUALS", s("2025-04-01"))),
        ('attribute: {name: has_stp, equals: "No"}', attr("has_stp", "EQUALS", s("No"))),
        ("attribute: {name: has_stp, equals: false}", attr("has_stp", "EQUALS", b(False))),
        ("attribute: {name: has_stp, exists: true}", attr("has_stp", "EXISTS")),
        ("attribute: {name: has_stp, not_exists: true}", attr("has_stp", "NOT_EXISTS")),
        (
            "attribute: {name: fund_categories, contains_any: [ELSS, Debt]}",
            attr("fund_categories", "CONTAINS_ANY", s("ELSS"), s("Debt")),
        ),
        (
            "attribute: {name: fund_categories, contains_all: [ELSS]}",
            attr("fund_categories", "CONTAINS_ALL", s("ELSS")),
        ),
        ("event: {name: sip_registered, performed: true, in_last: 12h}", event("sip_registered", days=0.5)),
        (
            "event: {name: sip_registered, performed: true, between: [2025-04-01, 2025-07-01T00:00:00Z]}",
            event("sip_registered", between=(APRIL, JULY)),
        ),
        (
            "event: {name: sip_registered, performed: true, count: {eq: 1}}",
            event("sip_registered", count=("EQUALS", 1)),
        ),
        (
            "event: {name: sip_registered, performed: true, count: {lte: 0}}",
            event("sip_registered", count=("LESS_OR_EQUAL", 0)),
        ),
        (
            "event: {name: sip_registered, performed: true, count: {between: [1, 3]}}",
            event("sip_registered", count=("BETWEEN", 1, 3)),
        ),
        (
            "event: {name: txn, performed: true, where: {amount: {gte: 100000}, category: {in: [Equity, Debt]}}}",
            event(
                "txn",
                filters=[prop("amount", "GREATER_OR_EQUAL", n(100000)), prop("category", "IN", s("Equity"), s("Debt"))],
            ),
        ),
        (
            "event: {name: txn, performed: true, where: [{amt: {gte: 1}}, {kind: {exists: true}}, {amt: {lte: 9}}]}",
            event(
                "txn",
                filters=[
                    prop("amt", "GREATER_OR_EQUAL", n(1)),
                    prop("kind", "EXISTS"),
                    prop("amt", "LESS_OR_EQUAL", n(9)),
                ],
            ),
        ),
        (
            "any: [{segment: seg_a}, {not: {not: {segment: seg_b}}}]",
            any_(segment("seg_a"), not_(not_(segment("seg_b")))),
        ),
    ],
)
def test_each_form_parses_to_its_proto_rule_and_renders_back(text: str, expected: r.Rule) -> None:
    rule = _rule(f"  {text}")
    assert rule == expected
    assert rule_from_data(rule_to_data(rule)) == rule


def test_since_window() -> None:
    rule = _rule("  event: {name: session_start, performed: false, since: last_sip_date}")
    assert rule.event.window.since_attribute == "last_sip_date"
    assert rule.event.performance == r.PERFORMANCE_NOT_PERFORMED
    assert rule_to_data(rule) == {"event": {"name": "session_start", "performed": False, "since": "last_sip_date"}}


def test_durations_render_in_the_largest_whole_unit() -> None:
    def rendered(seconds: int, nanos: int = 0) -> str:
        rule = r.Rule(event=r.EventCondition(event_name="x", performance=r.PERFORMANCE_PERFORMED))
        rule.event.window.last.CopyFrom(Duration(seconds=seconds, nanos=nanos))
        data = rule_to_data(rule)
        assert rule_from_data(data) == rule
        return str(data["event"]["in_last"])

    assert [rendered(365 * 86400), rendered(36 * 3600), rendered(90 * 60), rendered(45), rendered(1, 500_000_000)] == [
        "365d",
        "36h",
        "90m",
        "45s",
        "1.5s",
    ]


def test_json_files_parse_like_yaml() -> None:
    text = """{"name": "SIP", "description": "d", "rule": {"all": [
        {"event": {"name": "sip_registered", "performed": true, "in_last": "365d"}},
        {"attribute": {"name": "last_login", "gte": {"timestamp": "2025-04-01T00:00:00Z"}}}]}}"""
    segment_file = parse_segment_text(text, json_format=True)
    assert segment_file == SegmentFile(
        "SIP", "d", all_(event("sip_registered", days=365), attr("last_login", "GREATER_OR_EQUAL", ts(APRIL)))
    )


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_files_round_trip_through_yaml_and_json(path: Path) -> None:
    segment_file = load_segment_file(path)
    assert parse_segment_text(render_segment_text(segment_file)) == segment_file
    assert parse_segment_text(render_segment_text(segment_file, json_format=True), json_format=True) == segment_file


def test_rendered_yaml_reads_like_the_hand_written_form() -> None:
    rendered = render_segment_text(SegmentFile("SIP-only investors", "d", all_(event("sip_registered", days=365))))
    assert rendered == (
        "name: SIP-only investors\n"
        "description: d\n"
        "rule:\n"
        "  all:\n"
        "  - event: {name: sip_registered, performed: true, in_last: 365d}\n"
    )


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("  all: []", "rule.all", "non-empty list of rules"),
        ("  {all: [{segment: a}], any: [{segment: b}]}", "rule", "exactly one of the keys"),
        ("  alll: [{segment: a}]", "rule.alll", "did you mean 'all'"),
        (
            "  all: [{segment: a}, {event: {name: x, performed: true, in_lats: 3d}}]",
            "rule.all[1].event.in_lats",
            "did you mean 'in_last'",
        ),
        (
            "  all: [{segment: a}, {event: {name: x, performed: true, in_last: 0d}}]",
            "rule.all[1].event.in_last",
            "must be positive",
        ),
        ("  event: {name: x, performed: true, in_last: 3y}", "rule.event.in_last", "d days, h hours"),
        ("  event: {name: x, performed: true, in_last: 40000d}", "rule.event.in_last", "at most 100 years"),
        ("  event: {name: x, in_last: 3d}", "rule.event.performed", "true (did perform) or false"),
        ("  event: {name: Sip Registered, performed: true}", "rule.event.name", "lower_snake_case"),
        ("  event: {name: x, performed: true, in_last: 3d, since: y}", "rule.event", "at most one window"),
        ("  event: {name: x, performed: true, since: Last}", "rule.event.since", "timestamp attribute"),
        (
            "  event: {name: x, performed: true, between: [2025-07-01, 2025-04-01]}",
            "rule.event.between[1]",
            "after the start",
        ),
        (
            "  event: {name: x, performed: true, between: [2025-07-01T00:00:00, 2025-08-01]}",
            "rule.event.between[0]",
            "no time zone",
        ),
        ("  event: {name: x, performed: true, between: [soon, 2025-08-01]}", "rule.event.between[0]", "ISO 8601"),
        ("  event: {name: x, performed: true, count: {gt: 1}}", "rule.event.count.gt", "did you mean 'gte'"),
        ("  event: {name: x, performed: true, count: {gte: -1}}", "rule.event.count.gte", "zero or more"),
        (
            "  event: {name: x, performed: true, count: {between: [3, 1]}}",
            "rule.event.count.between[1]",
            "at least the lowest",
        ),
        (
            "  event: {name: x, performed: true, where: {Amount: {gt: 1}}}",
            "rule.event.where.Amount",
            "lower_snake_case",
        ),
        (
            "  event: {name: x, performed: true, where: {amount: {gt: abc}}}",
            "rule.event.where.amount.gt",
            "gt needs a number, timestamp",
        ),
        (
            "  event: {name: x, performed: true, where: {tags: {contains_any: [a]}}}",
            "rule.event.where.tags.contains_any[0]",
            "not to event properties",
        ),
        (
            "  event: {name: x, performed: true, where: {tags: {equals: [a]}}}",
            "rule.event.where.tags.equals",
            "takes one value, got a list",
        ),
        (
            "  event: {name: x, performed: true, where: [{a: {gt: 1}}, {b: {gt: x}}]}",
            "rule.event.where[1].b.gt",
            "gt needs a number",
        ),
        ("  attribute: {name: a, equals: 1, gt: 2}", "rule.attribute", "exactly one operator"),
        ("  attribute: {name: a}", "rule.attribute", "got none"),
        ("  attribute: {name: a, equal: 1}", "rule.attribute.equal", "did you mean 'equals'"),
        ("  attribute: {equals: 1}", "rule.attribute.name", "name is required"),
        ("  attribute: {name: a, in: [1, [2]]}", "rule.attribute.in[1]", "a list is not allowed here"),
        ("  attribute: {name: a, in: Premium}", "rule.attribute.in", "takes a list"),
        ("  attribute: {name: a, between: [5, 1]}", "rule.attribute.between", "lower bound must not exceed"),
        ("  attribute: {name: a, between: [1, {inr: 5}]}", "rule.attribute.between", "bounds must be of one kind"),
        ("  attribute: {name: a, exists: false}", "rule.attribute.exists", "not_exists: true"),
        ("  attribute: {name: a, contains: ''}", "rule.attribute.contains", "non-empty string"),
        ("  attribute: {name: a, contains_any: [1]}", "rule.attribute.contains_any[0]", "needs string operands"),
        ("  attribute: {name: a, equals: [Equity, 1]}", "rule.attribute.equals[1]", "non-empty strings"),
        ("  attribute: {name: a, equals: null}", "rule.attribute.equals", "nothing (null)"),
        ("  attribute: {name: a, equals: {inr: 1.001}}", "rule.attribute.equals.inr", "at most 2 decimals"),
        ("  attribute: {name: a, equals: {usd: 1}}", "rule.attribute.equals", "a typed value is"),
        ("  attribute: {name: a, equals: {minor_units: 1, currency: rupees}}", "rule.attribute.equals", "ISO 4217"),
        ("  attribute: {name: a, equals: .nan}", "rule.attribute.equals", "finite"),
        ("  segment: ''", "rule.segment", "id of a published segment"),
    ],
)
def test_errors_point_into_the_file(text: str, path: str, fragment: str) -> None:
    with pytest.raises(RuleFileError) as raised:
        parse_segment_text(f"name: test\nrule:\n{text}\n", source="segments/test.yaml")
    assert raised.value.path == path
    assert fragment in raised.value.message
    assert str(raised.value).startswith(f"segments/test.yaml: {path}: ")
    # File errors speak the file's words, not the proto's.
    assert "OPERATOR_" not in raised.value.message and "_value" not in raised.value.message


def test_nesting_deeper_than_the_limit_is_an_error_at_the_deepest_allowed_level() -> None:
    data: dict[str, object] = {"segment": "seg_a"}
    for _ in range(20):
        data = {"not": data}
    with pytest.raises(RuleFileError) as raised:
        rule_from_data(data)
    assert raised.value.path == "rule" + ".not" * 16
    assert "at most 16 levels" in raised.value.message


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("rule: {segment: a}", "name", "name is required"),
        (f"name: {'x' * 201}\nrule: {{segment: a}}", "name", "at most 200"),
        ("name: x\ndescription: [a]\nrule: {segment: a}", "description", "must be text"),
        ("name: x", "rule", "rule is required"),
        ("name: x\nrules: {segment: a}", "rules", "did you mean 'rule'"),
        ("- a list", "(top)", "must be a mapping"),
        ("name: x\nrule: [", "", "not valid YAML"),
    ],
)
def test_file_level_errors(text: str, path: str, fragment: str) -> None:
    with pytest.raises(RuleFileError) as raised:
        parse_segment_text(text)
    assert raised.value.path == path
    assert fragment in raised.value.message


def test_invalid_json_is_an_error_with_its_line() -> None:
    with pytest.raises(RuleFileError) as raised:
        parse_segment_text('{"name": "x",\n"rule": }', json_format=True)
    assert "not valid JSON" in raised.value.message and "line 2" in raised.value.message
