"""The attribute catalog: which attributes profiles may carry, of which type, and which are computed from events."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from services.segments.computed import TYPE_NAMES, ComputedDefinition, ComputedError, parse_computed
from services.segments.records import RecordProblem
from services.segments.values import Kind, Value, name_problem
from xsell.segments.v1 import resources_pb2

MAX_DESCRIPTION = 2000

KIND_OF_TYPE = {
    resources_pb2.ATTRIBUTE_TYPE_STRING: Kind.STRING,
    resources_pb2.ATTRIBUTE_TYPE_NUMBER: Kind.NUMBER,
    resources_pb2.ATTRIBUTE_TYPE_BOOLEAN: Kind.BOOL,
    resources_pb2.ATTRIBUTE_TYPE_STRING_SET: Kind.STRING_SET,
    resources_pb2.ATTRIBUTE_TYPE_TIMESTAMP: Kind.TIMESTAMP,
    resources_pb2.ATTRIBUTE_TYPE_MONEY: Kind.MONEY,
}
TYPE_OF_KIND = {kind: proto for proto, kind in KIND_OF_TYPE.items()}
GOT = {
    Kind.STRING: "a string",
    Kind.NUMBER: "a number",
    Kind.BOOL: "a boolean",
    Kind.STRING_SET: "a string set",
    Kind.TIMESTAMP: "a timestamp",
    Kind.MONEY: "money",
}


@dataclass(frozen=True)
class Definition:
    """One declared attribute; `computed` is the serialized ComputedAttribute of a computed one, else empty."""

    name: str
    kind: Kind
    description: str
    pii: bool
    computed: bytes = b""
    derived: ComputedDefinition | None = None

    def same_meaning(self, other: "Definition") -> bool:
        return (self.kind, self.derived) == (other.kind, other.derived)


class Catalog:
    """An immutable snapshot of the declared attributes."""

    def __init__(self, definitions: Iterable[Definition] = ()) -> None:
        self.definitions: dict[str, Definition] = {d.name: d for d in definitions}
        by_event: dict[str, list[ComputedDefinition]] = {}
        for definition in self.definitions.values():
            if definition.derived is not None:
                by_event.setdefault(definition.derived.event_name, []).append(definition.derived)
        self._by_event = {name: tuple(sorted(ds, key=lambda d: d.attribute)) for name, ds in by_event.items()}

    def get(self, name: str) -> Definition | None:
        return self.definitions.get(name)

    def computed(self) -> list[ComputedDefinition]:
        return [d for name in sorted(self._by_event) for d in self._by_event[name]]

    def computed_from(self, event_names: Iterable[str]) -> list[ComputedDefinition]:
        """The computed attributes that aggregate any of these events, in a stable order."""
        return [d for name in sorted(set(event_names)) for d in self._by_event.get(name, ())]

    def value_problem(self, name: str, value: Value) -> str | None:
        """Why a profile upsert may not set `name` to `value`, or None when it may."""
        definition = self.definitions.get(name)
        if definition is None:
            return f"attribute {name!r} is not in the catalog; declare it with DefineAttributes"
        if definition.derived is not None:
            return (
                f"attribute {name!r} is computed from events and cannot be set; "
                f"send {definition.derived.event_name} events instead"
            )
        if value.kind is not definition.kind:
            return f"attributes.{name}: expected {TYPE_NAMES[definition.kind]}, got {GOT[value.kind]}"
        return None


def definition_of(proto: resources_pb2.AttributeDefinition, path: str) -> Definition:
    """The validated domain form of one declared attribute; ComputedError names the field at fault."""
    if problem := name_problem(proto.name, "name"):
        raise ComputedError(f"{path}.name", problem)
    kind = KIND_OF_TYPE.get(proto.type)
    if kind is None:
        names = ", ".join(resources_pb2.AttributeType.Name(t) for t in KIND_OF_TYPE)  # type: ignore[arg-type]
        raise ComputedError(f"{path}.type", f"type is required; one of {names}")
    if len(proto.description) > MAX_DESCRIPTION:
        raise ComputedError(
            f"{path}.description",
            f"description must be at most {MAX_DESCRIPTION} characters, got {len(proto.description)}",
        )
    if "\x00" in proto.description:
        # PostgreSQL refuses a NUL in text: the whole DefineAttributes batch failed there.
        raise ComputedError(f"{path}.description", "description holds a NUL character, which no text may hold")
    derived = None
    computed = b""
    if proto.HasField("computed"):
        derived = parse_computed(proto.name, kind, proto.computed, f"{path}.computed")
        computed = proto.computed.SerializeToString(deterministic=True)
    return Definition(proto.name, kind, proto.description, proto.pii, computed, derived)


def validate_definitions(
    protos: Sequence[resources_pb2.AttributeDefinition], declared: Catalog, path: str = "attributes"
) -> tuple[list[Definition], list[RecordProblem]]:
    """The definitions to store (later records of one name override earlier ones) and the problems of the others.

    A declared attribute keeps its type and computation, because stored values and segment rules
    depend on them; its description and PII flag may change. To change the meaning, declare a new name.
    """
    accepted: dict[str, Definition] = {}
    problems: list[RecordProblem] = []
    for index, proto in enumerate(protos):
        here = f"{path}[{index}]"
        try:
            definition = definition_of(proto, here)
        except ComputedError as error:
            problems.append(RecordProblem(index, proto.name[:64], error.path, error.message))
            continue
        existing = declared.get(definition.name)
        if existing is not None and existing.kind is not definition.kind:
            problems.append(
                RecordProblem(
                    index,
                    definition.name,
                    f"{here}.type",
                    f"attribute {definition.name!r} is declared {TYPE_NAMES[existing.kind]} "
                    "and its type cannot change; declare a new attribute name instead",
                )
            )
            continue
        if existing is not None and existing.derived != definition.derived:
            was = "computed" if existing.derived is not None else "set by upserts"
            problems.append(
                RecordProblem(
                    index,
                    definition.name,
                    f"{here}.computed",
                    f"attribute {definition.name!r} is {was} and its computation cannot change; "
                    "declare a new attribute name instead",
                )
            )
            continue
        accepted[definition.name] = definition
    return list(accepted.values()), problems


# --- catalog files ----------------------------------------------------------------------------


class CatalogFileError(ValueError):
    """A catalog file that does not describe attribute definitions; the message names the entry."""


def _enum_name(prefix: str, value: Any) -> Any:
    if isinstance(value, str) and not value.upper().startswith(prefix):
        return f"{prefix}{value.upper()}"
    return value.upper() if isinstance(value, str) else value


def _seconds(value: Any, where: str) -> str:
    """'90d', '12h', '30m' or a number of seconds, as a proto JSON duration."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value}s"
    if isinstance(value, str) and value[:-1].isdigit() and value[-1:] in units:
        return f"{int(value[:-1]) * units[value[-1]]}s"
    raise CatalogFileError(f"{where}.window: {value!r} is not a duration such as '90d', '12h' or 7776000")


def definitions_from_document(document: Any) -> list[resources_pb2.AttributeDefinition]:
    """The definitions of a catalog file: `attributes:` a list of {name, type, description, pii, computed}.

    Types and aggregations may be written short (`money`, `distinct_count`) and windows as '90d';
    everything else is the proto's JSON form.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("attributes"), list):
        raise CatalogFileError("a catalog file is a mapping with an 'attributes' list")
    result = []
    for index, entry in enumerate(document["attributes"]):
        where = f"attributes[{index}]"
        if not isinstance(entry, Mapping):
            raise CatalogFileError(f"{where}: each attribute is a mapping with name and type")
        raw = dict(entry)
        raw["type"] = _enum_name("ATTRIBUTE_TYPE_", raw.get("type", ""))
        if isinstance(raw.get("computed"), Mapping):
            computed = dict(raw["computed"])
            computed["aggregation"] = _enum_name("AGGREGATION_", computed.get("aggregation", ""))
            if "window" in computed:
                computed["window"] = _seconds(computed["window"], f"{where}.computed")
            raw["computed"] = computed
        try:
            result.append(json_format.ParseDict(raw, resources_pb2.AttributeDefinition()))
        except json_format.ParseError as error:
            raise CatalogFileError(f"{where} ({raw.get('name', '?')}): {error}") from None
    return result
