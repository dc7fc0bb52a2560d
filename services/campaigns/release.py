"""The release runner: materialises launched campaigns' audiences into outreaches, one page per transaction."""

import asyncio
import contextvars
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import Link

from plumbing.db import Database, after_commit
from plumbing.ids import new_id
from plumbing.outbox import Outbox, utcnow
from plumbing.polling import Poller
from plumbing.telemetry import (
    HELD,
    RELEASED,
    OutreachRecord,
    headers_span_context,
    hold_event,
    record_outreach_roots,
    record_outreach_steps,
)
from services import streams
from services.campaigns import store
from services.campaigns.automation import automation_of
from services.campaigns.campaign_ids import month_code
from services.campaigns.campaigns import CampaignState
from services.campaigns.caps import LOOKBACK
from services.campaigns.content import CompiledContent, compile_content
from services.campaigns.content_files import ContentLibrary
from services.campaigns.messages import (
    channel_order_of,
    channel_value,
    content_templates_of,
    offer_of,
    offer_terms_of,
    timestamp,
)
from services.campaigns.outreach_rows import OutreachRows, create_outreaches, outreach_headers
from services.campaigns.rendering import Offer
from services.campaigns.scheduling import DeliveryOptions, next_occurrence
from services.campaigns.segments_client import AudienceMember, SegmentsClient
from services.campaigns.selection import AudienceGate, ContactsChanged
from xsell.campaigns.v1 import events_pb2

log = structlog.get_logger(__name__)

LEDGER_PRUNE_INTERVAL = timedelta(hours=1)

SYSTEM_ACTOR = "system"
"""The actor of automatic transitions in the audit log (a scheduled start, completion, an automatic pause)."""


def _started_by(traceparent: str | None) -> list[Link]:
    """A link to the span that started a run (campaign_runs.started_by), when it was recorded."""
    started = headers_span_context({"traceparent": traceparent}) if traceparent else None
    return [Link(started)] if started is not None else []


class _PageTakenElsewhere(Exception):
    """Another process released this page first; this transaction is rolled back."""


class _Stopped(Exception):
    """The campaign was paused or cancelled; the page is rolled back and the run waits (or ends)."""


@dataclass(frozen=True)
class PageResult:
    created: int
    skipped_no_email: int
    skipped_render: int
    outreaches: Sequence[tuple[str, str, str]] = ()
    """(campaign ID, profile id, channel) of each outreach the page created."""


class ReleaseRunner:
    """A loop woken by launches that also polls for due scheduled runs.

    Runs are resumable: each page commits its outreaches, their events and the advanced segments
    cursor in one transaction, so after a crash or restart the run continues from the stored
    cursor and no person gets a second outreach (the unique (campaign, profile) key backs this up).
    """

    def __init__(
        self,
        db: Database,
        segments: SegmentsClient,
        outbox: Outbox,
        tracer: trace.Tracer,
        *,
        page_size: int,
        poll_interval: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
        library: ContentLibrary | None = None,
        one_offer_per_day: bool = False,
        wake_relay: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.segments = segments
        self.tracer = tracer
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.clock = clock
        self.library = library or ContentLibrary()
        self.gate = AudienceGate(outbox, tracer, one_offer_per_day=one_offer_per_day)
        # Pages write their events without the Outbox (store.insert_page), so they wake the relay themselves.
        self.wake_relay = wake_relay
        self._pruned_at: datetime | None = None
        # The database unreachable: logged, and polled again after a pause.
        self._poller = Poller(self.release_due, poll_interval, "release_poll_failed")

    def notify(self) -> None:
        """Called after a launch commits, so an immediate campaign starts without waiting for the poll."""
        self._poller.wake()

    async def run(self) -> None:
        await self._poller.run()

    async def stop(self) -> None:
        """Stops after the page in flight; the run resumes from its cursor at the next start."""
        await self._poller.stop()

    async def release_due(self) -> None:
        now = self.clock()
        if self._pruned_at is None or now - self._pruned_at >= LEDGER_PRUNE_INTERVAL:
            # No cap looks further back than LOOKBACK, so older ledger entries can never count again.
            async with self.db.transaction() as session:
                pruned = await store.prune_contacts(session, now - LOOKBACK)
            self._pruned_at = now
            log.info("contact_ledger_pruned", entries=pruned)
        # A read: polls that find nothing due must not take SQLite's write lock from trigger batches, nor wait for
        # turns of the busy loop statement by statement (inline, as the resend runner's poll).
        runs = await self.db.read_inline(lambda session: store.due_runs(session, now))
        for run in runs:
            if self._poller.stopping:
                return
            try:
                await self.release(run.run_id, run.campaign_key)
            except Exception as error:  # noqa: BLE001 - one run's failure (segments down...) must not stall the others
                log.warning("campaign_release_failed", campaign_key=run.campaign_key, error=repr(error))

    async def release(self, run_id: str, campaign_key: str) -> None:
        """Releases pages of one run until its audience is exhausted or the runner stops."""
        with structlog.contextvars.bound_contextvars(campaign_key=campaign_key, run_id=run_id):
            async with self.db.transaction() as session:
                campaign = await store.get_campaign(session, campaign_key)
                run = await store.get_run(session, run_id)
                if campaign is None or run is None or run.completed_at is not None:
                    return
                if campaign.state == CampaignState.SCHEDULED:
                    await store.set_state(session, campaign_key, CampaignState.SCHEDULED, CampaignState.RUNNING)
                    await store.add_audit(
                        session,
                        campaign_key,
                        version=campaign.version,
                        action="started",
                        actor=SYSTEM_ACTOR,
                        state=CampaignState.RUNNING,
                        note="the scheduled send time came",
                        at=self.clock(),
                    )
                    log.info("campaign_release_started", scheduled=True)
                elif campaign.state != CampaignState.RUNNING:
                    return
            if run.materialized_at is not None:
                await self.dispatch(campaign, run)
                return
            offer = offer_of(campaign)
            terms = offer_terms_of(campaign)
            # Validated when the campaign was created; compiled once per run.
            # Registry changes since approval surface per person: an SMS or WhatsApp template that is no
            # longer registered fails each render (counted), so nothing unregistered is ever sent.
            compiled = compile_content(
                content_templates_of(campaign),
                channel_order_of(campaign),
                offer_has_amount=terms.has_amount,
                registry=self.library.registry,
                check_registry=False,
            )
            # What the templates read, and what decides each person's offer.
            attribute_names = list(dict.fromkeys([*compiled.attribute_names(), *terms.attribute_names()]))
            # The cursor is the last profile id released: the pinned version's members stream from just
            # after it, suppressed people included (marked), so the run counts who was left out and why.
            cursor, pages, created_so_far = run.cursor, run.pages_released, run.outreach_count
            stream = self.segments.stream_members(
                campaign.segment_id,
                campaign.segment_version,
                channel_value(campaign.channel),
                attribute_names,
                cursor,
            )
            buffered: list[AudienceMember] = []
            exhausted = False
            # What started the run (the launch): the run's span and its outreaches' root spans link to it.
            started_by = _started_by(run.started_by)
            materialized: Any = None
            with self.tracer.start_as_current_span(
                "campaign.release",
                attributes={
                    "campaign.key": campaign_key,
                    "campaign.run_id": run_id,
                    "campaign.run.pages_before": pages,
                },
                links=started_by,
            ):
                try:
                    while not self._poller.stopping:
                        while not exhausted and len(buffered) < self.page_size:
                            chunk = await anext(stream, None)
                            if chunk is None:
                                exhausted = True
                            else:
                                buffered.extend(chunk)
                        members, buffered = buffered[: self.page_size], buffered[self.page_size :]
                        next_cursor = members[-1].profile_id if members else cursor
                        last = exhausted and not buffered
                        with self.tracer.start_as_current_span(
                            "campaign.release_page",
                            attributes={"campaign.key": campaign_key, "campaign.run_id": run_id},
                        ):
                            try:
                                result = await self._release_page(
                                    campaign,
                                    run,
                                    compiled,
                                    offer,
                                    members,
                                    pages=pages,
                                    next_cursor=next_cursor,
                                    last=last,
                                    first_ordinal=created_so_far,
                                )
                            except _PageTakenElsewhere:
                                log.info("campaign_page_taken_elsewhere", page=pages)
                                return
                            except _Stopped as stopped:
                                log.info("campaign_release_stopped", page=pages, state=str(stopped))
                                return
                            except ContactsChanged:
                                # Rolled back; the next poll releases this page again against the new ledger.
                                log.info("campaign_page_contacts_changed", page=pages)
                                return
                            # Each outreach's trace starts here, linked to this page's span and to the launch. On
                            # the loop's next turn (this context, so under the page's span): the next page's stream
                            # read and statements go first, and the roots, handed finished to the span processor,
                            # cost ~7-15 us each with their export (docs/campaigns.md, session 28's pairs).
                            asyncio.get_running_loop().call_soon(
                                functools.partial(
                                    record_outreach_roots,
                                    self.tracer,
                                    "outreach.create",
                                    (OutreachRecord(campaign_id) for campaign_id, _, _ in result.outreaches),
                                    attributes={"campaign.key": campaign_key, "campaign.run_id": run_id},
                                    links=started_by,
                                )
                            )
                        log.info(
                            "campaign_page_released",
                            page=pages,
                            created=result.created,
                            skipped_no_email=result.skipped_no_email,
                            skipped_render=result.skipped_render,
                        )
                        pages, cursor, created_so_far = pages + 1, next_cursor, created_so_far + result.created
                        if last:
                            log.info("campaign_run_materialized", pages=pages)
                            async with self.db.transaction() as session:
                                materialized = await store.get_run(session, run_id)
                            break
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]
            if materialized is not None:
                await self.dispatch(campaign, materialized)

    async def _release_page(
        self,
        campaign: Any,
        run: Any,
        compiled: CompiledContent,
        offer: Offer,
        members: list[AudienceMember],
        *,
        pages: int,
        next_cursor: str,
        last: bool,
        first_ordinal: int,
    ) -> PageResult:
        now = self.clock()
        async with self.db.transaction() as session:
            # Checked in the page's own transaction: a pause or cancel that committed first stops this page.
            state = await store.campaign_state(session, campaign.campaign_key)
            if state != CampaignState.RUNNING:
                raise _Stopped(state)
            # Suppressed, unreachable, held-out and capped people are recorded and left out here.
            builder = OutreachRows(
                campaign,
                run,
                compiled,
                offer,
                self.library,
                store.DriverValues(session),
                now,
                wake_relay=self.wake_relay,
            )
            admitted, rows = await create_outreaches(session, self.gate, builder, members, first_ordinal=first_ordinal)
            for failure in rows.render_failures:
                log.warning("outreach_render_skipped", profile_id=failure["profile_id"], reason=failure["reason"])
            result = PageResult(len(rows.outreaches), admitted.no_contact, len(rows.render_failures), rows.created)
            advanced = await store.advance_run(
                session,
                run.run_id,
                expected_pages=pages,
                cursor=next_cursor,
                created=result.created,
                skipped_no_email=result.skipped_no_email,
                skipped_render=result.skipped_render,
                materialized_at=now if last else None,
            )
            if not advanced:
                raise _PageTakenElsewhere
            await store.add_outreaches_to_campaign(session, campaign.campaign_key, result.created)
        return result

    async def dispatch(self, campaign: Any, run: Any) -> None:
        """Releases a materialised run's dispatches step by step, honouring quiet hours, pauses and the guards."""
        options = DeliveryOptions.from_json(campaign.options)
        while not self._poller.stopping:
            now = self.clock()
            async with self.db.transaction() as session:
                run = await store.get_run(session, run.run_id)
                if run is None or run.completed_at is not None:
                    return
                if await store.campaign_state(session, campaign.campaign_key) != CampaignState.RUNNING:
                    return
                if run.released_through < run.outreach_count and run.next_step_at <= now:
                    if await self._auto_pause(session, campaign, run, options, now):
                        return
                    step = options.distribution.step_size(run.outreach_count)
                    interval = timedelta(seconds=options.distribution.interval_seconds)
                    await store.advance_step(session, run.run_id, run.released_through, step, now + interval)
                    log.info("campaign_step_released", released_through=run.released_through + step)
                    continue
                pending = await store.dispatchable(session, run.run_id, run.released_through, now, self.page_size)
                if not pending:
                    if run.released_through >= run.outreach_count and not await store.undispatched(session, run.run_id):
                        await self._complete_run(session, campaign, run, options, now)
                    return
                await self._dispatch_page(session, campaign, pending, options, now)

    async def _dispatch_page(
        self, session: Any, campaign: Any, pending: Any, options: DeliveryOptions, now: datetime
    ) -> None:
        """One page: each outreach is dispatched now or, inside the person's quiet hours, deferred to their end.

        Each DispatchRequested carries its outreach's trace (outreach_headers), so channels continue it; the
        page has one span with its counts, as a release page has, instead of a span per outreach (which was
        most of a dispatch page's CPU). Only an outreach held back for quiet hours has one, `outreach.dispatch` in its
        trace, with an outreach.held event (why, and until when), and another when a later page releases it, with
        outreach.released: recorded finished once the page committed.
        """
        with self.tracer.start_as_current_span(
            "campaign.dispatch_page", attributes={"campaign.key": campaign.campaign_key}
        ) as span:
            values = store.DriverValues(session)
            event_time = values.event_time(now)
            # The stored payload, then the event id and the request time: parsers merge what follows into the
            # message (the last value of a field wins), so the payload is not parsed and serialised again per event.
            request_time = events_pb2.DispatchRequested(request_time=timestamp(now)).SerializeToString()
            # One ULID per page, numbered per event, as at release.
            event_prefix = new_id("evt_")
            events: list[tuple[str, tuple[Any, ...]]] = []
            deferred: list[dict[str, Any]] = []
            holds: list[OutreachRecord] = []
            released: dict[str, OutreachRecord] = {}
            for outreach in pending:
                if options.quiet_hours is not None:
                    time_zone = outreach.recipient_time_zone or campaign.time_zone
                    release_at = options.quiet_hours.release_time(now, time_zone)
                    if release_at > now:
                        deferred.append({"key": outreach.campaign_id, "after": release_at})
                        why = options.quiet_hours.describe(time_zone)
                        holds.append(
                            OutreachRecord(
                                outreach.campaign_id, events=(hold_event(HELD, outreach.campaign_id, why, release_at),)
                            )
                        )
                        continue
                    if outreach.dispatch_after is not None:
                        why = options.quiet_hours.describe(time_zone)
                        released[outreach.campaign_id] = OutreachRecord(
                            outreach.campaign_id,
                            events=(hold_event(RELEASED, outreach.campaign_id, why, outreach.dispatch_after),),
                        )
                event_id = f"{event_prefix}-{len(events):05d}"
                payload = (
                    outreach.dispatch_payload
                    + events_pb2.DispatchRequested(event_id=event_id).SerializeToString()
                    + request_time
                )
                headers = outreach_headers(event_id, outreach.campaign_id)
                row = (event_id, streams.DISPATCH_REQUESTED, payload, headers, event_time)
                events.append((outreach.campaign_id, row))
            # Only what this page marked is published: an outreach withdrawn meanwhile for a better campaign is not.
            marked = await store.mark_dispatched(session, [key for key, _ in events], now)
            await store.insert_page(session, [], [row for key, row in events if key in marked])
            if marked and self.wake_relay is not None:
                after_commit(session, self.wake_relay)
            await store.defer_dispatches(session, deferred)
            span.set_attributes({"campaign.page.dispatched": len(marked), "campaign.page.deferred": len(deferred)})
            holds.extend(record for key, record in released.items() if key in marked)
            if holds:
                self._record_after_commit(session, "outreach.dispatch", holds, campaign.campaign_key)
        log.info("campaign_dispatch_page", dispatched=len(marked), deferred=len(deferred))

    def _record_after_commit(self, session: Any, name: str, records: list[OutreachRecord], campaign_key: str) -> None:
        """Records `records` (record_outreach_steps) once the transaction commits, on the loop's next turn, linked to
        the current span (the page's)."""
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        record = functools.partial(
            record_outreach_steps, self.tracer, name, records, attributes={"campaign.key": campaign_key}
        )

        def soon() -> None:
            loop.call_soon(record, context=context)

        after_commit(session, soon)

    async def _auto_pause(self, session: Any, campaign: Any, run: Any, options: DeliveryOptions, now: datetime) -> bool:
        """Pauses the campaign before its next step when the released part crossed a threshold."""
        if options.auto_pause is None or run.released_through == 0:
            return False
        counts = await store.released_engagement(session, run.run_id)
        reason = options.auto_pause.breach(
            counts["dispatched"], counts["bounced"], counts["complained"], counts["opted_out"], counts["failed"]
        )
        if reason is None:
            return False
        await store.transition(
            session,
            campaign.campaign_key,
            CampaignState.RUNNING,
            campaign.version,
            {"state": CampaignState.PAUSED, "paused_from": CampaignState.RUNNING, "pause_reason": reason},
        )
        await store.add_audit(
            session,
            campaign.campaign_key,
            version=campaign.version,
            action="paused",
            actor=SYSTEM_ACTOR,
            state=CampaignState.PAUSED,
            note=reason,
            at=now,
        )
        log.warning("campaign_auto_paused", reason=reason)
        return True

    async def _complete_run(
        self, session: Any, campaign: Any, run: Any, options: DeliveryOptions, now: datetime
    ) -> None:
        """Closes the run; a recurring campaign waits for its next occurrence, any other one is COMPLETED."""
        await store.complete_run(session, run.run_id, now)
        following = None
        if options.recurrence is not None:
            # Occurrences that passed while this run was still releasing are skipped, not piled up.
            following = next_occurrence(options.recurrence, campaign.time_zone, max(run.occurrence_at or now, now))
        if following is not None:
            # Started by what started this one: the launch that made the campaign recurring.
            await store.schedule_run(
                session, campaign, following, month_code(following, campaign.time_zone), now, run.started_by
            )
            await store.set_state(session, campaign.campaign_key, CampaignState.RUNNING, CampaignState.SCHEDULED)
            action, state, note = "run_completed", CampaignState.SCHEDULED, f"next occurrence {following.isoformat()}"
        elif automation_of(campaign).follows_up:
            # Stays RUNNING (so it can still be paused or cancelled) until the follow-up runner has decided
            # every resend, and every fallback within the fallback window; it completes the campaign then.
            waiting = " and ".join(f"{what}s" for what in automation_of(campaign).follow_ups)
            action, state, note = "run_completed", CampaignState.RUNNING, f"waiting for {waiting}"
        else:
            await store.set_state(session, campaign.campaign_key, CampaignState.RUNNING, CampaignState.COMPLETED)
            action, state, note = "completed", CampaignState.COMPLETED, ""
        await store.add_audit(
            session,
            campaign.campaign_key,
            version=campaign.version,
            action=action,
            actor=SYSTEM_ACTOR,
            state=state,
            note=note,
            at=now,
        )
        log.info("campaign_run_completed", next_occurrence=following.isoformat() if following else None)
