"""Keeps memberships current: the initial evaluation at publish, and set-based re-evaluation per batch."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, not_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.segments import store
from services.segments.compiler import compile_rule, condition
from services.segments.rules import Rule, dependency_order, parse_rule
from xsell.segments.v1 import resources_pb2


@dataclass(frozen=True)
class Change:
    segment_id: str
    segment_version: int
    profile_id: str
    entered: bool


def stored_rule(segment: store.SegmentRow) -> Rule:
    """The domain rule of a stored segment (it was validated when the segment was created)."""
    return parse_rule(resources_pb2.Rule.FromString(segment.rule))


async def publish_version(
    session: AsyncSession, head: store.SegmentRow, version: store.VersionRow, rule: Rule, now: datetime
) -> tuple[int, list[Change]]:
    """Makes `version` the maintained definition and computes its members set-based; returns the count and,
    when another version was published before, who entered or exited because the definition changed.

    A first publish is one INSERT … SELECT and announces its members with SegmentPublished only. A new
    version replaces the old one's members in place: one DELETE of members the new rule no longer
    selects, one INSERT … SELECT of newcomers, one UPDATE of the version every kept member was computed for.
    """
    target = store.SegmentRow(**{**head.__dict__, "version": version.version})
    if head.state != store.PUBLISHED:
        count = await store.insert_members_from(session, target, compile_rule(rule, now).subquery("matching"), now)
        await store.make_head(session, version, count, now)
        return count, []
    p, m = store.profiles, store.memberships
    already = select(m.c.profile_id).where(m.c.segment_id == head.segment_id, m.c.profile_id == p.c.profile_id)
    entering = select(p.c.profile_id).where(condition(rule, p.c.profile_id, now), not_(already.exists()))
    leaving = select(m.c.profile_id).where(
        m.c.segment_id == head.segment_id, not_(condition(rule, m.c.profile_id, now))
    )
    exited = list((await session.execute(leaving.order_by(m.c.profile_id))).scalars())
    entered = list((await session.execute(entering.order_by(p.c.profile_id))).scalars())
    await session.execute(
        delete(m).where(m.c.segment_id == head.segment_id, not_(condition(rule, m.c.profile_id, now)))
    )
    await store.set_segment_version_of_members(session, head.segment_id, version.version)
    await store.insert_members_from(session, target, entering.subquery("entering"), now)
    count = await store.member_count(session, head.segment_id)
    await store.make_head(session, version, count, now)
    changes = [Change(head.segment_id, version.version, pid, True) for pid in entered]
    changes.extend(Change(head.segment_id, version.version, pid, False) for pid in exited)
    return count, changes


async def refresh(session: AsyncSession, profile_ids: Sequence[str], now: datetime) -> list[Change]:
    """Re-evaluates every published segment for the touched profiles only, in the caller's transaction.

    Per segment: one SELECT of who newly satisfies the rule, one SELECT of members who no longer do,
    then one batch insert, one delete and one counter update. Windows that lapse without any new
    data for a person ("did not invest in the last 365 days" becoming true by itself) are found by
    the sweeper (services/segments/sweeper.py), which calls this for just those people.
    """
    touched = sorted(set(profile_ids))
    if not touched:
        return []
    live = await store.lock_live_segments(session)
    published = {s.segment_id: s for s in live if s.state == store.PUBLISHED}
    rules = {segment_id: stored_rule(segment) for segment_id, segment in published.items()}
    changes: list[Change] = []
    for segment_id in dependency_order(rules):
        segment, rule = published[segment_id], rules[segment_id]
        entered, exited = await _diff(session, segment, rule, touched, now)
        await store.add_members(session, segment, entered, now)
        await store.remove_members(session, segment_id, exited)
        await store.add_member_count(session, segment_id, len(entered) - len(exited))
        changes.extend(Change(segment_id, segment.version, pid, True) for pid in entered)
        changes.extend(Change(segment_id, segment.version, pid, False) for pid in exited)
    return changes


async def _diff(
    session: AsyncSession, segment: store.SegmentRow, rule: Rule, touched: list[str], now: datetime
) -> tuple[list[str], list[str]]:
    p, m = store.profiles, store.memberships
    already = (
        select(m.c.profile_id).where(m.c.segment_id == segment.segment_id, m.c.profile_id == p.c.profile_id).exists()
    )
    entering = (
        select(p.c.profile_id)
        .where(p.c.profile_id.in_(touched), condition(rule, p.c.profile_id, now), not_(already))
        .order_by(p.c.profile_id)
    )
    leaving = (
        select(m.c.profile_id)
        .where(
            m.c.segment_id == segment.segment_id,
            m.c.profile_id.in_(touched),
            not_(condition(rule, m.c.profile_id, now)),
        )
        .order_by(m.c.profile_id)
    )
    entered = list((await session.execute(entering)).scalars())
    exited = list((await session.execute(leaving)).scalars())
    return entered, exited
