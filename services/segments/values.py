"""Typed attribute and property values: the domain form of the proto Value, with its validation."""

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.errors import InvalidArgument
from plumbing.times import utc_time
from xsell.segments.v1 import resources_pb2
from xsell.type.v1 import money_pb2

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}$")
MAX_TEXT_LENGTH = 1024
MAX_SET_SIZE = 1000
# Numbers are stored as double precision; beyond 2**53 integers (paise) would silently round.
MAX_EXACT_NUMBER = 2**53


class Kind(StrEnum):
    STRING = "string"
    NUMBER = "number"
    BOOL = "bool"
    STRING_SET = "string_set"
    TIMESTAMP = "timestamp"
    MONEY = "money"


ORDERED_KINDS = frozenset({Kind.NUMBER, Kind.TIMESTAMP, Kind.MONEY})


class ValueProblem(ValueError):
    """A value that cannot be stored or compared; `message` says what would be valid."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Value:
    """One typed value: text for strings and booleans ('true'/'false'), number for numbers,
    money (minor units) and timestamps (epoch seconds), members for string sets."""

    kind: Kind
    text: str | None = None
    number: float | None = None
    members: frozenset[str] = field(default_factory=frozenset)
    currency: str | None = None

    @staticmethod
    def string(text: str) -> "Value":
        return Value(Kind.STRING, text=text)

    @staticmethod
    def num(number: float) -> "Value":
        return Value(Kind.NUMBER, number=float(number))

    @staticmethod
    def boolean(flag: bool) -> "Value":
        return Value(Kind.BOOL, text="true" if flag else "false")

    @staticmethod
    def string_set(members: set[str] | frozenset[str] | list[str]) -> "Value":
        return Value(Kind.STRING_SET, members=frozenset(members))

    @staticmethod
    def timestamp(moment: datetime) -> "Value":
        return Value(Kind.TIMESTAMP, number=moment.timestamp())

    @staticmethod
    def money(minor_units: int, currency: str) -> "Value":
        return Value(Kind.MONEY, number=float(minor_units), currency=currency)

    def describe(self) -> str:
        return f"money ({self.currency})" if self.kind is Kind.MONEY else self.kind.value


def is_valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.match(name))


def name_problem(name: str, what: str) -> str | None:
    """Why `name` is not a valid lower_snake_case name, or None when it is."""
    if not name:
        return f"{what} is required, e.g. 'sip_registered'"
    if not is_valid_name(name):
        return f"{what} {name!r} must be lower_snake_case (a-z, 0-9, _; starting with a letter; at most 64 characters)"
    return None


def _finite(number: float) -> float:
    if math.isnan(number) or math.isinf(number):
        raise ValueProblem(f"number_value must be a finite number, got {number}")
    if abs(number) > MAX_EXACT_NUMBER:
        raise ValueProblem(f"number_value must be between -2^53 and 2^53, got {number}")
    return float(number)


def _text(text: str, what: str) -> str:
    if len(text) > MAX_TEXT_LENGTH:
        raise ValueProblem(f"{what} must be at most {MAX_TEXT_LENGTH} characters, got {len(text)}")
    if "\x00" in text:
        # PostgreSQL refuses a NUL in text: the whole batch failed there, its good records with it.
        raise ValueProblem(f"{what} holds a NUL character, which no text may hold; remove it")
    return text


def from_proto(value: resources_pb2.Value) -> Value:
    """The domain value of a proto Value; ValueProblem when it is empty or out of range."""
    which = value.WhichOneof("kind")
    if which is None:
        raise ValueProblem(
            "value is empty; set one of string_value, number_value, bool_value, string_set_value, "
            "timestamp_value or money_value"
        )
    if which == "string_value":
        return Value.string(_text(value.string_value, "string_value"))
    if which == "number_value":
        return Value.num(_finite(value.number_value))
    if which == "bool_value":
        return Value.boolean(value.bool_value)
    if which == "string_set_value":
        members = list(value.string_set_value.values)
        if len(members) > MAX_SET_SIZE:
            raise ValueProblem(f"string_set_value may hold at most {MAX_SET_SIZE} values, got {len(members)}")
        for member in members:
            if not member:
                raise ValueProblem("string_set_value members must be non-empty strings")
            _text(member, "a string_set_value member")
        return Value.string_set(members)
    if which == "timestamp_value":
        try:
            return Value.timestamp(utc_time(value.timestamp_value, "timestamp_value"))
        except InvalidArgument as error:
            raise ValueProblem(error.message) from None
    money = value.money_value
    if not CURRENCY_PATTERN.match(money.currency_code):
        raise ValueProblem(
            f"money_value.currency_code must be an ISO 4217 code such as 'INR', got {money.currency_code!r}"
        )
    if abs(money.minor_units) > MAX_EXACT_NUMBER:
        raise ValueProblem("money_value.minor_units must be between -2^53 and 2^53")
    return Value.money(money.minor_units, money.currency_code)


def to_proto(value: Value) -> resources_pb2.Value:
    """The proto Value of a domain value (the inverse of from_proto)."""
    if value.kind is Kind.STRING:
        return resources_pb2.Value(string_value=value.text or "")
    if value.kind is Kind.NUMBER:
        return resources_pb2.Value(number_value=value.number or 0.0)
    if value.kind is Kind.BOOL:
        return resources_pb2.Value(bool_value=value.text == "true")
    if value.kind is Kind.STRING_SET:
        return resources_pb2.Value(string_set_value=resources_pb2.StringSet(values=sorted(value.members)))
    if value.kind is Kind.TIMESTAMP:
        stamp = Timestamp()
        stamp.FromMicroseconds(round((value.number or 0.0) * 1_000_000))
        return resources_pb2.Value(timestamp_value=stamp)
    return resources_pb2.Value(
        money_value=money_pb2.Money(minor_units=round(value.number or 0.0), currency_code=value.currency or "")
    )
