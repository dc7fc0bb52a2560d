"""Keeps memberships current: the initial evaluation at publish, and set-based re-evaluation per batch."""

from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, delete, not_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.segments import store
from services.segments.compiler import WindowStarts, compile_rule, condition
from services.segments.rules import Inputs, Rule, dependency_order, inputs, parse_rule
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
    entering = select(p.c.profile_id).where(condition(rule, p.c.profile_id, now, everyone=True), not_(already.exists()))
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


@dataclass(frozen=True)
class Changed:
    """What a batch changed for the people it touched: the event names it recorded and the attributes it wrote
    (computed ones included). A segment whose rule reads none of them, directly or through a segment it
    refers to, cannot change for those people and is not re-evaluated."""

    events: frozenset[str] = frozenset()
    attributes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Maintained:
    segment_id: str
    version: int
    rule: Rule
    inputs: Inputs


@dataclass(frozen=True)
class _Plan:
    """The maintained segments in dependency levels: a level refers only to segments of earlier levels."""

    levels: tuple[tuple[_Maintained, ...], ...]

    def affected(self, changed: Changed | None) -> set[str]:
        if changed is None:
            return {m.segment_id for level in self.levels for m in level}
        affected: set[str] = set()
        for level in self.levels:
            for m in level:
                if (
                    m.inputs.events & changed.events
                    or m.inputs.attributes & changed.attributes
                    or m.inputs.segments & affected
                ):
                    affected.add(m.segment_id)
        return affected


@dataclass(frozen=True)
class _Evaluation:
    """One statement that says, for each touched person, whether they match and whether they are a member, for
    several segments at once; built once per set of segment versions and re-bound per batch."""

    statement: Select[Any]
    windows: WindowStarts

    @classmethod
    def build(cls, segments: tuple[_Maintained, ...]) -> "_Evaluation":
        p, m = store.profiles, store.memberships
        windows = WindowStarts()
        columns: list[Any] = [p.c.profile_id]
        for index, segment in enumerate(segments):
            member = select(m.c.profile_id).where(
                m.c.segment_id == segment.segment_id, m.c.profile_id == p.c.profile_id
            )
            columns.append(condition(segment.rule, p.c.profile_id, windows).label(f"matches_{index}"))
            columns.append(member.exists().label(f"member_{index}"))
        statement = select(*columns).where(p.c.profile_id.in_(bindparam("touched", expanding=True)))
        return cls(statement, windows)


class Refresher:
    """Re-evaluates published segments for the people a batch touched, in the caller's transaction.

    Per dependency level one SELECT answers "matches?" and "member?" for every touched person and every
    segment of the level; the changes are then written with one INSERT, a DELETE per segment with exits
    and appended member-count deltas (store.apply_membership_changes). Statements are built once per set
    of segment versions (building one costs more than running it for a few people) with "last N days"
    windows and the people as bind parameters. Windows that lapse without any new data for a person ("did
    not invest in the last 365 days" becoming true by itself) are found by the sweeper
    (services/segments/sweeper.py), which refreshes just them.
    """

    def __init__(self, cache_size: int = 256) -> None:
        self.cache_size = cache_size
        self._plans: OrderedDict[tuple[tuple[str, int], ...], _Plan] = OrderedDict()
        self._evaluations: OrderedDict[tuple[tuple[str, int], ...], _Evaluation] = OrderedDict()

    async def refresh(
        self,
        session: AsyncSession,
        profile_ids: Sequence[str],
        now: datetime,
        *,
        changed: Changed | None = None,
        new_profiles: Collection[str] = (),
    ) -> list[Change]:
        """Refreshes the segments `changed` can affect for everyone touched (all segments when None), and every
        segment for `new_profiles` (a profile created by this batch may match a rule on what it lacks)."""
        touched = sorted(set(profile_ids))
        if not touched:
            return []
        plan = self._plan(await store.maintained_segments(session))
        affected = plan.affected(changed)
        newcomers = sorted(set(new_profiles).intersection(touched))
        changes: list[Change] = []
        for level in plan.levels:
            for segments, people in (
                (tuple(m for m in level if m.segment_id in affected), touched),
                (tuple(m for m in level if m.segment_id not in affected), newcomers),
            ):
                if segments and people:
                    changes.extend(await self._apply(session, segments, people, now))
        return changes

    async def _apply(
        self, session: AsyncSession, segments: tuple[_Maintained, ...], people: list[str], now: datetime
    ) -> list[Change]:
        evaluation = self._cached(self._evaluations, _key(segments), lambda: _Evaluation.build(segments))
        result = await session.execute(evaluation.statement, {"touched": people, **evaluation.windows.values(now)})
        entered: list[tuple[str, int, str]] = []
        exited: dict[str, list[str]] = {}
        for row in result:
            for index, segment in enumerate(segments):
                matches, member = bool(row[1 + 2 * index]), bool(row[2 + 2 * index])
                if matches and not member:
                    entered.append((segment.segment_id, segment.version, row[0]))
                elif member and not matches:
                    exited.setdefault(segment.segment_id, []).append(row[0])
        await store.apply_membership_changes(session, entered, exited, now)
        changes = [Change(s, v, pid, True) for s, v, pid in entered]
        versions = {segment.segment_id: segment.version for segment in segments}
        changes.extend(Change(s, versions[s], pid, False) for s, pids in exited.items() for pid in pids)
        return changes

    def _plan(self, heads: Sequence[store.SegmentRow]) -> _Plan:
        def build() -> _Plan:
            maintained = {h.segment_id: _maintained(h) for h in heads}
            depth: dict[str, int] = {}
            for segment_id in dependency_order({s: m.rule for s, m in maintained.items()}):
                refers = [depth[r] for r in maintained[segment_id].inputs.segments if r in depth]
                depth[segment_id] = 1 + max(refers, default=-1)
            levels = [
                tuple(maintained[s] for s in sorted(maintained) if depth[s] == level)
                for level in range(1 + max(depth.values(), default=-1))
            ]
            return _Plan(tuple(levels))

        return self._cached(self._plans, tuple((h.segment_id, h.version) for h in heads), build)

    def _cached(self, cache: "OrderedDict[Any, Any]", key: Any, build: Callable[[], Any]) -> Any:
        found = cache.get(key)
        if found is None:
            found = cache[key] = build()
            if len(cache) > self.cache_size:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return found


def _maintained(head: store.SegmentRow) -> _Maintained:
    rule = stored_rule(head)
    return _Maintained(head.segment_id, head.version, rule, inputs(rule))


def _key(segments: tuple[_Maintained, ...]) -> tuple[tuple[str, int], ...]:
    return tuple((m.segment_id, m.version) for m in segments)
