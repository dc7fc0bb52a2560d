"""The rule tree as explain nodes: paths, summaries in words, and the AND funnel; and which windows lapse."""

from datetime import UTC, datetime

from services.segments.explain import nodes
from services.segments.rules import parse_rule
from services.segments.sweeper import lapsing_windows
from tests.unit.segments.builders import all_, any_, attr, event, money, n, not_, prop, s, segment, sip_only
from xsell.segments.v1 import resources_pb2 as r


def test_every_node_has_its_path_and_summary_and_and_children_carry_their_funnel() -> None:
    rule = parse_rule(
        all_(
            event("sip_registered", days=365),
            not_(event("lumpsum_invested", days=365)),
            any_(attr("total_aum", "BETWEEN", money(100), money(500)), segment("seg_hni")),
            event(
                "transaction_success",
                count=("GREATER_OR_EQUAL", 10),
                days=90,
                filters=[prop("amount", "GREATER_OR_EQUAL", n(100000))],
            ),
            attr("investment_type", "IN", s("SIP"), s("Both")),
        ),
        "rule",
    )
    found = nodes(rule)
    assert [(node.path, node.summary) for node in found] == [
        ("rule", "all of 5 conditions"),
        ("rule.all.rules[0]", "performed sip_registered in the last 365 days"),
        ("rule.all.rules[1]", "not (performed lumpsum_invested in the last 365 days)"),
        ("rule.all.rules[1].negate", "performed lumpsum_invested in the last 365 days"),
        ("rule.all.rules[2]", "any of 2 conditions"),
        ("rule.all.rules[2].any.rules[0]", "total_aum is between 1.00 INR and 5.00 INR"),
        ("rule.all.rules[2].any.rules[1]", "member of segment seg_hni"),
        (
            "rule.all.rules[3]",
            "performed transaction_success at least 10 times where amount >= 100000 in the last 90 days",
        ),
        ("rule.all.rules[4]", "investment_type is one of 'SIP', 'Both'"),
    ]
    children = [node for node in found if node.funnel is not None]
    assert [len(node.funnel or ()) for node in children] == [1, 2, 3, 4, 5]
    assert all(node.funnel == rule.rules[: i + 1] for i, node in enumerate(children))  # type: ignore[union-attr]


def test_did_not_perform_reads_as_such() -> None:
    (root,) = nodes(parse_rule(event("lumpsum_invested", performed=False, days=365), "rule"))
    assert root.summary == "did not perform lumpsum_invested in the last 365 days"


def test_only_last_windows_lapse_with_time() -> None:
    fixed = event("sip_registered", between=(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)))
    since = r.Rule(
        event=r.EventCondition(
            event_name="sip_registered",
            performance=r.PERFORMANCE_PERFORMED,
            window=r.TimeWindow(since_attribute="kyc_date"),
        )
    )
    rules = [parse_rule(sip_only()), parse_rule(all_(fixed, since, event("session_start", days=0.5), event("ever")))]
    assert lapsing_windows(rules) == {
        ("sip_registered", 365 * 86400.0),
        ("lumpsum_invested", 365 * 86400.0),
        ("session_start", 43200.0),
    }
