"""The follow-up loop: dispatches trigger, resend and fallback outreaches after quiet hours, closes triggered
campaigns' past day runs, creates due resends and fallbacks, and completes campaigns whose last resend and
fallback are decided."""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.outbox import Outbox, utcnow
from plumbing.polling import Poller
from plumbing.telemetry import CAMPAIGN_ID, RELEASED, hold_attributes, outreach_span
from services import streams
from services.addresses import address_of, same_address
from services.campaigns import automation_store, store
from services.campaigns.automation import FELL_BACK, LAST_CHANNEL, Automation, automation_of
from services.campaigns.campaign_ids import month_code
from services.campaigns.campaigns import CampaignState
from services.campaigns.content import contact_address, unavailable_reason
from services.campaigns.messages import channel_order_of, timestamp
from services.campaigns.outreach_maker import OutreachMaker
from services.campaigns.person_client import PersonLookup
from services.campaigns.resends import RESENT, ResendRule, no_resend_reason, resend_time
from services.campaigns.segments_client import AudienceMember
from services.campaigns.triggers import trigger_day
from xsell.campaigns.v1 import events_pb2

log = structlog.get_logger(__name__)

SYSTEM_ACTOR = "system"
NO_PROFILE = "no_profile"
SIGNALS = ("opened_at", "clicked_at", "replied_at", "bounced_at", "failed_at", "complained_at", "opted_out_at")


def resend_run_id(original_run_id: str) -> str:
    """The resends of one run form one run of their own, so a person has at most one outreach per run."""
    return f"{original_run_id}-r"


def fallback_run_id(failed_run_id: str) -> str:
    """The fallbacks of one run form one run of their own (a fallback's own fallback another: "<run>-f-f")."""
    return f"{failed_run_id}-f"


@dataclass(frozen=True)
class FollowUp:
    """What differs between a resend and a fallback: the decision taken for one, why not (from the campaign and the
    outreach followed up), its run, what the maker is told (resend_of, or fallback_of and the channels after the
    failed one) and what is done before it is made."""

    kind: str
    taken: str
    run_id: Callable[[str], str]
    against: Callable[[Any, Any], str | None]
    made_with: Callable[[Any, Any], dict[str, Any]]
    before: Callable[[AsyncSession, Any], Awaitable[None]] | None = None


def channels_after(order: Sequence[str], channel: str) -> tuple[str, ...]:
    """The channels of the campaign's order after `channel`: where its fallback may go."""
    return tuple(order[order.index(channel) + 1 :]) if channel in order else ()


def readdressed(failed: Any, member: AudienceMember) -> bool:
    """Whether the person can be reached on the failed outreach's channel at another address than the one its message
    was made for: the CRM replaced it since."""
    if unavailable_reason(failed.channel, member.attributes) is not None:
        return False
    made_for = address_of(events_pb2.DispatchRequested.FromString(failed.dispatch_payload))
    current = contact_address(failed.channel, member.attributes)
    return bool(made_for and current) and not same_address(made_for, current)


class ResendRunner:
    """A polling loop; every step is its own transaction, so a crash repeats nothing that committed."""

    def __init__(
        self,
        db: Database,
        people: PersonLookup,
        maker: OutreachMaker,
        outbox: Outbox,
        *,
        page_size: int,
        poll_interval: float = 1.0,
        fallback_window: timedelta = timedelta(hours=24),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.fallback_window = fallback_window
        self.people = people
        self.maker = maker
        self.outbox = outbox
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.clock = clock
        # The database or segments unreachable: logged, and polled again.
        self._poller = Poller(self.step, poll_interval, "follow_up_poll_failed")

    async def run(self) -> None:
        await self._poller.run()

    async def stop(self) -> None:
        await self._poller.stop()

    async def step(self) -> None:
        """One pass: deferred dispatches, then per campaign: past trigger days closed, due resends, completion."""
        # Reads first, in one snapshot: a poll that finds nothing to do must not take SQLite's write lock, and costs
        # one read transaction, inline on the loop (the loop polls several times a second beside trigger batches:
        # through aiosqlite's thread each of its statements waited for turns of the busy loop, and each poll was a
        # trace of its own of a connect, a BEGIN and four SELECTs).
        now = self.clock()

        async def due(session: AsyncSession) -> tuple[bool, Sequence[Any], set[str]]:
            deferred_due = bool(await automation_store.due_follow_up_dispatches(session, now, 1))
            campaigns = await automation_store.campaigns_with_automation(session, automation_store.RESENDING_STATES)
            past_days_done = set()
            for campaign in campaigns:
                today = trigger_day(now, campaign.time_zone)
                if automation_of(campaign).trigger is not None and await automation_store.any_past_trigger_run_done(
                    session, campaign.campaign_key, today
                ):
                    past_days_done.add(campaign.campaign_key)
            return deferred_due, campaigns, past_days_done

        deferred_due, campaigns, past_days_done = await self.db.read_inline(due)
        if deferred_due:
            await self.dispatch_deferred()
        for campaign in campaigns:
            if self._poller.stopping:
                return
            automation = automation_of(campaign)
            with structlog.contextvars.bound_contextvars(campaign_key=campaign.campaign_key):
                if campaign.campaign_key in past_days_done:
                    await self.complete_past_days(campaign)
                if automation.resend is not None:
                    await self.resend_due(campaign, automation.resend)
                if automation.fallback:
                    await self.fallback_due(campaign)
                if automation.follows_up:
                    await self._complete_if_done(campaign, automation)

    async def complete_past_days(self, campaign: Any) -> int:
        """Closes a triggered campaign's day runs once their local day is over and all they hold is dispatched."""
        now = self.clock()
        today = trigger_day(now, campaign.time_zone)
        if not await self.db.read_inline(
            lambda session: automation_store.any_past_trigger_run_done(session, campaign.campaign_key, today)
        ):
            return 0
        async with self.db.transaction() as session:
            closed = await automation_store.complete_past_trigger_runs(session, campaign.campaign_key, today, now)
        if closed:
            log.info("trigger_day_runs_completed", runs=closed)
        return closed

    async def dispatch_deferred(self) -> int:
        now = self.clock()
        if not await self.db.read_inline(lambda session: automation_store.due_follow_up_dispatches(session, now, 1)):
            return 0
        async with self.db.transaction() as session:
            pending = await automation_store.due_follow_up_dispatches(session, now, self.page_size)
            events, keys = [], []
            for outreach in pending:
                with outreach_span(self.maker.tracer, "outreach.dispatch", outreach.campaign_id) as span:
                    # Its root said why it waited (outreach.held); this says it goes now, and what it waited for.
                    why = f"the campaign's quiet hours in {outreach.recipient_time_zone or 'its time zone'}"
                    span.add_event(RELEASED, hold_attributes(outreach.campaign_id, why, outreach.dispatch_after))
                    message = events_pb2.DispatchRequested.FromString(outreach.dispatch_payload)
                    message.request_time.CopyFrom(timestamp(now))
                    events.append(
                        self.outbox.event(streams.DISPATCH_REQUESTED, message, campaign_id=outreach.campaign_id)
                    )
                keys.append(outreach.campaign_id)
            marked = await store.mark_dispatched(session, keys, now)
            await self.outbox.add_rows(session, [e for e, key in zip(events, keys, strict=True) if key in marked])
        return len(marked)

    async def resend_due(self, campaign: Any, rule: ResendRule) -> int:
        """Decides every original whose resend is due now; returns how many resends were created."""
        created = 0
        while not self._poller.stopping:
            now = self.clock()
            async with self.db.transaction() as session:
                rows = await automation_store.resend_candidates(
                    session, campaign.campaign_key, now - rule.delay, now, self.page_size
                )
                later, due = [], []
                for row in rows:
                    at = resend_time(row.dispatched_at, rule, row.recipient_time_zone or campaign.time_zone, now)
                    if at > now:
                        later.append({"key": row.campaign_id, "due": at})
                    else:
                        due.append(row)
                await automation_store.stamp_resend_due(session, later)
            if not due:
                return created
            # The page's people in one segments call: fresh attributes and the suppressions in force now (an
            # unsubscribe since the original counts).
            people = await self.people.members([original.profile_id for original in due], now)
            for original in due:
                created += await self._resend(campaign, rule, original.campaign_id, people.get(original.profile_id))
            if len(rows) < self.page_size:
                return created
        return created

    async def _resend(
        self, campaign_row: Any, rule: ResendRule, original_id: str, member: AudienceMember | None
    ) -> int:
        """Decides one original's resend; `member` is None when segments has no profile for its person."""

        def against(_campaign: Any, original: Any) -> str | None:
            reason = no_resend_reason({column: getattr(original, column) for column in SIGNALS}, rule.condition)
            return NO_PROFILE if reason is None and member is None else reason

        follow_up = FollowUp(
            automation_store.RESEND,
            RESENT,
            resend_run_id,
            against,
            lambda _campaign, original: {"resend_of": original.campaign_id},
        )
        return await self._follow_up(campaign_row, original_id, member, follow_up)

    async def fallback_due(self, campaign: Any) -> int:
        """Decides every failed outreach whose fallback is due; returns how many fallbacks were created."""
        created = 0
        while not self._poller.stopping:
            rows = await self.db.read_inline(
                lambda session: automation_store.fallback_candidates(session, campaign.campaign_key, self.page_size)
            )
            if not rows:
                return created
            # The page's people in one segments call: fresh addresses and the suppressions in force now (the
            # bounce that made the fallback due may have suppressed the failed channel meanwhile).
            people = await self.people.members([failed.profile_id for failed in rows], self.clock())
            for failed in rows:
                created += await self._fall_back(campaign, failed.campaign_id, people.get(failed.profile_id))
            if len(rows) < self.page_size:
                return created
        return created

    async def _fall_back(self, campaign_row: Any, failed_id: str, member: AudienceMember | None) -> int:
        """Decides one failed outreach's fallback: an outreach on the first later channel of the campaign's order the
        person can be reached on now, through the gate as at release; on the same channel first when the person's
        address on it is another one now (channels refuses to send to an address replaced since the release)."""

        def later(campaign: Any, failed: Any) -> tuple[str, ...]:
            after = channels_after(channel_order_of(campaign), failed.channel)
            return (failed.channel, *after) if member is not None and readdressed(failed, member) else after

        def against(campaign: Any, failed: Any) -> str | None:
            return LAST_CHANNEL if not later(campaign, failed) else NO_PROFILE if member is None else None

        follow_up = FollowUp(
            automation_store.FALLBACK,
            FELL_BACK,
            fallback_run_id,
            against,
            lambda campaign, failed: {"fallback_of": failed.campaign_id, "order": later(campaign, failed)},
            # Its message never reached them: not a contact the caps count against the one that replaces it.
            before=lambda session, failed: store.forget_contact(session, failed.campaign_id),
        )
        return await self._follow_up(campaign_row, failed_id, member, follow_up)

    async def _follow_up(
        self, campaign_row: Any, outreach_id: str, member: AudienceMember | None, follow_up: "FollowUp"
    ) -> int:
        """Decides one outreach's resend or fallback, once, in one transaction: against it (follow_up.against), or
        for it, then an outreach made through the gate in the follow-up's own run of the outreach's run."""
        now = self.clock()
        kind = follow_up.kind
        async with self.db.transaction() as session:
            campaign = await store.get_campaign(session, campaign_row.campaign_key)
            outreach = await automation_store.get_outreach(session, outreach_id)
            decided = getattr(outreach, automation_store.DECISION_COLUMNS[kind], None) if outreach else None
            if campaign is None or outreach is None or decided is not None:
                return 0
            if campaign.state not in automation_store.RESENDING_STATES:
                return 0
            if (reason := follow_up.against(campaign, outreach)) is not None:
                await automation_store.decide_follow_up(session, kind, outreach_id, reason)
                log.info(f"{kind}_decided", **{CAMPAIGN_ID: outreach_id}, outcome=reason)
                return 0
            assert member is not None
            if not await automation_store.decide_follow_up(session, kind, outreach_id, follow_up.taken):
                return 0
            if follow_up.before is not None:
                await follow_up.before(session, outreach)
            run = await automation_store.ensure_run(
                session,
                campaign,
                kind=kind,
                month=month_code(now, campaign.time_zone),
                now=now,
                run_id=follow_up.run_id(outreach.run_id),
            )
            made = await self.maker.make(session, campaign, run, member, now, **follow_up.made_with(campaign, outreach))
            if made.campaign_id is None:
                # Replaces the decision claimed above: the gate or the render left the person out.
                await automation_store.set_follow_up_state(session, kind, outreach_id, made.left_out or "left_out")
            # campaign.id is the outreach decided on, as on every line about it; the outcome names the new one.
            log.info(f"{kind}_decided", **{CAMPAIGN_ID: outreach_id}, outcome=made.campaign_id or made.left_out)
            return 1 if made.campaign_id else 0

    async def _complete_if_done(self, campaign: Any, automation: Automation) -> None:
        """A RUNNING campaign that is not triggered completes once its runs are done, its resends decided and its
        fallbacks decided, its release over for longer than the fallback window."""
        if automation.trigger is not None:
            return
        now = self.clock()
        async with self.db.transaction() as session:
            current = await store.get_campaign(session, campaign.campaign_key)
            if current is None or current.state != CampaignState.RUNNING:
                return
            if await automation_store.open_release_runs(session, campaign.campaign_key):
                return
            if automation.resend is not None and await automation_store.resends_pending(session, campaign.campaign_key):
                return
            if automation.fallback and await automation_store.fallbacks_pending(
                session, campaign.campaign_key, now - self.fallback_window
            ):
                return
            if not await store.set_state(
                session, campaign.campaign_key, CampaignState.RUNNING, CampaignState.COMPLETED
            ):
                return
            await store.add_audit(
                session,
                campaign.campaign_key,
                version=current.version,
                action="completed",
                actor=SYSTEM_ACTOR,
                state=CampaignState.COMPLETED,
                note=f"every {' and '.join(automation.follow_ups)} decided",
                at=now,
            )
            log.info("campaign_completed_after_follow_ups", follow_ups=automation.follow_ups)
