"""NATS handler: people entering a segment fire the triggered campaigns on it, once per cool-down, a batch at a time."""

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import structlog
from opentelemetry import trace

from plumbing.bus import Delivery
from plumbing.db import Database, after_commit
from plumbing.errors import Unavailable
from plumbing.metrics import tally
from plumbing.outbox import OutboxRelay, utcnow
from plumbing.telemetry import HELD, OutreachRecord, hold_event, record_outreach_roots
from services import streams
from services.campaigns import automation_store, store
from services.campaigns.automation import automation_of
from services.campaigns.campaign_ids import month_code
from services.campaigns.campaigns import CampaignState
from services.campaigns.messages import offer_of
from services.campaigns.outreach_maker import CompiledTemplates
from services.campaigns.outreach_rows import OutreachRows, create_outreaches
from services.campaigns.person_client import PersonLookup
from services.campaigns.scheduling import DeliveryOptions
from services.campaigns.segments_client import AudienceMember
from services.campaigns.selection import AudienceGate
from services.campaigns.triggers import cool_down_over, fires, trigger_day
from xsell.segments.v1 import events_pb2 as segment_events

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Entry:
    """One segment entry to apply, with the id of the message that brought it."""

    event: segment_events.MembershipChanged
    message_id: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def changed_at(self) -> datetime:
        has_time = self.event.HasField("change_time")
        return self.event.change_time.ToDatetime(tzinfo=UTC) if has_time else utcnow()


class TriggerHandler:
    """Applies MembershipChanged ENTERED to the RUNNING triggered campaigns pinned to that segment version.

    Entries that arrive together are applied together (the consumer hands its whole fetch to one call,
    on_membership_changed_batch), so the cost per entry falls as the rate rises: the campaigns
    on their segments are read once, each person is looked up in segments once (concurrently, before the
    transaction: a SQLite write lock must not wait on the network), and ONE transaction claims every
    message in the inbox and creates each firing campaign's outreaches for all its people set-based, as
    a release page does. On SQLite that transaction's statements run inline on the loop (Database.write_inline):
    none waits behind the service's other tasks while it holds the write lock. Its events are handed to the relay
    once committed (OutboxRelay.hand_over). A redelivered message creates nothing more; a call returns (and its
    messages are acknowledged) only after that transaction committed.
    """

    def __init__(
        self,
        db: Database,
        people: PersonLookup,
        gate: AudienceGate,
        templates: CompiledTemplates,
        tracer: trace.Tracer,
        *,
        clock: Callable[[], datetime] = utcnow,
        relay: OutboxRelay | None = None,
    ) -> None:
        self.db = db
        self.people = people
        self.gate = gate
        self.templates = templates
        self.tracer = tracer
        self.library = templates.library
        self.clock = clock
        # Batches write their events without the Outbox (store.insert_page), so they hand them to the relay
        # themselves once committed (OutboxRelay.hand_over: published at once, not read back by the relay).
        self.relay = relay
        # Campaign-ID counters known to exist (committed; counters are never deleted), so a batch does not ensure
        # its counter again. Only the batches' transactions, one at a time, read and add to it.
        self._counters: set[tuple[str, str, str]] = set()
        # Segments on which the latest transaction that read them found a RUNNING triggered campaign.
        self._segments_firing: set[str] = set()
        self._outcomes = tally(
            "xsell.campaigns",
            "xsell.campaigns.trigger.entries",
            labels=("outcome",),
            description="Segment entries a triggered campaign fired for, by outcome: created, cool_down, judged_today, "
            "left_out (suppressed, capped or held out), render_failed, redelivery_skipped; dispatched counts those "
            "created whose dispatch was requested at once (not held by quiet hours).",
        )

    async def on_membership_changed_batch(
        self, items: Sequence[tuple[segment_events.MembershipChanged, Delivery]]
    ) -> list[BaseException | None]:
        """A fetch of MembershipChanged, applied together: each message's outcome, in order (None: applied, or
        nothing to do). An error of the whole batch (the database) raises, and every message naks on it.

        The consumer's one call per fetch replaced a handler call per message joined by a group commit: a task, a
        span, a future and a context per message, between one batch's commit and the next one's start."""
        outcomes: list[BaseException | None] = [None] * len(items)
        entered = [
            (index, _Entry(event, delivery.message_id, delivery.headers))
            for index, (event, delivery) in enumerate(items)
            if event.change == segment_events.MEMBERSHIP_CHANGE_ENTERED and event.profile_id
        ]
        if entered:
            applied = await self._apply([entry for _, entry in entered])
            for (index, _), outcome in zip(entered, applied, strict=True):
                outcomes[index] = outcome
        return outcomes

    async def _apply(self, batch: list[_Entry]) -> list[BaseException | None]:
        """Every entry's outcome, in order: None when applied (or nothing to do), or the error its message naks on.

        The people of entries on segments where a triggered campaign fired before are looked up first, and the
        transaction reads the campaigns itself (a read before the look-up cost a connection, a BEGIN and a
        statement per batch). Entries a campaign fires for whose person was not looked up (a segment firing for
        the first time, or segments unavailable then) are applied in a second round, after their look-up.
        """
        done: list[BaseException | None] = [None] * len(batch)
        now = self.clock()
        known = [i for i, entry in enumerate(batch) if entry.event.segment_id in self._segments_firing]
        if not known:
            # Segments no triggered campaign fired on lately (most entries, in production): read whether one
            # does now without taking the write lock, and stop here if none does.
            segment_ids = sorted({entry.event.segment_id for entry in batch})
            await self.db.read_inline(lambda session: self._triggered_on(session, segment_ids))
            known = [i for i, entry in enumerate(batch) if entry.event.segment_id in self._segments_firing]
            if not known:
                return done
        asked = {batch[i].event.profile_id for i in known}
        people: dict[str, AudienceMember] = {}
        if asked:
            try:
                people = await self.people.members(list(asked), now)
            except Unavailable:
                asked = set()  # looked up again in the second round, which naks its entries if it fails too
        later = await self._write(batch, range(len(batch)), people, asked, now)
        if not later:
            return done
        asked = {batch[i].event.profile_id for i in later}
        try:
            people = await self.people.members(list(asked), now)
        except Unavailable as error:
            # Each of those entries' messages naks on it (the others are done); other errors fail the whole batch
            # in the group commit.
            waiting = set(later)
            return [error if index in waiting else None for index in range(len(batch))]
        await self._write(batch, later, people, asked, now)
        return done

    async def _write(
        self,
        batch: list[_Entry],
        indices: Sequence[int],
        people: dict[str, AudienceMember],
        asked: set[str],
        now: datetime,
    ) -> list[int]:
        """One transaction: the entries at `indices` that a RUNNING triggered campaign fires for, each applied once
        (the inbox), with their outreaches and events. Returns the firing entries whose person was not `asked`."""
        counts: Counter[str] = Counter()
        # The events written, in the order written, and the outbox seqs each page's events were given.
        events: list[tuple[str, bytes, str]] = []
        event_seqs: list[range | None] = []
        later: list[int] = []
        # (campaign ID, campaign key, profile id) of each outreach made, for its root span once committed.
        made: list[tuple[str, str, str]] = []
        # Why and until when each outreach made held back for its recipient's quiet hours waits, by campaign ID.
        held: dict[str, tuple[datetime, str]] = {}
        # The entry that fired each (campaign key, profile id): a person entering several segments at once has an
        # entry each, and an outreach's cause is the one on its campaign's segment.
        fired_by: dict[tuple[str, str], _Entry] = {}

        async def write(session: Any) -> None:
            events.clear()
            event_seqs.clear()
            later.clear()
            made.clear()
            held.clear()
            fired_by.clear()
            # Read in this transaction: a launch, pause or cancel that committed first wins.
            on_segment = await self._triggered_on(session, sorted({batch[i].event.segment_id for i in indices}))
            firing: dict[int, list[Any]] = {}
            for index in indices:
                event = batch[index].event
                fired = [
                    c
                    for c in on_segment[event.segment_id]
                    if fires(batch[index].changed_at, c.launched_at, event.segment_version, c.segment_version)
                ]
                if not fired:
                    continue
                if event.profile_id not in asked:
                    later.append(index)
                elif event.profile_id not in people:
                    log.info("trigger_profile_missing", profile_id=event.profile_id)
                else:
                    firing[index] = fired
            claimed = await automation_store.claim_messages(
                session, streams.CAMPAIGNS_TRIGGERS.durable, [batch[i].message_id for i in firing], now
            )
            counts["redelivery_skipped"] = len(firing) - len(claimed)
            # Each campaign's people in arrival order, once each, from the messages applied for the first time.
            campaigns: dict[str, Any] = {}
            members: dict[str, dict[str, AudienceMember]] = defaultdict(dict)
            for index, fired in firing.items():
                if batch[index].message_id in claimed:
                    member = people[batch[index].event.profile_id]
                    for campaign in fired:
                        campaigns[campaign.campaign_key] = campaign
                        members[campaign.campaign_key].setdefault(member.profile_id, member)
                        fired_by.setdefault((campaign.campaign_key, member.profile_id), batch[index])
            # Serialises triggers of the same people (two replicas, two segments) until this transaction ends.
            await store.lock_people(session, sorted({p for m in members.values() for p in m}))
            for key in sorted(members):
                fired_for = list(members[key].values())
                counts.update(await self._fire(session, campaigns[key], fired_for, now, events, event_seqs, made, held))

        await self.db.write_inline(write)
        if events and self.relay is not None:
            after_seq = _seq_before(event_seqs, len(events)) if self.db.is_sqlite else None
            if after_seq is not None:
                self.relay.hand_over(after_seq, events)
            else:
                self.relay.notify()
        if made:
            # Each outreach's trace starts here, at the segment entry that fired it (the entry's message span). On the
            # loop's next turn, after the relay's (which publishes the DispatchRequested): recorded inline, when each
            # was started and ended through the tracer (~40 µs), they held the publish back and put the trigger ->
            # dispatch p99 over 20 ms; handed finished to the span processor they take ~10 µs. The callback runs in
            # this context, so each root links the batch's span. An outreach held back for quiet hours says so on its
            # root (an outreach.held event: why, and until when).
            roots = [
                OutreachRecord(
                    campaign_id,
                    {"campaign.key": key, "campaign.trigger.segment_id": cause.event.segment_id},
                    cause.headers,
                    (hold_event(HELD, campaign_id, held[campaign_id][1], held[campaign_id][0]),)
                    if campaign_id in held
                    else (),
                )
                for campaign_id, key, profile_id in made
                if (cause := fired_by.get((key, profile_id))) is not None
            ]
            asyncio.get_running_loop().call_soon(record_outreach_roots, self.tracer, "outreach.create", roots)
        if counts:
            for outcome, count in counts.items():
                if count:
                    self._outcomes.add((outcome,), count)
            # Per batch (hundreds a second at full rate): the counter above is what operators read.
            log.debug("triggers_applied", entries=len(batch), **counts)
        return later

    async def _triggered_on(self, session: Any, segment_ids: list[str]) -> dict[str, list[Any]]:
        """The RUNNING campaigns with a trigger on these segments, by segment; which of the segments have one is
        remembered (_segments_firing) for the next batches' look-ups."""
        on_segment: dict[str, list[Any]] = defaultdict(list)
        for campaign in await automation_store.campaigns_on_segments(session, segment_ids, CampaignState.RUNNING.value):
            if automation_of(campaign).trigger is not None:
                on_segment[campaign.segment_id].append(campaign)
        self._segments_firing.difference_update(segment_ids)
        self._segments_firing.update(on_segment)
        return on_segment

    async def _fire(
        self,
        session: Any,
        campaign: Any,
        members: list[AudienceMember],
        now: datetime,
        events: list[tuple[str, bytes, str]],
        event_seqs: list[range | None],
        made: list[tuple[str, str, str]],
        held: dict[str, tuple[datetime, str]],
    ) -> Counter[str]:
        """The campaign's outreaches for those of `members` past their cool-down and not yet judged today; their
        events' subjects, payloads and headers are added to `events`, the outbox seqs they were given (None where
        unknown) to `event_seqs`, (campaign ID, campaign key, profile id) of each to `made`, and until when and why
        those held back for quiet hours wait to `held`."""
        rule = automation_of(campaign).trigger
        assert rule is not None
        outcomes: Counter[str] = Counter()
        last = await automation_store.last_trigger_outreaches(
            session, campaign.campaign_key, [m.profile_id for m in members]
        )
        cooled = [m for m in members if cool_down_over(last.get(m.profile_id), now, rule.cool_down)]
        outcomes["cool_down"] = len(members) - len(cooled)
        month = month_code(now, campaign.time_zone)
        run = await automation_store.ensure_run(
            session,
            campaign,
            kind=automation_store.TRIGGER,
            month=month,
            now=now,
            occurrence=trigger_day(now, campaign.time_zone),
        )
        judged = await automation_store.judged_in_run(session, run.run_id, [m.profile_id for m in cooled])
        fresh = [m for m in cooled if m.profile_id not in judged]
        outcomes["judged_today"] = len(judged)
        if not fresh:
            return outcomes
        counter = (campaign.programme, run.month, campaign.trigger_code)
        if counter not in self._counters:
            await store.ensure_counter(session, *counter)
            after_commit(session, lambda: self._counters.add(counter))
        builder = OutreachRows(
            campaign,
            run,
            self.templates.of(campaign),
            offer_of(campaign),
            self.library,
            store.DriverValues(session),
            now,
            dispatch_now=True,
            quiet_hours=DeliveryOptions.from_json(campaign.options).quiet_hours,
        )
        admitted, rows = await create_outreaches(session, self.gate, builder, fresh, first_ordinal=run.outreach_count)
        for failure in rows.render_failures:
            log.warning("outreach_render_skipped", profile_id=failure["profile_id"], reason=failure["reason"])
        created = len(rows.outreaches)
        made.extend((campaign_id, campaign.campaign_key, profile_id) for campaign_id, profile_id, _ in rows.created)
        held.update((campaign_id, (until, why)) for campaign_id, until, why in rows.held)
        events.extend((event[1], event[2], event[3]) for event in rows.events)
        if rows.events:
            event_seqs.append(rows.event_seqs)
        await automation_store.add_to_run(session, run.run_id, created=created, render_failed=len(rows.render_failures))
        await store.add_outreaches_to_campaign(session, campaign.campaign_key, created)
        outcomes.update(
            created=created,
            dispatched=rows.dispatched,
            left_out=len(fresh) - len(admitted.members),
            render_failed=len(rows.render_failures),
        )
        return outcomes


def _seq_before(event_seqs: Sequence[range | None], count: int) -> int | None:
    """The outbox seq just before a transaction's `count` events when their pages' seqs, in the order written, are
    one unbroken run holding exactly them (what OutboxRelay.hand_over needs); None otherwise, and the relay reads
    them in turn."""
    runs: list[range] = []
    for seqs in event_seqs:
        if seqs is None or (runs and seqs.start != runs[-1].stop):
            return None
        runs.append(seqs)
    if not runs or sum(len(seqs) for seqs in runs) != count:
        return None
    return runs[0].start - 1
