"""Validation of computed-attribute definitions and their plain meaning (the reference the SQL must agree with)."""

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration

from services.segments.computed import (
    Aggregation,
    ComputedDefinition,
    ComputedError,
    PastEvent,
    computed_proto,
    evaluate,
    parse_computed,
)
from services.segments.values import Kind, Value
from tests.unit.segments.builders import n, prop, s
from xsell.segments.v1 import resources_pb2 as r

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DAY = 24 * 3600


def computed(
    aggregation: str = "SUM",
    prop_name: str = "amount",
    event_name: str = "transaction_success",
    window_days: float | None = None,
    currency: str = "",
    filters: list[r.PropertyFilter] | None = None,
) -> r.ComputedAttribute:
    message = r.ComputedAttribute(
        event_name=event_name,
        aggregation=r.Aggregation.Value(f"AGGREGATION_{aggregation}") if aggregation else 0,
        property=prop_name,
        currency_code=currency,
        property_filters=filters or [],
    )
    if window_days is not None:
        message.window.CopyFrom(Duration(seconds=int(window_days * DAY)))
    return message


def problem(kind: Kind, message: r.ComputedAttribute) -> tuple[str, str]:
    with pytest.raises(ComputedError) as raised:
        parse_computed("x", kind, message, "attributes[0].computed")
    return raised.value.path, raised.value.message


def test_the_issue_examples_parse() -> None:
    amcs = parse_computed("number_of_amcs", Kind.NUMBER, computed("DISTINCT_COUNT", "amc"), "c")
    assert (amcs.aggregation, amcs.property, amcs.window_seconds) == (Aggregation.DISTINCT_COUNT, "amc", None)
    invested = parse_computed("invested", Kind.MONEY, computed("SUM", "amount", window_days=90, currency="INR"), "c")
    assert (invested.window_seconds, invested.currency) == (90 * DAY, "INR")
    count = parse_computed("sessions", Kind.NUMBER, computed("COUNT", "", "session_start", window_days=30), "c")
    assert count.property == ""


@pytest.mark.parametrize(
    ("kind", "message", "field", "words"),
    [
        (Kind.NUMBER, computed("COUNT", "", event_name="Transaction Success"), "event_name", "lower_snake_case"),
        (Kind.NUMBER, computed("COUNT", "", event_name=""), "event_name", "required"),
        (Kind.NUMBER, computed(""), "aggregation", "aggregation is required"),
        (Kind.NUMBER, computed("COUNT", "amount"), "property", "leave property empty"),
        (Kind.NUMBER, computed("SUM", ""), "property", "needs the property"),
        (Kind.NUMBER, computed("MAX", "Amount"), "property", "lower_snake_case"),
        (Kind.MONEY, computed("COUNT", ""), "aggregation", "yields a NUMBER"),
        (Kind.STRING, computed("DISTINCT_COUNT", "amc"), "aggregation", "yields a NUMBER"),
        (Kind.STRING, computed("SUM", "amount"), "aggregation", "NUMBER or MONEY"),
        (Kind.TIMESTAMP, computed("MIN", "amount"), "aggregation", "NUMBER or MONEY"),
        (Kind.STRING_SET, computed("LAST_VALUE", "amc"), "aggregation", "not STRING_SET"),
        (Kind.NUMBER, computed("SUM", window_days=0), "window", "positive duration"),
        (Kind.NUMBER, computed("SUM", window_days=-1), "window", "positive duration"),
        (Kind.MONEY, computed("SUM"), "currency_code", "e.g. 'INR'"),
        (Kind.MONEY, computed("MAX", currency="inr"), "currency_code", "ISO 4217"),
        (Kind.NUMBER, computed("SUM", currency="INR"), "currency_code", "only to MONEY"),
        (
            Kind.NUMBER,
            computed("SUM", filters=[prop("amount", "BETWEEN", n(5))]),
            "property_filters[0].values",
            "exactly 2 values",
        ),
    ],
)
def test_invalid_definitions_name_the_field_and_what_is_valid(
    kind: Kind, message: r.ComputedAttribute, field: str, words: str
) -> None:
    path, reason = problem(kind, message)
    assert path == f"attributes[0].computed.{field}"
    assert words in reason


@pytest.mark.parametrize(
    ("aggregation", "kinds"),
    [
        ("COUNT", {Kind.NUMBER}),
        ("DISTINCT_COUNT", {Kind.NUMBER}),
        ("SUM", {Kind.NUMBER, Kind.MONEY}),
        ("MIN", {Kind.NUMBER, Kind.MONEY}),
        ("MAX", {Kind.NUMBER, Kind.MONEY}),
        ("FIRST_VALUE", {Kind.STRING, Kind.NUMBER, Kind.BOOL, Kind.TIMESTAMP, Kind.MONEY}),
        ("LAST_VALUE", {Kind.STRING, Kind.NUMBER, Kind.BOOL, Kind.TIMESTAMP, Kind.MONEY}),
    ],
)
def test_each_aggregation_accepts_exactly_its_compatible_types(aggregation: str, kinds: set[Kind]) -> None:
    accepted = set()
    for kind in Kind:
        currency = "INR" if kind is Kind.MONEY else ""
        message = computed(aggregation, "" if aggregation == "COUNT" else "amount", currency=currency)
        try:
            parse_computed("x", kind, message, "c")
        except ComputedError:
            continue
        accepted.add(kind)
    assert accepted == kinds


def _events() -> list[PastEvent]:
    def tx(i: int, days_ago: float, **properties: Value) -> PastEvent:
        return PastEvent(f"e{i}", "transaction_success", NOW - timedelta(days=days_ago), properties)

    return [
        tx(1, 200, amc=Value.string("HDFC"), amount=Value.money(500_00, "INR")),
        tx(2, 60, amc=Value.string("SBI"), amount=Value.money(1000_00, "INR")),
        tx(3, 10, amc=Value.string("HDFC"), amount=Value.money(250_00, "INR")),
        tx(4, 5, amc=Value.string("ICICI"), amount=Value.money(99_00, "USD")),
        tx(5, 1, amount=Value.num(7)),
        PastEvent("e6", "sip_registered", NOW, {"amc": Value.string("Axis")}),
    ]


def test_reference_meaning_of_the_issue_examples() -> None:
    amcs = ComputedDefinition("number_of_amcs", Kind.NUMBER, "transaction_success", Aggregation.DISTINCT_COUNT, "amc")
    assert evaluate(amcs, _events(), NOW) == Value.num(3)
    invested = ComputedDefinition(
        "invested", Kind.MONEY, "transaction_success", Aggregation.SUM, "amount", 90 * DAY, currency="INR"
    )
    # The 200-day-old investment is outside the window, the USD one in another currency, the number not money.
    assert evaluate(invested, _events(), NOW) == Value.money(1250_00, "INR")
    assert evaluate(invested, _events()[:1], NOW) is None


def test_reference_first_last_count_and_filters() -> None:
    last_amc = ComputedDefinition("last_amc", Kind.STRING, "transaction_success", Aggregation.LAST_VALUE, "amc")
    first_amc = ComputedDefinition("first_amc", Kind.STRING, "transaction_success", Aggregation.FIRST_VALUE, "amc")
    assert (evaluate(first_amc, _events(), NOW), evaluate(last_amc, _events(), NOW)) == (
        Value.string("HDFC"),
        Value.string("ICICI"),
    )
    hdfc = parse_computed(
        "hdfc_count", Kind.NUMBER, computed("COUNT", "", filters=[prop("amc", "EQUALS", s("HDFC"))]), "c"
    )
    assert evaluate(hdfc, _events(), NOW) == Value.num(2)
    recent = ComputedDefinition("recent", Kind.NUMBER, "transaction_success", Aggregation.COUNT, "", 30 * DAY)
    assert evaluate(recent, _events(), NOW) == Value.num(3)


def test_the_contract_form_round_trips() -> None:
    for message in (
        computed("DISTINCT_COUNT", "amc"),
        computed("SUM", window_days=90, currency="INR", filters=[prop("amc", "IN", s("HDFC"), s("SBI"))]),
        computed("COUNT", "", event_name="session_start", window_days=0.5),
    ):
        kind = Kind.MONEY if message.currency_code else Kind.NUMBER
        definition = parse_computed("x", kind, message, "c")
        assert computed_proto(definition) == message
        assert parse_computed("x", kind, computed_proto(definition), "c") == definition
