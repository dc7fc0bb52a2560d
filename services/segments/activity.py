"""Recording what people did and re-evaluating their memberships, shared by the API and the consumers."""

from collections.abc import Sequence
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.outbox import Outbox
from services import streams
from services.segments import maintenance, store
from services.segments.records import IncomingEvent
from xsell.segments.v1 import events_pb2


class Activity:
    """Every change to people's data goes through here; memberships and their events follow in one transaction."""

    def __init__(self, outbox: Outbox, tracer: trace.Tracer) -> None:
        self.outbox = outbox
        self.tracer = tracer

    async def record_events(self, session: AsyncSession, incoming: Sequence[IncomingEvent], now: datetime) -> None:
        """Stores events (repeated ids change nothing) and refreshes the memberships of the people involved."""
        touched = [event.profile_id for event in incoming]
        # Events may arrive before the CRM feed has sent the person: the event creates an empty
        # profile, and the feed's attributes fill it in later.
        await store.ensure_profiles(session, touched, now)
        await store.insert_events(session, incoming, now)
        await self.refresh(session, touched, now)

    async def refresh(self, session: AsyncSession, profile_ids: Sequence[str], now: datetime) -> None:
        """Re-evaluates every published segment for these people and announces who entered or exited."""
        with self.tracer.start_as_current_span("refresh memberships") as span:
            span.set_attribute("segments.profiles.touched", len(set(profile_ids)))
            changes = await maintenance.refresh(session, profile_ids, now)
            change_time = Timestamp()
            change_time.FromDatetime(now)
            messages = [
                events_pb2.MembershipChanged(
                    segment_id=c.segment_id,
                    segment_version=c.segment_version,
                    profile_id=c.profile_id,
                    change=events_pb2.MEMBERSHIP_CHANGE_ENTERED if c.entered else events_pb2.MEMBERSHIP_CHANGE_EXITED,
                    change_time=change_time,
                )
                for c in changes
            ]
            await self.outbox.add_rows(
                session, [self.outbox.event(streams.MEMBERSHIP_CHANGED, message) for message in messages]
            )
            entered = sum(1 for c in changes if c.entered)
            span.set_attribute("segments.memberships.entered", entered)
            span.set_attribute("segments.memberships.exited", len(changes) - entered)
