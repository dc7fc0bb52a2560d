"""The segments database: profiles as attribute rows (EAV), events, segments, memberships, and their queries."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import upsert_insert
from plumbing.idempotency import idempotency_table
from plumbing.outbox import inbox_table, outbox_table
from services.segments.records import IncomingEvent, ProfileUpdate
from services.segments.values import Kind, Value

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


async def ensure_profiles(session: AsyncSession, profile_ids: Iterable[str], now: datetime) -> None:
    """Creates empty profiles for ids not seen yet (events may arrive before the CRM feed)."""
    rows = [{"profile_id": pid, "created_at": now, "updated_at": now} for pid in sorted(set(profile_ids))]
    if rows:
        await session.execute(
            upsert_insert(session, profiles).on_conflict_do_nothing(index_elements=["profile_id"]), rows
        )


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
    updated_at = (
        await session.execute(select(profiles.c.updated_at).where(profiles.c.profile_id == profile_id))
    ).scalar_one_or_none()
    if updated_at is None:
        return None
    values = await attributes_of(session, [profile_id], None)
    return utc(updated_at), values.get(profile_id, {})


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


async def get_segment(session: AsyncSession, segment_id: str, *, for_update: bool = False) -> SegmentRow | None:
    query = select(segments).where(segments.c.segment_id == segment_id)
    if for_update:
        query = query.with_for_update()
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
    query = select(segments).order_by(segments.c.segment_id.desc()).limit(limit)
    if before_id:
        query = query.where(segments.c.segment_id < before_id)
    return [SegmentRow.of(row) for row in await session.execute(query)]


async def lock_live_segments(session: AsyncSession) -> list[SegmentRow]:
    """Every non-archived segment, locked in id order.

    On PostgreSQL this serialises membership maintenance with other batches and with publishing:
    a batch that waits here sees the other's memberships (READ COMMITTED takes a new snapshot per
    statement), so no entry or exit is lost or doubled. SQLite's BEGIN IMMEDIATE already serialises.
    """
    query = select(segments).where(segments.c.state != ARCHIVED).order_by(segments.c.segment_id).with_for_update()
    return [SegmentRow.of(row) for row in await session.execute(query)]


async def mark_published(session: AsyncSession, segment_id: str, member_count: int, now: datetime) -> None:
    await session.execute(
        update(segments)
        .where(segments.c.segment_id == segment_id)
        .values(state=PUBLISHED, member_count=member_count, publish_time=now)
    )


async def add_member_count(session: AsyncSession, segment_id: str, delta: int) -> None:
    if delta:
        await session.execute(
            update(segments)
            .where(segments.c.segment_id == segment_id)
            .values(member_count=segments.c.member_count + delta)
        )


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


async def add_members(session: AsyncSession, segment: SegmentRow, profile_ids: Sequence[str], now: datetime) -> None:
    if profile_ids:
        await session.execute(
            insert(memberships),
            [
                {
                    "segment_id": segment.segment_id,
                    "profile_id": pid,
                    "segment_version": segment.version,
                    "entered_at": now,
                }
                for pid in profile_ids
            ],
        )


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
