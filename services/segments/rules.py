"""Segment rule trees: validation of the proto rule into a domain tree, and a pure reference evaluator."""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from plumbing.errors import InvalidArgument
from plumbing.times import utc_time
from services.segments.values import ORDERED_KINDS, Kind, Value, ValueProblem, from_proto, name_problem
from xsell.segments.v1 import resources_pb2

MAX_DEPTH = 16
MAX_VALUES = 1000
# A "last" window longer than a century is a typo, not a business rule.
MAX_WINDOW_SECONDS = 100 * 366 * 24 * 3600


class Op(StrEnum):
    EQUALS = "OPERATOR_EQUALS"
    NOT_EQUALS = "OPERATOR_NOT_EQUALS"
    CONTAINS = "OPERATOR_CONTAINS"
    NOT_CONTAINS = "OPERATOR_NOT_CONTAINS"
    IN = "OPERATOR_IN"
    NOT_IN = "OPERATOR_NOT_IN"
    GREATER_THAN = "OPERATOR_GREATER_THAN"
    GREATER_OR_EQUAL = "OPERATOR_GREATER_OR_EQUAL"
    LESS_THAN = "OPERATOR_LESS_THAN"
    LESS_OR_EQUAL = "OPERATOR_LESS_OR_EQUAL"
    BETWEEN = "OPERATOR_BETWEEN"
    EXISTS = "OPERATOR_EXISTS"
    NOT_EXISTS = "OPERATOR_NOT_EXISTS"
    CONTAINS_ANY = "OPERATOR_CONTAINS_ANY"
    CONTAINS_ALL = "OPERATOR_CONTAINS_ALL"
    CONTAINS_NONE = "OPERATOR_CONTAINS_NONE"


# Each negative operator is exactly "not" its positive: people (or events) without the value match it.
NEGATIONS: dict[Op, Op] = {
    Op.NOT_EQUALS: Op.EQUALS,
    Op.NOT_CONTAINS: Op.CONTAINS,
    Op.NOT_IN: Op.IN,
    Op.NOT_EXISTS: Op.EXISTS,
    Op.CONTAINS_NONE: Op.CONTAINS_ANY,
}
COMPARISONS = frozenset({Op.GREATER_THAN, Op.GREATER_OR_EQUAL, Op.LESS_THAN, Op.LESS_OR_EQUAL})
SINGLE_VALUE = frozenset({Op.EQUALS, Op.NOT_EQUALS, Op.CONTAINS, Op.NOT_CONTAINS, *COMPARISONS})
MANY_VALUES = frozenset({Op.IN, Op.NOT_IN, Op.CONTAINS_ANY, Op.CONTAINS_ALL, Op.CONTAINS_NONE})
NO_VALUES = frozenset({Op.EXISTS, Op.NOT_EXISTS})
SET_OPERATORS = frozenset({Op.CONTAINS_ANY, Op.CONTAINS_ALL, Op.CONTAINS_NONE})
COUNT_OPERATORS = (Op.EQUALS, Op.GREATER_OR_EQUAL, Op.LESS_OR_EQUAL, Op.BETWEEN)


@dataclass(frozen=True)
class AttributeCondition:
    attribute: str
    op: Op
    values: tuple[Value, ...]


@dataclass(frozen=True)
class PropertyFilter:
    property: str
    op: Op
    values: tuple[Value, ...]


@dataclass(frozen=True)
class LastWindow:
    seconds: float


@dataclass(frozen=True)
class RangeWindow:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class SinceWindow:
    """From the instant held in the profile's timestamp attribute (inclusive) up to now.

    A person without that attribute, or with a value that is not a timestamp, has no window:
    no event of theirs counts, so they have performed the event zero times.
    """

    attribute: str


Window = LastWindow | RangeWindow | SinceWindow


@dataclass(frozen=True)
class CountComparison:
    op: Op
    value: int
    upper: int = 0


@dataclass(frozen=True)
class EventCondition:
    event_name: str
    performed: bool
    window: Window | None = None
    count: CountComparison | None = None
    filters: tuple[PropertyFilter, ...] = ()


@dataclass(frozen=True)
class SegmentReference:
    segment_id: str
    path: str = field(default="", compare=False)


@dataclass(frozen=True)
class AllOf:
    rules: tuple["Rule", ...]


@dataclass(frozen=True)
class AnyOf:
    rules: tuple["Rule", ...]


@dataclass(frozen=True)
class Not:
    rule: "Rule"


Rule = AllOf | AnyOf | Not | AttributeCondition | EventCondition | SegmentReference


class RuleError(ValueError):
    """A rule that cannot be evaluated: `path` points into the tree, `message` says what would be valid."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# --- validation -------------------------------------------------------------------------------


MAX_RULES = 100
"""The most rules (conditions, groups and negations) one segment's rule may hold. A preview counts each node and
each AND prefix, so its cost grows with the square of the width (400 conditions took 78 s), and SQLite refuses a
statement past 1,000 levels of expression (1,200 conditions could be approved, never published)."""


def parse_rule(rule: resources_pb2.Rule, path: str = "segment.rule") -> Rule:
    """The validated domain tree of a proto rule; RuleError at the first problem found."""
    if (count := _count_rules(rule, 1)) > MAX_RULES:
        raise RuleError(path, f"a rule may hold at most {MAX_RULES} rules (conditions, groups, negations); got {count}")
    return _parse(rule, path, 1)


def _count_rules(rule: resources_pb2.Rule, depth: int) -> int:
    """The rules in the tree, counted no deeper than _parse reads it (deeper is its error), and no further than just
    past MAX_RULES."""
    if depth > MAX_DEPTH:
        return 1
    kind = rule.WhichOneof("kind")
    if kind == "negate":
        return 1 + _count_rules(rule.negate, depth + 1)
    if kind not in ("all", "any"):
        return 1
    count = 1
    for child in (rule.all if kind == "all" else rule.any).rules:
        count += _count_rules(child, depth + 1)
        if count > MAX_RULES:
            break
    return count


def _parse(rule: resources_pb2.Rule, path: str, depth: int) -> Rule:
    if depth > MAX_DEPTH:
        raise RuleError(path, f"rules may be nested at most {MAX_DEPTH} levels deep")
    kind = rule.WhichOneof("kind")
    if kind is None:
        raise RuleError(path, "rule has no kind; set one of all, any, negate, attribute, event or segment")
    here = f"{path}.{kind}"
    if kind in ("all", "any"):
        group = rule.all if kind == "all" else rule.any
        if not group.rules:
            word = "an AND" if kind == "all" else "an OR"
            raise RuleError(f"{here}.rules", f"{word} group needs at least one rule, got none")
        children = tuple(_parse(child, f"{here}.rules[{i}]", depth + 1) for i, child in enumerate(group.rules))
        return AllOf(children) if kind == "all" else AnyOf(children)
    if kind == "negate":
        return Not(_parse(rule.negate, here, depth + 1))
    if kind == "attribute":
        return _attribute(rule.attribute, here)
    if kind == "event":
        return _event(rule.event, here)
    segment_id = rule.segment.segment_id
    if not segment_id:
        raise RuleError(f"{here}.segment_id", "segment_id is required: the id of a published segment")
    return SegmentReference(segment_id, path=f"{here}.segment_id")


def _operator(number: int, path: str) -> Op:
    if number == resources_pb2.OPERATOR_UNSPECIFIED:
        raise RuleError(path, f"operator is required; one of {', '.join(op.value for op in Op)}")
    try:
        return Op(resources_pb2.Operator.Name(number))  # type: ignore[arg-type]
    except ValueError:
        raise RuleError(path, f"unknown operator {number}; one of {', '.join(op.value for op in Op)}") from None


def _attribute(condition: resources_pb2.AttributeCondition, path: str) -> AttributeCondition:
    if problem := name_problem(condition.attribute, "attribute"):
        raise RuleError(f"{path}.attribute", problem)
    op = _operator(condition.operator, f"{path}.operator")
    values = _operands(op, condition.values, path, allow_sets=True)
    return AttributeCondition(condition.attribute, op, values)


def _operands(op: Op, raw: Sequence[resources_pb2.Value], path: str, *, allow_sets: bool) -> tuple[Value, ...]:
    count = len(raw)
    if op in NO_VALUES and count:
        raise RuleError(f"{path}.values", f"{op} takes no values, got {count}")
    if op in SINGLE_VALUE and count != 1:
        hint = "; use OPERATOR_IN for several" if op is Op.EQUALS and count > 1 else ""
        raise RuleError(f"{path}.values", f"{op} needs exactly 1 value, got {count}{hint}")
    if op is Op.BETWEEN and count != 2:
        raise RuleError(f"{path}.values", f"{op} needs exactly 2 values (lower and upper bound), got {count}")
    if op in MANY_VALUES and not 1 <= count <= MAX_VALUES:
        raise RuleError(f"{path}.values", f"{op} needs 1 to {MAX_VALUES} values, got {count}")
    values: list[Value] = []
    for i, item in enumerate(raw):
        here = f"{path}.values[{i}]"
        try:
            value = from_proto(item)
        except ValueProblem as problem:
            raise RuleError(here, problem.message) from None
        _check_kind(op, value, here, allow_sets=allow_sets)
        values.append(value)
    if op is Op.BETWEEN:
        lower, upper = values
        if (lower.kind, lower.currency) != (upper.kind, upper.currency):
            raise RuleError(
                f"{path}.values", f"{op} bounds must be of one kind, got {lower.describe()} and {upper.describe()}"
            )
        if (lower.number or 0.0) > (upper.number or 0.0):
            raise RuleError(f"{path}.values", f"{op} lower bound must not exceed the upper bound")
    return tuple(values)


def _check_kind(op: Op, value: Value, path: str, *, allow_sets: bool) -> None:
    if value.kind is Kind.STRING_SET:
        if not allow_sets:
            raise RuleError(path, "event properties are compared with single values; string_set_value is not allowed")
        if op not in (Op.EQUALS, Op.NOT_EQUALS):
            raise RuleError(
                path, f"{op} takes single values; a string_set_value operand works only with EQUALS / NOT_EQUALS"
            )
        if not value.members:
            raise RuleError(path, "string_set_value needs at least one value")
    if (op in COMPARISONS or op is Op.BETWEEN) and value.kind not in ORDERED_KINDS:
        raise RuleError(path, f"{op} needs a number_value, timestamp_value or money_value, got {value.describe()}")
    if op in SET_OPERATORS:
        if not allow_sets:
            raise RuleError(path, f"{op} applies to string-set attributes, not to event properties")
        if value.kind is not Kind.STRING:
            raise RuleError(path, f"{op} needs string_value operands (set members), got {value.describe()}")
    if op in (Op.CONTAINS, Op.NOT_CONTAINS) and (value.kind is not Kind.STRING or not value.text):
        raise RuleError(path, f"{op} needs a non-empty string_value, got {value.describe()}")


def _event(condition: resources_pb2.EventCondition, path: str) -> EventCondition:
    if problem := name_problem(condition.event_name, "event_name"):
        raise RuleError(f"{path}.event_name", problem)
    if condition.performance == resources_pb2.PERFORMANCE_UNSPECIFIED:
        raise RuleError(
            f"{path}.performance", "performance is required: PERFORMANCE_PERFORMED or PERFORMANCE_NOT_PERFORMED"
        )
    performed = condition.performance == resources_pb2.PERFORMANCE_PERFORMED
    window = _window(condition.window, f"{path}.window") if condition.HasField("window") else None
    count = _count(condition.count, f"{path}.count") if condition.HasField("count") else None
    filters: list[PropertyFilter] = []
    for i, raw in enumerate(condition.property_filters):
        here = f"{path}.property_filters[{i}]"
        if problem := name_problem(raw.property, "property"):
            raise RuleError(f"{here}.property", problem)
        op = _operator(raw.operator, f"{here}.operator")
        filters.append(PropertyFilter(raw.property, op, _operands(op, raw.values, here, allow_sets=False)))
    return EventCondition(condition.event_name, performed, window, count, tuple(filters))


def _window(window: resources_pb2.TimeWindow, path: str) -> Window:
    kind = window.WhichOneof("kind")
    if kind is None:
        raise RuleError(
            path, "window has no kind; set last or between or since_attribute, or leave window unset for all history"
        )
    if kind == "since_attribute":
        if problem := name_problem(window.since_attribute, "since_attribute"):
            raise RuleError(f"{path}.since_attribute", f"{problem}; it names a timestamp attribute, e.g. last_sip_date")
        return SinceWindow(window.since_attribute)
    if kind == "last":
        seconds = window.last.seconds + window.last.nanos / 1e9
        if seconds <= 0:
            raise RuleError(
                f"{path}.last", f"last must be a positive duration, e.g. 31536000s for 365 days, got {seconds:g}s"
            )
        if seconds > MAX_WINDOW_SECONDS:
            raise RuleError(f"{path}.last", f"last must be at most 100 years, got {seconds:g}s")
        return LastWindow(seconds)
    between = window.between
    if not between.HasField("start_time"):
        raise RuleError(f"{path}.between.start_time", "start_time is required (inclusive)")
    if not between.HasField("end_time"):
        raise RuleError(f"{path}.between.end_time", "end_time is required (exclusive)")
    try:
        start = utc_time(between.start_time, "start_time")
        end = utc_time(between.end_time, "end_time")
    except InvalidArgument as error:
        raise RuleError(f"{path}.between.{error.field}", error.message) from None
    if end <= start:
        raise RuleError(f"{path}.between.end_time", "end_time must be after start_time")
    return RangeWindow(start, end)


def _count(count: resources_pb2.CountComparison, path: str) -> CountComparison:
    allowed = ", ".join(op.value for op in COUNT_OPERATORS)
    if count.operator == resources_pb2.OPERATOR_UNSPECIFIED:
        raise RuleError(f"{path}.operator", f"operator is required; one of {allowed}")
    op = _operator(count.operator, f"{path}.operator")
    if op not in COUNT_OPERATORS:
        raise RuleError(f"{path}.operator", f"{op} cannot compare counts; use one of {allowed}")
    if count.value < 0:
        raise RuleError(f"{path}.value", f"value must be zero or more, got {count.value}")
    if op is Op.BETWEEN:
        if count.upper_value < count.value:
            raise RuleError(
                f"{path}.upper_value", f"upper_value must be at least value ({count.value}), got {count.upper_value}"
            )
    elif count.upper_value:
        raise RuleError(f"{path}.upper_value", f"upper_value is only used with OPERATOR_BETWEEN, not {op}")
    return CountComparison(op, count.value, count.upper_value)


def references(rule: Rule) -> Iterator[SegmentReference]:
    """Every segment the rule refers to, in tree order."""
    if isinstance(rule, SegmentReference):
        yield rule
    elif isinstance(rule, AllOf | AnyOf):
        for child in rule.rules:
            yield from references(child)
    elif isinstance(rule, Not):
        yield from references(rule.rule)


@dataclass(frozen=True)
class Inputs:
    """What a rule reads: the event names, attributes and other segments its result can depend on.

    A change to anything else cannot change who the rule selects (time aside: lapsing windows are the
    sweeper's), which is how membership refresh skips segments a batch cannot affect.
    """

    events: frozenset[str]
    attributes: frozenset[str]
    segments: frozenset[str]


def inputs(rule: Rule) -> Inputs:
    events: set[str] = set()
    attributes: set[str] = set()
    segments: set[str] = set()

    def visit(node: Rule) -> None:
        if isinstance(node, AllOf | AnyOf):
            for child in node.rules:
                visit(child)
        elif isinstance(node, Not):
            visit(node.rule)
        elif isinstance(node, SegmentReference):
            segments.add(node.segment_id)
        elif isinstance(node, AttributeCondition):
            attributes.add(node.attribute)
        else:
            events.add(node.event_name)
            if isinstance(node.window, SinceWindow):
                attributes.add(node.window.attribute)

    visit(rule)
    return Inputs(frozenset(events), frozenset(attributes), frozenset(segments))


def window_start(window: Window | None, now: datetime) -> datetime | None:
    """The inclusive lower bound of the window; "last" windows have no upper bound besides the future skew.

    None for no window and for "since" windows, whose bound differs per person (see since_bound).
    """
    if isinstance(window, LastWindow):
        return now - timedelta(seconds=window.seconds)
    if isinstance(window, RangeWindow):
        return window.start
    return None


# --- reference evaluator ----------------------------------------------------------------------
# The plain-Python meaning of a rule. The SQL compiler must agree with it on every dataset;
# tests cross-check the two.


@dataclass(frozen=True)
class EventRecord:
    name: str
    occurred_at: datetime
    properties: Mapping[str, Value] = field(default_factory=dict)


@dataclass
class World:
    """Everything a rule can look at, in memory."""

    attributes: Mapping[str, Mapping[str, Value]]
    events: Mapping[str, Sequence[EventRecord]] = field(default_factory=dict)
    memberships: Mapping[str, set[str]] = field(default_factory=dict)


def members(rule: Rule, world: World, now: datetime) -> set[str]:
    """The profile ids (keys of world.attributes) that satisfy the rule at `now`."""
    return {profile_id for profile_id in world.attributes if matches(rule, world, profile_id, now)}


def matches(rule: Rule, world: World, profile_id: str, now: datetime) -> bool:
    if isinstance(rule, AllOf):
        return all(matches(child, world, profile_id, now) for child in rule.rules)
    if isinstance(rule, AnyOf):
        return any(matches(child, world, profile_id, now) for child in rule.rules)
    if isinstance(rule, Not):
        return not matches(rule.rule, world, profile_id, now)
    if isinstance(rule, SegmentReference):
        return profile_id in world.memberships.get(rule.segment_id, set())
    if isinstance(rule, AttributeCondition):
        actual = world.attributes.get(profile_id, {}).get(rule.attribute)
        return value_matches(rule.op, rule.values, actual, sets_match=True)
    attributes = world.attributes.get(profile_id, {})
    count = sum(1 for event in world.events.get(profile_id, ()) if event_counts(rule, event, now, attributes))
    satisfied = count_satisfies(rule.count, count)
    return satisfied if rule.performed else not satisfied


def since_bound(window: SinceWindow, attributes: Mapping[str, Value]) -> float | None:
    """The epoch seconds a "since" window starts at for one person, or None when they have no window."""
    value = attributes.get(window.attribute)
    if value is None or value.kind is not Kind.TIMESTAMP:
        return None
    return value.number


def event_counts(
    condition: EventCondition, event: EventRecord, now: datetime, attributes: Mapping[str, Value] | None = None
) -> bool:
    """Whether one event of the person whose `attributes` these are counts towards the condition."""
    if event.name != condition.event_name:
        return False
    if isinstance(condition.window, SinceWindow):
        since = since_bound(condition.window, attributes or {})
        # Compared as epoch seconds (a double), exactly as the compiled SQL compares them.
        if since is None or event.occurred_at.timestamp() < since:
            return False
    start = window_start(condition.window, now)
    if start is not None and event.occurred_at < start:
        return False
    if isinstance(condition.window, RangeWindow) and event.occurred_at >= condition.window.end:
        return False
    return all(
        value_matches(f.op, f.values, event.properties.get(f.property), sets_match=False) for f in condition.filters
    )


def count_satisfies(count: CountComparison | None, actual: int) -> bool:
    if count is None:
        return actual >= 1
    if count.op is Op.EQUALS:
        return actual == count.value
    if count.op is Op.GREATER_OR_EQUAL:
        return actual >= count.value
    if count.op is Op.LESS_OR_EQUAL:
        return actual <= count.value
    return count.value <= actual <= count.upper


def value_matches(op: Op, operands: Sequence[Value], actual: Value | None, *, sets_match: bool) -> bool:
    """Whether a stored value satisfies the operator; `sets_match` is False for event properties,
    whose string sets are kept but not compared."""
    if op in NEGATIONS:
        return not value_matches(NEGATIONS[op], operands, actual, sets_match=sets_match)
    if actual is None:
        return False
    if not sets_match and actual.kind is Kind.STRING_SET:
        return op is Op.EXISTS
    if op is Op.EXISTS:
        return True
    if op is Op.EQUALS or op is Op.IN:
        return any(_equals(actual, operand) for operand in operands)
    if op is Op.CONTAINS:
        needle = operands[0].text or ""
        if actual.kind is Kind.STRING:
            return needle in (actual.text or "")
        return actual.kind is Kind.STRING_SET and needle in actual.members
    if op is Op.CONTAINS_ANY:
        return actual.kind is Kind.STRING_SET and any(o.text in actual.members for o in operands)
    if op is Op.CONTAINS_ALL:
        return actual.kind is Kind.STRING_SET and all(o.text in actual.members for o in operands)
    if op is Op.BETWEEN:
        lower, upper = operands
        return _comparable(actual, lower) and (lower.number or 0.0) <= (actual.number or 0.0) <= (upper.number or 0.0)
    operand = operands[0]
    if not _comparable(actual, operand):
        return False
    a, b = actual.number or 0.0, operand.number or 0.0
    if op is Op.GREATER_THAN:
        return a > b
    if op is Op.GREATER_OR_EQUAL:
        return a >= b
    if op is Op.LESS_THAN:
        return a < b
    return a <= b


def _comparable(actual: Value, operand: Value) -> bool:
    return actual.kind is operand.kind and actual.currency == operand.currency and actual.number is not None


def _equals(actual: Value, operand: Value) -> bool:
    if actual.kind is not operand.kind:
        return False
    if operand.kind is Kind.STRING_SET:
        return actual.members == operand.members
    if operand.kind in (Kind.STRING, Kind.BOOL):
        return actual.text == operand.text
    return actual.currency == operand.currency and actual.number == operand.number


def dependency_order(rules_by_segment: Mapping[str, Rule]) -> list[str]:
    """Segment ids ordered so that every segment comes after the segments it refers to.

    Membership refresh follows this order, so a segment built on another sees that other's
    memberships already updated for the same batch. References outside the mapping are ignored.
    """
    ordered: list[str] = []
    state: dict[str, bool] = {}

    def visit(segment_id: str) -> None:
        if state.get(segment_id) is not None:
            return
        state[segment_id] = False
        for reference in references(rules_by_segment[segment_id]):
            if reference.segment_id in rules_by_segment and state.get(reference.segment_id) is None:
                visit(reference.segment_id)
        state[segment_id] = True
        ordered.append(segment_id)

    for segment_id in sorted(rules_by_segment):
        visit(segment_id)
    return ordered
