"""The segments database: profiles as attribute rows (EAV), events, segments, memberships, and their queries."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Select,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import dialect_of, upsert_insert
from plumbing.idempotency import idempotency_table
from plumbing.outbox import inbox_table, outbox_table
from services.segments.catalog import TYPE_OF_KIND, Catalog, Definition, definition_of
from services.segments.computed import DISTINCT_KINDS, Aggregation, ComputedDefinition
from services.segments.records import IncomingEvent, ProfileUpdate
from services.segments.values import Kind, Value
from xsell.segments.v1 import resources_pb2

metadata = MetaData()

profiles = Table(
    "profiles",
    metadata,
    Column("profile_id", String(128), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One row per scalar value and one per member of a string set, so every condition is an indexed
# EXISTS. Booleans are text 'true'/'false'; numbers, money (minor units) and timestamps (epoch
# seconds) are num_value; value_type keeps the kind (and the currency: 'money:INR').
profile_attributes = Table(
    "profile_attributes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("profile_id", String(128), ForeignKey("profiles.profile_id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("value_type", String(32), nullable=False),
    Column("text_value", String(1024), nullable=True),
    Column("num_value", Double, nullable=True),
    Index("ix_profile_attributes_name_text", "name", "text_value"),
    Index("ix_profile_attributes_name_num", "name", "num_value"),
    Index("ix_profile_attributes_profile", "profile_id", "name"),
)

events = Table(
    "events",
    metadata,
    Column("event_id", String(128), primary_key=True),
    Column("profile_id", String(128), ForeignKey("profiles.profile_id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    # {property: {"kind": k, k: value}}; money also has "currency". The kind key lets SQL test presence
    # and read each kind with a typed path without casting foreign text.
    Column("properties", JSON, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index("ix_events_profile_name_time", "profile_id", "name", "occurred_at"),
    Index("ix_events_name_time", "name", "occurred_at"),
)

segments = Table(
    "segments",
    metadata,
    Column("segment_id", String(64), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("rule", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("member_count", BigInteger, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("publish_time", DateTime(timezone=True), nullable=True),
)

memberships = Table(
    "memberships",
    metadata,
    Column("segment_id", String(64), ForeignKey("segments.segment_id"), nullable=False),
    Column("profile_id", String(128), ForeignKey("profiles.profile_id"), nullable=False),
    Column("segment_version", BigInteger, nullable=False),
    Column("entered_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("segment_id", "profile_id"),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
idempotency = idempotency_table(metadata)

DRAFT, PUBLISHED, ARCHIVED = "DRAFT", "PUBLISHED", "ARCHIVED"


def utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- values <-> rows --------------------------------------------------------------------------


def attribute_rows(profile_id: str, name: str, value: Value) -> list[dict[str, Any]]:
    base = {"profile_id": profile_id, "name": name}
    if value.kind is Kind.STRING_SET:
        # An empty set is one row without text, so it still exists and reads back as an empty set.
        members: list[str | None] = [*sorted(value.members)] or [None]
        return [{**base, "value_type": Kind.STRING_SET.value, "text_value": m, "num_value": None} for m in members]
    return [{**base, "value_type": value_type_of(value), "text_value": value.text, "num_value": value.number}]


def value_type_of(value: Value) -> str:
    return f"money:{value.currency}" if value.kind is Kind.MONEY else value.kind.value


def values_from_rows(rows: Iterable[Any]) -> dict[str, dict[str, Value]]:
    """Attribute values by profile id and name from (profile_id, name, value_type, text_value, num_value) rows."""
    sets: dict[tuple[str, str], set[str]] = {}
    result: dict[str, dict[str, Value]] = {}
    for row in rows:
        if row.value_type == Kind.STRING_SET.value:
            members = sets.setdefault((row.profile_id, row.name), set())
            if row.text_value is not None:
                members.add(row.text_value)
            continue
        if row.value_type.startswith("money:"):
            value = Value(Kind.MONEY, number=row.num_value, currency=row.value_type.removeprefix("money:"))
        else:
            kind = Kind(row.value_type)
            value = Value(kind, text=row.text_value, number=row.num_value)
        result.setdefault(row.profile_id, {})[row.name] = value
    for (profile_id, name), members in sets.items():
        result.setdefault(profile_id, {})[name] = Value.string_set(members)
    return result


def property_json(value: Value) -> dict[str, Any]:
    if value.kind is Kind.STRING_SET:
        return {"kind": value.kind.value, value.kind.value: sorted(value.members)}
    if value.kind in (Kind.STRING, Kind.BOOL):
        return {"kind": value.kind.value, value.kind.value: value.text}
    encoded: dict[str, Any] = {"kind": value.kind.value, value.kind.value: value.number}
    if value.kind is Kind.MONEY:
        encoded["currency"] = value.currency
    return encoded


# --- profiles and events ----------------------------------------------------------------------


async def upsert_profiles(session: AsyncSession, updates: Sequence[ProfileUpdate], now: datetime) -> None:
    """Creates missing profiles and replaces the named attributes of each; other attributes are kept."""
    if not updates:
        return
    # One lock order for every batch, so two batches naming the same people cannot deadlock.
    updates = sorted(updates, key=lambda u: u.profile_id)
    statement = upsert_insert(session, profiles)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[profiles.c.profile_id], set_={"updated_at": statement.excluded.updated_at}
        ),
        [{"profile_id": u.profile_id, "created_at": now, "updated_at": now} for u in updates],
    )
    pairs = [(u.profile_id, name) for u in updates for name in u.attributes]
    if pairs:
        await session.execute(
            delete(profile_attributes).where(
                tuple_(profile_attributes.c.profile_id, profile_attributes.c.name).in_(pairs)
            )
        )
        rows = [
            row
            for u in updates
            for name, value in u.attributes.items()
            for row in attribute_rows(u.profile_id, name, value)
        ]
        await session.execute(insert(profile_attributes), rows)


async def existing_profiles(session: AsyncSession, profile_ids: Iterable[str]) -> set[str]:
    ids = sorted(set(profile_ids))
    if not ids:
        return set()
    query = select(profiles.c.profile_id).where(profiles.c.profile_id.in_(ids))
    return set((await session.execute(query)).scalars())


async def ensure_profiles(session: AsyncSession, profile_ids: Iterable[str], now: datetime) -> set[str]:
    """Creates empty profiles for ids not seen yet (events may arrive before the CRM feed); returns those ids.

    One INSERT … ON CONFLICT DO NOTHING RETURNING: exactly the rows this statement created come back. The
    rows go as executemany parameters, so the statement compiles once per process, not once per batch size.
    """
    rows = [{"profile_id": pid, "created_at": now, "updated_at": now} for pid in sorted(set(profile_ids))]
    if not rows:
        return set()
    statement = (
        upsert_insert(session, profiles)
        .on_conflict_do_nothing(index_elements=["profile_id"])
        .returning(profiles.c.profile_id)
    )
    return set((await session.execute(statement, rows)).scalars())


async def insert_events(session: AsyncSession, incoming: Sequence[IncomingEvent], now: datetime) -> None:
    """Stores events; an id that is already stored is skipped, so a retried feed changes nothing."""
    if not incoming:
        return
    incoming = sorted(incoming, key=lambda e: e.event_id)
    rows = [
        {
            "event_id": e.event_id,
            "profile_id": e.profile_id,
            "name": e.name,
            "occurred_at": e.occurred_at,
            "properties": {name: property_json(value) for name, value in e.properties.items()},
            "recorded_at": now,
        }
        for e in incoming
    ]
    await session.execute(upsert_insert(session, events).on_conflict_do_nothing(index_elements=["event_id"]), rows)


async def get_profile(session: AsyncSession, profile_id: str) -> tuple[datetime, dict[str, Value]] | None:
    updated_at = (await profiles_updated_at(session, [profile_id])).get(profile_id)
    if updated_at is None:
        return None
    values = await attributes_of(session, [profile_id], None)
    return updated_at, values.get(profile_id, {})


async def profiles_updated_at(session: AsyncSession, profile_ids: Sequence[str]) -> dict[str, datetime]:
    """When each of the existing profiles among `profile_ids` last changed, in one query."""
    if not profile_ids:
        return {}
    p = profiles
    query = select(p.c.profile_id, p.c.updated_at).where(p.c.profile_id.in_(list(profile_ids)))
    return {row.profile_id: utc(row.updated_at) for row in await session.execute(query)}


async def attributes_of(
    session: AsyncSession, profile_ids: Sequence[str], names: Sequence[str] | None
) -> dict[str, dict[str, Value]]:
    """The attributes of many profiles in one query; `names` None means all."""
    if not profile_ids or names == []:
        return {}
    a = profile_attributes
    query = select(a.c.profile_id, a.c.name, a.c.value_type, a.c.text_value, a.c.num_value).where(
        a.c.profile_id.in_(profile_ids)
    )
    if names is not None:
        query = query.where(a.c.name.in_(names))
    return values_from_rows((await session.execute(query)).all())


# --- segments ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentRow:
    segment_id: str
    display_name: str
    description: str
    rule: bytes
    state: str
    version: int
    member_count: int
    create_time: datetime
    publish_time: datetime | None

    @classmethod
    def of(cls, row: Row[Any]) -> "SegmentRow":
        values = row._mapping
        return cls(
            segment_id=values["segment_id"],
            display_name=values["display_name"],
            description=values["description"],
            rule=values["rule"],
            state=values["state"],
            version=int(values["version"]),
            member_count=int(values["member_count"]),
            create_time=utc(values["create_time"]),
            publish_time=utc(values["publish_time"]) if values["publish_time"] is not None else None,
        )


async def insert_segment(session: AsyncSession, segment: SegmentRow) -> None:
    await session.execute(insert(segments).values(**segment.__dict__))


def _segments_with_counts() -> Select[Any]:
    """The segments' columns with member_count including the deltas not folded yet."""
    pending = (
        select(func.coalesce(func.sum(segment_count_deltas.c.delta), 0))
        .where(segment_count_deltas.c.segment_id == segments.c.segment_id)
        .scalar_subquery()
    )
    columns = [c for c in segments.c if c.name != "member_count"]
    return select(*columns, (segments.c.member_count + pending).label("member_count"))


async def get_segment(session: AsyncSession, segment_id: str, *, for_update: bool = False) -> SegmentRow | None:
    query = _segments_with_counts().where(segments.c.segment_id == segment_id)
    if for_update:
        query = query.with_for_update(of=segments)
    row = (await session.execute(query)).first()
    return SegmentRow.of(row) if row is not None else None


async def segment_states(session: AsyncSession, segment_ids: Iterable[str]) -> dict[str, str]:
    ids = sorted(set(segment_ids))
    if not ids:
        return {}
    rows = await session.execute(select(segments.c.segment_id, segments.c.state).where(segments.c.segment_id.in_(ids)))
    return {row.segment_id: row.state for row in rows}


async def list_segments(session: AsyncSession, before_id: str | None, limit: int) -> list[SegmentRow]:
    """Newest first: segment ids are time-ordered ULIDs, so the id is the keyset."""
    query = _segments_with_counts().order_by(segments.c.segment_id.desc()).limit(limit)
    if before_id:
        query = query.where(segments.c.segment_id < before_id)
    return [SegmentRow.of(row) for row in await session.execute(query)]


# PostgreSQL advisory lock key (any constant bigint) guarding which segments are maintained.
_MAINTENANCE_LOCK = 0x7873656C6C5F6D62  # "xsell_mb"


async def maintained_segments(session: AsyncSession) -> list[SegmentRow]:
    """The published segments whose memberships a batch keeps current, in id order.

    On PostgreSQL the batch holds the maintenance lock in SHARE mode until it commits: batches run side
    by side (two batches naming one person are serialised by lock_profiles instead), while publishing
    and archiving take it EXCLUSIVE (lock_maintenance), so a new segment's INSERT … SELECT of members
    never misses a batch that committed while it ran, and no batch maintains a segment being archived.
    SQLite's BEGIN IMMEDIATE already serialises everything.
    """
    if dialect_of(session) == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock_shared(_MAINTENANCE_LOCK)))
    query = select(segments).where(segments.c.state == PUBLISHED).order_by(segments.c.segment_id)
    return [SegmentRow.of(row) for row in await session.execute(query)]


async def lock_maintenance(session: AsyncSession) -> None:
    """Waits for in-flight batches and keeps new ones out until this transaction ends (see maintained_segments)."""
    if dialect_of(session) == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(_MAINTENANCE_LOCK)))


# --- memberships ------------------------------------------------------------------------------


async def insert_members_from(session: AsyncSession, segment: SegmentRow, matching: Any, now: datetime) -> int:
    """INSERT … SELECT of every profile the compiled rule selects; returns the member count."""
    source = select(
        literal(segment.segment_id, String(64)),
        matching.c.profile_id,
        literal(segment.version, BigInteger),
        literal(now, DateTime(timezone=True)),
    ).select_from(matching)
    await session.execute(
        insert(memberships).from_select(["segment_id", "profile_id", "segment_version", "entered_at"], source)
    )
    return await member_count(session, segment.segment_id)


async def member_count(session: AsyncSession, segment_id: str) -> int:
    query = select(func.count()).select_from(memberships).where(memberships.c.segment_id == segment_id)
    return int((await session.execute(query)).scalar_one())


async def apply_membership_changes(
    session: AsyncSession,
    entered: Sequence[tuple[str, int, str]],
    exited: Mapping[str, Sequence[str]],
    now: datetime,
) -> None:
    """Writes one batch's membership changes: (segment, version, profile) entries, exits per segment, and
    each segment's member count, in a statement per kind rather than per segment where the driver allows."""
    if entered:
        rows = [{"segment_id": s, "profile_id": p, "segment_version": v, "entered_at": now} for s, v, p in entered]
        await session.execute(insert(memberships), rows)
    for segment_id, profile_ids in sorted(exited.items()):
        await remove_members(session, segment_id, profile_ids)
    deltas: dict[str, int] = {}
    for segment_id, _, _ in entered:
        deltas[segment_id] = deltas.get(segment_id, 0) + 1
    for segment_id, profile_ids in exited.items():
        deltas[segment_id] = deltas.get(segment_id, 0) - len(profile_ids)
    changed = [{"segment_id": s, "delta": d} for s, d in sorted(deltas.items()) if d]
    if changed:
        await session.execute(insert(segment_count_deltas), changed)


async def fold_member_counts(session: AsyncSession) -> int:
    """Moves the pending count deltas into segments.member_count; returns how many deltas it folded.

    One DELETE … RETURNING takes exactly the deltas it removes (a delta committed meanwhile stays for the
    next fold), so no change is counted twice or lost.
    """
    taken = (
        await session.execute(
            delete(segment_count_deltas).returning(segment_count_deltas.c.segment_id, segment_count_deltas.c.delta)
        )
    ).all()
    totals: dict[str, int] = {}
    for segment_id, delta in taken:
        totals[segment_id] = totals.get(segment_id, 0) + int(delta)
    rows = [{"target": s, "delta": d} for s, d in sorted(totals.items()) if d]
    if rows:
        await session.execute(
            update(segments)
            .where(segments.c.segment_id == bindparam("target"))
            .values(member_count=segments.c.member_count + bindparam("delta")),
            rows,
        )
    return len(taken)


async def remove_members(session: AsyncSession, segment_id: str, profile_ids: Sequence[str]) -> None:
    if profile_ids:
        await session.execute(
            delete(memberships).where(memberships.c.segment_id == segment_id, memberships.c.profile_id.in_(profile_ids))
        )


async def is_member(session: AsyncSession, segment_id: str, profile_id: str) -> bool:
    query = select(memberships.c.profile_id).where(
        memberships.c.segment_id == segment_id, memberships.c.profile_id == profile_id
    )
    return (await session.execute(query)).first() is not None


async def members_page(
    session: AsyncSession, segment_id: str, after_profile_id: str | None, limit: int
) -> list[tuple[str, datetime]]:
    """One page of members ordered by profile id, after the keyset."""
    m = memberships
    query = select(m.c.profile_id, m.c.entered_at).where(m.c.segment_id == segment_id)
    if after_profile_id is not None:
        query = query.where(m.c.profile_id > after_profile_id)
    query = query.order_by(m.c.profile_id).limit(limit)
    return [(row.profile_id, utc(row.entered_at)) for row in await session.execute(query)]


# --- governance: versions, audit log, suppressions, sweeps (issue 3, governance side) -----------
# The segments row above is the maintained head of a segment: its rule and version are those of the
# published version (maintenance reads nothing else); segment_versions keeps every version.

SUBMITTED, APPROVED = "SUBMITTED", "APPROVED"

segment_versions = Table(
    "segment_versions",
    metadata,
    Column("segment_id", String(64), ForeignKey("segments.segment_id"), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("rule", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("author", String(200), nullable=False),
    Column("approver", String(200), nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("segment_id", "version"),
)

segment_audit = Table(
    "segment_audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("segment_id", String(64), ForeignKey("segments.segment_id"), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("action", String(32), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("note", Text, nullable=False),
    Index("ix_segment_audit_segment", "segment_id", "id"),
)

# No foreign key to profiles: a DND registry or complaint feed may name people the CRM has not sent yet.
# The primary key (person first) is also the index the streaming NOT EXISTS probes.
suppressions = Table(
    "suppressions",
    metadata,
    Column("profile_id", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("expire_time", DateTime(timezone=True), nullable=True),
    Column("note", String(500), nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("profile_id", "channel", "reason"),
)

# When a person's address on a channel was last replaced (SegmentsApi.UpsertProfiles): a bounce of a message queued
# before it is about the old address, and suppresses nothing.
address_changes = Table(
    "address_changes",
    metadata,
    Column("profile_id", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("change_time", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("profile_id", "channel"),
)

# The latest change a person made to a channel's own marketing setting (WhatsApp's user_preferences stop or resume),
# as of when they made it: their webhooks may arrive, and be applied, in either order, and the later change wins.
setting_changes = Table(
    "setting_changes",
    metadata,
    Column("profile_id", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("stopped", Boolean, nullable=False),
    Column("change_time", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("profile_id", "channel"),
)

sweeps = Table(
    "sweeps",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("swept_until", DateTime(timezone=True), nullable=False),
)

# Member-count changes appended by membership refresh, folded into segments.member_count by the sweeper.
# Batches never update the segment row itself, so on PostgreSQL they do not queue on one hot row per
# segment; a segment's count is member_count plus its pending deltas (SegmentRow reads both).
segment_count_deltas = Table(
    "segment_count_deltas",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("segment_id", String(64), nullable=False),
    Column("delta", BigInteger, nullable=False),
    Index("ix_segment_count_deltas_segment", "segment_id"),
)


@dataclass(frozen=True)
class VersionRow:
    segment_id: str
    version: int
    display_name: str
    description: str
    rule: bytes
    state: str
    author: str
    approver: str
    create_time: datetime
    update_time: datetime

    @classmethod
    def of(cls, row: Row[Any]) -> "VersionRow":
        values = row._mapping
        return cls(
            segment_id=values["segment_id"],
            version=int(values["version"]),
            display_name=values["display_name"],
            description=values["description"],
            rule=values["rule"],
            state=values["state"],
            author=values["author"],
            approver=values["approver"],
            create_time=utc(values["create_time"]),
            update_time=utc(values["update_time"]),
        )


async def insert_version(session: AsyncSession, version: VersionRow) -> None:
    await session.execute(insert(segment_versions).values(**version.__dict__))


async def get_version(session: AsyncSession, segment_id: str, version: int) -> VersionRow | None:
    v = segment_versions
    row = (await session.execute(select(v).where(v.c.segment_id == segment_id, v.c.version == version))).first()
    return VersionRow.of(row) if row is not None else None


async def latest_versions(session: AsyncSession, segment_ids: Sequence[str]) -> dict[str, VersionRow]:
    """The newest version of each segment, in one query."""
    if not segment_ids:
        return {}
    v = segment_versions
    newest = (
        select(v.c.segment_id, func.max(v.c.version).label("version"))
        .where(v.c.segment_id.in_(segment_ids))
        .group_by(v.c.segment_id)
        .subquery()
    )
    query = select(v).join(newest, (v.c.segment_id == newest.c.segment_id) & (v.c.version == newest.c.version))
    return {row.segment_id: VersionRow.of(row) for row in await session.execute(query)}


async def set_version_state(
    session: AsyncSession, segment_id: str, version: int, state: str, now: datetime, *, approver: str | None = None
) -> None:
    values: dict[str, Any] = {"state": state, "update_time": now}
    if approver is not None:
        values["approver"] = approver
    v = segment_versions
    await session.execute(update(v).where(v.c.segment_id == segment_id, v.c.version == version).values(**values))


async def archive_versions(session: AsyncSession, segment_id: str, now: datetime) -> None:
    v = segment_versions
    await session.execute(
        update(v).where(v.c.segment_id == segment_id, v.c.state != ARCHIVED).values(state=ARCHIVED, update_time=now)
    )


async def make_head(session: AsyncSession, version: VersionRow, member_count: int, now: datetime) -> None:
    """The published version becomes the maintained definition of its segment, with its counted members.

    The caller holds the maintenance lock (no batch is adding deltas), so pending deltas are dropped.
    """
    await session.execute(delete(segment_count_deltas).where(segment_count_deltas.c.segment_id == version.segment_id))
    await session.execute(
        update(segments)
        .where(segments.c.segment_id == version.segment_id)
        .values(
            display_name=version.display_name,
            description=version.description,
            rule=version.rule,
            version=version.version,
            state=PUBLISHED,
            member_count=member_count,
            publish_time=now,
        )
    )


async def mark_archived(session: AsyncSession, segment_id: str) -> None:
    """Stops maintenance: the segment leaves the live set and its memberships go in one statement."""
    await session.execute(delete(memberships).where(memberships.c.segment_id == segment_id))
    await session.execute(delete(segment_count_deltas).where(segment_count_deltas.c.segment_id == segment_id))
    await session.execute(
        update(segments).where(segments.c.segment_id == segment_id).values(state=ARCHIVED, member_count=0)
    )


async def live_rules(session: AsyncSession, *, published_only: bool = False) -> dict[str, bytes]:
    """The maintained rule of every segment that is not archived (or only of the published ones)."""
    live = segments.c.state == PUBLISHED if published_only else segments.c.state != ARCHIVED
    query = select(segments.c.segment_id, segments.c.rule).where(live)
    return {row.segment_id: row.rule for row in await session.execute(query)}


async def set_segment_version_of_members(session: AsyncSession, segment_id: str, version: int) -> None:
    m = memberships
    await session.execute(update(m).where(m.c.segment_id == segment_id).values(segment_version=version))


# --- audit ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRow:
    id: int
    segment_id: str
    version: int
    action: str
    actor: str
    time: datetime
    note: str


async def add_audit(
    session: AsyncSession, segment_id: str, version: int, action: str, actor: str, now: datetime, note: str = ""
) -> None:
    await session.execute(
        insert(segment_audit).values(
            segment_id=segment_id, version=version, action=action, actor=actor, time=now, note=note
        )
    )


async def audit_page(session: AsyncSession, segment_id: str, after_id: int | None, limit: int) -> list[AuditRow]:
    """Oldest first; the autoincrement id is the keyset."""
    a = segment_audit
    query = select(a).where(a.c.segment_id == segment_id).order_by(a.c.id).limit(limit)
    if after_id is not None:
        query = query.where(a.c.id > after_id)
    return [
        AuditRow(int(row.id), row.segment_id, int(row.version), row.action, row.actor, utc(row.time), row.note)
        for row in await session.execute(query)
    ]


# --- suppressions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SuppressionRow:
    profile_id: str
    channel: str
    reason: str
    expire_time: datetime | None
    note: str
    create_time: datetime


def _suppression(row: Row[Any]) -> SuppressionRow:
    return SuppressionRow(
        row.profile_id,
        row.channel,
        row.reason,
        utc(row.expire_time) if row.expire_time is not None else None,
        row.note,
        utc(row.create_time),
    )


async def upsert_suppressions(
    session: AsyncSession, rows: Sequence[dict[str, Any]], now: datetime, *, only_over: str | None = None
) -> None:
    """Adds suppressions; one for the same person, channel and reason is replaced (its create_time kept). With
    `only_over`, only one whose note starts with it is replaced; another stays as it is."""
    if not rows:
        return
    rows = sorted(rows, key=lambda r: (r["profile_id"], r["channel"], r["reason"]))
    statement = upsert_insert(session, suppressions)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["profile_id", "channel", "reason"],
            set_={
                "expire_time": statement.excluded.expire_time,
                "note": statement.excluded.note,
                "update_time": statement.excluded.update_time,
            },
            where=_note_starts(only_over) if only_over else None,
        ),
        [{**row, "create_time": now, "update_time": now} for row in rows],
    )


def _note_starts(prefix: str) -> Any:
    return func.substr(suppressions.c.note, 1, len(prefix)) == prefix


async def delete_suppression(session: AsyncSession, profile_id: str, channel: str, reason: str) -> bool:
    s = suppressions
    result = await session.execute(
        delete(s).where(s.c.profile_id == profile_id, s.c.channel == channel, s.c.reason == reason)
    )
    return bool(getattr(result, "rowcount", 0))


async def delete_noted_suppression(
    session: AsyncSession,
    profile_id: str,
    channel: str,
    reason: str,
    *,
    note_prefix: str,
    not_after: datetime | None = None,
) -> bool:
    """Lifts the person's suppression for `reason` on `channel` only if its note starts with `note_prefix` (where it
    came from) and, given `not_after`, it was last recorded at or before it."""
    s = suppressions
    conditions = [s.c.profile_id == profile_id, s.c.channel == channel, s.c.reason == reason, _note_starts(note_prefix)]
    if not_after is not None:
        conditions.append(s.c.update_time <= not_after)
    result = await session.execute(delete(s).where(*conditions))
    return bool(getattr(result, "rowcount", 0))


async def delete_suppressions(
    session: AsyncSession, profile_ids: Sequence[str], channel: str, reasons: Sequence[str]
) -> int:
    """Lifts some reasons on one channel for many people at once; how many were lifted."""
    if not profile_ids:
        return 0
    s = suppressions
    result = await session.execute(
        delete(s).where(s.c.profile_id.in_(sorted(profile_ids)), s.c.channel == channel, s.c.reason.in_(reasons))
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def note_address_changes(session: AsyncSession, profile_ids: Sequence[str], channel: str, now: datetime) -> None:
    """Notes that these people's address on `channel` was replaced now."""
    if not profile_ids:
        return
    statement = upsert_insert(session, address_changes)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["profile_id", "channel"], set_={"change_time": statement.excluded.change_time}
        ),
        [{"profile_id": pid, "channel": channel, "change_time": now} for pid in sorted(set(profile_ids))],
    )


async def address_changed_at(session: AsyncSession, profile_id: str, channel: str) -> datetime | None:
    """When the person's address on `channel` was last replaced; None if it never was."""
    a = address_changes
    query = select(a.c.change_time).where(a.c.profile_id == profile_id, a.c.channel == channel)
    changed = (await session.execute(query)).scalar_one_or_none()
    return None if changed is None else utc(changed)


async def note_setting_change(
    session: AsyncSession, profile_id: str, channel: str, *, stopped: bool, at: datetime
) -> tuple[bool, bool]:
    """Records that the person stopped (or resumed) marketing messages in the channel's own setting at `at`, unless a
    change they made later is recorded already, or one at the same moment that stopped them. Returns whether this change
    is now the latest, and whether any change was recorded before it (none was for an opt-out recorded before this
    table existed).

    A stop and a resume at the same moment (Meta's timestamps are whole seconds) leave the person stopped, whichever
    came in first: their order cannot be known, and messaging someone who opted out is the mistake that must not
    happen (a resume lost this way is the person's to repeat).

    Decided by the upsert itself (RETURNING a row only where it wrote one), which holds the row until the transaction
    ends: a concurrent change to the same person's setting waits for it, then compares with what it committed."""
    c = setting_changes
    known = (
        await session.execute(select(c.c.change_time).where(c.c.profile_id == profile_id, c.c.channel == channel))
    ).scalar_one_or_none()
    statement = upsert_insert(session, setting_changes)
    written = await session.execute(
        statement.values(profile_id=profile_id, channel=channel, stopped=stopped, change_time=at)
        .on_conflict_do_update(
            index_elements=["profile_id", "channel"],
            set_={"stopped": statement.excluded.stopped, "change_time": statement.excluded.change_time},
            where=or_(
                c.c.change_time < statement.excluded.change_time,
                and_(
                    c.c.change_time == statement.excluded.change_time,
                    statement.excluded.stopped,
                    not_(c.c.stopped),
                ),
            ),
        )
        .returning(c.c.profile_id)
    )
    return written.first() is not None, known is not None


async def suppressions_page(
    session: AsyncSession, profile_id: str | None, after: tuple[str, str, str] | None, limit: int
) -> list[SuppressionRow]:
    """Ordered by person, channel and reason (the primary key is the keyset)."""
    s = suppressions
    query = select(s).order_by(s.c.profile_id, s.c.channel, s.c.reason).limit(limit)
    if profile_id:
        query = query.where(s.c.profile_id == profile_id)
    if after is not None:
        query = query.where(tuple_(s.c.profile_id, s.c.channel, s.c.reason) > tuple_(*after))
    return [_suppression(row) for row in await session.execute(query)]


async def suppressions_of(session: AsyncSession, profile_id: str) -> list[SuppressionRow]:
    s = suppressions
    query = select(s).where(s.c.profile_id == profile_id).order_by(s.c.channel, s.c.reason)
    return [_suppression(row) for row in await session.execute(query)]


def _in_force(s: Any, at: datetime) -> Any:
    """The suppression rows of `s` in force at `at`: as suppressions.Suppression.in_force, in SQL."""
    return or_(s.c.expire_time.is_(None), s.c.expire_time > at)


def _in_force_of(profile_ids: Sequence[str], at: datetime, *columns: Any) -> Any:
    """`columns` of the suppressions in force at `at` of `profile_ids`, by person, channel and reason."""
    s = suppressions
    return (
        select(*columns)
        .where(s.c.profile_id.in_(list(profile_ids)), _in_force(s, at))
        .order_by(s.c.profile_id, s.c.channel, s.c.reason)
    )


async def suppressions_in_force_of(
    session: AsyncSession, profile_ids: Sequence[str], at: datetime
) -> dict[str, list[SuppressionRow]]:
    """Every suppression in force at `at` of each suppressed person among `profile_ids`, by channel and reason."""
    if not profile_ids:
        return {}
    found: dict[str, list[SuppressionRow]] = {}
    for row in await session.execute(_in_force_of(profile_ids, at, *suppressions.c)):
        found.setdefault(row.profile_id, []).append(_suppression(row))
    return found


def suppressed(subject: Any, channels: Sequence[str], now: datetime) -> Any:
    """EXISTS a suppression in force at `now` for the person `subject` on any of `channels`."""
    s = suppressions.alias()
    return (
        select(s.c.profile_id)
        .where(
            s.c.profile_id == subject,
            s.c.channel.in_(list(channels)),
            _in_force(s, now),
        )
        .exists()
    )


async def stream_page(
    session: AsyncSession,
    segment_id: str,
    after_profile_id: str | None,
    limit: int,
    exclude_channels: Sequence[str] | None,
    now: datetime,
) -> list[tuple[str, datetime]]:
    """One keyset page of members; people suppressed on `exclude_channels` are left out in the same query."""
    m = memberships
    query = select(m.c.profile_id, m.c.entered_at).where(m.c.segment_id == segment_id)
    if after_profile_id:
        query = query.where(m.c.profile_id > after_profile_id)
    if exclude_channels:
        query = query.where(not_(suppressed(m.c.profile_id, exclude_channels, now)))
    query = query.order_by(m.c.profile_id).limit(limit)
    return [(row.profile_id, utc(row.entered_at)) for row in await session.execute(query)]


async def suppressions_in_force(
    session: AsyncSession, profile_ids: Sequence[str], now: datetime
) -> dict[str, list[tuple[str, str]]]:
    """(channel, reason) of every suppression in force at `now`, per suppressed person of one streamed page."""
    if not profile_ids:
        return {}
    s = suppressions
    found: dict[str, list[tuple[str, str]]] = {}
    for row in await session.execute(_in_force_of(profile_ids, now, s.c.profile_id, s.c.channel, s.c.reason)):
        found.setdefault(row.profile_id, []).append((row.channel, row.reason))
    return found


# --- preview and explain ----------------------------------------------------------------------


async def count_matching(session: AsyncSession, predicate: Any) -> int:
    query = select(func.count()).select_from(profiles).where(predicate)
    return int((await session.execute(query)).scalar_one())


async def sample_matching(session: AsyncSession, predicate: Any, limit: int) -> list[str]:
    query = select(profiles.c.profile_id).where(predicate).order_by(profiles.c.profile_id).limit(limit)
    return list((await session.execute(query)).scalars())


async def evaluate_for(session: AsyncSession, predicates: Sequence[Any]) -> list[bool]:
    """Each predicate (already bound to one person) evaluated in one SELECT."""
    if not predicates:
        return []
    row = (await session.execute(select(*(p.label(f"c{i}") for i, p in enumerate(predicates))))).one()
    return [bool(value) for value in row]


async def profile_exists(session: AsyncSession, profile_id: str) -> bool:
    query = select(profiles.c.profile_id).where(profiles.c.profile_id == profile_id)
    return (await session.execute(query)).first() is not None


# --- sweeps -----------------------------------------------------------------------------------


async def swept_until(session: AsyncSession, name: str) -> datetime | None:
    value = (await session.execute(select(sweeps.c.swept_until).where(sweeps.c.name == name))).scalar_one_or_none()
    return utc(value) if value is not None else None


async def set_swept_until(session: AsyncSession, name: str, moment: datetime) -> None:
    statement = upsert_insert(session, sweeps)
    await session.execute(
        statement.on_conflict_do_update(index_elements=["name"], set_={"swept_until": statement.excluded.swept_until}),
        [{"name": name, "swept_until": moment}],
    )


async def earliest_publish_time(session: AsyncSession) -> datetime | None:
    query = select(func.min(segments.c.publish_time)).where(segments.c.state == PUBLISHED)
    value = (await session.execute(query)).scalar_one_or_none()
    return utc(value) if value is not None else None


async def people_with_events_between(
    session: AsyncSession,
    spans: Sequence[tuple[str, datetime, datetime]],
    after_profile_id: str | None,
    limit: int,
) -> list[str]:
    """One keyset page of the people with an event named n at a time in [start, end), for any (n, start, end)."""
    e = events
    window = or_(
        *(and_(e.c.name == name, e.c.occurred_at >= start, e.c.occurred_at < end) for name, start, end in spans)
    )
    query = select(e.c.profile_id).where(window).distinct().order_by(e.c.profile_id).limit(limit)
    if after_profile_id is not None:
        query = query.where(e.c.profile_id > after_profile_id)
    return list((await session.execute(query)).scalars())


# --- attribute catalog and computed attributes (issue 3, ingest side) ---------------------------

attribute_definitions = Table(
    "attribute_definitions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("type", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("pii", Boolean, nullable=False),
    # The serialized ComputedAttribute of a computed attribute; NULL for attributes set by upserts.
    Column("computed", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class DefinitionRow:
    definition: Definition
    created_at: datetime


def _definition_proto(row: Any) -> resources_pb2.AttributeDefinition:
    proto = resources_pb2.AttributeDefinition(
        name=row.name, type=TYPE_OF_KIND[Kind(row.type)], description=row.description, pii=row.pii
    )
    if row.computed is not None:
        proto.computed.ParseFromString(row.computed)
    proto.create_time.FromDatetime(utc(row.created_at))
    return proto


async def load_catalog(session: AsyncSession) -> Catalog:
    """Every declared attribute; the catalog is small (hundreds of names), so it is read whole."""
    rows = await session.execute(select(attribute_definitions))
    return Catalog(definition_of(_definition_proto(row), row.name) for row in rows)


async def definitions_page(
    session: AsyncSession, after_name: str | None, limit: int
) -> list[resources_pb2.AttributeDefinition]:
    """One page of definitions ordered by name, after the keyset."""
    d = attribute_definitions
    query = select(d).order_by(d.c.name).limit(limit)
    if after_name is not None:
        query = query.where(d.c.name > after_name)
    return [_definition_proto(row) for row in await session.execute(query)]


async def save_definitions(
    session: AsyncSession, definitions: Sequence[Definition], declared: Catalog, now: datetime
) -> list[Definition]:
    """Inserts new definitions and updates the description and PII flag of declared ones; returns the new ones.

    A name a concurrent request declared first is left as that request stored it.
    """
    new = [d for d in definitions if declared.get(d.name) is None]
    changed = [d for d in definitions if declared.get(d.name) is not None]
    if new:
        rows = [
            {
                "name": d.name,
                "type": d.kind.value,
                "description": d.description,
                "pii": d.pii,
                "computed": d.computed or None,
                "created_at": now,
                "updated_at": now,
            }
            for d in sorted(new, key=lambda d: d.name)
        ]
        await session.execute(
            upsert_insert(session, attribute_definitions).on_conflict_do_nothing(index_elements=["name"]), rows
        )
    for d in sorted(changed, key=lambda d: d.name):
        await session.execute(
            update(attribute_definitions)
            .where(attribute_definitions.c.name == d.name)
            .values(description=d.description, pii=d.pii, updated_at=now)
        )
    return new


ProfileScope = Sequence[str] | Select[tuple[str]] | None


def _events_in_scope(scope: ProfileScope) -> list[ColumnElement[bool]]:
    if scope is None:
        return []
    return [events.c.profile_id.in_(scope)]


def _computed_values(definition: ComputedDefinition, scope: ProfileScope, now: datetime) -> Select[Any]:
    """SELECT profile_id, name, value_type, text_value, num_value of the attribute for the people in scope.

    One grouped (or, for first / last value, ranked) pass over the people's events; a person without a
    counted event gets no row. Every expression reads the JSON with a typed path, alike on both databases.
    """
    # The compiler imports this module; importing it at call time keeps the import order free.
    from services.segments.compiler import _property_matches

    e = events
    props = e.c.properties
    where = [e.c.name == definition.event_name, *_events_in_scope(scope)]
    start = definition.window_start(now)
    if start is not None:
        where.append(e.c.occurred_at >= start)
    where.extend(_property_matches(props, f.property, f.op, f.values) for f in definition.filters)
    name = literal(definition.attribute, String(64))
    aggregation = definition.aggregation
    if aggregation is Aggregation.COUNT:
        return (
            select(e.c.profile_id, name, literal(Kind.NUMBER.value, String(32)), _NO_TEXT, func.count())
            .where(*where)
            .group_by(e.c.profile_id)
        )
    kind_of_property = props[(definition.property, "kind")].as_string()
    if aggregation is Aggregation.DISTINCT_COUNT:
        distinct = [
            func.count(
                (
                    props[(definition.property, k.value)].as_string()
                    if k in (Kind.STRING, Kind.BOOL)
                    else props[(definition.property, k.value)].as_float()
                ).distinct()
            )
            for k in DISTINCT_KINDS
        ]
        where.append(kind_of_property.in_([k.value for k in DISTINCT_KINDS]))
        total: ColumnElement[Any] = distinct[0]
        for counted in distinct[1:]:
            total = total + counted
        return (
            select(e.c.profile_id, name, literal(Kind.NUMBER.value, String(32)), _NO_TEXT, total)
            .where(*where)
            .group_by(e.c.profile_id)
        )
    where.append(kind_of_property == definition.kind.value)
    currency = props[(definition.property, "currency")].as_string()
    if definition.currency is not None:
        where.append(currency == definition.currency)
    value_type: ColumnElement[Any] = literal(definition.kind.value, String(32))
    if definition.kind is Kind.MONEY:
        value_type = (
            literal(f"money:{definition.currency}", String(32))
            if definition.currency is not None
            else literal("money:", String(32)) + currency
        )
    textual = definition.kind in (Kind.STRING, Kind.BOOL)
    text = props[(definition.property, definition.kind.value)].as_string() if textual else _NO_TEXT
    number = _NO_NUMBER if textual else props[(definition.property, definition.kind.value)].as_float()
    if aggregation in (Aggregation.SUM, Aggregation.MIN, Aggregation.MAX):
        reduced: ColumnElement[Any] = (
            func.sum(number)
            if aggregation is Aggregation.SUM
            else func.min(number)
            if aggregation is Aggregation.MIN
            else func.max(number)
        )
        return select(e.c.profile_id, name, value_type, _NO_TEXT, reduced).where(*where).group_by(e.c.profile_id)
    # FIRST_VALUE / LAST_VALUE: the value of the earliest / latest counted event, ties broken by event id.
    order = (
        (e.c.occurred_at, e.c.event_id)
        if aggregation is Aggregation.FIRST_VALUE
        else (
            e.c.occurred_at.desc(),
            e.c.event_id.desc(),
        )
    )
    ranked = (
        select(
            e.c.profile_id.label("profile_id"),
            value_type.label("value_type"),
            text.label("text_value"),
            number.label("num_value"),
            func.row_number().over(partition_by=e.c.profile_id, order_by=order).label("position"),
        )
        .where(*where)
        .subquery("ranked")
    )
    return select(ranked.c.profile_id, name, ranked.c.value_type, ranked.c.text_value, ranked.c.num_value).where(
        ranked.c.position == 1
    )


_NO_TEXT = literal(None, String(1024))
_NO_NUMBER = literal(None, Double)


async def lock_profiles(session: AsyncSession, profile_ids: Iterable[str]) -> None:
    """Row locks on these people, in id order, until the transaction ends.

    Two batches that recompute one person's attributes then run one after the other: under READ
    COMMITTED the second one's statements see the first one's events, so neither writes a value that
    misses the other's events. NO KEY UPDATE does not block inserting events (their foreign key
    takes KEY SHARE). SQLite's BEGIN IMMEDIATE already serialises.
    """
    ids = sorted(set(profile_ids))
    if ids and dialect_of(session) == "postgresql":
        query = (
            select(profiles.c.profile_id)
            .where(profiles.c.profile_id.in_(ids))
            .order_by(profiles.c.profile_id)
            .with_for_update(key_share=True)
        )
        await session.execute(query)


async def recompute(
    session: AsyncSession, definitions: Sequence[ComputedDefinition], scope: ProfileScope, now: datetime
) -> None:
    """Replaces the values of these computed attributes for the people in scope (everyone when None).

    Per attribute one DELETE and one INSERT … SELECT, whatever the number of people.
    """
    a = profile_attributes
    columns = ["profile_id", "name", "value_type", "text_value", "num_value"]
    for definition in definitions:
        stale = delete(a).where(a.c.name == definition.attribute)
        if scope is not None:
            stale = stale.where(a.c.profile_id.in_(scope))
        await session.execute(stale)
        await session.execute(insert(a).from_select(columns, _computed_values(definition, scope, now)))


async def refresh_lapsed(session: AsyncSession, window_start_from: datetime, now: datetime) -> list[str]:
    """Recomputes windowed computed attributes of the people whose events left a window since the last sweep.

    `window_start_from` is the `now` of the previous sweep: an attribute with window W then counted
    events from `window_start_from - W`, and now counts them from `now - W`; everyone with an event in
    between has a value that changed with time alone. Returns their profile ids, sorted. The scheduled
    sweeper calls this in its transaction and then refreshes the memberships of exactly these ids, so
    rules on computed attributes follow the lapse too.
    """
    catalog = await load_catalog(session)
    lapsed: set[str] = set()
    for definition in catalog.computed():
        if definition.window_seconds is None:
            continue
        window = timedelta(seconds=definition.window_seconds)
        leaving = (
            select(events.c.profile_id)
            .where(
                events.c.name == definition.event_name,
                events.c.occurred_at >= window_start_from - window,
                events.c.occurred_at < now - window,
            )
            .distinct()
        )
        ids = list((await session.execute(leaving)).scalars())
        if ids:
            await recompute(session, [definition], leaving, now)
            lapsed.update(ids)
    return sorted(lapsed)
