"""Segment files: the readable YAML / JSON form of a segment rule, parsed into the proto Rule and rendered back.

A file holds one segment::

    name: SIP-only investors                       # the display name (required, at most 200 characters)
    description: sip_registered in the last 365 days and no lumpsum_invested in them
    rule:
      all:
        - event: {name: sip_registered, performed: true, in_last: 365d}
        - event: {name: lumpsum_invested, performed: false, in_last: 365d}
        - event: {name: session_start, performed: true, in_last: 30d, count: {gte: 3}}
        - attribute: {name: fund_categories, contains_none: [ELSS]}
        - not: {attribute: {name: plan_type, equals: Direct}}
        - segment: seg_01J...

Rule nodes are mappings with exactly one key:

- ``all: [rule, ...]`` (AND), ``any: [rule, ...]`` (OR), ``not: rule`` (NOT), nested to any depth;
- ``segment: <segment id>``: membership of another segment;
- ``attribute: {name: <attribute>, <operator>: <operand>}`` with exactly one operator;
- ``event: {name: <event>, performed: true|false, <window>, count: {...}, where: {...}}``.

Operators (attributes and event properties) and their operands:

- ``equals`` / ``not_equals``: one value; a list is a string set and means set equality, so the
  recipe's "fund_categories equals Equity" is ``equals: [Equity]`` (holds Equity and nothing else);
- ``contains`` / ``not_contains``: a string (a substring of a string, or a member of a string set),
  so "fund_categories does not contain ELSS" is ``not_contains: ELSS``;
- ``in`` / ``not_in``: a list of values; ``gt``, ``gte``, ``lt``, ``lte``: a number, timestamp or money;
- ``between: [lower, upper]`` (both inclusive); ``exists: true`` / ``not_exists: true``;
- ``contains_any`` / ``contains_all`` / ``contains_none``: a list of strings (string-set attributes only).

The negative operators (``not_equals``, ``not_contains``, ``not_in``, ``not_exists``, ``contains_none``)
also match people who have no value at all; add ``exists: true`` where that is not meant.

Values: a string, a number, ``true`` / ``false``, a list of strings (a string set, where the operator
compares whole sets), a timestamp ``{timestamp: "2025-04-01T00:00:00Z"}`` (a time zone is required;
in YAML an unquoted ISO time such as ``2025-04-01T00:00:00Z`` or a date ``2025-04-01``, read as midnight
UTC, works too), and money as ``{inr: 100000}`` (rupees, at most 2 decimals), ``{paise: 10000000}``
(INR minor units) or ``{minor_units: 500, currency: USD}``. Quote strings that YAML would read as
something else: ``"No"``, ``"yes"``, ``"1"``, ``"2025-04-01"``.

Event conditions: ``performed`` is required. At most one window: ``in_last: 365d`` (a positive number
with a unit: d days, h hours, m minutes, s seconds), ``between: [start, end]`` (start inclusive, end
exclusive; timestamps or dates), or ``since: <timestamp attribute>`` (from the person's value of that
attribute up to now; people without it have performed the event zero times); no window means all
retained history. ``count`` takes one of ``{eq: n}``, ``{gte: n}``, ``{lte: n}``, ``{between: [lo, hi]}``;
without it "performed" means at least once. ``where`` filters the events that count by property:
``where: {amount: {gte: {inr: 100000}}, category: {in: [Equity, Debt]}}``, or a list of one-property
mappings when one property needs the same operator twice or the order matters.

Errors are RuleFileError: the path into the file (``rule.all[2].event.in_last``), what is wrong and
what would be valid.
"""

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from difflib import get_close_matches
from pathlib import Path
from typing import Any, NoReturn

import yaml
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from services.segments.rules import MAX_DEPTH, Op, RuleError, parse_rule
from xsell.segments.v1 import resources_pb2
from xsell.type.v1 import money_pb2

MAX_NAME_LENGTH = 200

OPERATORS: dict[str, Op] = {
    "equals": Op.EQUALS,
    "not_equals": Op.NOT_EQUALS,
    "contains": Op.CONTAINS,
    "not_contains": Op.NOT_CONTAINS,
    "in": Op.IN,
    "not_in": Op.NOT_IN,
    "gt": Op.GREATER_THAN,
    "gte": Op.GREATER_OR_EQUAL,
    "lt": Op.LESS_THAN,
    "lte": Op.LESS_OR_EQUAL,
    "between": Op.BETWEEN,
    "exists": Op.EXISTS,
    "not_exists": Op.NOT_EXISTS,
    "contains_any": Op.CONTAINS_ANY,
    "contains_all": Op.CONTAINS_ALL,
    "contains_none": Op.CONTAINS_NONE,
}
OPERATOR_KEYS = {op: key for key, op in OPERATORS.items()}
COUNT_OPERATORS: dict[str, Op] = {
    "eq": Op.EQUALS,
    "gte": Op.GREATER_OR_EQUAL,
    "lte": Op.LESS_OR_EQUAL,
    "between": Op.BETWEEN,
}
COUNT_KEYS = {op: key for key, op in COUNT_OPERATORS.items()}
LIST_OPERATORS = frozenset({Op.IN, Op.NOT_IN, Op.CONTAINS_ANY, Op.CONTAINS_ALL, Op.CONTAINS_NONE, Op.BETWEEN})
FLAG_OPERATORS = frozenset({Op.EXISTS, Op.NOT_EXISTS})
RULE_KEYS = ("all", "any", "not", "attribute", "event", "segment")
EVENT_KEYS = ("name", "performed", "in_last", "between", "since", "count", "where")
WINDOW_KEYS = ("in_last", "between", "since")
FILE_KEYS = ("name", "description", "rule")
UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)([dhms])$")
NANOS = 1_000_000_000
MAX_EXACT_NUMBER = 2**53

# Proto words in messages from rules.parse_rule, as a file author writes them.
_PROTO_WORDS = {
    "string_set_value": "list (string set)",
    "string_value": "string",
    "number_value": "number",
    "bool_value": "true / false",
    "timestamp_value": "timestamp ({timestamp: ...})",
    "money_value.currency_code": "the money currency",
    "money_value.minor_units": "the money amount",
    "money_value": "money ({inr: ...})",
}
_PROTO_WORD_PATTERN = re.compile(
    r"OPERATOR_[A-Z_]+|" + "|".join(re.escape(w) for w in sorted(_PROTO_WORDS, key=len, reverse=True))
)


class RuleFileError(RuleError):
    """A segment file that cannot be used: `path` points into the file, `message` says what would be valid."""

    def __init__(self, path: str, message: str, source: str = "") -> None:
        super().__init__(path, message)
        self.source = source
        self.args = (": ".join(part for part in (source, path, message) if part),)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class SegmentFile:
    """One segment as written in a file."""

    name: str
    description: str
    rule: resources_pb2.Rule


# --- parsing ----------------------------------------------------------------------------------


def load_segment_file(path: Path) -> SegmentFile:
    """Reads and validates a .yaml, .yml or .json segment file."""
    return parse_segment_text(path.read_text(encoding="utf-8"), source=str(path), json_format=path.suffix == ".json")


def parse_segment_text(text: str, *, source: str = "", json_format: bool = False) -> SegmentFile:
    """The segment in a YAML (or JSON) document; RuleFileError at the first problem."""
    try:
        data = json.loads(text) if json_format else yaml.safe_load(text)
    except json.JSONDecodeError as problem:
        raise RuleFileError("", f"not valid JSON: {problem.msg} at line {problem.lineno}", source) from None
    except yaml.YAMLError as problem:
        where = getattr(problem, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        reason = getattr(problem, "problem", None) or "syntax error"
        raise RuleFileError("", f"not valid YAML: {reason}{at}", source) from None
    return parse_segment_data(data, source=source)


def parse_segment_data(data: Any, *, source: str = "") -> SegmentFile:
    """The segment in an already decoded document (a mapping with name, description and rule)."""
    reader = _Reader(source)
    mapping = reader.mapping(data, "", "a segment file", FILE_KEYS)
    name = mapping.get("name")
    if not isinstance(name, str) or not name.strip():
        reader.fail("name", "name is required: the segment's display name, e.g. 'SIP-only investors'")
    if len(name) > MAX_NAME_LENGTH:
        reader.fail("name", f"name must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    description = mapping.get("description", "")
    if not isinstance(description, str):
        reader.fail("description", f"description must be text, got {_describe(description)}")
    if "rule" not in mapping:
        reader.fail(
            "rule", "rule is required: one rule node such as {all: [...]}, {event: {...}} or {attribute: {...}}"
        )
    return SegmentFile(name, description, reader.rule_and_validate(mapping["rule"], "rule"))


def rule_from_data(data: Any, *, path: str = "rule", source: str = "") -> resources_pb2.Rule:
    """The proto rule of one decoded rule node, validated exactly as the service validates rules."""
    return _Reader(source).rule_and_validate(data, path)


def condition_from_data(data: Any, *, path: str, source: str = "") -> resources_pb2.AttributeCondition:
    """The proto condition of one decoded attribute condition ({name: bureau_score, gte: 750}), validated as the
    service validates a rule's (used for a campaign offer's eligibility)."""
    reader = _Reader(source)
    condition = reader.attribute(data, path, path)
    try:
        parse_rule(resources_pb2.Rule(attribute=condition), path)
    except RuleError as problem:
        reader.fail(reader.file_path(problem.path.replace(f"{path}.attribute", path, 1)), _file_words(problem.message))
    return condition


class _Reader:
    """Turns decoded file data into a proto Rule, remembering which file path each proto field came from."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.paths: dict[str, str] = {}

    def fail(self, path: str, message: str) -> NoReturn:
        raise RuleFileError(path, message, self.source)

    def at(self, proto_path: str, file_path: str) -> None:
        self.paths[proto_path] = file_path

    def rule_and_validate(self, data: Any, path: str) -> resources_pb2.Rule:
        rule = self.rule(data, path, path, 1)
        try:
            parse_rule(rule, path)
        except RuleError as problem:
            self.fail(self.file_path(problem.path), _file_words(problem.message))
        return rule

    def file_path(self, proto_path: str) -> str:
        """The file path of a proto path from parse_rule: the longest recorded prefix, plus the rest."""
        candidate = proto_path
        while candidate:
            if candidate in self.paths:
                return self.paths[candidate] + proto_path[len(candidate) :]
            cut = max(candidate.rfind("."), candidate.rfind("["))
            candidate = candidate[:cut] if cut > 0 else ""
        return proto_path

    def mapping(self, data: Any, path: str, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            self.fail(path or "(top)", f"{what} must be a mapping with keys {', '.join(keys)}, got {_describe(data)}")
        for key in data:
            if key not in keys:
                self.fail(_join(path, str(key)), f"unknown key {key!r} in {what}{_hint(key, keys)}")
        return dict(data)

    def rule(self, data: Any, path: str, proto_path: str, depth: int) -> resources_pb2.Rule:
        self.at(proto_path, path)
        if depth > MAX_DEPTH:
            self.fail(path, f"rules may be nested at most {MAX_DEPTH} levels deep")
        if not isinstance(data, Mapping) or len(data) != 1:
            self.fail(
                path,
                "a rule is a mapping with exactly one of the keys all, any, not, attribute, event, segment; "
                f"got {_describe(data)}",
            )
        ((key, body),) = data.items()
        here = f"{path}.{key}"
        if key in ("all", "any"):
            proto_here = f"{proto_path}.{key}"
            self.at(proto_here, here)
            self.at(f"{proto_here}.rules", here)
            if not isinstance(body, list) or not body:
                word = "an AND" if key == "all" else "an OR"
                self.fail(here, f"{word} group is a non-empty list of rules, got {_describe(body)}")
            children = [
                self.rule(child, f"{here}[{i}]", f"{proto_here}.rules[{i}]", depth + 1) for i, child in enumerate(body)
            ]
            group = resources_pb2.RuleGroup(rules=children)
            return resources_pb2.Rule(all=group) if key == "all" else resources_pb2.Rule(any=group)
        if key == "not":
            return resources_pb2.Rule(negate=self.rule(body, here, f"{proto_path}.negate", depth + 1))
        if key == "attribute":
            return resources_pb2.Rule(attribute=self.attribute(body, here, f"{proto_path}.attribute"))
        if key == "event":
            return resources_pb2.Rule(event=self.event(body, here, f"{proto_path}.event"))
        if key == "segment":
            self.at(f"{proto_path}.segment", here)
            self.at(f"{proto_path}.segment.segment_id", here)
            if not isinstance(body, str) or not body:
                self.fail(here, f"segment takes the id of a published segment, e.g. seg_01J..., got {_describe(body)}")
            return resources_pb2.Rule(segment=resources_pb2.SegmentReference(segment_id=body))
        return self.fail(_join(path, str(key)), f"unknown rule kind {key!r}{_hint(key, RULE_KEYS)}")

    def attribute(self, data: Any, path: str, proto_path: str) -> resources_pb2.AttributeCondition:
        self.at(proto_path, path)
        keys = ("name", *OPERATORS)
        mapping = self.mapping(data, path, "an attribute condition", keys)
        self.at(f"{proto_path}.attribute", f"{path}.name")
        name = self.name(mapping.get("name"), f"{path}.name", "attribute", "fund_categories")
        op_key = self.one_operator(mapping, path, "an attribute condition")
        op = OPERATORS[op_key]
        values = self.operands(op, op_key, mapping[op_key], f"{path}.{op_key}", f"{proto_path}", allow_sets=True)
        return resources_pb2.AttributeCondition(
            attribute=name, operator=resources_pb2.Operator.Value(op), values=values
        )

    def name(self, value: Any, path: str, what: str, example: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(path, f"name is required: the {what} name, e.g. {example}; got {_describe(value)}")
        return str(value)

    def one_operator(self, mapping: Mapping[str, Any], path: str, what: str) -> str:
        present = [key for key in mapping if key in OPERATORS]
        if len(present) != 1:
            got = ", ".join(present) if present else "none"
            self.fail(path, f"{what} needs exactly one operator ({', '.join(OPERATORS)}); got {got}")
        return present[0]

    def operands(
        self, op: Op, key: str, data: Any, path: str, proto_path: str, *, allow_sets: bool
    ) -> list[resources_pb2.Value]:
        self.at(f"{proto_path}.operator", path)
        self.at(f"{proto_path}.values", path)
        if op in FLAG_OPERATORS:
            if data is not True:
                other = "not_exists" if op is Op.EXISTS else "exists"
                self.fail(path, f"{key} takes true (write {other}: true for the opposite), got {_describe(data)}")
            return []
        if op in LIST_OPERATORS:
            if not isinstance(data, list):
                example = "[lower, upper]" if op is Op.BETWEEN else "[Premium, HNI]"
                self.fail(path, f"{key} takes a list, e.g. {key}: {example}; got {_describe(data)}")
            values = []
            for i, item in enumerate(data):
                self.at(f"{proto_path}.values[{i}]", f"{path}[{i}]")
                values.append(self.value(item, f"{path}[{i}]", allow_sets=False))
            return values
        self.at(f"{proto_path}.values[0]", path)
        if isinstance(data, list) and not (allow_sets and op in (Op.EQUALS, Op.NOT_EQUALS)):
            hint = "; use in for one of several values" if op in (Op.EQUALS, Op.NOT_EQUALS) else ""
            self.fail(path, f"{key} takes one value, got a list{hint}")
        return [self.value(data, path, allow_sets=allow_sets)]

    def value(self, data: Any, path: str, *, allow_sets: bool) -> resources_pb2.Value:
        if isinstance(data, bool):
            return resources_pb2.Value(bool_value=data)
        if isinstance(data, int | float):
            if isinstance(data, int) and abs(data) > MAX_EXACT_NUMBER:
                self.fail(path, f"numbers must be between -2^53 and 2^53, got {data}")
            return resources_pb2.Value(number_value=float(data))
        if isinstance(data, str):
            return resources_pb2.Value(string_value=data)
        if isinstance(data, datetime | date):
            return resources_pb2.Value(timestamp_value=self.timestamp(data, path))
        if isinstance(data, list):
            if not allow_sets:
                self.fail(path, "a list is not allowed here; write single values (a string, number, true / false ...)")
            for i, member in enumerate(data):
                if not isinstance(member, str) or not member:
                    self.fail(f"{path}[{i}]", f"string set members are non-empty strings, got {_describe(member)}")
            return resources_pb2.Value(string_set_value=resources_pb2.StringSet(values=data))
        if isinstance(data, Mapping):
            return self.typed_value(data, path)
        return self.fail(
            path,
            f"expected a value (string, number, true / false, list of strings, {{timestamp: ...}}, {{inr: ...}}, "
            f"{{paise: ...}} or {{minor_units: ..., currency: ...}}), got {_describe(data)}",
        )

    def typed_value(self, data: Mapping[str, Any], path: str) -> resources_pb2.Value:
        keys = set(data)
        if keys == {"timestamp"}:
            return resources_pb2.Value(timestamp_value=self.timestamp(data["timestamp"], f"{path}.timestamp"))
        if keys == {"inr"}:
            return resources_pb2.Value(money_value=self.rupees(data["inr"], f"{path}.inr"))
        if keys == {"paise"}:
            paise = self.integer(data["paise"], f"{path}.paise", "paise")
            return resources_pb2.Value(money_value=money_pb2.Money(minor_units=paise, currency_code="INR"))
        if keys == {"minor_units", "currency"}:
            minor = self.integer(data["minor_units"], f"{path}.minor_units", "minor_units")
            currency = data["currency"]
            if not isinstance(currency, str):
                self.fail(f"{path}.currency", f"currency is an ISO 4217 code such as USD, got {_describe(currency)}")
            return resources_pb2.Value(money_value=money_pb2.Money(minor_units=minor, currency_code=currency))
        return self.fail(
            path,
            f"a typed value is {{timestamp: ...}}, {{inr: ...}}, {{paise: ...}} or {{minor_units: ..., currency: ...}};"
            f" got keys {', '.join(sorted(map(str, keys))) or 'none'}",
        )

    def integer(self, data: Any, path: str, what: str) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail(path, f"{what} must be a whole number, got {_describe(data)}")
        if abs(data) > MAX_EXACT_NUMBER:
            self.fail(path, f"{what} must be between -2^53 and 2^53, got {data}")
        return int(data)

    def rupees(self, data: Any, path: str) -> money_pb2.Money:
        if isinstance(data, bool) or not isinstance(data, int | float | str):
            self.fail(path, f"inr takes an amount in rupees, e.g. 100000 or 99.5, got {_describe(data)}")
        try:
            paise = Decimal(str(data)) * 100
        except InvalidOperation:
            return self.fail(path, f"inr takes an amount in rupees, e.g. 100000 or 99.5, got {data!r}")
        if not paise.is_finite() or paise != paise.to_integral_value():
            self.fail(path, f"inr amounts have at most 2 decimals (paise), got {data}; or use {{paise: ...}}")
        if abs(paise) > MAX_EXACT_NUMBER:
            self.fail(path, "inr amount is too large")
        return money_pb2.Money(minor_units=int(paise), currency_code="INR")

    def timestamp(self, data: Any, path: str) -> Timestamp:
        stamp = Timestamp()
        if isinstance(data, datetime):
            if data.tzinfo is None:
                self.fail(path, f"time {data.isoformat()} has no time zone; add one, e.g. {data.isoformat()}Z")
            stamp.FromDatetime(data.astimezone(UTC))
            return stamp
        if isinstance(data, date):
            stamp.FromDatetime(datetime.combine(data, time(), tzinfo=UTC))
            return stamp
        if isinstance(data, str):
            try:
                if re.fullmatch(r"\d{4}-\d{2}-\d{2}", data):
                    stamp.FromDatetime(datetime.combine(date.fromisoformat(data), time(), tzinfo=UTC))
                else:
                    stamp.FromJsonString(data)
            except ValueError:
                self.fail(path, f"expected an ISO 8601 time with a time zone, e.g. 2025-04-01T00:00:00Z, got {data!r}")
            return stamp
        return self.fail(
            path, f"expected an ISO 8601 time with a time zone, e.g. 2025-04-01T00:00:00Z, got {_describe(data)}"
        )

    def event(self, data: Any, path: str, proto_path: str) -> resources_pb2.EventCondition:
        self.at(proto_path, path)
        mapping = self.mapping(data, path, "an event condition", EVENT_KEYS)
        self.at(f"{proto_path}.event_name", f"{path}.name")
        name = self.name(mapping.get("name"), f"{path}.name", "event", "sip_registered")
        self.at(f"{proto_path}.performance", f"{path}.performed")
        performed = mapping.get("performed")
        if not isinstance(performed, bool):
            self.fail(
                f"{path}.performed",
                f"performed is required: true (did perform) or false (did not perform), got {_describe(performed)}",
            )
        condition = resources_pb2.EventCondition(
            event_name=name,
            performance=resources_pb2.PERFORMANCE_PERFORMED if performed else resources_pb2.PERFORMANCE_NOT_PERFORMED,
        )
        windows = [key for key in WINDOW_KEYS if key in mapping]
        if len(windows) > 1:
            self.fail(path, f"an event condition has at most one window, got {' and '.join(windows)}")
        if windows:
            self.at(f"{proto_path}.window", f"{path}.{windows[0]}")
            condition.window.CopyFrom(self.window(windows[0], mapping[windows[0]], path, f"{proto_path}.window"))
        if "count" in mapping:
            condition.count.CopyFrom(self.count(mapping["count"], f"{path}.count", f"{proto_path}.count"))
        if "where" in mapping:
            condition.property_filters.extend(
                self.filters(mapping["where"], f"{path}.where", f"{proto_path}.property_filters")
            )
        return condition

    def window(self, key: str, data: Any, path: str, proto_path: str) -> resources_pb2.TimeWindow:
        here = f"{path}.{key}"
        if key == "in_last":
            self.at(f"{proto_path}.last", here)
            return resources_pb2.TimeWindow(last=self.duration(data, here))
        if key == "since":
            self.at(f"{proto_path}.since_attribute", here)
            if not isinstance(data, str) or not data:
                self.fail(here, f"since takes a timestamp attribute name, e.g. last_sip_date, got {_describe(data)}")
            return resources_pb2.TimeWindow(since_attribute=data)
        self.at(f"{proto_path}.between", here)
        self.at(f"{proto_path}.between.start_time", f"{here}[0]")
        self.at(f"{proto_path}.between.end_time", f"{here}[1]")
        if not isinstance(data, list) or len(data) != 2:
            self.fail(
                here,
                "between takes [start, end]: start inclusive, end exclusive, e.g. "
                f"[2025-01-01T00:00:00Z, 2025-04-01T00:00:00Z]; got {_describe(data)}",
            )
        start, end = self.timestamp(data[0], f"{here}[0]"), self.timestamp(data[1], f"{here}[1]")
        if end.ToNanoseconds() <= start.ToNanoseconds():
            self.fail(f"{here}[1]", f"the end must be after the start ({start.ToJsonString()})")
        return resources_pb2.TimeWindow(between=resources_pb2.TimeRange(start_time=start, end_time=end))

    def duration(self, data: Any, path: str) -> Duration:
        match = DURATION_PATTERN.match(data) if isinstance(data, str) else None
        if match is None:
            return self.fail(
                path,
                f"expected a positive duration with a unit (d days, h hours, m minutes, s seconds), e.g. 365d or 12h; "
                f"got {_describe(data)}",
            )
        nanos = int(Decimal(match.group(1)) * UNITS[match.group(2)] * NANOS)
        if nanos <= 0:
            self.fail(path, f"the duration must be positive, e.g. 365d; got {data}")
        return Duration(seconds=nanos // NANOS, nanos=nanos % NANOS)

    def count(self, data: Any, path: str, proto_path: str) -> resources_pb2.CountComparison:
        self.at(proto_path, path)
        mapping = self.mapping(data, path, "a count", tuple(COUNT_OPERATORS))
        if len(mapping) != 1:
            self.fail(path, f"a count has exactly one of {', '.join(COUNT_OPERATORS)}, e.g. {{gte: 3}}")
        ((key, body),) = mapping.items()
        here = f"{path}.{key}"
        for field in ("operator", "value", "upper_value"):
            self.at(f"{proto_path}.{field}", here)
        op = resources_pb2.Operator.Value(COUNT_OPERATORS[key])
        if key != "between":
            return resources_pb2.CountComparison(operator=op, value=self.event_count(body, here))
        if not isinstance(body, list) or len(body) != 2:
            self.fail(here, f"between takes [lowest, highest], e.g. [1, 3]; got {_describe(body)}")
        lower, upper = self.event_count(body[0], f"{here}[0]"), self.event_count(body[1], f"{here}[1]")
        if upper < lower:
            self.fail(f"{here}[1]", f"the highest count must be at least the lowest ({lower}), got {upper}")
        return resources_pb2.CountComparison(operator=op, value=lower, upper_value=upper)

    def event_count(self, data: Any, path: str) -> int:
        if isinstance(data, bool) or not isinstance(data, int) or data < 0:
            self.fail(path, f"a count is a whole number, zero or more; got {_describe(data)}")
        return int(data)

    def filters(self, data: Any, path: str, proto_path: str) -> list[resources_pb2.PropertyFilter]:
        self.at(proto_path, path)
        entries: list[tuple[str, Any, str]] = []
        if isinstance(data, Mapping):
            entries = [(str(name), body, f"{path}.{name}") for name, body in data.items()]
        elif isinstance(data, list):
            for i, item in enumerate(data):
                if not isinstance(item, Mapping) or len(item) != 1:
                    self.fail(f"{path}[{i}]", "each item is one property, e.g. {amount: {gte: 100000}}")
                ((name, body),) = item.items()
                entries.append((str(name), body, f"{path}[{i}].{name}"))
        else:
            self.fail(
                path, f"where maps properties to conditions, e.g. {{amount: {{gte: 100000}}}}; got {_describe(data)}"
            )
        filters: list[resources_pb2.PropertyFilter] = []
        for name, body, here in entries:
            keys = tuple(OPERATORS)
            operators = self.mapping(body, here, f"the filter on {name}", keys)
            if not operators:
                self.fail(here, f"a property filter needs an operator ({', '.join(OPERATORS)})")
            for key, operand in operators.items():
                op = OPERATORS[key]
                at = f"{proto_path}[{len(filters)}]"
                self.at(at, f"{here}.{key}")
                self.at(f"{at}.property", here)
                values = self.operands(op, key, operand, f"{here}.{key}", at, allow_sets=False)
                filters.append(
                    resources_pb2.PropertyFilter(
                        property=name, operator=resources_pb2.Operator.Value(op), values=values
                    )
                )
        return filters


# --- rendering --------------------------------------------------------------------------------


class _Flow(dict[str, Any]):
    """A condition written on one line, e.g. {name: sip_registered, performed: true, in_last: 365d}."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, True))


def render_segment_text(segment: SegmentFile, *, json_format: bool = False) -> str:
    """The file text of a segment; parse_segment_text reads it back to the same proto rule."""
    data = {"name": segment.name, "description": segment.description, "rule": rule_to_data(segment.rule)}
    if json_format:
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return str(
        yaml.dump(
            _flow_leaves(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120
        )
    )


def _flow_leaves(data: Any) -> Any:
    """Conditions without property filters go on one line; groups stay in block style."""
    if isinstance(data, list):
        return [_flow_leaves(item) for item in data]
    if not isinstance(data, dict):
        return data
    flowed = {key: _flow_leaves(value) for key, value in data.items()}
    leaf = ("attribute" in data and len(data) == 1) or ("event" in data and "where" not in data["event"])
    if leaf:
        ((key, body),) = data.items()
        return {key: _Flow(body)}
    return flowed


def rule_to_data(rule: resources_pb2.Rule) -> dict[str, Any]:
    """The file form of a proto rule (plain dicts, lists, strings, numbers and booleans); the rule must be valid."""
    parse_rule(rule, "rule")
    return _render_rule(rule)


def _render_rule(rule: resources_pb2.Rule) -> dict[str, Any]:
    kind = rule.WhichOneof("kind")
    if kind == "all":
        return {"all": [_render_rule(child) for child in rule.all.rules]}
    if kind == "any":
        return {"any": [_render_rule(child) for child in rule.any.rules]}
    if kind == "negate":
        return {"not": _render_rule(rule.negate)}
    if kind == "segment":
        return {"segment": rule.segment.segment_id}
    if kind == "attribute":
        condition = rule.attribute
        op = Op(resources_pb2.Operator.Name(condition.operator))
        return {"attribute": {"name": condition.attribute, OPERATOR_KEYS[op]: _render_operands(op, condition.values)}}
    return {"event": _render_event(rule.event)}


def _render_operands(op: Op, values: Any) -> Any:
    if op in FLAG_OPERATORS:
        return True
    if op in LIST_OPERATORS:
        return [_render_value(value) for value in values]
    return _render_value(values[0])


def _render_value(value: resources_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= MAX_EXACT_NUMBER and math.copysign(1.0, number) > 0:
            return int(number)
        return number
    if kind == "string_set_value":
        return list(value.string_set_value.values)
    if kind == "timestamp_value":
        return {"timestamp": value.timestamp_value.ToJsonString()}
    money = value.money_value
    if money.currency_code != "INR":
        return {"minor_units": money.minor_units, "currency": money.currency_code}
    if money.minor_units % 100 == 0:
        return {"inr": money.minor_units // 100}
    return {"paise": money.minor_units}


def _render_event(condition: resources_pb2.EventCondition) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": condition.event_name,
        "performed": condition.performance == resources_pb2.PERFORMANCE_PERFORMED,
    }
    if condition.HasField("window"):
        window = condition.window
        kind = window.WhichOneof("kind")
        if kind == "last":
            data["in_last"] = _render_duration(window.last)
        elif kind == "between":
            data["between"] = [window.between.start_time.ToJsonString(), window.between.end_time.ToJsonString()]
        else:
            data["since"] = window.since_attribute
    if condition.HasField("count"):
        count = condition.count
        op = Op(resources_pb2.Operator.Name(count.operator))
        bound: Any = [count.value, count.upper_value] if op is Op.BETWEEN else count.value
        data["count"] = {COUNT_KEYS[op]: bound}
    if condition.property_filters:
        data["where"] = _render_filters(condition.property_filters)
    return data


def _render_duration(duration: Duration) -> str:
    nanos = duration.seconds * NANOS + duration.nanos
    for unit, seconds in UNITS.items():
        if nanos % (seconds * NANOS) == 0:
            return f"{nanos // (seconds * NANOS)}{unit}"
    return f"{Decimal(nanos) / NANOS}s"


def _render_filters(filters: Any) -> Any:
    """A mapping by property when that reads back in the same order, else a list of one-filter items."""
    grouped: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for item in filters:
        op = Op(resources_pb2.Operator.Name(item.operator))
        operators = grouped.setdefault(item.property, {})
        if OPERATOR_KEYS[op] in operators or (order and order[-1] != item.property and item.property in order):
            return [
                {f.property: {OPERATOR_KEYS[o]: _render_operands(o, f.values)}}
                for f, o in ((f, Op(resources_pb2.Operator.Name(f.operator))) for f in filters)
            ]
        if not order or order[-1] != item.property:
            order.append(item.property)
        operators[OPERATOR_KEYS[op]] = _render_operands(op, item.values)
    return grouped


# --- helpers ----------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _hint(key: Any, keys: tuple[str, ...]) -> str:
    close = get_close_matches(str(key), keys, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{suggestion}; valid keys: {', '.join(keys)}"


def _describe(data: Any) -> str:
    if data is None:
        return "nothing (null)"
    kind = type(data).__name__
    names = {
        "str": "text",
        "int": "a number",
        "float": "a number",
        "bool": "a boolean",
        "dict": "a mapping",
        "list": "a list",
    }
    shown = repr(data) if len(repr(data)) <= 60 else repr(data)[:57] + "..."
    return f"{names.get(kind, kind)} {shown}"


def _file_word(match: re.Match[str]) -> str:
    word = match.group(0)
    if word.startswith("OPERATOR_"):
        try:
            return OPERATOR_KEYS[Op(word)]
        except ValueError:
            return word
    return _PROTO_WORDS[word]


def _file_words(message: str) -> str:
    return _PROTO_WORD_PATTERN.sub(_file_word, message)
