"""Hypothesis strategies for random rule trees and datasets, and the properties that need no database.

The integration test tests/integration/segments/test_properties_sql.py uses the same strategies to
compare the compiled SQL with the reference evaluator on SQLite and PostgreSQL.
"""

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.segments.rule_files import SegmentFile, parse_segment_text, render_segment_text, rule_from_data
from services.segments.rules import NO_VALUES, SET_OPERATORS, EventRecord, Op, World, members, parse_rule
from services.segments.values import Value
from tests.unit.segments.builders import b, money, n, s, ss, ts
from xsell.segments.v1 import resources_pb2 as r

NOW = datetime(2025, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
REFERENCED = "seg_referenced"
ATTRIBUTES = ("tier", "score", "flag", "cats", "seen", "aum")
EVENT_NAMES = ("buy", "view")
PROPERTIES = ("amount", "kind", "paid", "when")
STRINGS = ("a", "b", "ab", "B", "")
NEEDLES = ("a", "b", "ab", "B")
MEMBERS = ("a", "b", "c")
NUMBERS = (-1.5, 0.0, 1.0, 2.0, 2.5)
CURRENCIES = ("INR", "USD")
MINOR_UNITS = (0, 100, 250)
# Event times and timestamp values come from one pool, so windows and "since" bounds land exactly
# on event times (inclusive / exclusive edges) as well as between them.
WINDOW_HOURS = (1, 24, 24 * 30, 24 * 365)
HOURS_AGO = (*WINDOW_HOURS, 0, 24 * 400)
# On a window's edge, a microsecond inside it, or a microsecond outside it.
MICROSECONDS = (0, 1, -1)
WINDOW_SECONDS = tuple(hours * 3600 for hours in WINDOW_HOURS)

MOMENTS = st.builds(
    lambda hours, micros: NOW - timedelta(hours=hours) + timedelta(microseconds=micros),
    st.sampled_from(HOURS_AGO),
    st.sampled_from(MICROSECONDS),
)

# --- data --------------------------------------------------------------------------------------

VALUES_BY_KIND = {
    "string": st.sampled_from(STRINGS).map(Value.string),
    "number": st.sampled_from(NUMBERS).map(Value.num),
    "bool": st.booleans().map(Value.boolean),
    "string_set": st.frozensets(st.sampled_from(MEMBERS)).map(Value.string_set),
    "timestamp": MOMENTS.map(Value.timestamp),
    "money": st.builds(Value.money, st.sampled_from(MINOR_UNITS), st.sampled_from(CURRENCIES)),
}
ANY_VALUE = st.one_of(*VALUES_BY_KIND.values())
TYPICAL_KIND = {"tier": "string", "score": "number", "flag": "bool", "cats": "string_set", "seen": "timestamp"}
TYPICAL_KIND["aum"] = "money"
# Mostly the attribute's declared kind; sometimes another, which every operator must handle alike.
ATTRIBUTE_VALUES = {name: st.one_of(VALUES_BY_KIND[kind], ANY_VALUE) for name, kind in TYPICAL_KIND.items()}


@st.composite
def profile_attributes(draw: st.DrawFn) -> dict[str, Value]:
    chosen = draw(st.sets(st.sampled_from(ATTRIBUTES)))
    return {name: draw(ATTRIBUTE_VALUES[name]) for name in sorted(chosen)}


EVENTS = st.builds(
    EventRecord,
    st.sampled_from(EVENT_NAMES),
    MOMENTS,
    st.dictionaries(st.sampled_from(PROPERTIES), ANY_VALUE, max_size=2),
)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """A handful of people with attributes of every kind, events with properties, and one referenced segment."""
    size = draw(st.integers(min_value=1, max_value=5))
    ids = [f"p{i}" for i in range(size)]
    attributes = {pid: draw(profile_attributes()) for pid in ids}
    events = {pid: draw(st.lists(EVENTS, max_size=4)) for pid in ids}
    for pid in ids:
        # "since" windows are most telling when they start exactly at, or a microsecond off, an event.
        if events[pid] and draw(st.booleans()):
            moment = draw(st.sampled_from([e.occurred_at for e in events[pid]]))
            offset = timedelta(microseconds=draw(st.sampled_from(MICROSECONDS)))
            attributes[pid] = {**attributes[pid], "seen": Value.timestamp(moment + offset)}
    referenced = draw(st.sets(st.sampled_from(ids)))
    return World(attributes=attributes, events=events, memberships={REFERENCED: set(referenced)})


# --- rules -------------------------------------------------------------------------------------

SCALAR_OPERANDS = st.one_of(
    st.sampled_from(STRINGS).map(s),
    st.sampled_from(NUMBERS).map(n),
    st.booleans().map(b),
    MOMENTS.map(ts),
    st.builds(money, st.sampled_from(MINOR_UNITS), st.sampled_from(CURRENCIES)),
)
ORDERED_OPERANDS = st.one_of(
    st.sampled_from(NUMBERS).map(n),
    MOMENTS.map(ts),
    st.builds(money, st.sampled_from(MINOR_UNITS), st.sampled_from(CURRENCIES)),
)


@st.composite
def between_operands(draw: st.DrawFn) -> list[r.Value]:
    kind = draw(st.sampled_from(("number", "timestamp", "money")))
    if kind == "number":
        low, high = sorted(draw(st.lists(st.sampled_from(NUMBERS), min_size=2, max_size=2)))
        return [n(low), n(high)]
    if kind == "timestamp":
        start, end = sorted(draw(st.lists(MOMENTS, min_size=2, max_size=2)))
        return [ts(start), ts(end)]
    currency = draw(st.sampled_from(CURRENCIES))
    low_minor, high_minor = sorted(draw(st.lists(st.sampled_from(MINOR_UNITS), min_size=2, max_size=2)))
    return [money(low_minor, currency), money(high_minor, currency)]


def operands(op: Op, *, allow_sets: bool) -> st.SearchStrategy[list[r.Value]]:
    if op in NO_VALUES:
        return st.just([])
    if op in (Op.EQUALS, Op.NOT_EQUALS):
        single = SCALAR_OPERANDS
        if allow_sets:
            sets = st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=3).map(lambda m: ss(*m))
            single = st.one_of(SCALAR_OPERANDS, sets)
        return single.map(lambda v: [v])
    if op in (Op.CONTAINS, Op.NOT_CONTAINS):
        return st.sampled_from(NEEDLES).map(lambda text: [s(text)])
    if op in (Op.IN, Op.NOT_IN):
        return st.lists(SCALAR_OPERANDS, min_size=1, max_size=3)
    if op is Op.BETWEEN:
        return between_operands()
    if op in SET_OPERATORS:
        return st.lists(st.sampled_from((*MEMBERS, "d")).map(s), min_size=1, max_size=3)
    return ORDERED_OPERANDS.map(lambda v: [v])


ATTRIBUTE_OPERATORS = list(Op)
PROPERTY_OPERATORS = [op for op in Op if op not in SET_OPERATORS]
ATTRIBUTE_OPERANDS = {op: operands(op, allow_sets=True) for op in ATTRIBUTE_OPERATORS}
PROPERTY_OPERANDS = {op: operands(op, allow_sets=False) for op in PROPERTY_OPERATORS}


@st.composite
def attribute_conditions(draw: st.DrawFn) -> r.Rule:
    op = draw(st.sampled_from(ATTRIBUTE_OPERATORS))
    condition = r.AttributeCondition(
        attribute=draw(st.sampled_from((*ATTRIBUTES, "unknown"))),
        operator=r.Operator.Value(op),
        values=draw(ATTRIBUTE_OPERANDS[op]),
    )
    return r.Rule(attribute=condition)


@st.composite
def property_filters(draw: st.DrawFn) -> r.PropertyFilter:
    op = draw(st.sampled_from(PROPERTY_OPERATORS))
    return r.PropertyFilter(
        property=draw(st.sampled_from(PROPERTIES)),
        operator=r.Operator.Value(op),
        values=draw(PROPERTY_OPERANDS[op]),
    )


@st.composite
def windows(draw: st.DrawFn) -> r.TimeWindow | None:
    kind = draw(st.sampled_from(("since", "last", "between", "none")))
    if kind == "last":
        return r.TimeWindow(last=Duration(seconds=draw(st.sampled_from(WINDOW_SECONDS))))
    if kind == "between":
        start, end = sorted(draw(st.sets(MOMENTS, min_size=2, max_size=2)))
        return r.TimeWindow(between=r.TimeRange(start_time=ts(start).timestamp_value, end_time=ts(end).timestamp_value))
    if kind == "since":
        # Mostly the timestamp attribute; also a string attribute and one nobody has (no window at all).
        return r.TimeWindow(since_attribute=draw(st.sampled_from(("seen", "seen", "tier", "unknown"))))
    return None


@st.composite
def counts(draw: st.DrawFn) -> r.CountComparison | None:
    kind = draw(st.sampled_from(("EQUALS", "GREATER_OR_EQUAL", "LESS_OR_EQUAL", "BETWEEN", "none")))
    if kind == "none":
        return None
    value = draw(st.integers(min_value=0, max_value=3))
    upper = draw(st.integers(min_value=value, max_value=4)) if kind == "BETWEEN" else 0
    return r.CountComparison(operator=r.Operator.Value(f"OPERATOR_{kind}"), value=value, upper_value=upper)


@st.composite
def event_conditions(draw: st.DrawFn) -> r.Rule:
    condition = r.EventCondition(
        event_name=draw(st.sampled_from((*EVENT_NAMES, "never"))),
        performance=draw(st.sampled_from((r.PERFORMANCE_PERFORMED, r.PERFORMANCE_NOT_PERFORMED))),
        property_filters=draw(st.lists(property_filters(), max_size=2)),
    )
    window = draw(windows())
    if window is not None:
        condition.window.CopyFrom(window)
    count = draw(counts())
    if count is not None:
        condition.count.CopyFrom(count)
    return r.Rule(event=condition)


SEGMENT_REFERENCES = st.sampled_from((REFERENCED, "seg_unknown")).map(
    lambda segment_id: r.Rule(segment=r.SegmentReference(segment_id=segment_id))
)
LEAVES = st.one_of(event_conditions(), attribute_conditions(), SEGMENT_REFERENCES)


def _extend(children: st.SearchStrategy[r.Rule]) -> st.SearchStrategy[r.Rule]:
    groups = st.lists(children, min_size=1, max_size=3).map(lambda rules: r.RuleGroup(rules=rules))
    return st.one_of(
        groups.map(lambda group: r.Rule(all=group)),
        groups.map(lambda group: r.Rule(any=group)),
        children.map(lambda child: r.Rule(negate=child)),
    )


RULES = st.recursive(LEAVES, _extend, max_leaves=6)


def _probe(name: str, window: r.TimeWindow, count: r.CountComparison) -> r.Rule:
    condition = r.EventCondition(event_name=name, performance=r.PERFORMANCE_PERFORMED, window=window, count=count)
    return r.Rule(event=condition)


def _count(operator: str, value: int, upper: int = 0) -> r.CountComparison:
    return r.CountComparison(operator=r.Operator.Value(f"OPERATOR_{operator}"), value=value, upper_value=upper)


# Exact counts over every window the data's times are aligned to: checked against every random
# dataset, they see any event on a window's edge counted on one side and not the other.
PROBE_WINDOWS = [
    *(r.TimeWindow(last=Duration(seconds=seconds)) for seconds in WINDOW_SECONDS),
    r.TimeWindow(since_attribute="seen"),
    r.TimeWindow(since_attribute="tier"),
    r.TimeWindow(
        between=r.TimeRange(
            start_time=ts(NOW - timedelta(hours=24 * 30)).timestamp_value,
            end_time=ts(NOW - timedelta(hours=1)).timestamp_value,
        )
    ),
    r.TimeWindow(
        between=r.TimeRange(
            start_time=ts(NOW - timedelta(hours=24 * 365)).timestamp_value,
            end_time=ts(NOW - timedelta(hours=24)).timestamp_value,
        )
    ),
]
WINDOW_PROBES = [
    _probe(name, window, _count("EQUALS", value))
    for name in EVENT_NAMES
    for window in PROBE_WINDOWS
    for value in range(3)
]

# Every operator with operands of every kind, on every attribute and every event property: the
# random rules reach each combination only now and then, these on every dataset.
_EDGE = NOW - timedelta(hours=24)
PROBE_OPERANDS: dict[Op, list[list[r.Value]]] = {
    Op.EQUALS: [
        [s("a")],
        [s("")],
        [n(1)],
        [b(True)],
        [ts(_EDGE)],
        [money(100)],
        [money(100, "USD")],
        [ss("a")],
        [ss("a", "b")],
    ],
    Op.CONTAINS: [[s("a")], [s("B")]],
    Op.IN: [[s("a"), n(2)], [b(False), money(250, "USD"), ts(_EDGE)]],
    Op.GREATER_THAN: [[n(1)], [ts(_EDGE)], [money(100)]],
    Op.BETWEEN: [
        [n(0), n(2)],
        [ts(NOW - timedelta(hours=24 * 30)), ts(NOW - timedelta(hours=1))],
        [money(100), money(250)],
    ],
    Op.EXISTS: [[]],
    Op.CONTAINS_ANY: [[s("a")], [s("a"), s("b")]],
}
for positive, negative in (
    (Op.EQUALS, Op.NOT_EQUALS),
    (Op.CONTAINS, Op.NOT_CONTAINS),
    (Op.IN, Op.NOT_IN),
    (Op.EXISTS, Op.NOT_EXISTS),
    (Op.CONTAINS_ANY, Op.CONTAINS_NONE),
    (Op.CONTAINS_ANY, Op.CONTAINS_ALL),
    (Op.GREATER_THAN, Op.GREATER_OR_EQUAL),
    (Op.GREATER_THAN, Op.LESS_THAN),
    (Op.GREATER_THAN, Op.LESS_OR_EQUAL),
):
    PROBE_OPERANDS[negative] = PROBE_OPERANDS[positive]


def _is_set(values: list[r.Value]) -> bool:
    return any(v.WhichOneof("kind") == "string_set_value" for v in values)


ATTRIBUTE_PROBES = [
    r.Rule(attribute=r.AttributeCondition(attribute=name, operator=r.Operator.Value(op), values=values))
    for name in ATTRIBUTES
    for op, choices in PROBE_OPERANDS.items()
    for values in choices
]
PROPERTY_PROBES = [
    r.Rule(
        event=r.EventCondition(
            event_name="buy",
            performance=r.PERFORMANCE_PERFORMED,
            property_filters=[r.PropertyFilter(property=name, operator=r.Operator.Value(op), values=values)],
        )
    )
    for name in PROPERTIES
    for op, choices in PROBE_OPERANDS.items()
    if op not in SET_OPERATORS
    for values in choices
    if not _is_set(values)
]
PROBES = [*WINDOW_PROBES, *ATTRIBUTE_PROBES, *PROPERTY_PROBES]


def subtrees(rule: r.Rule) -> list[r.Rule]:
    """The rule and every rule nested in it, so each node is checked on its own, not only through its parents."""
    kind = rule.WhichOneof("kind")
    children: list[r.Rule] = []
    if kind in ("all", "any"):
        children = list(getattr(rule, kind).rules)
    elif kind == "negate":
        children = [rule.negate]
    return [rule, *(node for child in children for node in subtrees(child))]


def described(rule: r.Rule) -> str:
    """The rule as a segment file, for failure messages a person can read."""
    return render_segment_text(SegmentFile("generated", "", rule))


# --- properties without a database -------------------------------------------------------------


def bounded(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def test_probes_are_valid_rules() -> None:
    for probe in PROBES:
        parse_rule(probe)
    assert len(PROBES) > 300


@bounded(100)
@given(RULES)
def test_generated_rules_are_valid_and_round_trip_through_yaml_and_json(rule: r.Rule) -> None:
    parse_rule(rule)
    segment = SegmentFile("generated", "a random rule", rule)
    assert parse_segment_text(render_segment_text(segment)).rule == rule
    assert parse_segment_text(render_segment_text(segment, json_format=True), json_format=True).rule == rule


@bounded(60)
@given(RULES, worlds())
def test_not_selects_the_complement(rule: r.Rule, world: World) -> None:
    tree = parse_rule(rule)
    negated = parse_rule(r.Rule(negate=rule))
    assert members(negated, world, NOW) == set(world.attributes) - members(tree, world, NOW)


@bounded(60)
@given(st.lists(EVENTS, max_size=6), st.one_of(st.none(), MOMENTS), st.sampled_from(EVENT_NAMES))
def test_since_counts_the_events_at_or_after_the_attribute(
    history: list[EventRecord], since: datetime | None, name: str
) -> None:
    attributes = {} if since is None else {"seen": Value.timestamp(since)}
    world = World(attributes={"p": attributes}, events={"p": history})
    expected = 0 if since is None else sum(1 for e in history if e.name == name and e.occurred_at >= since)
    for count in range(4):
        rule = rule_from_data(
            {"event": {"name": name, "performed": True, "since": "seen", "count": {"eq": count}}}, path="rule"
        )
        assert (members(parse_rule(rule, "rule"), world, NOW) == {"p"}) == (count == expected)
