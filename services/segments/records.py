"""Per-record validation of profile and event batches: good records go on, bad ones get a reason each."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from plumbing.errors import InvalidArgument
from plumbing.times import utc_time
from services.segments.values import Value, ValueProblem, from_proto, name_problem
from xsell.segments.v1 import resources_pb2
from xsell.type.v1 import record_error_pb2

if TYPE_CHECKING:
    from services.segments.catalog import Catalog

MAX_ID_LENGTH = 128
MAX_BATCH = 5000
MAX_ATTRIBUTES_PER_RECORD = 500


@dataclass(frozen=True)
class RecordProblem:
    """Why one record of a batch was rejected."""

    index: int
    record_id: str
    field: str
    reason: str


@dataclass(frozen=True)
class ProfileUpdate:
    """The attributes one profile upsert names; attributes it does not name are kept."""

    profile_id: str
    attributes: dict[str, Value]


@dataclass(frozen=True)
class IncomingEvent:
    event_id: str
    profile_id: str
    name: str
    occurred_at: datetime
    properties: dict[str, Value]


def record_errors(problems: Sequence[RecordProblem]) -> list[record_error_pb2.RecordError]:
    return [
        record_error_pb2.RecordError(index=p.index, record_id=p.record_id, field=p.field, reason=p.reason)
        for p in problems
    ]


def id_problem(value: str, what: str) -> str | None:
    """Why `value` is not an id a source system gives (empty, too long, only spaces, a control character), or None."""
    if not value:
        return f"{what} is required"
    if len(value) > MAX_ID_LENGTH:
        return f"{what} must be at most {MAX_ID_LENGTH} characters, got {len(value)}"
    if not value.strip():
        return f"{what} is only spaces; send the id the source system gave"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        # A NUL, a line break or an escape: no system issues ids so, and PostgreSQL refuses a NUL in text.
        return f"{what} holds a control character; send the id the source system gave"
    return None


def _values(
    raw: Mapping[str, resources_pb2.Value], path: str, what: str
) -> tuple[dict[str, Value], tuple[str, str] | None]:
    """The valid values by name, or the (field, reason) of the first bad one."""
    if len(raw) > MAX_ATTRIBUTES_PER_RECORD:
        return {}, (path, f"at most {MAX_ATTRIBUTES_PER_RECORD} {what}s per record, got {len(raw)}")
    values: dict[str, Value] = {}
    for name in sorted(raw):
        if problem := name_problem(name, what):
            return {}, (f"{path}.{name}", problem)
        try:
            values[name] = from_proto(raw[name])
        except ValueProblem as bad_value:
            return {}, (f"{path}.{name}", bad_value.message)
    return values, None


def validate_profiles(
    profiles: Sequence[resources_pb2.Profile], catalog: "Catalog"
) -> tuple[list[ProfileUpdate], list[RecordProblem]]:
    """The valid profile updates (later records of the same profile override earlier ones) and the problems.

    Every attribute must be declared in the catalog, not computed, and of the declared type.
    """
    merged: dict[str, dict[str, Value]] = {}
    problems: list[RecordProblem] = []
    for index, profile in enumerate(profiles):
        prefix = f"profiles[{index}]"
        if problem := id_problem(profile.profile_id, "profile_id"):
            problems.append(RecordProblem(index, profile.profile_id[:MAX_ID_LENGTH], f"{prefix}.profile_id", problem))
            continue
        attributes, bad = _values(profile.attributes, f"{prefix}.attributes", "attribute")
        if bad is None:
            bad = next(
                (
                    (f"{prefix}.attributes.{name}", problem)
                    for name, value in attributes.items()
                    if (problem := catalog.value_problem(name, value)) is not None
                ),
                None,
            )
        if bad is not None:
            problems.append(RecordProblem(index, profile.profile_id, bad[0], bad[1]))
            continue
        merged.setdefault(profile.profile_id, {}).update(attributes)
    return [ProfileUpdate(pid, attributes) for pid, attributes in merged.items()], problems


def validate_events(
    events: Sequence[resources_pb2.Event], now: datetime, *, retention: timedelta, future_skew: timedelta
) -> tuple[list[IncomingEvent], list[RecordProblem]]:
    """The valid events (the first of repeated ids in the batch) and the problems of the others."""
    accepted: dict[str, IncomingEvent] = {}
    problems: list[RecordProblem] = []
    oldest, newest = now - retention, now + future_skew
    for index, event in enumerate(events):
        prefix = f"events[{index}]"

        def reject(field: str, reason: str, index: int = index, event: resources_pb2.Event = event) -> None:
            problems.append(RecordProblem(index, event.event_id[:MAX_ID_LENGTH], field, reason))

        if problem := id_problem(event.event_id, "event_id"):
            reject(f"{prefix}.event_id", problem)
            continue
        if problem := id_problem(event.profile_id, "profile_id"):
            reject(f"{prefix}.profile_id", problem)
            continue
        if problem := name_problem(event.name, "name"):
            reject(f"{prefix}.name", problem)
            continue
        if not event.HasField("occur_time"):
            reject(f"{prefix}.occur_time", "occur_time is required: when the event happened")
            continue
        try:
            occurred_at = utc_time(event.occur_time, "occur_time")
        except InvalidArgument as error:
            reject(f"{prefix}.occur_time", error.message)
            continue
        if occurred_at > newest:
            reject(
                f"{prefix}.occur_time",
                f"occur_time {occurred_at.isoformat()} is more than {int(future_skew.total_seconds())}s in the future; "
                "send events after they happen, with a correct clock",
            )
            continue
        if occurred_at < oldest:
            reject(
                f"{prefix}.occur_time",
                f"occur_time {occurred_at.isoformat()} is older than the {retention.days}-day retention; "
                f"events must be after {oldest.isoformat()}",
            )
            continue
        properties, bad = _values(event.properties, f"{prefix}.properties", "property")
        if bad is not None:
            reject(*bad)
            continue
        accepted.setdefault(
            event.event_id, IncomingEvent(event.event_id, event.profile_id, event.name, occurred_at, properties)
        )
    return list(accepted.values()), problems
