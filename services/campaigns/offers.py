"""A campaign's offer per person: who is eligible (conditions on their profile) and how much (fixed or from it)."""

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from plumbing.errors import InvalidArgument
from services.campaigns.rendering import Money, Offer, format_money
from services.campaigns.segments_client import attribute_value
from xsell.campaigns.v1 import resources_pb2
from xsell.segments.v1 import resources_pb2 as segment_resources

BASIS_POINTS = 10_000
MAX_CONDITIONS = 20
MAX_VALUES = 1000
REASON_LENGTH = 40
"""run_exclusions.reason holds 40 characters; a not-eligible reason is an attribute name or one of the two below."""
AMOUNT_MISSING = "offer_amount_missing"
AMOUNT_BELOW_MINIMUM = "offer_amount_below_minimum"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_OPERATOR_PREFIX = "OPERATOR_"

NO_VALUES = frozenset({"EXISTS", "NOT_EXISTS"})
COMPARISONS = frozenset({"GREATER_THAN", "GREATER_OR_EQUAL", "LESS_THAN", "LESS_OR_EQUAL"})
SINGLE_VALUE = frozenset({"EQUALS", "NOT_EQUALS", "CONTAINS", "NOT_CONTAINS", *COMPARISONS})
MANY_VALUES = frozenset({"IN", "NOT_IN", "CONTAINS_ANY", "CONTAINS_ALL", "CONTAINS_NONE"})
SET_OPERATORS = frozenset({"CONTAINS_ANY", "CONTAINS_ALL", "CONTAINS_NONE"})
# Each negative operator is "not" its positive, as in segment rules: people without the attribute meet it.
NEGATIONS = {
    "NOT_EQUALS": "EQUALS",
    "NOT_CONTAINS": "CONTAINS",
    "NOT_IN": "IN",
    "NOT_EXISTS": "EXISTS",
    "CONTAINS_NONE": "CONTAINS_ANY",
}
_WORDS = {
    "EQUALS": "equal to",
    "NOT_EQUALS": "other than",
    "CONTAINS": "containing",
    "NOT_CONTAINS": "not containing",
    "IN": "one of",
    "NOT_IN": "none of",
    "GREATER_THAN": "more than",
    "GREATER_OR_EQUAL": "at least",
    "LESS_THAN": "less than",
    "LESS_OR_EQUAL": "at most",
    "BETWEEN": "between",
    "EXISTS": "present",
    "NOT_EXISTS": "absent",
    "CONTAINS_ANY": "containing any of",
    "CONTAINS_ALL": "containing all of",
    "CONTAINS_NONE": "containing none of",
}
# The operand kinds each attribute type is compared with (segments' AttributeType numbers).
_TYPE_KINDS = {
    segment_resources.ATTRIBUTE_TYPE_STRING: str,
    segment_resources.ATTRIBUTE_TYPE_NUMBER: float,
    segment_resources.ATTRIBUTE_TYPE_BOOLEAN: bool,
    segment_resources.ATTRIBUTE_TYPE_STRING_SET: frozenset,
    segment_resources.ATTRIBUTE_TYPE_TIMESTAMP: datetime,
    segment_resources.ATTRIBUTE_TYPE_MONEY: Money,
}


def _kind(value: object) -> str:
    if isinstance(value, Money):
        return f"money ({value.currency_code})"
    return {str: "string", float: "number", bool: "boolean", frozenset: "string set", datetime: "timestamp"}.get(
        type(value), type(value).__name__
    )


def _shown(value: object) -> str:
    if isinstance(value, Money):
        return format_money(value, "grouped")
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset):
        return "[" + ", ".join(sorted(value)) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _equal(actual: object, operand: object) -> bool:
    # bool is an int, and 1.0 == True: kinds are compared first.
    return type(actual) is type(operand) and actual == operand


def _ordered(actual: object, operand: object) -> tuple[Any, Any] | None:
    """The two values as comparable keys, or None when they cannot be compared (other kinds, other currencies)."""
    if isinstance(operand, Money):
        if isinstance(actual, Money) and actual.currency_code == operand.currency_code:
            return actual.minor_units, operand.minor_units
        return None
    if type(actual) is type(operand) and isinstance(operand, float | datetime):
        return actual, operand
    return None


@dataclass(frozen=True)
class Condition:
    """One eligibility condition: an attribute, a segments operator by name without prefix, its operands."""

    attribute: str
    operator: str
    operands: tuple[object, ...] = ()

    def holds(self, actual: object) -> bool:
        """Whether the person's value (None when they have none) meets the condition, as a segment rule would."""
        operator, operands = self.operator, self.operands
        if operator in NEGATIONS:
            return not Condition(self.attribute, NEGATIONS[operator], operands).holds(actual)
        if actual is None:
            return False
        if operator == "EXISTS":
            return True
        if operator in ("EQUALS", "IN"):
            return any(_equal(actual, operand) for operand in operands)
        if operator == "CONTAINS":
            needle = operands[0]
            if isinstance(actual, str):
                return isinstance(needle, str) and needle in actual
            return isinstance(actual, frozenset) and needle in actual
        if operator == "CONTAINS_ANY":
            return isinstance(actual, frozenset) and any(operand in actual for operand in operands)
        if operator == "CONTAINS_ALL":
            return isinstance(actual, frozenset) and all(operand in actual for operand in operands)
        if operator == "BETWEEN":
            low, high = _ordered(actual, operands[0]), _ordered(actual, operands[1])
            return low is not None and high is not None and low[1] <= low[0] <= high[1]
        pair = _ordered(actual, operands[0])
        if pair is None:
            return False
        value, bound = pair
        if operator == "GREATER_THAN":
            return bool(value > bound)
        if operator == "GREATER_OR_EQUAL":
            return bool(value >= bound)
        if operator == "LESS_THAN":
            return bool(value < bound)
        return bool(value <= bound)

    def failure(self, actual: object) -> str:
        """Why a person with `actual` fails, e.g. "bureau_score is 712; needs at least 750" (for previews; it
        quotes the person's value, so it is never logged)."""
        wanted = _WORDS[self.operator]
        if self.operator in NO_VALUES:
            needs = f"needs it {wanted}"
        elif self.operator == "BETWEEN":
            needs = f"needs between {_shown(self.operands[0])} and {_shown(self.operands[1])}"
        else:
            needs = f"needs {wanted} " + ", ".join(_shown(operand) for operand in self.operands)
        has = "has no value" if actual is None else f"is {_shown(actual)}"
        return f"{self.attribute} {has}; {needs}"


@dataclass(frozen=True)
class AmountRule:
    """Each person's amount: a share of a MONEY attribute, lowered to `maximum`, rounded down to a multiple of
    `round_down_to`; below `minimum` (or zero) the person is not eligible."""

    attribute: str
    share_basis_points: int = BASIS_POINTS
    maximum: Money | None = None
    minimum: Money | None = None
    round_down_to: Money | None = None

    def currency(self) -> str | None:
        """The currency the bounds are in, when any is set (validated to be one)."""
        for bound in (self.maximum, self.minimum, self.round_down_to):
            if bound is not None:
                return bound.currency_code
        return None

    def amount(self, attributes: Mapping[str, object]) -> "Money | NotEligible":
        value = attributes.get(self.attribute)
        if not isinstance(value, Money):
            return NotEligible(AMOUNT_MISSING, f"{self.attribute} has no money value; the offer amount comes from it")
        currency = self.currency()
        if currency is not None and value.currency_code != currency:
            return NotEligible(
                AMOUNT_MISSING, f"{self.attribute} is in {value.currency_code}; the amount rule's bounds are {currency}"
            )
        minor = value.minor_units * self.share_basis_points // BASIS_POINTS
        if self.maximum is not None:
            minor = min(minor, self.maximum.minor_units)
        if self.round_down_to is not None:
            minor -= minor % self.round_down_to.minor_units
        floor = self.minimum.minor_units if self.minimum is not None else 1
        if minor < floor:
            amount = format_money(Money(max(minor, 0), value.currency_code), "grouped")
            needs = format_money(self.minimum, "grouped") if self.minimum is not None else "more than zero"
            detail = f"the offer amount from {self.attribute} is {amount}; needs {needs}"
            return NotEligible(AMOUNT_BELOW_MINIMUM, detail)
        return Money(minor, value.currency_code)


@dataclass(frozen=True)
class NotEligible:
    """Why a person gets no offer: `reason` is stored and counted (an attribute name, or AMOUNT_*), `detail`
    a sentence for previews."""

    reason: str
    detail: str


@dataclass(frozen=True)
class OfferTerms:
    """The campaign's offer: the product, a fixed amount or an amount rule, and the eligibility conditions."""

    product_code: str
    amount: Money | None = None
    amount_rule: AmountRule | None = None
    eligibility: tuple[Condition, ...] = ()

    @property
    def per_person(self) -> bool:
        """True when the offer is decided for each person (an amount rule or eligibility conditions)."""
        return self.amount_rule is not None or bool(self.eligibility)

    @property
    def has_amount(self) -> bool:
        return self.amount is not None or self.amount_rule is not None

    def shared(self) -> Offer:
        """What every outreach of the campaign shares: the product and, when fixed, the amount."""
        return Offer(self.product_code, self.amount)

    def attribute_names(self) -> tuple[str, ...]:
        """The profile attributes deciding the offer, which a release asks segments for."""
        names = [condition.attribute for condition in self.eligibility]
        if self.amount_rule is not None:
            names.append(self.amount_rule.attribute)
        return tuple(dict.fromkeys(names))

    def decide(self, attributes: Mapping[str, object]) -> Offer | NotEligible:
        """The person's offer, or why they get none: the first condition they fail, then the amount rule."""
        for condition in self.eligibility:
            actual = attributes.get(condition.attribute)
            if not condition.holds(actual):
                return NotEligible(condition.attribute[:REASON_LENGTH], condition.failure(actual))
        if self.amount_rule is None:
            return Offer(self.product_code, self.amount)
        amount = self.amount_rule.amount(attributes)
        if isinstance(amount, NotEligible):
            return amount
        return Offer(self.product_code, amount)


def _money(message: Any, path: str, *, positive: bool = True) -> Money:
    if not _CURRENCY.match(message.currency_code):
        where = f"{path}.currency_code"
        raise InvalidArgument("must be an ISO 4217 code such as 'INR'", field=where)
    if positive and message.minor_units <= 0:
        raise InvalidArgument("must be above zero", field=f"{path}.minor_units")
    return Money(message.minor_units, message.currency_code)


def _amount_rule(rule: resources_pb2.OfferAmountRule, path: str) -> AmountRule:
    if not _NAME.match(rule.attribute):
        raise InvalidArgument(
            "must name a MONEY attribute in lower_snake_case, e.g. 'preapproved_topup_limit'",
            field=f"{path}.attribute",
        )
    if rule.share_basis_points > BASIS_POINTS:
        raise InvalidArgument(
            f"is {rule.share_basis_points}; at most {BASIS_POINTS} (100%), e.g. 8000 for 80%",
            field=f"{path}.share_basis_points",
        )
    bounds = {
        name: _money(getattr(rule, name), f"{path}.{name}") if rule.HasField(name) else None  # type: ignore[arg-type]
        for name in ("maximum", "minimum", "round_down_to")
    }
    currencies = {bound.currency_code for bound in bounds.values() if bound is not None}
    if len(currencies) > 1:
        raise InvalidArgument(
            f"maximum, minimum and round_down_to must be in one currency, got {', '.join(sorted(currencies))}",
            field=path,
        )
    maximum, minimum = bounds["maximum"], bounds["minimum"]
    if maximum is not None and minimum is not None and minimum.minor_units > maximum.minor_units:
        raise InvalidArgument("is above the maximum; lower it or raise the maximum", field=f"{path}.minimum")
    return AmountRule(
        rule.attribute,
        rule.share_basis_points or BASIS_POINTS,
        maximum,
        minimum,
        bounds["round_down_to"],
    )


def _operands(operator: str, values: Sequence[segment_resources.Value], path: str) -> tuple[object, ...]:
    count, where = len(values), f"{path}.values"
    if operator in NO_VALUES and count:
        raise InvalidArgument(f"OPERATOR_{operator} takes no values, got {count}", field=where)
    if operator in SINGLE_VALUE and count != 1:
        hint = "; use OPERATOR_IN for several" if operator == "EQUALS" and count > 1 else ""
        raise InvalidArgument(f"OPERATOR_{operator} needs exactly 1 value, got {count}{hint}", field=where)
    if operator == "BETWEEN" and count != 2:
        raise InvalidArgument(f"OPERATOR_BETWEEN needs 2 values (lower and upper bound), got {count}", field=where)
    if operator in MANY_VALUES and not 1 <= count <= MAX_VALUES:
        raise InvalidArgument(f"OPERATOR_{operator} needs 1 to {MAX_VALUES} values, got {count}", field=where)
    operands: list[object] = []
    for index, value in enumerate(values):
        here = f"{path}.values[{index}]"
        operand = attribute_value(value)
        if operand is None:
            raise InvalidArgument("is empty; set one of its kinds, e.g. number_value", field=here)
        if isinstance(operand, Money) and not _CURRENCY.match(operand.currency_code):
            raise InvalidArgument("money_value.currency_code must be an ISO 4217 code, e.g. 'INR'", field=here)
        if (operator in COMPARISONS or operator == "BETWEEN") and not isinstance(operand, float | datetime | Money):
            raise InvalidArgument(
                f"OPERATOR_{operator} needs a number_value, timestamp_value or money_value, got {_kind(operand)}",
                field=here,
            )
        if operator in SET_OPERATORS and not isinstance(operand, str):
            raise InvalidArgument(
                f"OPERATOR_{operator} needs string_value operands (set members), got {_kind(operand)}",
                field=here,
            )
        if operator in ("CONTAINS", "NOT_CONTAINS") and (not isinstance(operand, str) or not operand):
            raise InvalidArgument(f"OPERATOR_{operator} needs a non-empty string_value", field=here)
        operands.append(operand)
    if operator == "BETWEEN":
        low, high = operands
        pair = _ordered(low, high)
        if pair is None:
            raise InvalidArgument(
                f"the bounds of OPERATOR_BETWEEN must be of one kind, got {_kind(low)} and {_kind(high)}",
                field=where,
            )
        if pair[0] > pair[1]:
            raise InvalidArgument("the lower bound is above the upper bound", field=where)
    return tuple(operands)


def _condition(condition: segment_resources.AttributeCondition, path: str) -> Condition:
    if not _NAME.match(condition.attribute):
        raise InvalidArgument(
            "must name a profile attribute in lower_snake_case, e.g. 'bureau_score'",
            field=f"{path}.attribute",
        )
    try:
        name = segment_resources.Operator.Name(condition.operator)
    except ValueError:
        name = "OPERATOR_UNSPECIFIED"
    if name == "OPERATOR_UNSPECIFIED":
        raise InvalidArgument("is required, e.g. OPERATOR_GREATER_OR_EQUAL or OPERATOR_IN", field=f"{path}.operator")
    operator = name.removeprefix(_OPERATOR_PREFIX)
    return Condition(condition.attribute, operator, _operands(operator, condition.values, path))


def terms_from_proto(offer: resources_pb2.Offer, path: str = "campaign.offer") -> OfferTerms:
    """The offer's terms; InvalidArgument names the first field of the amount rule or an eligibility condition in the
    way and what would be valid (campaigns.validate_spec checks the product and the fixed amount)."""
    if offer.HasField("amount") and offer.HasField("amount_rule"):
        raise InvalidArgument(
            "set amount (the same for everyone) or amount_rule (each person's, from their profile), not both",
            field=f"{path}.amount_rule",
        )
    amount = Money(offer.amount.minor_units, offer.amount.currency_code) if offer.HasField("amount") else None
    rule = _amount_rule(offer.amount_rule, f"{path}.amount_rule") if offer.HasField("amount_rule") else None
    if len(offer.eligibility) > MAX_CONDITIONS:
        raise InvalidArgument(
            f"has {len(offer.eligibility)} conditions; at most {MAX_CONDITIONS} (put the rest in the segment's rule)",
            field=f"{path}.eligibility",
        )
    conditions = tuple(
        _condition(condition, f"{path}.eligibility[{index}]") for index, condition in enumerate(offer.eligibility)
    )
    return OfferTerms(offer.product_code, amount, rule, conditions)


def check_catalog(terms: OfferTerms, attribute_types: Mapping[str, int], path: str = "campaign.offer") -> None:
    """Every attribute the terms read is in segments' catalog with a type their operands fit."""

    def known(name: str, where: str) -> int:
        if name not in attribute_types:
            close = difflib.get_close_matches(name, sorted(attribute_types), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InvalidArgument(
                f"{name!r} is not an attribute in the segments catalog{hint}; fix the name, or declare the "
                "attribute with DefineAttributes first",
                field=where,
            )
        return attribute_types[name]

    if terms.amount_rule is not None:
        where = f"{path}.amount_rule.attribute"
        if known(terms.amount_rule.attribute, where) != segment_resources.ATTRIBUTE_TYPE_MONEY:
            raise InvalidArgument(
                f"{terms.amount_rule.attribute!r} is not a MONEY attribute; the amount comes from a money attribute",
                field=where,
            )
    for index, condition in enumerate(terms.eligibility):
        where = f"{path}.eligibility[{index}]"
        attribute_type = known(condition.attribute, f"{where}.attribute")
        expected = _TYPE_KINDS.get(attribute_type)  # type: ignore[call-overload]
        if expected is None:
            continue
        type_name = segment_resources.AttributeType.Name(attribute_type).removeprefix("ATTRIBUTE_TYPE_").lower()  # type: ignore[arg-type]
        # Conditions that could never hold (or always would) for the attribute's type: refused, not saved.
        if expected is frozenset and condition.operator in ("IN", "NOT_IN", *COMPARISONS, "BETWEEN"):
            raise InvalidArgument(
                f"OPERATOR_{condition.operator} does not apply to {condition.attribute}, a string set; use "
                "OPERATOR_CONTAINS_ANY, OPERATOR_CONTAINS_ALL or OPERATOR_CONTAINS_NONE for its members",
                field=f"{where}.operator",
            )
        if expected is not frozenset and condition.operator in SET_OPERATORS:
            raise InvalidArgument(
                f"OPERATOR_{condition.operator} applies to string-set attributes; {condition.attribute} holds "
                f"{type_name} values (OPERATOR_IN / OPERATOR_NOT_IN compare it with several values)",
                field=f"{where}.operator",
            )
        for position, operand in enumerate(condition.operands):
            fits = isinstance(operand, expected)
            if expected is frozenset and condition.operator not in ("EQUALS", "NOT_EQUALS"):
                fits = isinstance(operand, str)  # set members
            if not fits:
                raise InvalidArgument(
                    f"is a {_kind(operand)}; {condition.attribute} holds {type_name} values",
                    field=f"{where}.values[{position}]",
                )
