"""Computed attributes: declared aggregations over a person's events, their validation and plain meaning."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from services.segments.rules import MAX_WINDOW_SECONDS, PropertyFilter, RuleError, parse_rule, value_matches
from services.segments.values import CURRENCY_PATTERN, Kind, Value, name_problem, to_proto
from xsell.segments.v1 import resources_pb2


class Aggregation(StrEnum):
    COUNT = "COUNT"
    SUM = "SUM"
    MIN = "MIN"
    MAX = "MAX"
    DISTINCT_COUNT = "DISTINCT_COUNT"
    FIRST_VALUE = "FIRST_VALUE"
    LAST_VALUE = "LAST_VALUE"


COUNTING = frozenset({Aggregation.COUNT, Aggregation.DISTINCT_COUNT})
ARITHMETIC = frozenset({Aggregation.SUM, Aggregation.MIN, Aggregation.MAX})
POSITIONAL = frozenset({Aggregation.FIRST_VALUE, Aggregation.LAST_VALUE})
SCALAR_KINDS = frozenset({Kind.STRING, Kind.NUMBER, Kind.BOOL, Kind.TIMESTAMP, Kind.MONEY})
# DISTINCT_COUNT counts distinct values of these kinds; money and string sets have no single comparable value.
DISTINCT_KINDS = (Kind.STRING, Kind.NUMBER, Kind.BOOL, Kind.TIMESTAMP)

TYPE_NAMES = {
    Kind.STRING: "STRING",
    Kind.NUMBER: "NUMBER",
    Kind.BOOL: "BOOLEAN",
    Kind.STRING_SET: "STRING_SET",
    Kind.TIMESTAMP: "TIMESTAMP",
    Kind.MONEY: "MONEY",
}


class ComputedError(ValueError):
    """A computed definition that cannot be kept: `path` names the field, `message` says what would be valid."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class ComputedDefinition:
    """`attribute` (of type `kind`) = `aggregation` of `property` over the person's `event_name` events.

    Only events in the last `window_seconds` (all stored history when None) that pass every filter
    count, and for every aggregation but COUNT only events whose property has the kind aggregated
    (the attribute's kind, or any of DISTINCT_KINDS). A person with no such event has no value:
    the attribute is absent, not 0, so `NOT EXISTS` finds people who never invested.
    """

    attribute: str
    kind: Kind
    event_name: str
    aggregation: Aggregation
    property: str = ""
    window_seconds: float | None = None
    filters: tuple[PropertyFilter, ...] = ()
    currency: str | None = None

    def window_start(self, now: datetime) -> datetime | None:
        return None if self.window_seconds is None else now - timedelta(seconds=self.window_seconds)


def parse_computed(
    attribute: str, kind: Kind, computed: resources_pb2.ComputedAttribute, path: str
) -> ComputedDefinition:
    """The validated definition of a computed attribute of type `kind`; ComputedError at the first problem."""
    if problem := name_problem(computed.event_name, "event_name"):
        raise ComputedError(f"{path}.event_name", problem)
    if computed.aggregation == resources_pb2.AGGREGATION_UNSPECIFIED:
        raise ComputedError(f"{path}.aggregation", f"aggregation is required; one of {', '.join(Aggregation)}")
    try:
        aggregation = Aggregation(resources_pb2.Aggregation.Name(computed.aggregation).removeprefix("AGGREGATION_"))
    except ValueError:
        raise ComputedError(
            f"{path}.aggregation", f"unknown aggregation {computed.aggregation}; one of {', '.join(Aggregation)}"
        ) from None
    _check_property(aggregation, computed.property, path)
    _check_type(aggregation, kind, path)
    window_seconds = _window(computed, path)
    currency = _currency(aggregation, kind, computed.currency_code, path)
    return ComputedDefinition(
        attribute=attribute,
        kind=kind,
        event_name=computed.event_name,
        aggregation=aggregation,
        property=computed.property,
        window_seconds=window_seconds,
        filters=_filters(computed, path),
        currency=currency,
    )


def computed_proto(definition: ComputedDefinition) -> resources_pb2.ComputedAttribute:
    """The contract form of a definition (the inverse of parse_computed)."""
    message = resources_pb2.ComputedAttribute(
        event_name=definition.event_name,
        aggregation=resources_pb2.Aggregation.Value(f"AGGREGATION_{definition.aggregation}"),
        property=definition.property,
        currency_code=definition.currency or "",
    )
    if definition.window_seconds is not None:
        message.window.FromTimedelta(timedelta(seconds=definition.window_seconds))
    for f in definition.filters:
        message.property_filters.add(
            property=f.property,
            operator=resources_pb2.Operator.Value(f.op.value),
            values=[to_proto(v) for v in f.values],
        )
    return message


def _check_property(aggregation: Aggregation, name: str, path: str) -> None:
    if aggregation is Aggregation.COUNT:
        if name:
            raise ComputedError(f"{path}.property", "COUNT counts events and takes no property; leave property empty")
        return
    if not name:
        raise ComputedError(f"{path}.property", f"{aggregation} needs the property it aggregates, e.g. 'amount'")
    if problem := name_problem(name, "property"):
        raise ComputedError(f"{path}.property", problem)


def _check_type(aggregation: Aggregation, kind: Kind, path: str) -> None:
    declared = TYPE_NAMES[kind]
    if aggregation in COUNTING and kind is not Kind.NUMBER:
        raise ComputedError(
            f"{path}.aggregation", f"{aggregation} yields a NUMBER; declare the attribute NUMBER, not {declared}"
        )
    if aggregation in ARITHMETIC and kind not in (Kind.NUMBER, Kind.MONEY):
        raise ComputedError(
            f"{path}.aggregation", f"{aggregation} applies to NUMBER or MONEY attributes, not {declared}"
        )
    if aggregation in POSITIONAL and kind not in SCALAR_KINDS:
        raise ComputedError(
            f"{path}.aggregation",
            f"{aggregation} takes one event's value: declare a STRING, NUMBER, BOOLEAN, TIMESTAMP or MONEY attribute, "
            f"not {declared}",
        )


def _window(computed: resources_pb2.ComputedAttribute, path: str) -> float | None:
    if not computed.HasField("window"):
        return None
    seconds = computed.window.seconds + computed.window.nanos / 1e9
    if seconds <= 0:
        raise ComputedError(
            f"{path}.window",
            f"window must be a positive duration, e.g. 7776000s for 90 days, or unset for all history; "
            f"got {seconds:g}s",
        )
    if seconds > MAX_WINDOW_SECONDS:
        raise ComputedError(f"{path}.window", f"window must be at most 100 years, got {seconds:g}s")
    return seconds


def _currency(aggregation: Aggregation, kind: Kind, code: str, path: str) -> str | None:
    if kind is not Kind.MONEY:
        if code:
            raise ComputedError(
                f"{path}.currency_code", "currency_code applies only to MONEY attributes; leave it empty"
            )
        return None
    if not code:
        if aggregation in ARITHMETIC:
            raise ComputedError(
                f"{path}.currency_code",
                f"{aggregation} of money needs the currency it aggregates, e.g. 'INR' (amounts in others are ignored)",
            )
        return None
    if not CURRENCY_PATTERN.match(code):
        raise ComputedError(
            f"{path}.currency_code", f"currency_code must be an ISO 4217 code such as 'INR', got {code!r}"
        )
    return code


def _filters(computed: resources_pb2.ComputedAttribute, path: str) -> tuple[PropertyFilter, ...]:
    """The filters, validated exactly as an event condition's property filters are."""
    probe = resources_pb2.Rule(
        event=resources_pb2.EventCondition(
            event_name=computed.event_name,
            performance=resources_pb2.PERFORMANCE_PERFORMED,
            property_filters=computed.property_filters,
        )
    )
    try:
        parsed = parse_rule(probe, path="$")
    except RuleError as error:
        raise ComputedError(error.path.replace("$.event", path, 1), error.message) from None
    return tuple(getattr(parsed, "filters", ()))


# --- reference evaluator ----------------------------------------------------------------------
# The plain-Python meaning of a computed attribute; the SQL that keeps them current must agree.


@dataclass(frozen=True)
class PastEvent:
    event_id: str
    name: str
    occurred_at: datetime
    properties: Mapping[str, Value] = field(default_factory=dict)


def counts(definition: ComputedDefinition, event: PastEvent, now: datetime) -> bool:
    """Whether the event is one the definition aggregates."""
    if event.name != definition.event_name:
        return False
    start = definition.window_start(now)
    if start is not None and event.occurred_at < start:
        return False
    if not all(
        value_matches(f.op, f.values, event.properties.get(f.property), sets_match=False) for f in definition.filters
    ):
        return False
    if definition.aggregation is Aggregation.COUNT:
        return True
    value = event.properties.get(definition.property)
    if value is None:
        return False
    if definition.aggregation is Aggregation.DISTINCT_COUNT:
        return value.kind in DISTINCT_KINDS
    if value.kind is not definition.kind:
        return False
    return definition.currency is None or value.currency == definition.currency


def evaluate(definition: ComputedDefinition, events: Iterable[PastEvent], now: datetime) -> Value | None:
    """The attribute's value for one person with these events, or None when no event counts."""
    matching = sorted((e for e in events if counts(definition, e, now)), key=lambda e: (e.occurred_at, e.event_id))
    if not matching:
        return None
    aggregation = definition.aggregation
    if aggregation is Aggregation.COUNT:
        return Value.num(len(matching))
    values = [e.properties[definition.property] for e in matching]
    if aggregation is Aggregation.DISTINCT_COUNT:
        return Value.num(len({(v.kind, v.text, v.number) for v in values}))
    if aggregation is Aggregation.FIRST_VALUE:
        return values[0]
    if aggregation is Aggregation.LAST_VALUE:
        return values[-1]
    numbers = [v.number or 0.0 for v in values]
    result = (
        sum(numbers)
        if aggregation is Aggregation.SUM
        else min(numbers)
        if aggregation is Aggregation.MIN
        else max(numbers)
    )
    if definition.kind is Kind.MONEY:
        return Value(Kind.MONEY, number=float(result), currency=definition.currency)
    return Value.num(result)
