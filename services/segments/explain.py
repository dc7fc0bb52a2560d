"""A rule tree as a list of nodes with their paths and readable summaries, for preview and explain."""

from dataclasses import dataclass
from datetime import UTC, datetime

from services.segments.rules import (
    AllOf,
    AnyOf,
    AttributeCondition,
    CountComparison,
    EventCondition,
    LastWindow,
    Not,
    Op,
    PropertyFilter,
    RangeWindow,
    Rule,
    SegmentReference,
)
from services.segments.values import Kind, Value

ROOT = "rule"

_OPERATOR_WORDS = {
    Op.EQUALS: "equals",
    Op.NOT_EQUALS: "does not equal",
    Op.CONTAINS: "contains",
    Op.NOT_CONTAINS: "does not contain",
    Op.IN: "is one of",
    Op.NOT_IN: "is none of",
    Op.GREATER_THAN: ">",
    Op.GREATER_OR_EQUAL: ">=",
    Op.LESS_THAN: "<",
    Op.LESS_OR_EQUAL: "<=",
    Op.BETWEEN: "is between",
    Op.EXISTS: "exists",
    Op.NOT_EXISTS: "does not exist",
    Op.CONTAINS_ANY: "contains any of",
    Op.CONTAINS_ALL: "contains all of",
    Op.CONTAINS_NONE: "contains none of",
}


@dataclass(frozen=True)
class Node:
    """One node of the tree; `funnel` is set for children of an AND: this child and its earlier siblings."""

    path: str
    summary: str
    rule: Rule
    funnel: tuple[Rule, ...] | None = None


def nodes(rule: Rule, path: str = ROOT) -> list[Node]:
    """Every node in tree order (a parent before its children)."""
    found: list[Node] = []
    _walk(rule, path, None, found)
    return found


def _walk(rule: Rule, path: str, funnel: tuple[Rule, ...] | None, found: list[Node]) -> None:
    found.append(Node(path, summary(rule), rule, funnel))
    if isinstance(rule, AllOf):
        for i, child in enumerate(rule.rules):
            _walk(child, f"{path}.all.rules[{i}]", rule.rules[: i + 1], found)
    elif isinstance(rule, AnyOf):
        for i, child in enumerate(rule.rules):
            _walk(child, f"{path}.any.rules[{i}]", None, found)
    elif isinstance(rule, Not):
        _walk(rule.rule, f"{path}.negate", None, found)


def summary(rule: Rule) -> str:
    """The node in words, e.g. "did not perform lumpsum_invested in the last 365 days"."""
    if isinstance(rule, AllOf):
        return f"all of {len(rule.rules)} conditions"
    if isinstance(rule, AnyOf):
        return f"any of {len(rule.rules)} conditions"
    if isinstance(rule, Not):
        return f"not ({summary(rule.rule)})"
    if isinstance(rule, SegmentReference):
        return f"member of segment {rule.segment_id}"
    if isinstance(rule, AttributeCondition):
        return _comparison(rule.attribute, rule.op, rule.values)
    return _event(rule)


def _event(rule: EventCondition) -> str:
    words = [("performed " if rule.performed else "did not perform ") + rule.event_name]
    if rule.count is not None:
        words.append(_count(rule.count))
    if rule.filters:
        words.append("where " + " and ".join(_filter(f) for f in rule.filters))
    words.append(_window(rule.window))
    return " ".join(w for w in words if w)


def _window(window: object) -> str:
    if window is None:
        return "ever"
    if isinstance(window, LastWindow):
        return f"in the last {_duration(window.seconds)}"
    if isinstance(window, RangeWindow):
        return f"from {_time(window.start)} until {_time(window.end)}"
    attribute = getattr(window, "attribute", None)
    return f"since the profile's {attribute}" if attribute else "in its window"


def _duration(seconds: float) -> str:
    day, hour = 24 * 3600, 3600
    if seconds % day == 0:
        days = int(seconds // day)
        return "1 day" if days == 1 else f"{days} days"
    if seconds % hour == 0:
        hours = int(seconds // hour)
        return "1 hour" if hours == 1 else f"{hours} hours"
    return f"{seconds:g} seconds"


def _count(count: CountComparison) -> str:
    if count.op is Op.EQUALS:
        return f"exactly {count.value} times"
    if count.op is Op.GREATER_OR_EQUAL:
        return f"at least {count.value} times"
    if count.op is Op.LESS_OR_EQUAL:
        return f"at most {count.value} times"
    return f"{count.value} to {count.upper} times"


def _filter(rule: PropertyFilter) -> str:
    return _comparison(rule.property, rule.op, rule.values)


def _comparison(name: str, op: Op, values: tuple[Value, ...]) -> str:
    words = _OPERATOR_WORDS[op]
    if not values:
        return f"{name} {words}"
    if op is Op.BETWEEN:
        return f"{name} {words} {_value(values[0])} and {_value(values[1])}"
    return f"{name} {words} {', '.join(_value(v) for v in values)}"


def _value(value: Value) -> str:
    if value.kind is Kind.STRING:
        return repr(value.text)
    if value.kind is Kind.BOOL:
        return value.text or ""
    if value.kind is Kind.STRING_SET:
        return "{" + ", ".join(repr(m) for m in sorted(value.members)) + "}"
    if value.kind is Kind.TIMESTAMP:
        return _time(datetime.fromtimestamp(value.number or 0.0, UTC))
    if value.kind is Kind.MONEY:
        return f"{(value.number or 0.0) / 100:.2f} {value.currency}"
    return f"{value.number:g}"


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
