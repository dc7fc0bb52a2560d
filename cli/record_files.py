"""Profile and event files for `xsell profiles load` / `xsell events load`: JSON Lines or CSV, read into protos.

A JSON Lines file holds one record per line, in the proto's field names with value shorthands::

    {"profile_id": "demo-0001", "attributes": {"first_name": "Asha", "fund_categories": ["Equity"],
     "total_aum": {"inr": 250000}, "has_stp": false, "number_of_schemes": 1}}
    {"event_id": "demo-0001-sip", "profile_id": "demo-0001", "name": "sip_registered", "occur_time": "30d ago",
     "properties": {"amount": {"inr": 5000}, "amc": "Axis"}}

Values: a string, a number, true / false, a list of strings (a string set), ``{"inr": 2500.50}`` (rupees),
``{"paise": 250050}``, ``{"minor_units": 500, "currency": "USD"}``, ``{"timestamp": "2025-04-01T09:00:00+05:30"}``.
An event's ``occur_time`` is an ISO time with a zone, or ``"<n>d ago"`` (``s``, ``m``, ``h``, ``d``) counted back from
the moment the file is loaded, so a demo file stays inside the segments' windows.

A CSV file has a header: ``profile_id`` then one column per attribute; or ``event_id, profile_id, name, occur_time``
then one column per property. A column's type is the catalog's (profiles, when the key may read the catalog) or
written in the header as ``name:type``, type one of string, number, boolean, string_set (``a|b``), timestamp,
inr (rupees) or paise; otherwise text. An empty cell leaves that attribute or property out.
"""

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from google.protobuf.timestamp_pb2 import Timestamp

from xsell.segments.v1 import resources_pb2
from xsell.type.v1 import money_pb2

Kind = Literal["profiles", "events"]
FORMATS = ("jsonl", "csv")
PROFILE_KEYS = ("profile_id", "attributes")
EVENT_KEYS = ("event_id", "profile_id", "name", "occur_time", "properties")
PROFILE_COLUMNS: tuple[str, ...] = ("profile_id",)
EVENT_COLUMNS: tuple[str, ...] = ("event_id", "profile_id", "name", "occur_time")
"""The CSV columns that are the record's own fields; every other column is an attribute or a property."""
CELL_TYPES = ("string", "number", "boolean", "string_set", "timestamp", "inr", "paise")
_CATALOG_CELL_TYPES = {
    resources_pb2.ATTRIBUTE_TYPE_STRING: "string",
    resources_pb2.ATTRIBUTE_TYPE_NUMBER: "number",
    resources_pb2.ATTRIBUTE_TYPE_BOOLEAN: "boolean",
    resources_pb2.ATTRIBUTE_TYPE_STRING_SET: "string_set",
    resources_pb2.ATTRIBUTE_TYPE_TIMESTAMP: "timestamp",
    resources_pb2.ATTRIBUTE_TYPE_MONEY: "inr",
}
MAX_EXACT_NUMBER = 2**53
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])\s+ago$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TRUE = frozenset({"true", "yes", "y", "1"})
_FALSE = frozenset({"false", "no", "n", "0"})


class LineProblem(ValueError):
    """Why one line cannot be sent: `field` names the key (JSON) or column (CSV) at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class RecordFileError(ValueError):
    """A file that cannot be read at all (missing, no header, unknown format): nothing of it is sent."""


@dataclass(frozen=True)
class Line:
    """One record of a file with its 1-based line number (CSV: the header is line 1)."""

    number: int
    record: resources_pb2.Profile | resources_pb2.Event

    @property
    def record_id(self) -> str:
        if isinstance(self.record, resources_pb2.Event):
            return self.record.event_id
        return self.record.profile_id


@dataclass(frozen=True)
class Refusal:
    """A line left out, by the CLI (it could not be read) or by the service (a RecordError)."""

    line: int
    record_id: str
    field: str
    reason: str

    def describe(self, path: str) -> str:
        return ": ".join(part for part in (f"{path}:{self.line}", self.record_id, self.field, self.reason) if part)


def file_format(path: Path, given: str | None) -> str:
    if given:
        return given
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if path.suffix.lower() == ".csv":
        return "csv"
    raise RecordFileError(f"{path}: cannot tell the format from the name; add --format jsonl or --format csv")


def csv_has_untyped_columns(header: list[str], kind: Kind) -> bool:
    """Whether a CSV's header leaves a column's type to the catalog (then the catalog is worth reading)."""
    fixed = PROFILE_COLUMNS if kind == "profiles" else EVENT_COLUMNS
    return any(":" not in column and column.strip() not in fixed for column in header)


def csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle), [])


def read_records(
    path: Path,
    kind: Kind,
    *,
    fmt: str,
    now: datetime,
    catalog: Mapping[str, str] | None = None,
) -> tuple[list[Line], list[Refusal]]:
    """Every record the file holds, and the lines that could not be read."""
    if not path.is_file():
        raise RecordFileError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return parse_records(handle, kind, fmt=fmt, now=now, catalog=catalog, source=str(path))


def parse_records(
    text: Iterable[str],
    kind: Kind,
    *,
    fmt: str,
    now: datetime,
    catalog: Mapping[str, str] | None = None,
    source: str = "",
) -> tuple[list[Line], list[Refusal]]:
    """The records of a file's lines (JSON Lines or CSV), and the lines that could not be read."""
    lines: list[Line] = []
    refusals: list[Refusal] = []
    rows = _csv_rows(text, kind, catalog or {}, now, source) if fmt == "csv" else _json_rows(text, kind, now)
    for number, parsed in rows:
        if isinstance(parsed, Refusal):
            refusals.append(parsed)
        else:
            lines.append(Line(number, parsed))
    return lines, refusals


def _json_rows(text: Iterable[str], kind: Kind, now: datetime) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        record_id = ""
        try:
            data = json.loads(line.rstrip("\r\n"))
            if not isinstance(data, dict):
                raise LineProblem("", f"a line is one JSON object, got {_describe(data)}")
            record_id = str(data.get("event_id" if kind == "events" else "profile_id", ""))
            yield number, _profile(data) if kind == "profiles" else _event(data, now)
        except json.JSONDecodeError as problem:
            yield number, Refusal(number, "", "", f"not valid JSON: {problem.msg} at column {problem.colno}")
        except RecursionError:
            yield number, Refusal(number, "", "", "not a record: JSON nested too deep to read")
        except LineProblem as problem:
            yield number, Refusal(number, record_id, problem.field, problem.reason)


def _profile(data: Mapping[str, Any]) -> resources_pb2.Profile:
    _known_keys(data, PROFILE_KEYS, 'a profile line is {"profile_id": ..., "attributes": {...}}')
    profile = resources_pb2.Profile(profile_id=_text(data.get("profile_id"), "profile_id"))
    for name, value in _mapping(data.get("attributes", {}), "attributes").items():
        profile.attributes[name].CopyFrom(json_value(value, f"attributes.{name}"))
    return profile


def _event(data: Mapping[str, Any], now: datetime) -> resources_pb2.Event:
    _known_keys(data, EVENT_KEYS, "an event line has event_id, profile_id, name, occur_time and properties")
    event = resources_pb2.Event(
        event_id=_text(data.get("event_id"), "event_id"),
        profile_id=_text(data.get("profile_id"), "profile_id"),
        name=_text(data.get("name"), "name"),
    )
    event.occur_time.CopyFrom(occur_time(data.get("occur_time"), now))
    for name, value in _mapping(data.get("properties", {}), "properties").items():
        event.properties[name].CopyFrom(json_value(value, f"properties.{name}"))
    return event


def _known_keys(data: Mapping[str, Any], keys: tuple[str, ...], shape: str) -> None:
    unknown = [str(key) for key in data if key not in keys]
    if unknown:
        raise LineProblem(unknown[0], f"unknown field {unknown[0]!r}; {shape}")


def _text(value: Any, field: str) -> str:
    if value is None or value == "":
        raise LineProblem(field, f"{field} is required")
    if not isinstance(value, str):
        raise LineProblem(field, f"{field} is text, got {_describe(value)}")
    return value


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise LineProblem(field, f"{field} is an object of name: value, got {_describe(value)}")
    return value


def json_value(data: Any, field: str) -> resources_pb2.Value:
    """A proto Value from a decoded JSON value and its shorthands ({"inr": ...}, {"timestamp": ...}...)."""
    if isinstance(data, bool):
        return resources_pb2.Value(bool_value=data)
    if isinstance(data, int | float):
        return resources_pb2.Value(number_value=_number(data, field))
    if isinstance(data, str):
        return resources_pb2.Value(string_value=data)
    if isinstance(data, list):
        for index, member in enumerate(data):
            if not isinstance(member, str) or not member:
                raise LineProblem(f"{field}[{index}]", f"a string set holds non-empty strings, got {_describe(member)}")
        return resources_pb2.Value(string_set_value=resources_pb2.StringSet(values=data))
    if isinstance(data, dict):
        return _typed_value(data, field)
    raise LineProblem(
        field,
        f"expected a string, number, true / false, list of strings, {{inr: ...}}, {{paise: ...}}, "
        f"{{minor_units: ..., currency: ...}} or {{timestamp: ...}}, got {_describe(data)}; leave a value out to "
        "leave it unchanged",
    )


def _typed_value(data: Mapping[str, Any], field: str) -> resources_pb2.Value:
    keys = set(data)
    if keys == {"inr"}:
        return resources_pb2.Value(money_value=rupees(data["inr"], f"{field}.inr"))
    if keys == {"paise"}:
        return resources_pb2.Value(money_value=_minor(data["paise"], "INR", f"{field}.paise"))
    currency_key = "currency" if "currency" in keys else "currency_code"
    if keys == {"minor_units", currency_key}:
        currency = data[currency_key]
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
            raise LineProblem(f"{field}.{currency_key}", f"an ISO 4217 code such as USD, got {_describe(currency)}")
        return resources_pb2.Value(money_value=_minor(data["minor_units"], currency, f"{field}.minor_units"))
    if keys == {"timestamp"}:
        return resources_pb2.Value(timestamp_value=timestamp(data["timestamp"], f"{field}.timestamp"))
    raise LineProblem(
        field,
        "a typed value is {inr: ...}, {paise: ...}, {minor_units: ..., currency: ...} or {timestamp: ...}; "
        f"got keys {', '.join(sorted(map(str, keys))) or 'none'}",
    )


def _number(data: float, field: str) -> float:
    number = float(data) if not isinstance(data, int) or abs(data) <= MAX_EXACT_NUMBER else math.inf
    if not math.isfinite(number) or abs(number) > MAX_EXACT_NUMBER:
        raise LineProblem(field, f"numbers are finite and between -2^53 and 2^53, got {data}")
    return number


def _minor(data: Any, currency: str, field: str) -> money_pb2.Money:
    if isinstance(data, bool) or not isinstance(data, int) or abs(data) > MAX_EXACT_NUMBER:
        raise LineProblem(field, f"a whole number of minor units (paise, cents), got {_describe(data)}")
    return money_pb2.Money(minor_units=data, currency_code=currency)


def rupees(data: Any, field: str) -> money_pb2.Money:
    if isinstance(data, bool) or not isinstance(data, int | float | str):
        raise LineProblem(field, f"an amount in rupees, e.g. 250000 or 99.50, got {_describe(data)}")
    try:
        amount = Decimal(str(data).strip())
        # Decimal's context rounds an exponent beyond its range to 0 ("1e-999999999999"): refused, as 0.001 is.
        if amount.is_finite() and amount != 0 and amount.adjusted() < -2:
            raise LineProblem(field, f"rupees with at most 2 decimals (paise), got {data}")
        paise = amount * 100
    except InvalidOperation:
        raise LineProblem(field, f"an amount in rupees, e.g. 250000 or 99.50, got {data!r}") from None
    if not paise.is_finite() or paise != paise.to_integral_value() or abs(paise) > MAX_EXACT_NUMBER:
        raise LineProblem(field, f"rupees with at most 2 decimals (paise), got {data}")
    return money_pb2.Money(minor_units=int(paise), currency_code="INR")


def timestamp(data: Any, field: str) -> Timestamp:
    """An ISO 8601 time with a zone, or a date (midnight UTC)."""
    stamp = Timestamp()
    text = str(data).strip() if isinstance(data, str) else ""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            stamp.FromDatetime(datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC))
            return stamp
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise LineProblem(field, f"an ISO 8601 time with a zone, e.g. 2025-04-01T09:00:00+05:30, got {data!r}")
    try:
        stamp.FromDatetime(moment.astimezone(UTC))
    except (OverflowError, ValueError):
        raise LineProblem(field, f"a time from year 1 to 9999 in UTC, got {data!r}") from None
    return stamp


def occur_time(data: Any, now: datetime) -> Timestamp:
    """An event's time: an ISO time with a zone, or "30d ago" counted back from `now`."""
    match = _AGO.match(data.strip()) if isinstance(data, str) else None
    if match is None:
        if data is None or data == "":
            raise LineProblem("occur_time", "occur_time is required: when the event happened")
        try:
            return timestamp(data, "occur_time")
        except LineProblem:
            raise LineProblem(
                "occur_time",
                f"an ISO 8601 time with a zone (2025-04-01T09:00:00+05:30) or e.g. '30d ago', got {data!r}",
            ) from None
    stamp = Timestamp()
    try:
        stamp.FromDatetime(now - timedelta(seconds=float(match.group(1)) * DURATION_UNITS[match.group(2)]))
    except (OverflowError, ValueError):
        raise LineProblem("occur_time", f"an age that ends after year 1, e.g. '30d ago', got {data!r}") from None
    return stamp


def _csv_rows(
    text: Iterable[str], kind: Kind, catalog: Mapping[str, str], now: datetime, source: str
) -> Iterator[tuple[int, Any]]:
    fixed = PROFILE_COLUMNS if kind == "profiles" else EVENT_COLUMNS
    reader = csv.reader(text)
    header = next(reader, None)
    if not header:
        raise RecordFileError(f"{source}: empty; a CSV file starts with a header: {', '.join(fixed)}, ...")
    names = [column.partition(":")[0].strip() for column in header]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        # Two cells for one field: one would be dropped without a word.
        raise RecordFileError(f"{source}:1: the header names {', '.join(repeated)} more than once; name each once")
    missing = [name for name in fixed if name not in names]
    if missing:
        raise RecordFileError(
            f"{source}:1: the header lacks {', '.join(missing)}; it starts with {', '.join(fixed)}, "
            f"then one column per {'attribute' if kind == 'profiles' else 'property'}"
        )
    columns = [_column(column, catalog if kind == "profiles" else {}, source) for column in header]
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        record_id = dict(zip(names, row, strict=False)).get("event_id" if kind == "events" else "profile_id", "")
        if len(row) != len(names):
            yield number, Refusal(number, record_id.strip(), "", f"{len(row)} cells, the header has {len(names)}")
            continue
        try:
            yield number, _csv_record(kind, columns, row, now)
        except LineProblem as problem:
            yield number, Refusal(number, record_id.strip(), problem.field, problem.reason)


@dataclass(frozen=True)
class _Column:
    header: str
    name: str
    cell_type: str


def _column(header: str, catalog: Mapping[str, str], source: str) -> _Column:
    name, _, declared = header.partition(":")
    name, declared = name.strip(), declared.strip().lower()
    if declared and declared not in CELL_TYPES:
        raise RecordFileError(f"{source}:1: column {header!r}: the type is one of {', '.join(CELL_TYPES)}")
    return _Column(header, name, declared or catalog.get(name, "string"))


def _csv_record(
    kind: Kind, columns: list[_Column], row: list[str], now: datetime
) -> resources_pb2.Profile | resources_pb2.Event:
    values = {column.name: cell.strip() for column, cell in zip(columns, row, strict=True)}
    if kind == "profiles":
        profile = resources_pb2.Profile(profile_id=_text(values["profile_id"], "profile_id"))
        _csv_values(profile.attributes, columns, values, PROFILE_COLUMNS)
        return profile
    event = resources_pb2.Event(
        event_id=_text(values["event_id"], "event_id"),
        profile_id=_text(values["profile_id"], "profile_id"),
        name=_text(values["name"], "name"),
    )
    event.occur_time.CopyFrom(occur_time(values["occur_time"], now))
    _csv_values(event.properties, columns, values, EVENT_COLUMNS)
    return event


def _csv_values(target: Any, columns: list[_Column], values: Mapping[str, str], fixed: tuple[str, ...]) -> None:
    for column in columns:
        cell = values[column.name]
        if column.name in fixed or not cell:
            continue
        target[column.name].CopyFrom(cell_value(cell, column.cell_type, column.name))


def cell_value(cell: str, cell_type: str, field: str) -> resources_pb2.Value:
    """A CSV cell as the column's type says."""
    if cell_type == "string":
        return resources_pb2.Value(string_value=cell)
    if cell_type == "number":
        try:
            return resources_pb2.Value(number_value=_number(float(cell), field))
        except ValueError:
            raise LineProblem(field, f"a number, e.g. 3 or 2.5, got {cell!r}") from None
    if cell_type == "boolean":
        if cell.lower() in _TRUE | _FALSE:
            return resources_pb2.Value(bool_value=cell.lower() in _TRUE)
        raise LineProblem(field, f"true or false, got {cell!r}")
    if cell_type == "string_set":
        members = [member.strip() for member in cell.split("|") if member.strip()]
        return resources_pb2.Value(string_set_value=resources_pb2.StringSet(values=members))
    if cell_type == "timestamp":
        return resources_pb2.Value(timestamp_value=timestamp(cell, field))
    if cell_type == "paise":
        try:
            return resources_pb2.Value(money_value=_minor(int(cell), "INR", field))
        except ValueError:
            raise LineProblem(field, f"a whole number of paise, got {cell!r}") from None
    return resources_pb2.Value(money_value=rupees(cell, field))


def catalog_cell_types(definitions: list[resources_pb2.AttributeDefinition]) -> dict[str, str]:
    """The CSV cell type of every declared attribute."""
    return {d.name: _CATALOG_CELL_TYPES[d.type] for d in definitions if d.type in _CATALOG_CELL_TYPES}


def local_field(service_field: str, *, csv_columns: bool) -> str:
    """A RecordError's field inside one record: profiles[3].attributes.total_aum -> attributes.total_aum (JSON Lines)
    or total_aum (the CSV column)."""
    field = re.sub(r"^(profiles|events)\[\d+\]\.?", "", service_field)
    if csv_columns:
        field = re.sub(r"^(attributes|properties)\.", "", field)
    return field


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
