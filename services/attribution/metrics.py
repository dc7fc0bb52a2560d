"""What an operator watches on attribution: funnel steps as they land, and how far behind the ledger runs."""

from datetime import UTC, datetime

from opentelemetry import metrics
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import after_commit


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
        )
        self._to_ledger = meter.create_histogram(
            "xsell.attribution.lag.to_ledger",
            unit="s",
            description="Attribution lag: the step happening (its event time) to the ledger holding it, by step.",
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
