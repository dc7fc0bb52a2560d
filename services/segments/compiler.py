"""Compiles a segment rule into one SQL SELECT of profile ids that runs alike on SQLite and PostgreSQL."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Double,
    Integer,
    Select,
    and_,
    bindparam,
    func,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from services.segments import store
from services.segments.rules import (
    NEGATIONS,
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
    SinceWindow,
    Window,
    window_start,
)
from services.segments.values import Kind, Value


class _position(FunctionElement[int]):
    """1-based position of a substring, 0 when absent: case-sensitive on both databases, unlike LIKE on SQLite."""

    type = Integer()
    inherit_cache = True


@compiles(_position)
def _position_default(element: _position, compiler: SQLCompiler, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"instr({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)})"


@compiles(_position, "postgresql")
def _position_postgresql(element: _position, compiler: SQLCompiler, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"strpos({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)})"


class _epoch_seconds(FunctionElement[float]):
    """Seconds since 1970 of a stored event time as a double: the number a timestamp attribute holds.

    Both sides of a "since" comparison are then the same double the reference evaluator compares
    (the nearest to the exact microsecond value), so the databases agree with it to the microsecond.
    """

    type = Double()
    inherit_cache = True


@compiles(_epoch_seconds)
def _epoch_seconds_default(element: _epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps DateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC); strftime('%s') floors to whole
    # seconds, so the microseconds are added back as an exact integer before one division.
    (moment,) = list(element.clauses)
    text = compiler.process(moment, **kw)
    return f"((CAST(strftime('%s', {text}) AS INTEGER) * 1000000 + CAST(substr({text}, 21, 6) AS INTEGER)) / 1000000.0)"


@compiles(_epoch_seconds, "postgresql")
def _epoch_seconds_postgresql(element: _epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    (moment,) = list(element.clauses)
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(moment, **kw)}) AS DOUBLE PRECISION)"


def _contains_text(haystack: ColumnElement[Any], needle: str) -> ColumnElement[bool]:
    return _position(haystack, literal(needle)) > 0


class WindowStarts:
    """ "Last N days" window starts as bind parameters, so one built statement serves every `now`.

    Building a rule's statement costs far more than running it for a handful of people; membership
    refresh builds each segment's statement once per version and binds `values(now)` per batch.
    """

    def __init__(self) -> None:
        self._windows: dict[str, LastWindow] = {}

    def start(self, window: LastWindow) -> BindParameter[datetime]:
        name = f"window_start_{len(self._windows)}"
        self._windows[name] = window
        return bindparam(name, type_=store.events.c.occurred_at.type)

    def values(self, now: datetime) -> dict[str, datetime]:
        return {name: now - timedelta(seconds=window.seconds) for name, window in self._windows.items()}


Clock = datetime | WindowStarts
"""`now` itself, or bind parameters standing for it (see WindowStarts)."""


def compile_rule(rule: Rule, now: datetime) -> Select[tuple[str]]:
    """SELECT profile_id FROM profiles WHERE <rule>; "last" windows are measured back from `now`."""
    subject = store.profiles.c.profile_id
    return select(subject).where(condition(rule, subject, now, everyone=True))


def condition(rule: Rule, subject: ColumnElement[str], now: Clock, *, everyone: bool = False) -> ColumnElement[bool]:
    """The rule as a boolean over the profile id column `subject` of the enclosing query.

    Every piece is EXISTS, NOT EXISTS, IN or a comparison of a count, so it is never NULL and NOT is safe.
    With `everyone` (the query runs over all profiles: publishing, previews) a positive attribute condition
    becomes `subject IN (SELECT profile_id FROM profile_attributes WHERE name = … AND …)`, so the database
    can start from the (name, value) index instead of probing every profile; under a NOT it stays NOT
    EXISTS, which both databases run as an anti-join (PostgreSQL's NOT IN over a large subquery is not).
    For a few named people (membership refresh) the correlated EXISTS probes are the cheaper plan.
    """
    return _condition(rule, subject, now, in_lists=everyone)


def _condition(rule: Rule, subject: ColumnElement[str], now: Clock, *, in_lists: bool) -> ColumnElement[bool]:
    if isinstance(rule, AllOf):
        return and_(*(_condition(child, subject, now, in_lists=in_lists) for child in rule.rules))
    if isinstance(rule, AnyOf):
        return or_(*(_condition(child, subject, now, in_lists=in_lists) for child in rule.rules))
    if isinstance(rule, Not):
        return not_(_condition(rule.rule, subject, now, in_lists=False))
    if isinstance(rule, SegmentReference):
        m = store.memberships.alias()
        return select(m.c.profile_id).where(m.c.segment_id == rule.segment_id, m.c.profile_id == subject).exists()
    if isinstance(rule, AttributeCondition):
        return _attribute(rule.attribute, rule.op, rule.values, subject, in_lists=in_lists)
    return _event(rule, subject, now)


# --- attributes -------------------------------------------------------------------------------


def _attribute(
    name: str, op: Op, values: tuple[Value, ...], subject: ColumnElement[str], *, in_lists: bool = False
) -> ColumnElement[bool]:
    if op in NEGATIONS:
        return not_(_attribute(name, NEGATIONS[op], values, subject))

    def exists_row(predicate: Any = None) -> ColumnElement[bool]:
        a = store.profile_attributes.alias()
        where = [a.c.name == name]
        if predicate is not None:
            where.append(predicate(a))
        if in_lists:
            return subject.in_(select(a.c.profile_id).where(*where))
        return select(a.c.id).where(a.c.profile_id == subject, *where).exists()

    if op is Op.EXISTS:
        return exists_row()
    if op is Op.EQUALS and values[0].kind is Kind.STRING_SET:
        return _set_equals(name, values[0], subject)
    if op in (Op.EQUALS, Op.IN):
        return exists_row(lambda a: or_(*(_row_equals(a, v) for v in values)))
    if op is Op.CONTAINS:
        needle = values[0].text or ""
        return exists_row(
            lambda a: or_(
                and_(a.c.value_type == Kind.STRING.value, _contains_text(a.c.text_value, needle)),
                and_(a.c.value_type == Kind.STRING_SET.value, a.c.text_value == needle),
            )
        )
    if op is Op.CONTAINS_ANY:
        members = [v.text for v in values]
        return exists_row(lambda a: and_(a.c.value_type == Kind.STRING_SET.value, a.c.text_value.in_(members)))
    if op is Op.CONTAINS_ALL:
        return and_(
            *(
                exists_row(lambda a, m=v.text: and_(a.c.value_type == Kind.STRING_SET.value, a.c.text_value == m))
                for v in values
            )
        )
    if op is Op.BETWEEN:
        lower, upper = values
        return exists_row(
            lambda a: and_(
                a.c.value_type == store.value_type_of(lower),
                a.c.num_value >= lower.number,
                a.c.num_value <= upper.number,
            )
        )
    operand = values[0]
    return exists_row(
        lambda a: and_(a.c.value_type == store.value_type_of(operand), _compare(a.c.num_value, op, operand.number))
    )


def _row_equals(a: Any, value: Value) -> ColumnElement[bool]:
    if value.kind in (Kind.STRING, Kind.BOOL):
        return and_(a.c.value_type == value.kind.value, a.c.text_value == value.text)
    return and_(a.c.value_type == store.value_type_of(value), a.c.num_value == value.number)


def _set_equals(name: str, value: Value, subject: ColumnElement[str]) -> ColumnElement[bool]:
    """The stored set has every member of the operand and nothing else (one row per member)."""
    members = sorted(value.members)
    outside = store.profile_attributes.alias()
    inside = store.profile_attributes.alias()
    has_other = (
        select(outside.c.id)
        .where(
            outside.c.profile_id == subject,
            outside.c.name == name,
            outside.c.value_type == Kind.STRING_SET.value,
            or_(outside.c.text_value.is_(None), outside.c.text_value.not_in(members)),
        )
        .exists()
    )
    found = (
        select(func.count())
        .select_from(inside)
        .where(
            inside.c.profile_id == subject,
            inside.c.name == name,
            inside.c.value_type == Kind.STRING_SET.value,
            inside.c.text_value.in_(members),
        )
        .scalar_subquery()
    )
    return and_(not_(has_other), found == len(members))


def _compare(column: ColumnElement[Any], op: Op, number: float | None) -> ColumnElement[bool]:
    if op is Op.GREATER_THAN:
        return column > number
    if op is Op.GREATER_OR_EQUAL:
        return column >= number
    if op is Op.LESS_THAN:
        return column < number
    return column <= number


# --- events -----------------------------------------------------------------------------------


def _window_start(window: Window | None, now: Clock) -> datetime | BindParameter[datetime] | None:
    if isinstance(now, datetime):
        return window_start(window, now)
    if isinstance(window, LastWindow):
        return now.start(window)
    return window.start if isinstance(window, RangeWindow) else None


def _event(rule: EventCondition, subject: ColumnElement[str], now: Clock) -> ColumnElement[bool]:
    e = store.events.alias()
    where: list[ColumnElement[bool]] = [e.c.profile_id == subject, e.c.name == rule.event_name]
    start = _window_start(rule.window, now)
    if start is not None:
        where.append(e.c.occurred_at >= start)
    if isinstance(rule.window, RangeWindow):
        where.append(e.c.occurred_at < rule.window.end)
    if isinstance(rule.window, SinceWindow):
        where.append(_since(rule.window, e))
    where.extend(_property(e.c.properties, f) for f in rule.filters)
    if rule.count is None:
        performed: ColumnElement[bool] = select(e.c.event_id).where(*where).exists()
    else:
        counted = select(func.count()).select_from(e).where(*where).scalar_subquery()
        performed = _count(counted, rule.count)
    return performed if rule.performed else not_(performed)


def _since(window: SinceWindow, e: Any) -> ColumnElement[bool]:
    """The event is at or after its person's timestamp attribute; false for everyone without one.

    It names the event's own profile_id, not the outer query's subject: SQLAlchemy correlates a
    subquery only with the query right around it (the events), and would otherwise add the outer
    table to this subquery's FROM and look at everyone's attribute.
    """
    a = store.profile_attributes.alias()
    return (
        select(a.c.id)
        .where(
            a.c.profile_id == e.c.profile_id,
            a.c.name == window.attribute,
            a.c.value_type == Kind.TIMESTAMP.value,
            a.c.num_value <= _epoch_seconds(e.c.occurred_at),
        )
        .exists()
    )


def _count(counted: Any, count: CountComparison) -> ColumnElement[bool]:
    if count.op is Op.EQUALS:
        return counted == count.value
    if count.op is Op.GREATER_OR_EQUAL:
        return counted >= count.value
    if count.op is Op.LESS_OR_EQUAL:
        return counted <= count.value
    return and_(counted >= count.value, counted <= count.upper)


def _property(properties: Any, rule: PropertyFilter) -> ColumnElement[bool]:
    return _property_matches(properties, rule.property, rule.op, rule.values)


def _property_matches(properties: Any, name: str, op: Op, values: tuple[Value, ...]) -> ColumnElement[bool]:
    """Like attribute conditions, but on one event's JSON properties; never NULL, so NOT is safe."""
    if op in NEGATIONS:
        return not_(_property_matches(properties, name, NEGATIONS[op], values))
    if op is Op.EXISTS:
        return properties[(name, "kind")].as_string().is_not(None)
    if op in (Op.EQUALS, Op.IN):
        return or_(*(_property_equals(properties, name, v) for v in values))
    if op is Op.CONTAINS:
        text = properties[(name, Kind.STRING.value)].as_string()
        return and_(text.is_not(None), _contains_text(text, values[0].text or ""))
    if op is Op.BETWEEN:
        lower, upper = values
        number = _typed_number(properties, name, lower)
        return and_(_kind_is(properties, name, lower), number >= lower.number, number <= upper.number)
    operand = values[0]
    number = _typed_number(properties, name, operand)
    return and_(_kind_is(properties, name, operand), _compare(number, op, operand.number))


def _kind_is(properties: Any, name: str, value: Value) -> ColumnElement[bool]:
    kind = properties[(name, "kind")].as_string()
    same_kind = and_(kind.is_not(None), kind == value.kind.value)
    if value.kind is Kind.MONEY:
        currency = properties[(name, "currency")].as_string()
        return and_(same_kind, currency.is_not(None), currency == value.currency)
    return same_kind


def _typed_number(properties: Any, name: str, value: Value) -> Any:
    return properties[(name, value.kind.value)].as_float()


def _property_equals(properties: Any, name: str, value: Value) -> ColumnElement[bool]:
    if value.kind in (Kind.STRING, Kind.BOOL):
        text = properties[(name, value.kind.value)].as_string()
        return and_(_kind_is(properties, name, value), text == value.text)
    return and_(_kind_is(properties, name, value), _typed_number(properties, name, value) == value.number)
