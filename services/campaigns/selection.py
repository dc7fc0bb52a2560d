"""Who of a released page gets an outreach, and which offer, decided in the page's transaction: suppressions,
the offer's eligibility, holdout, caps."""

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.outbox import Outbox
from plumbing.telemetry import outreach_span
from services import streams
from services.campaigns import store
from services.campaigns.audience import NO_CONTACT, Exclusion, LeftOut, reach, sift
from services.campaigns.caps import LOOKBACK, OUTRANKED, Candidate, Contact, Rank, judge, rules_of
from services.campaigns.messages import offer_proto, offer_terms_of, timestamp
from services.campaigns.rendering import Offer
from services.campaigns.scheduling import DeliveryOptions
from services.campaigns.segments_client import AudienceMember
from xsell.campaigns.v1 import events_pb2

log = structlog.get_logger(__name__)


class ContactsChanged(Exception):
    """An outreach this page meant to withdraw was dispatched meanwhile; the page is rolled back and retried."""


@dataclass(frozen=True)
class Admitted:
    """The members to create outreaches for, the channel each gets it on, and how many had no address.

    `offers`: each admitted person's own offer when the campaign decides it per person (an amount rule or
    eligibility conditions); empty otherwise, when everyone gets the campaign's offer.
    `displacing`: per admitted person, the outranked undispatched outreaches their new one replaces;
    they are withdrawn by record_contacts, and only for people whose outreach was in fact created (a
    render failure leaves the other campaign's outreach in place).
    """

    members: list[AudienceMember]
    channels: dict[str, str]
    no_contact: int
    displacing: dict[str, tuple[Contact, ...]] = field(default_factory=dict)
    offers: dict[str, Offer] = field(default_factory=dict)

    def offer_value(self, profile_id: str, campaign: Any) -> int:
        """What the person's offer is worth for ranking (minor units, 0 without an amount)."""
        offer = self.offers.get(profile_id)
        return campaign.offer_amount_minor or 0 if offer is None else self.value_of(offer)

    @staticmethod
    def value_of(offer: Offer) -> int:
        return offer.amount.minor_units if offer.amount is not None else 0


def campaign_rank(campaign: Any) -> Rank:
    """The campaign's rank among competitors (priority, offer value, earliest launch, key)."""
    options = DeliveryOptions.from_json(campaign.options)
    launched = campaign.launched_at or campaign.created_at
    return Rank.of(options.priority, campaign.offer_amount_minor, launched, campaign.campaign_key)


def _contact(row: Any) -> Contact:
    return Contact(
        campaign_id=row.campaign_id,
        profile_id=row.profile_id,
        channel=row.channel,
        category=row.category,
        contacted_at=row.contacted_at,
        rank=Rank.of(row.priority, row.offer_value_minor, row.launched_at, row.campaign_key),
        displaceable=row.dispatched_at is None,
    )


class AudienceGate:
    """Applies, to each page, in order: suppressions and no contact, the offer's eligibility, the holdout, then
    frequency caps.

    Every decision is stored with the person (run_exclusions), every outreach goes to the contact
    ledger, and the ledger is read and written under per-person locks in the page's own transaction,
    so two runs releasing the same person at once cannot both slip under a cap.
    """

    def __init__(self, outbox: Outbox, tracer: trace.Tracer, *, one_offer_per_day: bool) -> None:
        self.outbox = outbox
        self.tracer = tracer
        self.one_offer_per_day = one_offer_per_day

    async def admit(
        self,
        session: AsyncSession,
        campaign: Any,
        run: Any,
        members: Sequence[AudienceMember],
        now: datetime,
        *,
        order: Sequence[str],
        available: Callable[[str, AudienceMember], bool],
    ) -> Admitted:
        """`order`: the campaign's channel then its fallbacks; `available`: whether a member has an address on one."""
        options = DeliveryOptions.from_json(campaign.options)
        terms = offer_terms_of(campaign)
        sifted = sift(
            members,
            profile_id=lambda m: m.profile_id,
            reach_of=lambda m: reach(order, m.suppressed_on, lambda channel: available(channel, m)),
            campaign_key=campaign.campaign_key,
            holdout_basis_points=options.holdout_basis_points,
            offer_of=(lambda m: terms.decide(m.attributes)) if terms.per_person else None,
        )
        offers = sifted.offers
        eligible = sifted.eligible
        capped: list[LeftOut] = []
        displacing: dict[str, tuple[Contact, ...]] = {}
        people = [m.profile_id for m, _ in eligible]
        # Taken even without caps of its own: this run's outreaches count against other campaigns' caps.
        await store.lock_people(session, people)
        rules = rules_of(options.frequency_caps, one_offer_per_day=self.one_offer_per_day)
        if rules and people:
            contacts: Mapping[str, list[Contact]] = defaultdict(list)
            for row in await store.recent_contacts(session, people, now - LOOKBACK):
                contacts[row.profile_id].append(_contact(row))
            base = campaign_rank(campaign)
            kept: list[tuple[AudienceMember, str]] = []
            for member, channel in eligible:
                offer = offers.get(member.profile_id)
                # Ranked by the person's own offer when the campaign decides it per person.
                rank = base if offer is None else replace(base, neg_offer_value=-Admitted.value_of(offer))
                candidate = Candidate(member.profile_id, channel, campaign.category, rank, campaign.time_zone)
                verdict = judge(candidate, rules, contacts.get(member.profile_id, ()), now)
                if verdict.allowed:
                    kept.append((member, channel))
                    if verdict.displaced:
                        displacing[member.profile_id] = verdict.displaced
                else:
                    capped.append(LeftOut(member.profile_id, Exclusion.CAPPED, verdict.reason))
            eligible = kept
        left_out = [*sifted.left_out, *capped]
        await store.insert_exclusions(
            session,
            [
                {
                    "run_id": run.run_id,
                    "profile_id": out.profile_id,
                    "campaign_key": campaign.campaign_key,
                    "kind": out.kind.value,
                    "reason": out.reason,
                    "created_at": now,
                }
                for out in left_out
            ],
        )
        held = [out for out in left_out if out.kind == Exclusion.HELD_OUT]
        shared = terms.shared()
        await self.outbox.add_rows(
            session,
            [
                self._holdout_event(campaign, run, out.profile_id, offers.get(out.profile_id, shared), now)
                for out in held
            ],
        )
        suppressed = sum(1 for out in left_out if out.kind == Exclusion.SUPPRESSED)
        not_eligible = sum(1 for out in left_out if out.kind == Exclusion.NOT_ELIGIBLE)
        await store.add_run_counts(
            session, run.run_id, audience=len(members), held_out=len(held), suppressed=suppressed, capped=len(capped)
        )
        decided = {
            "audience": len(members),
            "suppressed": suppressed,
            "not_eligible": not_eligible,
            "held_out": len(held),
            "capped": len(capped),
        }
        # Counts only (no person): who exactly is in run_exclusions, for "why did they not get it?".
        trace.get_current_span().set_attributes({f"campaign.page.{name}": count for name, count in decided.items()})
        log.info("audience_page_decided", **decided)
        no_contact = sum(1 for out in sifted.left_out if out.kind == Exclusion.SUPPRESSED and out.reason == NO_CONTACT)
        return Admitted(
            [m for m, _ in eligible],
            {m.profile_id: channel for m, channel in eligible},
            no_contact,
            displacing,
            {m.profile_id: offers[m.profile_id] for m, _ in eligible} if offers else {},
        )

    def _holdout_event(self, campaign: Any, run: Any, profile_id: str, offer: Offer, now: datetime) -> dict[str, Any]:
        event = events_pb2.HoldoutAssigned(
            campaign_key=campaign.campaign_key,
            run_id=run.run_id,
            profile_id=profile_id,
            labels=list(campaign.labels),
            category=campaign.category,
            trigger_code=campaign.trigger_code,
            offer=offer_proto(offer),
            assign_time=timestamp(now),
        )
        return self.outbox.event(streams.HOLDOUT_ASSIGNED, event)

    def _withdrawn_event(self, withdrawn: Any, now: datetime) -> dict[str, Any]:
        """The outbox row of an outranked outreach's OutreachWithdrawn, written in that outreach's trace."""
        with outreach_span(self.tracer, "outreach.withdraw", withdrawn.campaign_id, attributes={"reason": OUTRANKED}):
            event = events_pb2.OutreachWithdrawn(
                campaign_id=withdrawn.campaign_id,
                campaign_key=withdrawn.campaign_key,
                profile_id=withdrawn.profile_id,
                reason=OUTRANKED,
                withdraw_time=timestamp(now),
            )
            return self.outbox.event(streams.OUTREACH_WITHDRAWN, event, campaign_id=withdrawn.campaign_id)

    async def record_contacts(
        self,
        session: AsyncSession,
        campaign: Any,
        admitted: Admitted,
        created: Sequence[tuple[str, str, str]],
        now: datetime,
        values: store.DriverValues,
    ) -> None:
        """Puts the new outreaches, (campaign ID, profile id, channel) each, created at `now`, on the contact
        ledger with the campaign's rank, and withdraws the outranked outreaches they replace, each with an
        OutreachWithdrawn event (attribution takes back its send); raises ContactsChanged if one of those was
        dispatched meanwhile."""
        displaced = [contact for _, profile_id, _ in created for contact in admitted.displacing.get(profile_id, ())]
        if displaced:
            withdrawn = await store.withdraw_outreaches(session, [c.campaign_id for c in displaced], now)
            if len(withdrawn) != len(displaced):
                raise ContactsChanged
            await store.insert_exclusions(
                session,
                [
                    {
                        "run_id": w.run_id,
                        "profile_id": w.profile_id,
                        "campaign_key": w.campaign_key,
                        "kind": Exclusion.CAPPED.value,
                        "reason": OUTRANKED,
                        "created_at": now,
                    }
                    for w in withdrawn
                ],
            )
            await self.outbox.add_rows(session, [self._withdrawn_event(w, now) for w in withdrawn])
            trace.get_current_span().set_attribute("campaign.page.withdrawn", len(withdrawn))
            log.info("outranked_outreaches_withdrawn", withdrawn=len(withdrawn))
        if not created:
            return
        options = DeliveryOptions.from_json(campaign.options)
        # The columns of store.PAGE_CONTACT_COLUMNS after the channel: the campaign's, with each person's offer value
        # (the campaign's amount, or the person's own when it is decided per person).
        head = (campaign.campaign_key, campaign.category, values.time(now), options.priority)
        launched = values.time(campaign.launched_at or campaign.created_at)
        if not admitted.offers:
            shared = (*head, campaign.offer_amount_minor or 0, launched)
            await store.insert_contacts(session, [(*person, *shared) for person in created])
            return
        await store.insert_contacts(
            session, [(*person, *head, admitted.offer_value(person[1], campaign), launched) for person in created]
        )
