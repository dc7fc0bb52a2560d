"""The offer per person: eligibility operators, the amount rule, proto validation, the catalog check, the audience
gate and the stored round trip."""

import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from plumbing.errors import InvalidArgument
from services.campaigns.audience import Exclusion, LeftOut, Reach, sift
from services.campaigns.messages import offer_rules_json, offer_terms_of, offer_terms_proto
from services.campaigns.offers import (
    AMOUNT_BELOW_MINIMUM,
    AMOUNT_MISSING,
    MAX_CONDITIONS,
    MAX_VALUES,
    REASON_LENGTH,
    AmountRule,
    Condition,
    NotEligible,
    OfferTerms,
    check_catalog,
    terms_from_proto,
)
from services.campaigns.rendering import Money, Offer
from xsell.campaigns.v1 import resources_pb2
from xsell.segments.v1 import resources_pb2 as seg
from xsell.type.v1 import money_pb2

NOW = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))
LIMIT = "preapproved_topup_limit"


def inr(rupees: int) -> Money:
    return Money(rupees * 100, "INR")


def usd(dollars: int) -> Money:
    return Money(dollars * 100, "USD")


# --- Condition.holds ---------------------------------------------------------------------------

OPERATOR_CASES = [
    # EQUALS / NOT_EQUALS: kinds are compared first (1.0 == True in Python, not here); sets compare as sets.
    ("EQUALS", ("SIP",), "SIP", True),
    ("EQUALS", ("SIP",), "sip", False),
    ("EQUALS", ("750",), 750.0, False),
    ("EQUALS", (750.0,), "750", False),
    ("EQUALS", (1.0,), True, False),
    ("EQUALS", (True,), 1.0, False),
    ("EQUALS", (False,), 0.0, False),
    ("EQUALS", (True,), True, True),
    ("EQUALS", (inr(100),), inr(100), True),
    ("EQUALS", (inr(100),), usd(100), False),
    ("EQUALS", (NOW,), NOW.astimezone(IST), True),
    ("EQUALS", (frozenset({"gold", "silver"}),), frozenset({"silver", "gold"}), True),
    ("EQUALS", (frozenset({"gold"}),), frozenset({"gold", "silver"}), False),
    ("EQUALS", ("SIP",), None, False),
    ("NOT_EQUALS", ("SIP",), "SIP", False),
    ("NOT_EQUALS", ("SIP",), "STP", True),
    ("NOT_EQUALS", ("SIP",), None, True),
    ("NOT_EQUALS", (1.0,), True, True),
    ("NOT_EQUALS", (inr(100),), usd(100), True),
    # CONTAINS: a substring of a string (case-sensitive), a member of a set (not a substring of a member).
    ("CONTAINS", ("Pune",), "Pune West", True),
    ("CONTAINS", ("pune",), "Pune West", False),
    ("CONTAINS", ("gold",), frozenset({"gold", "silver"}), True),
    ("CONTAINS", ("gol",), frozenset({"gold"}), False),
    ("CONTAINS", ("7",), 750.0, False),
    ("CONTAINS", ("True",), True, False),
    ("CONTAINS", ("Pune",), None, False),
    ("NOT_CONTAINS", ("Pune",), "Pune West", False),
    ("NOT_CONTAINS", ("Mumbai",), "Pune West", True),
    ("NOT_CONTAINS", ("gold",), frozenset({"gold"}), False),
    ("NOT_CONTAINS", ("gold",), frozenset({"silver"}), True),
    ("NOT_CONTAINS", ("7",), 750.0, True),
    ("NOT_CONTAINS", ("Pune",), None, True),
    # IN / NOT_IN: equal to one of the values, with the same kind rules as EQUALS.
    ("IN", ("SIP", "STP"), "STP", True),
    ("IN", ("SIP", "STP"), "SWP", False),
    ("IN", (1.0, 2.0), 2.0, True),
    ("IN", (1.0, 2.0), True, False),
    ("IN", ("2", 3.0), 2.0, False),
    ("IN", ("SIP",), None, False),
    ("NOT_IN", ("SIP", "STP"), "STP", False),
    ("NOT_IN", ("SIP", "STP"), "SWP", True),
    ("NOT_IN", (1.0,), True, True),
    ("NOT_IN", ("SIP",), None, True),
    # Comparisons: numbers, timestamps and money of one currency only.
    ("GREATER_THAN", (750.0,), 750.5, True),
    ("GREATER_THAN", (750.0,), 750.0, False),
    ("GREATER_THAN", (750.0,), "800", False),
    ("GREATER_THAN", (0.0,), True, False),
    ("GREATER_THAN", (0.0,), inr(5), False),
    ("GREATER_THAN", (inr(0),), 5.0, False),
    ("GREATER_THAN", (NOW,), NOW.timestamp(), False),
    ("GREATER_THAN", (NOW,), NOW + timedelta(microseconds=1), True),
    ("GREATER_THAN", (750.0,), None, False),
    ("GREATER_OR_EQUAL", (750.0,), 750.0, True),
    ("GREATER_OR_EQUAL", (750.0,), 749.99, False),
    ("GREATER_OR_EQUAL", (inr(1000),), inr(1000), True),
    ("GREATER_OR_EQUAL", (inr(1000),), Money(99_999, "INR"), False),
    ("GREATER_OR_EQUAL", (NOW,), NOW.astimezone(IST), True),
    ("LESS_THAN", (750.0,), 749.0, True),
    ("LESS_THAN", (750.0,), 750.0, False),
    ("LESS_THAN", (NOW,), NOW - timedelta(days=1), True),
    ("LESS_THAN", (NOW,), NOW, False),
    ("LESS_THAN", (1.0,), False, False),
    ("LESS_THAN", (750.0,), None, False),
    ("LESS_OR_EQUAL", (750.0,), 750.0, True),
    ("LESS_OR_EQUAL", (750.0,), 751.0, False),
    ("LESS_OR_EQUAL", (inr(10),), inr(10), True),
    ("LESS_OR_EQUAL", (inr(10),), inr(11), False),
    # BETWEEN: both bounds inclusive.
    ("BETWEEN", (700.0, 800.0), 700.0, True),
    ("BETWEEN", (700.0, 800.0), 750.0, True),
    ("BETWEEN", (700.0, 800.0), 800.0, True),
    ("BETWEEN", (700.0, 800.0), 699.99, False),
    ("BETWEEN", (700.0, 800.0), 800.01, False),
    ("BETWEEN", (700.0, 800.0), "750", False),
    ("BETWEEN", (700.0, 800.0), inr(750), False),
    ("BETWEEN", (700.0, 800.0), None, False),
    ("BETWEEN", (inr(1000), inr(5000)), inr(1000), True),
    ("BETWEEN", (inr(1000), inr(5000)), inr(5000), True),
    ("BETWEEN", (inr(1000), inr(5000)), Money(500_001, "INR"), False),
    ("BETWEEN", (NOW - timedelta(days=30), NOW), NOW - timedelta(days=30), True),
    ("BETWEEN", (NOW - timedelta(days=30), NOW), NOW, True),
    ("BETWEEN", (NOW - timedelta(days=30), NOW), NOW + timedelta(seconds=1), False),
    # EXISTS / NOT_EXISTS: any value counts, falsy ones too.
    ("EXISTS", (), "", True),
    ("EXISTS", (), False, True),
    ("EXISTS", (), 0.0, True),
    ("EXISTS", (), frozenset(), True),
    ("EXISTS", (), None, False),
    ("NOT_EXISTS", (), None, True),
    ("NOT_EXISTS", (), False, False),
    ("NOT_EXISTS", (), "", False),
    # Set operators: only a string set holds members.
    ("CONTAINS_ANY", ("gold", "silver"), frozenset({"silver", "bronze"}), True),
    ("CONTAINS_ANY", ("gold", "silver"), frozenset({"bronze"}), False),
    ("CONTAINS_ANY", ("gold",), "gold", False),
    ("CONTAINS_ANY", ("gold",), None, False),
    ("CONTAINS_ALL", ("gold", "silver"), frozenset({"gold", "silver", "bronze"}), True),
    ("CONTAINS_ALL", ("gold", "silver"), frozenset({"gold"}), False),
    ("CONTAINS_ALL", ("gold",), "gold", False),
    ("CONTAINS_ALL", ("gold",), None, False),
    ("CONTAINS_NONE", ("gold",), frozenset({"silver"}), True),
    ("CONTAINS_NONE", ("gold", "x"), frozenset({"gold", "silver"}), False),
    ("CONTAINS_NONE", ("gold",), frozenset(), True),
    ("CONTAINS_NONE", ("gold",), "gold", True),
    ("CONTAINS_NONE", ("gold",), None, True),
]


@pytest.mark.parametrize(("operator", "operands", "actual", "expected"), OPERATOR_CASES)
def test_an_operator_holds_as_a_segment_rule_would(
    operator: str, operands: tuple[object, ...], actual: object, expected: bool
) -> None:
    assert Condition("attr", operator, operands).holds(actual) is expected


def test_every_segments_operator_is_covered_both_ways() -> None:
    names = {name.removeprefix("OPERATOR_") for name in seg.Operator.DESCRIPTOR.values_by_name} - {"UNSPECIFIED"}
    holding = {operator for operator, _, _, expected in OPERATOR_CASES if expected}
    failing = {operator for operator, _, _, expected in OPERATOR_CASES if not expected}
    assert holding == names
    assert failing == names


@pytest.mark.parametrize("operator", ["NOT_EQUALS", "NOT_CONTAINS", "NOT_IN", "NOT_EXISTS", "CONTAINS_NONE"])
def test_a_negation_matches_people_without_the_attribute(operator: str) -> None:
    operands = () if operator == "NOT_EXISTS" else ("gold",)
    assert Condition("attr", operator, operands).holds(None)


@pytest.mark.parametrize(
    ("operator", "operands"),
    [
        ("EQUALS", (inr(100),)),
        ("IN", (inr(100), inr(200))),
        ("GREATER_THAN", (inr(100),)),
        ("GREATER_OR_EQUAL", (inr(100),)),
        ("LESS_THAN", (inr(100),)),
        ("LESS_OR_EQUAL", (inr(100),)),
        ("BETWEEN", (inr(100), inr(200))),
    ],
)
@pytest.mark.parametrize("actual", [Money(0, "USD"), usd(100), usd(150), Money(10**12, "USD")])
def test_money_in_another_currency_never_compares(operator: str, operands: tuple[object, ...], actual: Money) -> None:
    assert not Condition("total_aum", operator, operands).holds(actual)


def test_money_of_one_currency_compares_by_minor_units() -> None:
    assert Condition("total_aum", "GREATER_THAN", (inr(100),)).holds(Money(10_001, "INR"))
    assert Condition("total_aum", "LESS_THAN", (usd(100),)).holds(Money(9_999, "USD"))
    assert Condition("total_aum", "BETWEEN", (usd(100), usd(200))).holds(usd(150))


def test_a_failure_says_what_the_person_has_and_what_is_needed() -> None:
    assert Condition("bureau_score", "GREATER_OR_EQUAL", (750.0,)).failure(712.0) == (
        "bureau_score is 712; needs at least 750"
    )
    assert Condition("bureau_score", "GREATER_OR_EQUAL", (750.0,)).failure(None) == (
        "bureau_score has no value; needs at least 750"
    )
    assert Condition("kyc_status", "EXISTS").failure(None) == "kyc_status has no value; needs it present"
    assert Condition("city", "IN", ("Pune", "Nashik")).failure("Mumbai") == (
        "city is 'Mumbai'; needs one of 'Pune', 'Nashik'"
    )
    assert Condition("total_aum", "BETWEEN", (inr(1000), inr(5000))).failure(inr(10)) == (
        "total_aum is ₹10; needs between ₹1,000 and ₹5,000"
    )


# --- AmountRule.amount --------------------------------------------------------------------------

TOPUP = AmountRule(LIMIT, 8000, maximum=inr(25_00_000), minimum=inr(50_000), round_down_to=inr(10_000))


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        # 80% of 10 lakh.
        (inr(10_00_000), inr(8_00_000)),
        # 80% of 40 lakh is 32 lakh: lowered to the 25 lakh maximum.
        (inr(40_00_000), inr(25_00_000)),
        # 80% of 10,12,345.67 is 8,09,876.53: rounded down to 8,00,000.
        (Money(10_12_345_67, "INR"), inr(8_00_000)),
        # 80% of 62,500 is exactly the minimum: eligible.
        (inr(62_500), inr(50_000)),
        # 80% of 74,999 is 59,999.20, rounded down to the minimum.
        (inr(74_999), inr(50_000)),
    ],
)
def test_the_amount_is_a_share_lowered_to_the_maximum_and_rounded_down(limit: Money, expected: Money) -> None:
    assert TOPUP.amount({LIMIT: limit}) == expected


@pytest.mark.parametrize(
    "limit",
    [
        # 80% of 62,499 is 49,999.20 and rounds down to 40,000.
        inr(62_499),
        # One paisa below: 80% of 62,499.99 is 49,999.99, also under the minimum before rounding.
        Money(62_499_99, "INR"),
        inr(1),
        Money(0, "INR"),
    ],
)
def test_an_amount_below_the_minimum_is_not_eligible(limit: Money) -> None:
    decided = TOPUP.amount({LIMIT: limit})
    assert isinstance(decided, NotEligible)
    assert decided.reason == AMOUNT_BELOW_MINIMUM
    assert decided.detail.endswith("needs ₹50,000")


def test_the_rounding_comes_before_the_minimum() -> None:
    # 69,999 is above a 60,000 minimum, but rounded down to a multiple of 50,000 it is 50,000.
    rule = AmountRule(LIMIT, minimum=inr(60_000), round_down_to=inr(50_000))
    assert isinstance(rule.amount({LIMIT: inr(69_999)}), NotEligible)
    assert rule.amount({LIMIT: inr(1_10_000)}) == inr(1_00_000)


def test_a_maximum_that_is_not_a_multiple_is_rounded_down_too() -> None:
    rule = AmountRule(LIMIT, maximum=inr(25_50_000), round_down_to=inr(1_00_000))
    assert rule.amount({LIMIT: inr(1_00_00_000)}) == inr(25_00_000)


def test_the_share_is_rounded_down_to_the_minor_unit() -> None:
    assert AmountRule(LIMIT, 3333).amount({LIMIT: Money(100, "INR")}) == Money(33, "INR")
    assert AmountRule(LIMIT, 6667).amount({LIMIT: Money(100, "INR")}) == Money(66, "INR")
    assert AmountRule(LIMIT, 1).amount({LIMIT: Money(19_999, "INR")}) == Money(1, "INR")


def test_without_bounds_the_whole_amount_in_any_currency_is_offered() -> None:
    assert AmountRule(LIMIT).amount({LIMIT: usd(1234)}) == usd(1234)
    assert AmountRule(LIMIT).amount({LIMIT: Money(1, "INR")}) == Money(1, "INR")


@pytest.mark.parametrize(
    ("rule", "limit"),
    [
        (AmountRule(LIMIT), Money(0, "INR")),
        (AmountRule(LIMIT), Money(-5_00, "INR")),
        # 1 basis point of 99 paise is 0.0099 paise.
        (AmountRule(LIMIT, 1), Money(99, "INR")),
        # 9,999 rounded down to a multiple of 10,000.
        (AmountRule(LIMIT, round_down_to=inr(10_000)), inr(9_999)),
    ],
)
def test_a_zero_amount_is_not_eligible_without_a_minimum(rule: AmountRule, limit: Money) -> None:
    decided = rule.amount({LIMIT: limit})
    assert decided == NotEligible(AMOUNT_BELOW_MINIMUM, f"the offer amount from {LIMIT} is ₹0; needs more than zero")


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {LIMIT: None},
        {LIMIT: 10_00_000.0},
        {LIMIT: "1000000"},
        {"another_limit": inr(10_00_000)},
    ],
)
def test_a_person_without_a_money_value_has_no_amount(attributes: dict[str, object]) -> None:
    decided = TOPUP.amount(attributes)
    assert isinstance(decided, NotEligible)
    assert decided.reason == AMOUNT_MISSING
    assert LIMIT in decided.detail


def test_a_value_in_another_currency_than_the_bounds_has_no_amount() -> None:
    decided = TOPUP.amount({LIMIT: usd(10_00_000)})
    assert decided == NotEligible(AMOUNT_MISSING, f"{LIMIT} is in USD; the amount rule's bounds are INR")
    # Any one bound sets the currency.
    assert isinstance(AmountRule(LIMIT, round_down_to=usd(1)).amount({LIMIT: inr(100)}), NotEligible)
    assert AmountRule(LIMIT, round_down_to=usd(1)).amount({LIMIT: usd(100)}) == usd(100)


# --- OfferTerms.decide --------------------------------------------------------------------------

SCORED = OfferTerms(
    "MSME_WC_TOPUP",
    amount_rule=TOPUP,
    eligibility=(
        Condition("bureau_score", "GREATER_OR_EQUAL", (750.0,)),
        Condition("kyc_status", "EQUALS", ("VERIFIED",)),
    ),
)


def test_an_eligible_person_gets_the_product_and_their_own_amount() -> None:
    person = {"bureau_score": 780.0, "kyc_status": "VERIFIED", LIMIT: inr(10_00_000)}
    assert SCORED.decide(person) == Offer("MSME_WC_TOPUP", inr(8_00_000))


def test_the_first_failing_condition_wins_and_names_the_attribute() -> None:
    both_fail = {"bureau_score": 712.0, "kyc_status": "PENDING", LIMIT: inr(10_00_000)}
    assert SCORED.decide(both_fail) == NotEligible("bureau_score", "bureau_score is 712; needs at least 750")
    second_fails = {"bureau_score": 750.0, "kyc_status": "PENDING", LIMIT: inr(10_00_000)}
    assert SCORED.decide(second_fails) == NotEligible(
        "kyc_status", "kyc_status is 'PENDING'; needs equal to 'VERIFIED'"
    )
    assert SCORED.decide({}) == NotEligible("bureau_score", "bureau_score has no value; needs at least 750")


def test_eligibility_is_checked_before_the_amount() -> None:
    # No limit and a score too low: the score is the reason, not the missing amount.
    failing_first = SCORED.decide({"bureau_score": 600.0, "kyc_status": "VERIFIED"})
    assert isinstance(failing_first, NotEligible)
    assert failing_first.reason == "bureau_score"
    eligible_without_amount = SCORED.decide({"bureau_score": 800.0, "kyc_status": "VERIFIED"})
    assert isinstance(eligible_without_amount, NotEligible)
    assert eligible_without_amount.reason == AMOUNT_MISSING
    eligible_below_minimum = SCORED.decide({"bureau_score": 800.0, "kyc_status": "VERIFIED", LIMIT: inr(100)})
    assert isinstance(eligible_below_minimum, NotEligible)
    assert eligible_below_minimum.reason == AMOUNT_BELOW_MINIMUM


def test_a_fixed_amount_with_conditions_goes_to_whoever_meets_them() -> None:
    terms = OfferTerms("LUMPSUM", inr(50_000), eligibility=(Condition("has_stp", "EQUALS", (True,)),))
    assert terms.decide({"has_stp": True}) == Offer("LUMPSUM", inr(50_000))
    assert terms.decide({"has_stp": 1.0}) == NotEligible("has_stp", "has_stp is 1; needs equal to True")
    assert OfferTerms("LUMPSUM").decide({}) == Offer("LUMPSUM", None)


def test_a_long_attribute_name_is_cut_to_the_stored_reason_length() -> None:
    name = "a" * 30 + "_" + "b" * 33
    decided = OfferTerms("X", eligibility=(Condition(name, "EXISTS"),)).decide({})
    assert isinstance(decided, NotEligible)
    assert decided.reason == name[:REASON_LENGTH]
    assert len(decided.reason) == REASON_LENGTH
    assert decided.detail.startswith(name + " has no value")


def test_the_terms_know_whether_and_from_what_they_decide_per_person() -> None:
    assert not OfferTerms("LUMPSUM", inr(100)).per_person
    assert OfferTerms("LUMPSUM", inr(100)).has_amount
    assert not OfferTerms("LUMPSUM").has_amount
    assert OfferTerms("LUMPSUM", amount_rule=AmountRule(LIMIT)).per_person
    assert OfferTerms("LUMPSUM", amount_rule=AmountRule(LIMIT)).has_amount
    assert OfferTerms("LUMPSUM", eligibility=(Condition("a", "EXISTS"),)).per_person
    assert SCORED.shared() == Offer("MSME_WC_TOPUP", None)
    assert OfferTerms("LUMPSUM", inr(100)).shared() == Offer("LUMPSUM", inr(100))
    repeated = OfferTerms(
        "X",
        amount_rule=AmountRule("limit"),
        eligibility=(Condition("score", "EXISTS"), Condition("limit", "EXISTS"), Condition("score", "EXISTS")),
    )
    assert repeated.attribute_names() == ("score", "limit")


# --- terms_from_proto ---------------------------------------------------------------------------


def money(minor_units: int, currency_code: str = "INR") -> money_pb2.Money:
    return money_pb2.Money(minor_units=minor_units, currency_code=currency_code)


def number(value: float) -> seg.Value:
    return seg.Value(number_value=value)


def text(value: str) -> seg.Value:
    return seg.Value(string_value=value)


def stamp(value: datetime) -> seg.Value:
    result = seg.Value()
    result.timestamp_value.FromDatetime(value)
    return result


def condition(attribute: str, operator: int, *values: seg.Value) -> seg.AttributeCondition:
    return seg.AttributeCondition(attribute=attribute, operator=operator, values=list(values))  # type: ignore[arg-type]


def rule(**fields: object) -> resources_pb2.OfferAmountRule:
    values: dict[str, object] = {"attribute": LIMIT, "share_basis_points": 8000}
    values.update(fields)
    return resources_pb2.OfferAmountRule(**values)  # type: ignore[arg-type]


def offer_with(*conditions: seg.AttributeCondition, **fields: object) -> resources_pb2.Offer:
    return resources_pb2.Offer(product_code="MSME_WC_TOPUP", eligibility=list(conditions), **fields)  # type: ignore[arg-type]


def rejected(offer: resources_pb2.Offer) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as error:
        terms_from_proto(offer)
    return error.value


def test_a_valid_offer_becomes_its_terms_with_python_operands() -> None:
    offer = offer_with(
        condition("bureau_score", seg.OPERATOR_GREATER_OR_EQUAL, number(750)),
        condition("last_sip_date", seg.OPERATOR_BETWEEN, stamp(NOW - timedelta(days=90)), stamp(NOW)),
        condition("total_aum", seg.OPERATOR_LESS_THAN, seg.Value(money_value=money(5_00_000_00))),
        condition("has_stp", seg.OPERATOR_NOT_EQUALS, seg.Value(bool_value=True)),
        condition("fund_categories", seg.OPERATOR_EQUALS, seg.Value(string_set_value=seg.StringSet(values=["a", "b"]))),
        condition("fund_categories", seg.OPERATOR_CONTAINS_ANY, text("ELSS"), text("DEBT")),
        condition("kyc_status", seg.OPERATOR_EXISTS),
        amount_rule=rule(maximum=money(25_00_000_00), minimum=money(50_000_00), round_down_to=money(10_000_00)),
    )
    assert terms_from_proto(offer) == OfferTerms(
        "MSME_WC_TOPUP",
        amount_rule=TOPUP,
        eligibility=(
            Condition("bureau_score", "GREATER_OR_EQUAL", (750.0,)),
            Condition("last_sip_date", "BETWEEN", (NOW - timedelta(days=90), NOW)),
            Condition("total_aum", "LESS_THAN", (inr(5_00_000),)),
            Condition("has_stp", "NOT_EQUALS", (True,)),
            Condition("fund_categories", "EQUALS", (frozenset({"a", "b"}),)),
            Condition("fund_categories", "CONTAINS_ANY", ("ELSS", "DEBT")),
            Condition("kyc_status", "EXISTS", ()),
        ),
    )
    operands = terms_from_proto(offer).eligibility[1].operands
    assert all(isinstance(moment, datetime) and moment.tzinfo is not None for moment in operands)


def test_a_share_of_zero_means_all_of_it_and_the_bounds_are_optional() -> None:
    terms = terms_from_proto(offer_with(amount_rule=rule(share_basis_points=0)))
    assert terms.amount_rule == AmountRule(LIMIT, 10_000, None, None, None)
    assert terms_from_proto(offer_with(amount_rule=rule(share_basis_points=10_000))).amount_rule == AmountRule(LIMIT)


def test_a_fixed_amount_alone_is_kept_as_given() -> None:
    terms = terms_from_proto(offer_with(amount=money(17_40_000_00)))
    assert terms == OfferTerms("MSME_WC_TOPUP", inr(17_40_000))
    assert not terms.per_person


def test_a_minimum_equal_to_the_maximum_is_accepted() -> None:
    terms = terms_from_proto(offer_with(amount_rule=rule(maximum=money(100), minimum=money(100))))
    assert terms.amount_rule == AmountRule(LIMIT, 8000, Money(100, "INR"), Money(100, "INR"))


@pytest.mark.parametrize(
    ("offer", "field"),
    [
        (
            offer_with(amount=money(100), amount_rule=rule()),
            "campaign.offer.amount_rule",
        ),
        (offer_with(amount_rule=rule(attribute="")), "campaign.offer.amount_rule.attribute"),
        (offer_with(amount_rule=rule(attribute="Preapproved")), "campaign.offer.amount_rule.attribute"),
        (offer_with(amount_rule=rule(attribute="topup-limit")), "campaign.offer.amount_rule.attribute"),
        (offer_with(amount_rule=rule(attribute="a" * 65)), "campaign.offer.amount_rule.attribute"),
        (offer_with(amount_rule=rule(share_basis_points=10_001)), "campaign.offer.amount_rule.share_basis_points"),
        (
            offer_with(amount_rule=rule(maximum=money(100), minimum=money(50, "USD"))),
            "campaign.offer.amount_rule",
        ),
        (
            offer_with(amount_rule=rule(maximum=money(100), round_down_to=money(10, "USD"))),
            "campaign.offer.amount_rule",
        ),
        (
            offer_with(amount_rule=rule(maximum=money(100), minimum=money(101))),
            "campaign.offer.amount_rule.minimum",
        ),
        (offer_with(amount_rule=rule(maximum=money(0))), "campaign.offer.amount_rule.maximum.minor_units"),
        (offer_with(amount_rule=rule(minimum=money(-1))), "campaign.offer.amount_rule.minimum.minor_units"),
        (
            offer_with(amount_rule=rule(round_down_to=money(0))),
            "campaign.offer.amount_rule.round_down_to.minor_units",
        ),
        (
            offer_with(amount_rule=rule(maximum=money(100, "inr"))),
            "campaign.offer.amount_rule.maximum.currency_code",
        ),
        (offer_with(amount_rule=rule(minimum=money(100, ""))), "campaign.offer.amount_rule.minimum.currency_code"),
        (
            offer_with(condition("bureau_score", seg.OPERATOR_EXISTS), condition("Bureau Score", seg.OPERATOR_EXISTS)),
            "campaign.offer.eligibility[1].attribute",
        ),
        (offer_with(condition("bureau_score", seg.OPERATOR_UNSPECIFIED)), "campaign.offer.eligibility[0].operator"),
        (offer_with(condition("bureau_score", 99)), "campaign.offer.eligibility[0].operator"),
    ],
)
def test_a_malformed_amount_rule_or_condition_names_its_field(offer: resources_pb2.Offer, field: str) -> None:
    assert rejected(offer).field == field


def test_the_errors_say_what_would_be_valid() -> None:
    assert "not both" in rejected(offer_with(amount=money(100), amount_rule=rule())).message
    assert "10000" in rejected(offer_with(amount_rule=rule(share_basis_points=12_000))).message
    assert "INR, USD" in rejected(offer_with(amount_rule=rule(maximum=money(100), minimum=money(5, "USD")))).message
    assert "OPERATOR_" in rejected(offer_with(condition("a", seg.OPERATOR_UNSPECIFIED))).message


WRONG_COUNTS = [
    (seg.OPERATOR_EXISTS, 1),
    (seg.OPERATOR_NOT_EXISTS, 2),
    (seg.OPERATOR_EQUALS, 0),
    (seg.OPERATOR_EQUALS, 2),
    (seg.OPERATOR_NOT_EQUALS, 2),
    (seg.OPERATOR_CONTAINS, 2),
    (seg.OPERATOR_GREATER_THAN, 0),
    (seg.OPERATOR_LESS_OR_EQUAL, 2),
    (seg.OPERATOR_BETWEEN, 1),
    (seg.OPERATOR_BETWEEN, 3),
    (seg.OPERATOR_IN, 0),
    (seg.OPERATOR_NOT_IN, MAX_VALUES + 1),
    (seg.OPERATOR_CONTAINS_ANY, 0),
    (seg.OPERATOR_CONTAINS_ALL, 0),
    (seg.OPERATOR_CONTAINS_NONE, 0),
]


def wrong_count(operator: int, count: int) -> InvalidArgument:
    values = [number(float(i)) for i in range(count)]
    return rejected(offer_with(condition("bureau_score", seg.OPERATOR_EXISTS), condition("score", operator, *values)))


@pytest.mark.parametrize(("operator", "count"), WRONG_COUNTS)
def test_a_wrong_number_of_operands_names_the_values(operator: int, count: int) -> None:
    assert wrong_count(operator, count).field == "campaign.offer.eligibility[1].values"


@pytest.mark.parametrize(("operator", "count"), WRONG_COUNTS)
def test_a_wrong_number_of_operands_says_how_many_it_got(operator: int, count: int) -> None:
    assert f"got {count}" in wrong_count(operator, count).message


def test_equals_with_several_values_points_at_in() -> None:
    error = rejected(offer_with(condition("city", seg.OPERATOR_EQUALS, text("Pune"), text("Nashik"))))
    assert "use OPERATOR_IN" in error.message


def test_in_takes_up_to_the_value_limit() -> None:
    values = [text(f"v{i}") for i in range(MAX_VALUES)]
    terms = terms_from_proto(offer_with(condition("city", seg.OPERATOR_IN, *values)))
    assert len(terms.eligibility[0].operands) == MAX_VALUES


@pytest.mark.parametrize(
    ("operator", "values", "field"),
    [
        # Comparisons need an ordered kind.
        (seg.OPERATOR_GREATER_THAN, [text("750")], "values[0]"),
        (seg.OPERATOR_LESS_THAN, [seg.Value(bool_value=True)], "values[0]"),
        (seg.OPERATOR_GREATER_OR_EQUAL, [seg.Value(string_set_value=seg.StringSet(values=["a"]))], "values[0]"),
        (seg.OPERATOR_BETWEEN, [number(700), text("800")], "values[1]"),
        # Set operators take set members.
        (seg.OPERATOR_CONTAINS_ANY, [text("gold"), number(1)], "values[1]"),
        (seg.OPERATOR_CONTAINS_ALL, [seg.Value(bool_value=False)], "values[0]"),
        (seg.OPERATOR_CONTAINS_NONE, [seg.Value(string_set_value=seg.StringSet(values=["gold"]))], "values[0]"),
        # CONTAINS takes a non-empty string.
        (seg.OPERATOR_CONTAINS, [text("")], "values[0]"),
        (seg.OPERATOR_NOT_CONTAINS, [number(7)], "values[0]"),
        # Every operand has a kind; money has a currency.
        (seg.OPERATOR_EQUALS, [seg.Value()], "values[0]"),
        (seg.OPERATOR_IN, [text("a"), seg.Value()], "values[1]"),
        (seg.OPERATOR_EQUALS, [seg.Value(money_value=money(100, "rupees"))], "values[0]"),
        # BETWEEN: bounds of one kind (and currency), lower first.
        (seg.OPERATOR_BETWEEN, [number(800), number(700)], "values"),
        (seg.OPERATOR_BETWEEN, [stamp(NOW), stamp(NOW - timedelta(seconds=1))], "values"),
        (
            seg.OPERATOR_BETWEEN,
            [seg.Value(money_value=money(200)), seg.Value(money_value=money(100))],
            "values",
        ),
        (seg.OPERATOR_BETWEEN, [number(700), stamp(NOW)], "values"),
        (
            seg.OPERATOR_BETWEEN,
            [seg.Value(money_value=money(100)), seg.Value(money_value=money(200, "USD"))],
            "values",
        ),
        (seg.OPERATOR_BETWEEN, [number(100), seg.Value(money_value=money(200))], "values"),
    ],
)
def test_an_operand_of_the_wrong_kind_names_itself(operator: int, values: list[seg.Value], field: str) -> None:
    error = rejected(offer_with(condition("attr", operator, *values)))
    assert error.field == f"campaign.offer.eligibility[0].{field}"


@pytest.mark.parametrize(
    "values",
    [
        [number(700), number(700)],
        [stamp(NOW), stamp(NOW)],
        [seg.Value(money_value=money(100, "USD")), seg.Value(money_value=money(100, "USD"))],
    ],
)
def test_between_accepts_equal_bounds_of_one_kind(values: list[seg.Value]) -> None:
    terms = terms_from_proto(offer_with(condition("attr", seg.OPERATOR_BETWEEN, *values)))
    assert terms.eligibility[0].holds(terms.eligibility[0].operands[0])


def test_at_most_twenty_conditions() -> None:
    conditions = [condition(f"attr_{i}", seg.OPERATOR_EXISTS) for i in range(MAX_CONDITIONS)]
    assert len(terms_from_proto(offer_with(*conditions)).eligibility) == MAX_CONDITIONS
    error = rejected(offer_with(*conditions, condition("one_more", seg.OPERATOR_EXISTS)))
    assert error.field == "campaign.offer.eligibility"
    assert f"has {MAX_CONDITIONS + 1} conditions" in error.message


def test_the_field_path_starts_at_the_given_message() -> None:
    with pytest.raises(InvalidArgument) as error:
        terms_from_proto(offer_with(condition("x", seg.OPERATOR_IN)), "trigger.offer")
    assert error.value.field == "trigger.offer.eligibility[0].values"


# --- check_catalog ------------------------------------------------------------------------------

CATALOG = {
    "bureau_score": seg.ATTRIBUTE_TYPE_NUMBER,
    LIMIT: seg.ATTRIBUTE_TYPE_MONEY,
    "total_aum": seg.ATTRIBUTE_TYPE_MONEY,
    "city": seg.ATTRIBUTE_TYPE_STRING,
    "fund_categories": seg.ATTRIBUTE_TYPE_STRING_SET,
    "has_stp": seg.ATTRIBUTE_TYPE_BOOLEAN,
    "last_sip_date": seg.ATTRIBUTE_TYPE_TIMESTAMP,
}


def catalog_error(terms: OfferTerms) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as error:
        check_catalog(terms, CATALOG)
    return error.value


def test_an_unknown_attribute_names_the_condition_and_suggests_close_names() -> None:
    error = catalog_error(
        OfferTerms("X", eligibility=(Condition("city", "EXISTS"), Condition("bureau_scor", "EXISTS")))
    )
    assert error.field == "campaign.offer.eligibility[1].attribute"
    assert "'bureau_scor' is not an attribute in the segments catalog (did you mean bureau_score?)" in error.message
    assert "DefineAttributes" in error.message


def test_an_unknown_attribute_with_nothing_close_gets_no_suggestion() -> None:
    error = catalog_error(OfferTerms("X", eligibility=(Condition("zzzz", "EXISTS"),)))
    assert error.field == "campaign.offer.eligibility[0].attribute"
    assert "did you mean" not in error.message


def test_the_amount_rule_reads_a_known_money_attribute() -> None:
    unknown = catalog_error(OfferTerms("X", amount_rule=AmountRule("preapproved_limit")))
    assert unknown.field == "campaign.offer.amount_rule.attribute"
    assert f"did you mean {LIMIT}" in unknown.message
    for attribute in ("bureau_score", "city", "fund_categories", "last_sip_date"):
        not_money = catalog_error(OfferTerms("X", amount_rule=AmountRule(attribute)))
        assert not_money.field == "campaign.offer.amount_rule.attribute"
        assert "is not a MONEY attribute" in not_money.message
    check_catalog(OfferTerms("X", amount_rule=AmountRule(LIMIT)), CATALOG)


@pytest.mark.parametrize(
    ("condition_", "field", "message"),
    [
        (Condition("bureau_score", "GREATER_THAN", ("750",)), "values[0]", "is a string; bureau_score holds number"),
        (Condition("bureau_score", "EQUALS", (True,)), "values[0]", "is a boolean; bureau_score holds number"),
        (Condition("has_stp", "EQUALS", (1.0,)), "values[0]", "is a number; has_stp holds boolean"),
        (Condition("city", "IN", ("Pune", 411001.0)), "values[1]", "is a number; city holds string"),
        (Condition("city", "EQUALS", (frozenset({"Pune"}),)), "values[0]", "is a string set; city holds string"),
        (Condition("total_aum", "GREATER_THAN", (1000.0,)), "values[0]", "is a number; total_aum holds money"),
        (Condition("last_sip_date", "LESS_THAN", (1.7e9,)), "values[0]", "is a number; last_sip_date holds timestamp"),
        (Condition("bureau_score", "LESS_THAN", (NOW,)), "values[0]", "is a timestamp; bureau_score holds number"),
        (
            Condition("bureau_score", "BETWEEN", (inr(1), inr(2))),
            "values[0]",
            "is a money (INR); bureau_score holds number",
        ),
        (
            Condition("fund_categories", "EQUALS", ("ELSS",)),
            "values[0]",
            "is a string; fund_categories holds string_set",
        ),
        (
            Condition("fund_categories", "CONTAINS_ANY", ("ELSS", True)),
            "values[1]",
            "is a boolean; fund_categories holds string_set",
        ),
    ],
)
def test_an_operand_not_fitting_the_attribute_type_names_itself(
    condition_: Condition, field: str, message: str
) -> None:
    error = catalog_error(OfferTerms("X", eligibility=(Condition("city", "EXISTS"), condition_)))
    assert error.field == f"campaign.offer.eligibility[1].{field}"
    assert message in error.message


@pytest.mark.parametrize(
    "condition_",
    [
        Condition("fund_categories", "CONTAINS", ("ELSS",)),
        Condition("fund_categories", "NOT_CONTAINS", ("ELSS",)),
        Condition("fund_categories", "CONTAINS_ANY", ("ELSS", "DEBT")),
        Condition("fund_categories", "CONTAINS_ALL", ("ELSS", "DEBT")),
        Condition("fund_categories", "CONTAINS_NONE", ("ELSS",)),
        Condition("fund_categories", "EQUALS", (frozenset({"ELSS", "DEBT"}),)),
        Condition("fund_categories", "NOT_EQUALS", (frozenset({"ELSS"}),)),
        Condition("fund_categories", "NOT_EXISTS"),
        Condition("bureau_score", "BETWEEN", (700.0, 800.0)),
        Condition("total_aum", "GREATER_OR_EQUAL", (usd(100),)),
        Condition("last_sip_date", "BETWEEN", (NOW - timedelta(days=1), NOW)),
        Condition("has_stp", "NOT_EQUALS", (False,)),
        Condition("city", "CONTAINS", ("Pu",)),
    ],
)
def test_operands_fitting_the_attribute_type_are_accepted(condition_: Condition) -> None:
    check_catalog(OfferTerms("X", amount_rule=AmountRule(LIMIT), eligibility=(condition_,)), CATALOG)


@pytest.mark.parametrize(
    ("condition_", "says"),
    [
        # A set is never equal to one string: IN could never hold, NOT_IN always would.
        (Condition("fund_categories", "IN", ("ELSS",)), "use OPERATOR_CONTAINS_ANY"),
        (Condition("fund_categories", "NOT_IN", ("ELSS",)), "use OPERATOR_CONTAINS_ANY"),
        (Condition("fund_categories", "GREATER_THAN", (3.0,)), "a string set"),
        (Condition("city", "CONTAINS_ANY", ("Pune",)), "city holds string values"),
        (Condition("bureau_score", "CONTAINS_NONE", ("750",)), "applies to string-set attributes"),
    ],
)
def test_an_operator_that_cannot_apply_to_the_attribute_type_is_refused(condition_: Condition, says: str) -> None:
    error = catalog_error(OfferTerms("X", eligibility=(condition_,)))
    assert error.field == "campaign.offer.eligibility[0].operator"
    assert says in error.message


def test_the_amount_rule_is_checked_before_the_conditions() -> None:
    terms = OfferTerms("X", amount_rule=AmountRule("nope"), eligibility=(Condition("also_nope", "EXISTS"),))
    assert catalog_error(terms).field == "campaign.offer.amount_rule.attribute"


# --- audience.sift ------------------------------------------------------------------------------


def sifted(
    people: dict[str, Reach], offers: dict[str, Offer | NotEligible], holdout_basis_points: int
) -> tuple[list[str], list[LeftOut], dict[str, Offer], list[str]]:
    asked: list[str] = []

    def offer_of(person: str) -> Offer | NotEligible:
        asked.append(person)
        return offers[person]

    result = sift(
        list(people),
        profile_id=lambda person: person,
        reach_of=lambda person: people[person],
        campaign_key="cmp_offers",
        holdout_basis_points=holdout_basis_points,
        offer_of=offer_of,
    )
    return [person for person, _ in result.eligible], result.left_out, result.offers, asked


def test_a_person_not_eligible_is_left_out_with_the_reason_and_others_keep_their_offers() -> None:
    people = {"p1": Reach("EMAIL"), "p2": Reach("SMS"), "p3": Reach("EMAIL")}
    offers: dict[str, Offer | NotEligible] = {
        "p1": Offer("TOPUP", inr(8_00_000)),
        "p2": NotEligible("bureau_score", "bureau_score is 712; needs at least 750"),
        "p3": Offer("TOPUP", inr(50_000)),
    }
    eligible, left_out, decided, _ = sifted(people, offers, holdout_basis_points=0)
    assert eligible == ["p1", "p3"]
    assert left_out == [LeftOut("p2", Exclusion.NOT_ELIGIBLE, "bureau_score")]
    assert left_out[0].kind == "not_eligible"
    assert decided == {"p1": Offer("TOPUP", inr(8_00_000)), "p3": Offer("TOPUP", inr(50_000))}


def test_a_person_not_eligible_is_never_held_out() -> None:
    # Everyone reachable and eligible is held out at 100%; the not eligible are counted as such.
    people = {"p1": Reach("EMAIL"), "p2": Reach("EMAIL")}
    offers: dict[str, Offer | NotEligible] = {
        "p1": NotEligible(AMOUNT_BELOW_MINIMUM, "the offer amount from limit is ₹0; needs ₹50,000"),
        "p2": Offer("TOPUP", inr(1)),
    }
    eligible, left_out, decided, _ = sifted(people, offers, holdout_basis_points=10_000)
    assert eligible == []
    assert left_out == [
        LeftOut("p1", Exclusion.NOT_ELIGIBLE, AMOUNT_BELOW_MINIMUM),
        LeftOut("p2", Exclusion.HELD_OUT, "holdout"),
    ]
    # The held-out person's offer is known: the holdout records what they would have been offered.
    assert decided == {"p2": Offer("TOPUP", inr(1))}


def test_a_suppression_wins_over_the_offer_which_is_not_decided_for_them() -> None:
    people = {"p1": Reach(None, "opt_out"), "p2": Reach(None, "no_contact"), "p3": Reach("EMAIL")}
    not_eligible = NotEligible("bureau_score", "bureau_score has no value; needs at least 750")
    offers: dict[str, Offer | NotEligible] = {"p1": not_eligible, "p2": not_eligible, "p3": not_eligible}
    eligible, left_out, decided, asked = sifted(people, offers, holdout_basis_points=0)
    assert eligible == []
    assert left_out == [
        LeftOut("p1", Exclusion.SUPPRESSED, "opt_out"),
        LeftOut("p2", Exclusion.SUPPRESSED, "no_contact"),
        LeftOut("p3", Exclusion.NOT_ELIGIBLE, "bureau_score"),
    ]
    assert decided == {}
    assert asked == ["p3"]


def test_sift_decides_real_terms_per_member() -> None:
    members = {
        "p1": {"bureau_score": 780.0, "kyc_status": "VERIFIED", LIMIT: inr(40_00_000)},
        "p2": {"bureau_score": 780.0, "kyc_status": "VERIFIED"},
        "p3": {"bureau_score": 780.0, "kyc_status": "VERIFIED", LIMIT: inr(10_00_000)},
    }
    result = sift(
        list(members),
        profile_id=lambda person: person,
        reach_of=lambda person: Reach("EMAIL"),
        campaign_key="cmp_offers",
        holdout_basis_points=0,
        offer_of=lambda person: SCORED.decide(members[person]),
    )
    assert result.eligible == [("p1", "EMAIL"), ("p3", "EMAIL")]
    assert result.left_out == [LeftOut("p2", Exclusion.NOT_ELIGIBLE, AMOUNT_MISSING)]
    assert result.offers == {"p1": Offer("MSME_WC_TOPUP", inr(25_00_000)), "p3": Offer("MSME_WC_TOPUP", inr(8_00_000))}


def test_without_offer_of_nobody_is_left_out_as_not_eligible_and_no_offers_are_returned() -> None:
    result = sift(
        ["p1"],
        profile_id=lambda person: person,
        reach_of=lambda person: Reach("EMAIL"),
        campaign_key="cmp_offers",
        holdout_basis_points=0,
    )
    assert result.eligible == [("p1", "EMAIL")]
    assert result.left_out == []
    assert result.offers == {}


# --- the stored round trip ----------------------------------------------------------------------


def stored_row(terms: OfferTerms) -> SimpleNamespace:
    """The campaigns row's offer columns as campaign_values writes them, through JSON as the database keeps it."""
    rules = offer_rules_json(terms)
    return SimpleNamespace(
        offer_product_code=terms.product_code,
        offer_amount_minor=terms.amount.minor_units if terms.amount else None,
        offer_currency=terms.amount.currency_code if terms.amount else None,
        offer_rules=None if rules is None else json.loads(json.dumps(rules)),
    )


ROUND_TRIPS = {
    "fixed amount only": OfferTerms("LUMPSUM", Money(17_40_000_00, "INR")),
    "no amount": OfferTerms("LUMPSUM"),
    "amount rule with every bound": OfferTerms("MSME_WC_TOPUP", amount_rule=TOPUP),
    "amount rule without bounds": OfferTerms("MSME_WC_TOPUP", amount_rule=AmountRule(LIMIT)),
    "fixed amount in dollars with conditions": OfferTerms(
        "LUMPSUM", usd(500), eligibility=(Condition("has_stp", "EQUALS", (False,)),)
    ),
    "every operand kind": OfferTerms(
        "MSME_WC_TOPUP",
        amount_rule=AmountRule(LIMIT, 2500, maximum=usd(10_000), round_down_to=usd(100)),
        eligibility=(
            Condition("bureau_score", "BETWEEN", (700.5, 900.0)),
            Condition("last_sip_date", "GREATER_OR_EQUAL", (datetime(2026, 3, 31, 18, 29, 59, 123456, tzinfo=IST),)),
            Condition("last_sip_date", "BETWEEN", (NOW - timedelta(days=365), NOW)),
            Condition("monthly_income", "LESS_THAN", (Money(12_34_56_789, "INR"),)),
            Condition("total_aum", "BETWEEN", (usd(1), usd(2))),
            Condition("has_stp", "NOT_EQUALS", (True,)),
            Condition("fund_categories", "EQUALS", (frozenset({"ELSS", "DEBT", "GOLD"}),)),
            Condition("fund_categories", "CONTAINS_ALL", ("ELSS", "DEBT")),
            Condition("fund_categories", "CONTAINS_NONE", ("CRYPTO",)),
            Condition("city", "IN", ("Pune", "Nashik", "Navi Mumbai")),
            Condition("city", "NOT_CONTAINS", ("Test",)),
            Condition("kyc_status", "EXISTS"),
            Condition("closed_at", "NOT_EXISTS"),
        ),
    ),
}


@pytest.mark.parametrize("terms", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_stored_terms_read_back_equal(terms: OfferTerms) -> None:
    assert offer_terms_of(stored_row(terms)) == terms
    assert terms_from_proto(offer_terms_proto(terms)) == terms


def test_terms_decided_once_only_store_no_rules() -> None:
    assert stored_row(OfferTerms("LUMPSUM", inr(100))).offer_rules is None
    assert stored_row(OfferTerms("LUMPSUM", amount_rule=AmountRule(LIMIT))).offer_rules is not None


def test_read_back_terms_decide_as_the_originals() -> None:
    terms = ROUND_TRIPS["every operand kind"]
    read_back = offer_terms_of(stored_row(terms))
    person = {
        "bureau_score": 700.5,
        "last_sip_date": NOW - timedelta(days=1),
        "total_aum": usd(2),
        "monthly_income": inr(1_00_000),
        "has_stp": False,
        "fund_categories": frozenset({"ELSS", "DEBT", "GOLD"}),
        "city": "Navi Mumbai",
        "kyc_status": "VERIFIED",
        LIMIT: usd(9_999),
    }
    assert terms.decide(person) == Offer("MSME_WC_TOPUP", usd(2_400))
    assert read_back.decide(person) == terms.decide(person)
    assert read_back.decide({**person, "city": "Mumbai"}) == terms.decide({**person, "city": "Mumbai"})
