"""Terse builders of proto rules and values for the segments tests."""

from datetime import datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from xsell.segments.v1 import resources_pb2 as r
from xsell.type.v1 import money_pb2

DAY = 24 * 3600


def s(text: str) -> r.Value:
    return r.Value(string_value=text)


def n(number: float) -> r.Value:
    return r.Value(number_value=number)


def b(flag: bool) -> r.Value:
    return r.Value(bool_value=flag)


def ss(*members: str) -> r.Value:
    return r.Value(string_set_value=r.StringSet(values=list(members)))


def ts(moment: datetime) -> r.Value:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return r.Value(timestamp_value=stamp)


def money(minor: int, currency: str = "INR") -> r.Value:
    return r.Value(money_value=money_pb2.Money(minor_units=minor, currency_code=currency))


def op(name: str) -> int:
    return r.Operator.Value(f"OPERATOR_{name}")


def attr(name: str, operator: str, *values: r.Value) -> r.Rule:
    return r.Rule(attribute=r.AttributeCondition(attribute=name, operator=op(operator), values=list(values)))


def prop(name: str, operator: str, *values: r.Value) -> r.PropertyFilter:
    return r.PropertyFilter(property=name, operator=op(operator), values=list(values))


def event(
    name: str,
    *,
    performed: bool = True,
    days: float | None = None,
    between: tuple[datetime, datetime] | None = None,
    count: tuple[str, int] | tuple[str, int, int] | None = None,
    filters: list[r.PropertyFilter] | None = None,
) -> r.Rule:
    condition = r.EventCondition(
        event_name=name,
        performance=r.PERFORMANCE_PERFORMED if performed else r.PERFORMANCE_NOT_PERFORMED,
        property_filters=filters or [],
    )
    if days is not None:
        condition.window.last.CopyFrom(Duration(seconds=int(days * DAY)))
    if between is not None:
        condition.window.between.start_time.FromDatetime(between[0])
        condition.window.between.end_time.FromDatetime(between[1])
    if count is not None:
        condition.count.CopyFrom(
            r.CountComparison(operator=op(count[0]), value=count[1], upper_value=count[2] if len(count) == 3 else 0)
        )
    return r.Rule(event=condition)


def all_(*rules: r.Rule) -> r.Rule:
    return r.Rule(all=r.RuleGroup(rules=list(rules)))


def any_(*rules: r.Rule) -> r.Rule:
    return r.Rule(any=r.RuleGroup(rules=list(rules)))


def not_(rule: r.Rule) -> r.Rule:
    return r.Rule(negate=rule)


def segment(segment_id: str) -> r.Rule:
    return r.Rule(segment=r.SegmentReference(segment_id=segment_id))


def sip_only() -> r.Rule:
    """The recipe's "SIP-only investors": sip_registered in the last 365 days and no lumpsum_invested in them."""
    return all_(event("sip_registered", days=365), event("lumpsum_invested", performed=False, days=365))
