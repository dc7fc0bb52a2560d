"""Writes that several entry points share: booking an outreach and a lead with the costs they carry."""

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.ids import new_id
from services.attribution import store
from services.attribution.metrics import AttributionMetrics
from services.attribution.revenue import CostModel
from services.attribution.rules import RESPONDED

SEND = "send"
RM_TIME = "rm_time"
FIXED = "fixed"


class Ledger:
    """Applies the cost model as outreaches and leads are recorded."""

    def __init__(self, cost_model: CostModel, currency: str) -> None:
        self.cost_model = cost_model
        self.currency = currency
        self.metrics = AttributionMetrics()

    async def reach_step(
        self, session: AsyncSession, campaign_id: str, step: str, at: datetime, outreach_at: datetime | None = None
    ) -> None:
        """Marks the funnel step reached (the earliest time wins) and counts it once the transaction commits."""
        await store.reach_step(session, campaign_id, step, at)
        self.metrics.step(session, step, at, outreach_at)

    async def record_outreach(self, session: AsyncSession, outreach: store.Outreach) -> bool:
        """Records the outreach and its send cost once; False when its campaign ID was already recorded."""
        if not await store.add_outreach(session, outreach):
            return False
        await store.add_cost(
            session,
            outreach.campaign_id,
            SEND,
            self.cost_model.send_cost(outreach.channel),
            self.currency,
            outreach.created_at,
        )
        return True

    async def record_lead(
        self,
        session: AsyncSession,
        *,
        campaign_id: str,
        crm_lead_id: str,
        origin: str,
        at: datetime,
        dedup_key: str | None,
    ) -> tuple[store.Lead, bool]:
        """Creates the lead with its RM-time cost and marks the outreach responded.

        Returns the lead and True, or the existing lead with the same dedup key and False.
        """
        lead = store.Lead(
            lead_id=new_id("lead_"), campaign_id=campaign_id, crm_lead_id=crm_lead_id, origin=origin, created_at=at
        )
        if not await store.add_lead(session, lead, dedup_key):
            assert dedup_key is not None
            existing = await store.lead_by_dedup_key(session, dedup_key)
            assert existing is not None
            return existing, False
        await store.add_cost(
            session, campaign_id, RM_TIME, self.cost_model.rm_time_cost(), self.currency, at, ref=lead.lead_id
        )
        await self.reach_step(session, campaign_id, RESPONDED, at)
        return lead, True
