"""How long the leads replies made have waited for the CRM to record them (ListLeads, then CreateLead): if the CRM's
integration stops pulling them, people who said YES are never called, and seed 001's RM calls within 2 hours."""

from opentelemetry import metrics

from plumbing.db import Database
from plumbing.outbox import utcnow
from plumbing.polling import Poller
from services.attribution import store

WATCH_INTERVAL_SECONDS = 30.0


class LeadWatch:
    """Measures the leads awaiting the CRM every `interval` seconds, into two gauges (the alert XsellLeadsNotPickedUp
    reads the age)."""

    def __init__(self, db: Database, interval: float = WATCH_INTERVAL_SECONDS) -> None:
        self.db = db
        meter = metrics.get_meter("xsell.attribution")
        self._awaiting = meter.create_gauge(
            "xsell.attribution.leads.awaiting_crm", unit="{lead}", description="Leads the CRM has not recorded yet."
        )
        self._oldest_age = meter.create_gauge(
            "xsell.attribution.leads.oldest_awaiting_age",
            unit="s",
            description="Age of the oldest lead the CRM has not recorded yet; 0 when none waits.",
        )
        self._poller = Poller(self.measure, interval, "lead_watch_failed")

    async def measure(self) -> tuple[int, float]:
        """How many leads await the CRM and the oldest one's age in seconds; also set on the gauges."""
        async with self.db.snapshot() as session:
            count, oldest = await store.awaiting_leads(session)
        age = max((utcnow() - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        self._awaiting.set(count)
        self._oldest_age.set(age)
        return count, age

    async def run(self) -> None:
        await self._poller.run()

    async def stop(self) -> None:
        await self._poller.stop()
