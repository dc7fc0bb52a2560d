"""What an operator watches on attribution: funnel steps as they land, and how far behind the ledger runs."""

from datetime import UTC, datetime

from opentelemetry import metrics
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import after_commit

# Seconds: a minute, 5 and 15 minutes, an hour, 6 hours, a day, 2 days (the seed's limit), a week, 30 and 90 days.
LAG_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0, 172800.0, 604800.0, 2592000.0, 7776000.0)
# Ledger lag is seconds when LOS calls as things happen: 0.1 s to 2 days.
LEDGER_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0, 172800.0)


class AttributionMetrics:
    """Recorded after the transaction that wrote the step commits, so a rolled-back request counts nothing."""

    def __init__(self) -> None:
        meter = metrics.get_meter("xsell.attribution")
        self._steps = meter.create_counter(
            "xsell.attribution.funnel.steps",
            unit="{step}",
            description="Funnel steps recorded (step = delivered, opened, clicked, applied, sanctioned, disbursed…).",
        )
        self._since_outreach = meter.create_histogram(
            "xsell.attribution.lag.since_outreach",
            unit="s",
            description="Attribution lag: the outreach's send to the conversion step, by step.",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS,
        )
        self._to_ledger = meter.create_histogram(
            "xsell.attribution.lag.to_ledger",
            unit="s",
            description="Attribution lag: the step happening (its event time) to the ledger holding it, by step.",
            explicit_bucket_boundaries_advisory=LEDGER_BUCKETS,
        )
        self._disbursed = meter.create_counter(
            "xsell.attribution.disbursed",
            unit="{minor_unit}",
            description="Disbursed amounts attributed to campaigns, in minor units (paise) by currency.",
        )

    def step(self, session: AsyncSession, step: str, at: datetime, outreach_at: datetime | None = None) -> None:
        def record() -> None:
            labels = {"step": step}
            self._steps.add(1, labels)
            self._to_ledger.record(max(0.0, (datetime.now(UTC) - at).total_seconds()), labels)
            if outreach_at is not None:
                self._since_outreach.record(max(0.0, (at - outreach_at).total_seconds()), labels)

        after_commit(session, record)

    def disbursed(self, session: AsyncSession, minor_units: int, currency: str) -> None:
        after_commit(session, lambda: self._disbursed.add(minor_units, {"currency": currency}))
