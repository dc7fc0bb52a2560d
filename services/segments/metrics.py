"""What an operator watches on the segments service besides the shared RPC, consumer and outbox instruments."""

from opentelemetry import metrics
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import after_commit


class SegmentsMetrics:
    """Counts that follow commits only: a batch that rolls back adds nothing."""

    def __init__(self) -> None:
        meter = metrics.get_meter("xsell.segments")
        self._events = meter.create_counter(
            "xsell.segments.events",
            unit="{event}",
            description="Events per ingest batch by transport (grpc, nats) and outcome (accepted, rejected).",
        )
        self._profiles = meter.create_counter(
            "xsell.segments.profiles", unit="{profile}", description="Profile upserts by outcome."
        )
        self._memberships = meter.create_counter(
            "xsell.segments.membership.changes",
            unit="{change}",
            description="People entering or leaving published segments (change = entered, exited).",
        )

    def events(self, session: AsyncSession, transport: str, accepted: int, rejected: int) -> None:
        after_commit(session, lambda: self._add(self._events, accepted, rejected, {"transport": transport}))

    def profiles(self, session: AsyncSession, transport: str, accepted: int, rejected: int) -> None:
        after_commit(session, lambda: self._add(self._profiles, accepted, rejected, {"transport": transport}))

    def membership_changes(self, session: AsyncSession, entered: int, exited: int) -> None:
        def add() -> None:
            if entered:
                self._memberships.add(entered, {"change": "entered"})
            if exited:
                self._memberships.add(exited, {"change": "exited"})

        after_commit(session, add)

    @staticmethod
    def _add(counter: metrics.Counter, accepted: int, rejected: int, labels: dict[str, str]) -> None:
        if accepted:
            counter.add(accepted, {**labels, "outcome": "accepted"})
        if rejected:
            counter.add(rejected, {**labels, "outcome": "rejected"})
