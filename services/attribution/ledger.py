"""Writes that several entry points share: booking an outreach and a lead with the costs they carry, and
keeping the views' rollup in the same transaction as each of them."""

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.errors import NotFound
from plumbing.ids import new_id
from services.attribution import store
from services.attribution.metrics import AttributionMetrics
from services.attribution.revenue import CostModel, allocate
from services.attribution.rules import DELIVERED, DISBURSED, RESPONDED, SENT, unknown_outreach
from services.attribution.views import Rollup, campaign_groups, funnel_moves

REPLY = "reply"
"""The origin of a lead a person's reply made (store.leads.origin)."""

SEND = "send"
RM_TIME = "rm_time"
FIXED = "fixed"


def disbursement_money(amount_paise: int, lifetime_paise: int, year1_paise: int) -> dict[str, int]:
    """A disbursement's rollup counters, added on its disbursement day."""
    return {"disbursed_paise": amount_paise, "lifetime_paise": lifetime_paise, "year1_paise": year1_paise}


RollupChange = tuple[store.Outreach, Sequence[tuple[datetime, Mapping[str, int]]]]
"""An outreach's rollup deltas (instant, counters), for Rollup.apply_many."""


def _earlier_proof(locked: store.LockedOutreach, step: str, at: datetime) -> bool:
    """Whether reaching `step` at `at` is the first proof a provider took the outreach's message (a SENT or DELIVERED)
    or an earlier one than its receipts have given so far: then its send cost is booked, or moved to `at`'s day."""
    if step not in (SENT, DELIVERED):
        return False
    proof = min((locked.funnel[seen] for seen in (SENT, DELIVERED) if seen in locked.funnel), default=None)
    return proof is None or at < proof


class Ledger:
    """Applies the cost model as outreaches and leads are recorded."""

    def __init__(self, cost_model: CostModel, currency: str, utc_offset_minutes: int = 330) -> None:
        self.cost_model = cost_model
        self.currency = currency
        self.metrics = AttributionMetrics()
        self.rollup = Rollup(utc_offset_minutes)

    async def reach_step(
        self,
        session: AsyncSession,
        locked: store.LockedOutreach,
        step: str,
        at: datetime,
        *,
        measure_since_outreach: bool = False,
        also: Mapping[str, int] | None = None,
        rollup_later: list[RollupChange] | None = None,
    ) -> None:
        """Marks the funnel step reached (the earliest time wins) and moves the views' funnel levels it changes,
        with `also` added to the views on `at`'s day in the same statement; counted once the transaction commits.
        With `rollup_later`, the views' change is added to it instead, for the caller's one statement (reach_steps).

        The outreach comes locked with its funnel (store.lock_outreach): two events of one outreach applied at
        once (a delivery receipt and an open) would otherwise both read the funnel before either wrote it, and
        count a level twice.
        """
        changed, deltas = self.plan_step(session, locked, step, at, measure_since_outreach=measure_since_outreach)
        if changed:
            await store.reach_step(session, locked.outreach.campaign_id, step, at)
        if rollup_later is not None:
            rollup_later.append((locked.outreach, [*deltas, (at, also or {})]))
        else:
            await self.rollup.apply(session, locked.outreach, [*deltas, (at, also or {})])

    async def reach_steps(
        self,
        session: AsyncSession,
        changes: Sequence[tuple[store.LockedOutreach, str, datetime]],
        rollup_before: Sequence[RollupChange] = (),
    ) -> None:
        """reach_step for many events (channels' receipts and engagement) in a few statements, in order: two events
        of one outreach see each other, as they share its LockedOutreach. `rollup_before` (what the fetch's leads
        changed, record_lead's rollup_later) goes into the same rollup statement: the rollup's rows are shared by
        every writer, and one statement takes them in key order, where two would hold one row while waiting for
        another, and deadlock with a concurrent fetch on PostgreSQL.

        A provider's SENT or DELIVERED is the proof the message went, and books its send cost: on the day the
        provider first took it, once however many receipts arrive; a receipt earlier than the one that booked it (a
        SENT applied after its DELIVERED) moves it to its own day. Nothing is booked for an outreach held for quiet
        hours, suppressed at send time, refused by the provider or withdrawn: no provider charges for a message it
        never took.
        """
        # The send costs to look up: of outreaches without a proof yet, or with a later one than a receipt's here.
        # (An outreach recorded by a release that booked send costs at creation has one from then: none is added.)
        asked = {locked.outreach.campaign_id for locked, step, at in changes if _earlier_proof(locked, step, at)}
        booked: dict[str, store.BookedCost] = await store.send_costs(session, asked, SEND) if asked else {}
        new_costs: dict[str, dict[str, Any]] = {}
        moved: dict[int, datetime] = {}
        steps: list[dict[str, object]] = []
        rollup_changes: list[RollupChange] = list(rollup_before)
        for locked, step, at in changes:
            outreach = locked.outreach
            money: list[tuple[datetime, Mapping[str, int]]] = []
            if _earlier_proof(locked, step, at):
                cost = booked.get(outreach.campaign_id)
                if cost is None:
                    amount = self.cost_model.send_cost(outreach.channel)
                    new_costs[outreach.campaign_id] = store.cost_row(
                        outreach.campaign_id, locked.group_id, SEND, amount, self.currency, at
                    )
                    booked[outreach.campaign_id] = store.BookedCost(0, amount, at)
                    money.append((at, {"cost_paise": amount}))
                elif at < cost.at:
                    if cost.cost_id:
                        moved[cost.cost_id] = at
                    else:
                        new_costs[outreach.campaign_id]["at"] = at  # booked by this batch, not written yet
                    booked[outreach.campaign_id] = replace(cost, at=at)
                    money += [(cost.at, {"cost_paise": -cost.amount_paise}), (at, {"cost_paise": cost.amount_paise})]
            changed, deltas = self.plan_step(session, locked, step, at, measure_since_outreach=False)
            if changed:
                steps.append({"campaign_id": outreach.campaign_id, "step": step, "first_at": at})
            rollup_changes.append((outreach, [*deltas, *money]))
        await store.add_costs(session, list(new_costs.values()))
        await store.move_costs(session, moved)
        await store.reach_steps(session, steps)
        await self.rollup.apply_many(session, rollup_changes)

    def plan_step(
        self,
        session: AsyncSession,
        locked: store.LockedOutreach,
        step: str,
        at: datetime,
        *,
        measure_since_outreach: bool,
    ) -> tuple[bool, list[tuple[datetime, Mapping[str, int]]]]:
        """What reaching `step` at `at` changes: whether the step's first time moves (then the caller writes it), and
        the rollup deltas of the funnel levels that move. Updates `locked.funnel`; counts the step on commit."""
        before = dict(locked.funnel)
        after = dict(before)
        after[step] = min(before.get(step, at), at)
        changed = after[step] != before.get(step)
        if changed:
            locked.funnel[step] = after[step]
        self.metrics.step(session, step, at, locked.outreach.created_at if measure_since_outreach else None)
        return changed, list(funnel_moves(locked.outreach, before, after).items())

    async def record_disbursement(
        self,
        session: AsyncSession,
        locked: store.LockedOutreach,
        at: datetime,
        amount_paise: int,
        lifetime_paise: int,
        year1_paise: int,
    ) -> None:
        """Adds a disbursement's (or a funded conversion's) money to the views on its day and marks the outreach
        converted, in one rollup statement (the ledger row is the caller's; so is the outreach's row lock)."""
        await self.reach_step(
            session,
            locked,
            DISBURSED,
            at,
            measure_since_outreach=True,
            also=disbursement_money(amount_paise, lifetime_paise, year1_paise),
        )

    async def record_outreaches(self, session: AsyncSession, batch: Sequence[store.Outreach]) -> list[store.Outreach]:
        """Records the outreaches, each counted as sent on its creation day, in a few statements: those recorded now
        (the others' campaign IDs were recorded already). A send cost waits for a provider to take the message
        (reach_steps)."""
        added = await store.add_outreaches(session, batch)
        await self.rollup.apply_many(session, [(outreach, [(outreach.created_at, {"sent": 1})]) for outreach in added])
        return added

    async def withdraw_outreach(self, session: AsyncSession, locked: store.LockedOutreach, at: datetime) -> bool:
        """Takes back what record_outreaches booked for an outreach withdrawn before it was sent: its send on its
        creation day, its funnel row, and a send cost booked at its creation by an older release. False, with
        nothing changed, when the outreach has reached a step of its funnel (a conversion went to it by last touch
        before the withdrawal arrived): it then stays in the ledger as it is."""
        if locked.funnel:
            return False
        outreach = locked.outreach
        cost = await store.withdraw_outreach(session, outreach.campaign_id, at, send_kind=SEND)
        await self.rollup.add(session, outreach, outreach.created_at, sent=-1, cost_paise=-cost)
        return True

    async def record_lead(
        self,
        session: AsyncSession,
        *,
        campaign_id: str,
        crm_lead_id: str,
        origin: str,
        at: datetime,
        locked: store.LockedOutreach | None = None,
        rollup_later: list[RollupChange] | None = None,
    ) -> tuple[store.Lead, bool]:
        """Creates the lead with its RM-time cost and marks the outreach responded; `locked` is the outreach when the
        caller already holds it locked; `rollup_later` as reach_step takes it.

        Returns the lead and True, or the lead it is already and False. One CRM lead id is one lead; one outreach has
        at most one lead from a reply, however often the person replies. A lead made without the CRM's id (a reply's,
        or a support agent's) and the CRM's own lead for it are one lead, whichever comes first: the CRM claims it
        (ListLeads shows those awaiting it) by recording its lead id for the same campaign ID, and a reply to an
        outreach that has a lead already makes none. So the RM's time is booked once.
        """
        dedup_key: str | None = None
        if crm_lead_id:
            # Every lead with a CRM id carries it as its dedup key, a claimed one too (store.claim_lead).
            dedup_key = f"crm:{crm_lead_id}"
            if (known := await store.lead_by_dedup_key(session, dedup_key)) is not None:
                return known, False
            if (awaiting := await store.lead_awaiting_crm_id(session, campaign_id)) is not None:
                await store.claim_lead(session, awaiting.lead_id, crm_lead_id, dedup_key)
                return replace(awaiting, crm_lead_id=crm_lead_id), False
        elif origin == REPLY:
            if (first := await store.first_lead(session, campaign_id)) is not None:
                return first, False
            dedup_key = f"reply:{campaign_id}"
        lead = store.Lead(
            lead_id=new_id("lead_"), campaign_id=campaign_id, crm_lead_id=crm_lead_id, origin=origin, created_at=at
        )
        if not await store.add_lead(session, lead, dedup_key):
            assert dedup_key is not None
            existing = await store.lead_by_dedup_key(session, dedup_key)
            assert existing is not None
            return existing, False
        locked = locked or await store.lock_outreach(session, campaign_id)
        if locked is None:
            raise unknown_outreach(campaign_id)
        rm_cost = self.cost_model.rm_time_cost()
        await store.add_cost(
            session, campaign_id, locked.group_id, RM_TIME, rm_cost, self.currency, at, ref=lead.lead_id
        )
        await self.reach_step(session, locked, RESPONDED, at, also={"cost_paise": rm_cost}, rollup_later=rollup_later)
        return lead, True

    async def record_fixed_cost(
        self, session: AsyncSession, *, campaign_key: str, amount_paise: int, day: str, description: str
    ) -> tuple[str, int]:
        """Books a campaign's fixed cost on the local `day`, shared over its outreaches' rollup groups in proportion
        to their sends (revenue.allocate), so a view by trigger, label or channel carries its part. Returns the
        cost's id and the number of outreaches it was shared over."""
        groups = await campaign_groups(session, campaign_key)
        if not groups:
            raise NotFound(
                f"campaign_key {campaign_key!r} has no outreach in the ledger; book a fixed cost once the campaign "
                "has sent, against the campaign_key its outreaches carry",
                field="campaign_key",
            )
        shares = allocate(amount_paise, [group.outreaches for group in groups])
        cost_id = new_id("fc_")
        shared = [
            {**{name: getattr(group, name) for name in store.SHARE_DIMENSIONS}, "amount_paise": share}
            for group, share in zip(groups, shares, strict=True)
            if share
        ]
        await store.add_fixed_cost(
            session,
            shared,
            cost_id=cost_id,
            campaign_key=campaign_key,
            amount_paise=amount_paise,
            currency_code=self.currency,
            day=day,
            description=description,
            booked_at=datetime.now(UTC),
        )
        await self.rollup.apply_rows(
            session,
            {
                (day, campaign_key, *(row[name] for name in store.SHARE_DIMENSIONS)): {
                    "cost_paise": row["amount_paise"]
                }
                for row in shared
            },
        )
        return cost_id, sum(group.outreaches for group in groups)
