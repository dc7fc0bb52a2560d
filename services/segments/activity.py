"""Recording what people did and re-evaluating their memberships, shared by the API and the consumers."""

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.group_commit import ALONE, Alone, Submitted
from plumbing.idempotency import Idempotency, RequestKey, scope_in
from plumbing.outbox import Outbox
from services import streams
from services.segments import maintenance, records, store, suppressions
from services.segments.catalog import Catalog
from services.segments.computed import ComputedDefinition
from services.segments.metrics import SegmentsMetrics
from services.segments.records import IncomingEvent, RecordProblem, record_errors
from xsell.segments.v1 import events_pb2, service_pb2

log = structlog.get_logger(__name__)

CATALOG_CACHE_SECONDS = 5.0


class CatalogCache:
    """The attribute catalog in memory, so a batch costs no catalog query.

    This process reloads it after its own DefineAttributes commits (invalidate); another replica's
    declarations are seen at most `ttl_seconds` later.
    """

    def __init__(self, ttl_seconds: float = CATALOG_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._catalog: Catalog | None = None
        self._loaded_at = 0.0
        self._generation = 0

    async def get(self, session: AsyncSession) -> Catalog:
        if self._catalog is not None and self.clock() - self._loaded_at < self.ttl_seconds:
            return self._catalog
        generation, started = self._generation, self.clock()
        catalog = await store.load_catalog(session)
        # A load that began before an invalidation may predate the commit; use it once, do not keep it.
        if generation == self._generation:
            self._catalog, self._loaded_at = catalog, started
        return catalog

    def invalidate(self) -> None:
        self._generation += 1
        self._catalog = None


@dataclass(frozen=True)
class IngestCall:
    """One validated IngestEvents call waiting to share a transaction with the calls made beside it."""

    request: service_pb2.IngestEventsRequest
    incoming: Sequence[IncomingEvent]
    problems: Sequence[RecordProblem]
    transport: str


class Activity:
    """Every change to people's data goes through here; memberships and their events follow in one transaction."""

    def __init__(
        self,
        outbox: Outbox,
        tracer: trace.Tracer,
        catalog: CatalogCache | None = None,
        *,
        address_attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.outbox = outbox
        self.address_attributes = dict(address_attributes or {})
        self.tracer = tracer
        self.catalog = catalog or CatalogCache()
        self.idempotency = Idempotency(store.idempotency)
        self.refresher = maintenance.Refresher()
        self.metrics = SegmentsMetrics()

    async def upsert_profiles(
        self, session: AsyncSession, request: service_pb2.UpsertProfilesRequest, now: datetime, *, transport: str
    ) -> service_pb2.UpsertProfilesResponse:
        """Applies an UpsertProfiles batch once per request_id, in the caller's transaction (the NATS path).

        A request_id seen before (by either path) returns the first response and changes nothing.
        """
        return await self.idempotency.once_in(
            session,
            "UpsertProfiles",
            request,
            service_pb2.UpsertProfilesResponse,
            lambda session: self.apply_profiles(session, request, now, transport=transport),
        )

    async def apply_profiles(
        self, session: AsyncSession, request: service_pb2.UpsertProfilesRequest, now: datetime, *, transport: str
    ) -> service_pb2.UpsertProfilesResponse:
        """Validates and stores a batch of profiles, lifts what their new addresses make moot and refreshes their
        memberships; the caller provides the once-per-request_id guard."""
        catalog = await self.catalog.get(session)
        updates, found = records.validate_profiles(request.profiles, catalog)
        span = trace.get_current_span()
        span.set_attribute("segments.batch.size", len(request.profiles))
        span.set_attribute("segments.batch.rejected", len(found))
        people = [u.profile_id for u in updates]
        created = set(people) - await store.existing_profiles(session, people)
        # The stored addresses are read before the upsert replaces them; suppressions are written after it, once the
        # profiles are locked, in the order the engagement consumer takes them (profile, then suppressions), so the
        # two never wait on each other in a cycle on PostgreSQL.
        moved = await self._address_changes(session, updates)
        await store.upsert_profiles(session, updates, now)
        lifted = await self._lift_bounces_of_changed_addresses(session, moved, now)
        span.set_attribute("segments.hard_bounces_lifted", lifted)
        changed = maintenance.Changed(attributes=frozenset(name for u in updates for name in u.attributes))
        await self.refresh(session, people, now, changed=changed, new_profiles=created)
        response = service_pb2.UpsertProfilesResponse(
            accepted_count=len(request.profiles) - len(found), errors=record_errors(found)
        )
        self.metrics.profiles(session, transport, response.accepted_count, len(found))
        return response

    async def _address_changes(
        self, session: AsyncSession, updates: Sequence[records.ProfileUpdate]
    ) -> dict[str, tuple[list[str], list[str]]]:
        """Per channel, who gets a new address (a value other than the stored one), and of them who replaces one
        (not given for the first time); read before the upsert replaces the stored values."""
        addresses = set(self.address_attributes.values())
        naming = sorted({u.profile_id for u in updates if addresses & set(u.attributes)})
        if not naming:
            return {}
        # One read of the stored addresses for every channel the batch names.
        stored = await store.attributes_of(session, naming, sorted(addresses))
        moved: dict[str, tuple[list[str], list[str]]] = {}
        for channel, attribute in self.address_attributes.items():
            changed = [
                u.profile_id
                for u in updates
                if attribute in u.attributes and stored.get(u.profile_id, {}).get(attribute) != u.attributes[attribute]
            ]
            moved[channel] = (changed, [pid for pid in changed if stored.get(pid, {}).get(attribute) is not None])
        return moved

    async def _lift_bounces_of_changed_addresses(
        self, session: AsyncSession, moved: Mapping[str, tuple[list[str], list[str]]], now: datetime
    ) -> int:
        """A new address lifts the channel's hard_bounce, dnd_registry and unreachable suppressions: the address that
        bounced, the number on the registry or not on WhatsApp, is gone. The CRM's daily feed of unchanged addresses
        lifts nothing. A replaced address (not one given for the first time) is noted with its time, so that a bounce
        still to come about the old one suppresses nothing."""
        lifted = 0
        for channel, (changed, replaced) in moved.items():
            lifted += await store.delete_suppressions(session, changed, channel, suppressions.ADDRESS_REASONS)
            await store.note_address_changes(session, replaced, channel, now)
        if lifted:
            log.info("hard_bounces_lifted", count=lifted)
        return lifted

    async def ingest(
        self,
        session: AsyncSession,
        request: service_pb2.IngestEventsRequest,
        incoming: Sequence[IncomingEvent],
        problems: Sequence[RecordProblem],
        now: datetime,
        *,
        transport: str,
    ) -> service_pb2.IngestEventsResponse:
        """Applies a validated IngestEvents batch once per request_id, in the caller's transaction (the NATS path).

        A request_id seen before returns the first response and changes nothing.
        """
        return await self.idempotency.once_in(
            session,
            "IngestEvents",
            request,
            service_pb2.IngestEventsResponse,
            lambda session: self.apply_events(session, request, incoming, problems, now, transport=transport),
        )

    async def apply_events(
        self,
        session: AsyncSession,
        request: service_pb2.IngestEventsRequest,
        incoming: Sequence[IncomingEvent],
        problems: Sequence[RecordProblem],
        now: datetime,
        *,
        transport: str,
    ) -> service_pb2.IngestEventsResponse:
        """Records a validated batch and answers it; the caller provides the once-per-request_id guard."""
        await self.record_events(session, incoming, now)
        response = service_pb2.IngestEventsResponse(
            accepted_count=len(request.events) - len(problems), errors=record_errors(problems)
        )
        self.metrics.events(session, transport, response.accepted_count, len(problems))
        return response

    async def apply_calls(
        self, session: AsyncSession, batch: Sequence[Submitted[IngestCall]], now: datetime
    ) -> list[service_pb2.IngestEventsResponse | Alone | BaseException]:
        """Applies concurrent IngestEvents calls in the caller's one transaction (a group commit): their events
        are recorded and memberships refreshed once for all, each call answered and remembered by request_id.

        A request_id seen before gets its first answer; a second call with the same request_id (and scope) in the
        batch is left ALONE, so it runs after this commit and finds the first one's answer.
        """
        requests = [submitted.item.request for submitted in batch]
        scopes = [scope_in(submitted.context) for submitted in batch]
        outcomes: list[service_pb2.IngestEventsResponse | Alone | BaseException] = [ALONE] * len(batch)
        firsts: dict[RequestKey, int] = {}
        for index, request in enumerate(requests):
            firsts.setdefault((scopes[index], request.request_id), index)
        previous = await self.idempotency.previous_many(
            session,
            "IngestEvents",
            [(scopes[i], requests[i]) for i in firsts.values()],
            service_pb2.IngestEventsResponse,
        )
        fresh = []
        for key, index in firsts.items():
            if key in previous:
                outcomes[index] = previous[key]
            else:
                fresh.append(index)
        await self.record_events(session, [event for i in fresh for event in batch[i].item.incoming], now)
        answered = []
        for index in fresh:
            call = batch[index].item
            response = service_pb2.IngestEventsResponse(
                accepted_count=len(call.request.events) - len(call.problems), errors=record_errors(call.problems)
            )
            self.metrics.events(session, call.transport, response.accepted_count, len(call.problems))
            outcomes[index] = response
            answered.append((scopes[index], call.request, response))
        await self.idempotency.remember_many(session, "IngestEvents", answered)
        return outcomes

    async def record_events(self, session: AsyncSession, incoming: Sequence[IncomingEvent], now: datetime) -> None:
        """Stores events (repeated ids change nothing), recomputes the computed attributes they feed, and
        refreshes the memberships of the people involved, in that order, so rules see the new values."""
        if not incoming:
            return
        touched = [event.profile_id for event in incoming]
        # Events may arrive before the CRM feed has sent the person: the event creates an empty
        # profile, and the feed's attributes fill it in later.
        created = await store.ensure_profiles(session, touched, now)
        await store.lock_profiles(session, touched)
        await store.insert_events(session, incoming, now)
        derived = await self.recompute(session, incoming, now)
        changed = maintenance.Changed(
            events=frozenset(event.name for event in incoming), attributes=frozenset(d.attribute for d in derived)
        )
        await self.refresh(session, touched, now, changed=changed, new_profiles=created)

    async def recompute(
        self, session: AsyncSession, incoming: Sequence[IncomingEvent], now: datetime
    ) -> list[ComputedDefinition]:
        """Recomputes, for the people who sent them, the computed attributes that aggregate these events (the
        caller holds those people's locks); returns the attributes it recomputed."""
        catalog = await self.catalog.get(session)
        derived = catalog.computed_from(event.name for event in incoming)
        if not derived:
            return []
        with self.tracer.start_as_current_span("recompute computed attributes") as span:
            span.set_attribute("segments.computed.attributes", len(derived))
            for definition in derived:
                people = sorted({e.profile_id for e in incoming if e.name == definition.event_name})
                await store.recompute(session, [definition], people, now)
        return derived

    async def refresh(
        self,
        session: AsyncSession,
        profile_ids: Sequence[str],
        now: datetime,
        *,
        changed: maintenance.Changed | None = None,
        new_profiles: Collection[str] = (),
    ) -> None:
        """Re-evaluates the published segments `changed` can affect (all when None) for these people, every
        segment for `new_profiles`, and announces who entered or exited."""
        with self.tracer.start_as_current_span("refresh memberships") as span:
            span.set_attribute("segments.profiles.touched", len(set(profile_ids)))
            changes = await self.refresher.refresh(
                session, profile_ids, now, changed=changed, new_profiles=new_profiles
            )
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
            self.metrics.membership_changes(session, entered, len(changes) - entered)
            span.set_attribute("segments.memberships.entered", entered)
            span.set_attribute("segments.memberships.exited", len(changes) - entered)
