"""gRPC servicer of SegmentsService: proto in, validation and store calls, proto out."""

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import grpc
import structlog
from opentelemetry import trace
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.errors import PRECONDITION_REFERENCE, FailedPrecondition, InvalidArgument, NotFound
from plumbing.group_commit import Alone, GroupCommit, Submitted
from plumbing.grpc_server import caller_of
from plumbing.idempotency import Idempotency, require_request_id
from plumbing.ids import new_id
from plumbing.outbox import Outbox, utcnow
from plumbing.page_tokens import decode_token as _decode_token
from plumbing.page_tokens import encode_token as _encode_token
from plumbing.page_tokens import page_size as _page_size
from plumbing.times import time_field
from services import streams
from services.segments import governance, maintenance, records, store
from services.segments.activity import Activity, CatalogCache, IngestCall
from services.segments.api_audience import AudienceApi
from services.segments.api_catalog import CatalogApi
from services.segments.api_governance import GovernanceApi, validate_definition, version_ref
from services.segments.api_support import check_batch as _check_batch
from services.segments.api_support import (
    load_published,
    load_segment,
    load_version,
    membership_changed,
    segment_proto,
    segment_subject,
)
from services.segments.api_support import timestamp as _timestamp
from services.segments.api_suppressions import SuppressionsApi, suppression_proto
from services.segments.governance import Action
from services.segments.rules import parse_rule, references
from services.segments.settings import SegmentsSettings
from services.segments.values import Value, name_problem, to_proto
from xsell.segments.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc

log = structlog.get_logger(__name__)

SEGMENTS_PAGE_DEFAULT, SEGMENTS_PAGE_MAX = 50, 500
MEMBERS_PAGE_DEFAULT, MEMBERS_PAGE_MAX = 500, 5000
MAX_ATTRIBUTE_NAMES = 200
BATCH_GET_PROFILES_MAX = 1000
"""Profiles one BatchGetProfiles call returns at most: a bounded response and a bounded IN list."""
INGEST_CALLS_PER_COMMIT = 32
"""IngestEvents calls one transaction carries at most (each holds up to a batch limit of events)."""


def _profile_proto(profile_id: str, updated_at: datetime, attributes: Mapping[str, Value]) -> resources_pb2.Profile:
    return resources_pb2.Profile(
        profile_id=profile_id,
        attributes={name: to_proto(value) for name, value in attributes.items()},
        update_time=_timestamp(updated_at),
    )


class SegmentsApi(CatalogApi, GovernanceApi, AudienceApi, SuppressionsApi, service_pb2_grpc.SegmentsServiceServicer):
    """Every RPC runs in one transaction: the change, its membership updates and their events commit together."""

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        settings: SegmentsSettings,
        tracer: trace.Tracer,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.idempotency = Idempotency(store.idempotency)
        self.retention = timedelta(days=settings.event_retention_days)
        self.future_skew = timedelta(seconds=settings.future_skew_seconds)
        self.tracer = tracer
        self.address_attributes = dict(settings.address_attributes)
        self.activity = Activity(
            outbox, tracer, CatalogCache(settings.catalog_cache_seconds), address_attributes=self.address_attributes
        )
        self.ingest_calls: GroupCommit[IngestCall, service_pb2.IngestEventsResponse] = GroupCommit(
            "ingest events",
            self._ingest_batch,
            max_batch=INGEST_CALLS_PER_COMMIT,
            alone=self._ingest_alone,
            tracer=tracer,
            # A concurrent duplicate (another replica's, a retry of a call in flight) committed its request_id first:
            # alone, run_once answers with its answer.
            alone_after=(IntegrityError,),
        )
        self.require_approval = settings.require_approval
        self.consent_attributes = dict(settings.consent_attributes)
        self.stream_page_size = settings.stream_page_size

    # --- ingestion ----------------------------------------------------------------------------

    async def UpsertProfiles(
        self, request: service_pb2.UpsertProfilesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.UpsertProfilesResponse:
        _check_batch(len(request.profiles), "profiles")
        now = utcnow()

        # Once per request_id: a retry, or a concurrent duplicate that lost the race, gets the first answer.
        response = await self.idempotency.run_once(
            self.db,
            "UpsertProfiles",
            request,
            service_pb2.UpsertProfilesResponse,
            lambda session: self.activity.apply_profiles(session, request, now, transport="grpc"),
        )
        log.info("profiles_upserted", accepted=response.accepted_count, rejected=len(response.errors))
        return response

    async def IngestEvents(
        self, request: service_pb2.IngestEventsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.IngestEventsResponse:
        _check_batch(len(request.events), "events")
        now = utcnow()
        incoming, problems = records.validate_events(
            request.events, now, retention=self.retention, future_skew=self.future_skew
        )
        span = trace.get_current_span()
        span.set_attribute("segments.batch.size", len(request.events))
        span.set_attribute("segments.batch.rejected", len(problems))

        require_request_id(request)
        # Calls made at the same time share one transaction: under load the writer's fixed cost per
        # commit (idempotency, membership refresh per dependency level, the commit) is paid once per batch.
        response = await self.ingest_calls.submit(IngestCall(request, incoming, problems, "grpc"))
        log.info("events_ingested", accepted=response.accepted_count, rejected=len(problems))
        return response

    async def _ingest_batch(
        self, batch: Sequence[Submitted[IngestCall]]
    ) -> list[service_pb2.IngestEventsResponse | Alone | BaseException]:
        async with self.db.transaction() as session:
            return await self.activity.apply_calls(session, batch, utcnow())

    async def _ingest_alone(self, call: IngestCall) -> service_pb2.IngestEventsResponse:
        """One call in its own transaction: a batch that failed, or a request_id its batch already had."""

        async def apply(session: AsyncSession) -> service_pb2.IngestEventsResponse:
            return await self.activity.apply_events(
                session, call.request, call.incoming, call.problems, utcnow(), transport=call.transport
            )

        # Once per request_id: a retry, or a concurrent duplicate that lost the race, gets the first answer.
        return await self.idempotency.run_once(
            self.db, "IngestEvents", call.request, service_pb2.IngestEventsResponse, apply
        )

    async def GetProfile(
        self, request: service_pb2.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetProfileResponse:
        if not request.profile_id:
            raise InvalidArgument("profile_id is required", field="profile_id")
        async with self.db.snapshot() as session:
            found = await store.get_profile(session, request.profile_id)
        if found is None:
            raise NotFound(f"profile {request.profile_id} not found; create it with UpsertProfiles", field="profile_id")
        updated_at, attributes = found
        return service_pb2.GetProfileResponse(profile=_profile_proto(request.profile_id, updated_at, attributes))

    async def BatchGetProfiles(
        self, request: service_pb2.BatchGetProfilesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.BatchGetProfilesResponse:
        if len(request.profile_ids) > BATCH_GET_PROFILES_MAX:
            raise InvalidArgument(
                f"{len(request.profile_ids)} ids, at most {BATCH_GET_PROFILES_MAX} per call: split the batch",
                field="profile_ids",
            )
        for index, profile_id in enumerate(request.profile_ids):
            if not profile_id:
                raise InvalidArgument("empty; every entry must be a profile id", field=f"profile_ids[{index}]")
        profile_ids = list(dict.fromkeys(request.profile_ids))
        at = time_field(request, "at_time", utcnow())
        # One snapshot: a person's attributes and suppressions are read at the same moment.
        async with self.db.snapshot() as session:
            updated = await store.profiles_updated_at(session, profile_ids)
            found = [p for p in profile_ids if p in updated]
            attributes = await store.attributes_of(session, found, None)
            suppressed = await store.suppressions_in_force_of(session, found, at)
        response = service_pb2.BatchGetProfilesResponse(
            missing_profile_ids=[p for p in profile_ids if p not in updated]
        )
        for profile_id in found:
            response.profiles.add(
                profile=_profile_proto(profile_id, updated[profile_id], attributes.get(profile_id, {})),
                suppressions=[suppression_proto(r) for r in suppressed.get(profile_id, [])],
            )
        return response

    # --- segments -----------------------------------------------------------------------------

    async def CreateSegment(
        self, request: service_pb2.CreateSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.CreateSegmentResponse:
        given = request.segment
        if not given.display_name.strip():
            raise InvalidArgument("display_name is required, e.g. 'SIP-only investors'", field="segment.display_name")
        if not given.HasField("rule"):
            raise InvalidArgument(
                "rule is required: the condition a profile must satisfy, e.g. an event or attribute condition",
                field="segment.rule",
            )
        definition = validate_definition(given.display_name, given.description, given.rule, prefix="segment.")
        author = caller_of(context)
        now = utcnow()
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "CreateSegment", request, service_pb2.CreateSegmentResponse
            )
            if previous is not None:
                return previous
            await self._check_references(session, definition.rule, None)
            segment_id = new_id("seg_")
            head = store.SegmentRow(
                segment_id=segment_id,
                display_name=definition.display_name,
                description=definition.description,
                rule=definition.rule_bytes,
                state=store.DRAFT,
                version=1,
                member_count=0,
                create_time=now,
                publish_time=None,
            )
            await store.insert_segment(session, head)
            version = definition.version_row(segment_id, 1, author, now)
            await store.insert_version(session, version)
            await store.add_audit(session, segment_id, 1, Action.CREATED, author, now)
            response = service_pb2.CreateSegmentResponse(segment=segment_proto(head, version))
            await self.idempotency.remember(session, "CreateSegment", request, response)
        trace.get_current_span().set_attribute("segment.id", segment_id)
        log.info("segment_created", segment_id=segment_id)
        return response

    async def GetSegment(
        self, request: service_pb2.GetSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetSegmentResponse:
        async with self.db.snapshot() as session:
            head = await load_segment(session, request.segment_id)
            version = await load_version(session, head, request.version)
        return service_pb2.GetSegmentResponse(segment=segment_proto(head, version))

    async def ListSegments(
        self, request: service_pb2.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListSegmentsResponse:
        size = _page_size(request.page_size, SEGMENTS_PAGE_DEFAULT, SEGMENTS_PAGE_MAX)
        before = _decode_token("ListSegments", request.page_token, {}, "before")
        async with self.db.snapshot() as session:
            rows = await store.list_segments(session, before, size + 1)
            page = rows[:size]
            latest = await store.latest_versions(session, [r.segment_id for r in page])
        token = _encode_token("ListSegments", {"before": page[-1].segment_id}) if len(rows) > size else ""
        return service_pb2.ListSegmentsResponse(
            segments=[segment_proto(r, latest[r.segment_id]) for r in page], next_page_token=token
        )

    async def PublishSegment(
        self, request: service_pb2.PublishSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.PublishSegmentResponse:
        """Publishes the segment's latest version (APPROVED unless require_approval is off).

        Idempotent by state: publishing the version that is already published returns it unchanged,
        so the request_id needs no table of its own.
        """
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        actor = caller_of(context)
        now = utcnow()
        async with self.db.transaction() as session:
            await store.lock_maintenance(session)
            head = await load_segment(session, request.segment_id, for_update=True)
            if head.state == store.ARCHIVED:
                raise FailedPrecondition(
                    f"segment {head.segment_id} is ARCHIVED; create a new segment instead",
                    field="segment_id",
                    subject=segment_subject(head.segment_id),
                )
            version = await load_version(session, head, 0)
            if version.state == store.PUBLISHED:
                return service_pb2.PublishSegmentResponse(segment=segment_proto(head, version))
            try:
                governance.publishable(version_ref(version), require_approval=self.require_approval)
            except governance.TransitionRefused as refused:
                raise FailedPrecondition(
                    refused.message, field="segment_id", subject=segment_subject(head.segment_id), kind=refused.kind
                ) from None
            rule = parse_rule(resources_pb2.Rule.FromString(version.rule))
            referenced = list(references(rule))
            states = await store.segment_states(session, (r.segment_id for r in referenced))
            for reference in referenced:
                state = states.get(reference.segment_id, "missing")
                if state != store.PUBLISHED:
                    raise FailedPrecondition(
                        f"segment {head.segment_id} refers to segment {reference.segment_id}, which is {state}; "
                        f"publish {reference.segment_id} first",
                        field=reference.path,
                        subject=segment_subject(reference.segment_id),
                        kind=PRECONDITION_REFERENCE,
                    )
            await self._check_references(session, rule, head.segment_id)
            with self.tracer.start_as_current_span("compute members", attributes={"segment.id": head.segment_id}):
                count, changes = await maintenance.publish_version(session, head, version, rule, now)
            if head.state == store.PUBLISHED:
                await store.set_version_state(session, head.segment_id, head.version, store.ARCHIVED, now)
            await store.set_version_state(session, head.segment_id, version.version, store.PUBLISHED, now)
            await store.add_audit(session, head.segment_id, version.version, Action.PUBLISHED, actor, now)
            await self.outbox.add(
                session,
                streams.SEGMENT_PUBLISHED,
                events_pb2.SegmentPublished(
                    segment_id=head.segment_id,
                    version=version.version,
                    member_count=count,
                    publish_time=_timestamp(now),
                ),
            )
            await self.outbox.add_rows(
                session,
                [self.outbox.event(streams.MEMBERSHIP_CHANGED, m) for m in membership_changed(changes, now)],
            )
            published = await load_segment(session, head.segment_id)
            published_version = await load_version(session, published, version.version)
        trace.get_current_span().set_attribute("segments.members", count)
        log.info("segment_published", segment_id=head.segment_id, version=version.version, members=count)
        return service_pb2.PublishSegmentResponse(segment=segment_proto(published, published_version))

    async def ListSegmentMembers(
        self, request: service_pb2.ListSegmentMembersRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListSegmentMembersResponse:
        size = _page_size(request.page_size, MEMBERS_PAGE_DEFAULT, MEMBERS_PAGE_MAX)
        names = list(dict.fromkeys(request.attribute_names))
        if len(names) > MAX_ATTRIBUTE_NAMES:
            raise InvalidArgument(
                f"at most {MAX_ATTRIBUTE_NAMES} attribute_names per request, got {len(names)}", field="attribute_names"
            )
        for i, name in enumerate(names):
            if problem := name_problem(name, "attribute name"):
                raise InvalidArgument(problem, field=f"attribute_names[{i}]")
        after = _decode_token("ListSegmentMembers", request.page_token, {"segment": request.segment_id}, "after")
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        async with self.db.snapshot() as session:
            row = await load_published(session, request.segment_id)
            page = await store.members_page(session, row.segment_id, after, size + 1)
            members = page[:size]
            values = await store.attributes_of(session, [pid for pid, _ in members], names)
        token = (
            _encode_token("ListSegmentMembers", {"segment": row.segment_id, "after": members[-1][0]})
            if len(page) > size
            else ""
        )
        trace.get_current_span().set_attribute("segments.page.size", len(members))
        return service_pb2.ListSegmentMembersResponse(
            members=[
                resources_pb2.Member(
                    profile_id=pid,
                    attributes={name: to_proto(value) for name, value in values.get(pid, {}).items()},
                    enter_time=_timestamp(entered_at),
                )
                for pid, entered_at in members
            ],
            next_page_token=token,
        )

    async def CheckMembership(
        self, request: service_pb2.CheckMembershipRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.CheckMembershipResponse:
        if not request.profile_id:
            raise InvalidArgument("profile_id is required", field="profile_id")
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        async with self.db.snapshot() as session:
            row = await load_published(session, request.segment_id)
            member = await store.is_member(session, row.segment_id, request.profile_id)
        return service_pb2.CheckMembershipResponse(is_member=member, segment_version=row.version)
