"""gRPC servicer of SegmentsService: proto in, validation and store calls, proto out."""

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime, timedelta

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.errors import FailedPrecondition, InvalidArgument, NotFound
from plumbing.idempotency import Idempotency
from plumbing.ids import new_id
from plumbing.outbox import Outbox, utcnow
from services import streams
from services.segments import maintenance, records, store
from services.segments.activity import Activity, CatalogCache
from services.segments.api_audience import AudienceApi
from services.segments.api_catalog import CatalogApi
from services.segments.api_governance import GovernanceApi
from services.segments.api_suppressions import SuppressionsApi
from services.segments.rules import RuleError, parse_rule, references
from services.segments.settings import SegmentsSettings
from services.segments.values import name_problem, to_proto
from xsell.segments.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc
from xsell.type.v1 import record_error_pb2

log = structlog.get_logger(__name__)

SEGMENTS_PAGE_DEFAULT, SEGMENTS_PAGE_MAX = 50, 500
MEMBERS_PAGE_DEFAULT, MEMBERS_PAGE_MAX = 500, 5000
MAX_DISPLAY_NAME, MAX_DESCRIPTION = 200, 2000
MAX_ATTRIBUTE_NAMES = 200


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _encode_token(payload: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_token(token: str, expected: dict[str, str], key: str) -> str | None:
    """The keyset value of a page token made for the same request, or None for the first page."""
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get(key), str):
        raise InvalidArgument(
            "page_token is not one this service issued; pass next_page_token unchanged", field="page_token"
        )
    if any(payload.get(name) != value for name, value in expected.items()):
        raise InvalidArgument("page_token belongs to a different request; start again without it", field="page_token")
    return str(payload[key])


def _page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument(
            f"page_size must be 0 (default {default}) or positive, got {requested}", field="page_size"
        )
    # Sizes above the maximum are served at the maximum (AIP-158) rather than rejected.
    return min(requested or default, maximum)


def _check_batch(size: int, name: str) -> None:
    if not 1 <= size <= records.MAX_BATCH:
        raise InvalidArgument(f"{name} must hold 1 to {records.MAX_BATCH} records per request, got {size}", field=name)


def _record_errors(problems: Sequence[records.RecordProblem]) -> list[record_error_pb2.RecordError]:
    return [
        record_error_pb2.RecordError(index=p.index, record_id=p.record_id, field=p.field, reason=p.reason)
        for p in problems
    ]


def segment_proto(row: store.SegmentRow) -> resources_pb2.Segment:
    segment = resources_pb2.Segment(
        segment_id=row.segment_id,
        display_name=row.display_name,
        description=row.description,
        rule=resources_pb2.Rule.FromString(row.rule),
        state=resources_pb2.SegmentState.Value(f"SEGMENT_STATE_{row.state}"),
        version=row.version,
        member_count=row.member_count,
        create_time=_timestamp(row.create_time),
    )
    if row.publish_time is not None:
        segment.publish_time.CopyFrom(_timestamp(row.publish_time))
    return segment


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
        self.activity = Activity(outbox, tracer, CatalogCache(settings.catalog_cache_seconds))

    # --- ingestion ----------------------------------------------------------------------------

    async def UpsertProfiles(
        self, request: service_pb2.UpsertProfilesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.UpsertProfilesResponse:
        _check_batch(len(request.profiles), "profiles")
        now = utcnow()
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "UpsertProfiles", request, service_pb2.UpsertProfilesResponse
            )
            if previous is not None:
                return previous
            catalog = await self.activity.catalog.get(session)
            updates, problems = records.validate_profiles(request.profiles, catalog)
            span = trace.get_current_span()
            span.set_attribute("segments.batch.size", len(request.profiles))
            span.set_attribute("segments.batch.rejected", len(problems))
            await store.upsert_profiles(session, updates, now)
            await self.activity.refresh(session, [u.profile_id for u in updates], now)
            response = service_pb2.UpsertProfilesResponse(
                accepted_count=len(request.profiles) - len(problems), errors=_record_errors(problems)
            )
            await self.idempotency.remember(session, "UpsertProfiles", request, response)
        log.info("profiles_upserted", accepted=response.accepted_count, rejected=len(problems))
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
        async with self.db.transaction() as session:
            response = await self.activity.ingest(session, request, incoming, problems, now)
        log.info("events_ingested", accepted=response.accepted_count, rejected=len(problems))
        return response

    async def GetProfile(
        self, request: service_pb2.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetProfileResponse:
        if not request.profile_id:
            raise InvalidArgument("profile_id is required", field="profile_id")
        async with self.db.transaction() as session:
            found = await store.get_profile(session, request.profile_id)
        if found is None:
            raise NotFound(f"profile {request.profile_id} not found; create it with UpsertProfiles", field="profile_id")
        updated_at, attributes = found
        profile = resources_pb2.Profile(
            profile_id=request.profile_id,
            attributes={name: to_proto(value) for name, value in attributes.items()},
            update_time=_timestamp(updated_at),
        )
        return service_pb2.GetProfileResponse(profile=profile)

    # --- segments -----------------------------------------------------------------------------

    async def CreateSegment(
        self, request: service_pb2.CreateSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.CreateSegmentResponse:
        given = request.segment
        display_name = given.display_name.strip()
        if not display_name:
            raise InvalidArgument("display_name is required, e.g. 'SIP-only investors'", field="segment.display_name")
        if len(display_name) > MAX_DISPLAY_NAME:
            raise InvalidArgument(
                f"display_name must be at most {MAX_DISPLAY_NAME} characters, got {len(display_name)}",
                field="segment.display_name",
            )
        if len(given.description) > MAX_DESCRIPTION:
            raise InvalidArgument(
                f"description must be at most {MAX_DESCRIPTION} characters", field="segment.description"
            )
        if not given.HasField("rule"):
            raise InvalidArgument(
                "rule is required: the condition a profile must satisfy, e.g. an event or attribute condition",
                field="segment.rule",
            )
        try:
            rule = parse_rule(given.rule)
        except RuleError as error:
            raise InvalidArgument(error.message, field=error.path) from None
        now = utcnow()
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "CreateSegment", request, service_pb2.CreateSegmentResponse
            )
            if previous is not None:
                return previous
            referenced = list(references(rule))
            states = await store.segment_states(session, (r.segment_id for r in referenced))
            for reference in referenced:
                state = states.get(reference.segment_id)
                if state is None:
                    raise InvalidArgument(
                        f"segment {reference.segment_id} does not exist; refer to the id of an existing segment",
                        field=reference.path,
                    )
                if state == store.ARCHIVED:
                    raise InvalidArgument(
                        f"segment {reference.segment_id} is ARCHIVED; refer to a draft or published segment",
                        field=reference.path,
                    )
            row = store.SegmentRow(
                segment_id=new_id("seg_"),
                display_name=display_name,
                description=given.description,
                rule=given.rule.SerializeToString(deterministic=True),
                state=store.DRAFT,
                version=1,
                member_count=0,
                create_time=now,
                publish_time=None,
            )
            await store.insert_segment(session, row)
            response = service_pb2.CreateSegmentResponse(segment=segment_proto(row))
            await self.idempotency.remember(session, "CreateSegment", request, response)
        trace.get_current_span().set_attribute("segment.id", row.segment_id)
        log.info("segment_created", segment_id=row.segment_id)
        return response

    async def GetSegment(
        self, request: service_pb2.GetSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetSegmentResponse:
        async with self.db.transaction() as session:
            row = await self._segment(session, request.segment_id)
        return service_pb2.GetSegmentResponse(segment=segment_proto(row))

    async def ListSegments(
        self, request: service_pb2.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListSegmentsResponse:
        size = _page_size(request.page_size, SEGMENTS_PAGE_DEFAULT, SEGMENTS_PAGE_MAX)
        before = _decode_token(request.page_token, {}, "before")
        async with self.db.transaction() as session:
            rows = await store.list_segments(session, before, size + 1)
        page = rows[:size]
        token = _encode_token({"before": page[-1].segment_id}) if len(rows) > size else ""
        return service_pb2.ListSegmentsResponse(segments=[segment_proto(r) for r in page], next_page_token=token)

    async def PublishSegment(
        self, request: service_pb2.PublishSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.PublishSegmentResponse:
        # Publishing is idempotent by state (a published segment comes back unchanged), so the
        # request_id needs no table of its own.
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        now = utcnow()
        async with self.db.transaction() as session:
            row = await self._segment(session, request.segment_id, for_update=True)
            if row.state == store.PUBLISHED:
                return service_pb2.PublishSegmentResponse(segment=segment_proto(row))
            if row.state == store.ARCHIVED:
                raise FailedPrecondition(
                    f"segment {row.segment_id} is ARCHIVED; create a new segment instead", field="segment_id"
                )
            rule = maintenance.stored_rule(row)
            referenced = list(references(rule))
            states = await store.segment_states(session, (r.segment_id for r in referenced))
            for reference in referenced:
                state = states.get(reference.segment_id, "missing")
                if state != store.PUBLISHED:
                    raise FailedPrecondition(
                        f"segment {row.segment_id} refers to segment {reference.segment_id}, which is {state}; "
                        f"publish {reference.segment_id} first",
                        field=reference.path,
                    )
            with self.tracer.start_as_current_span("compute members", attributes={"segment.id": row.segment_id}):
                count = await maintenance.publish(session, row, rule, now)
            await self.outbox.add(
                session,
                streams.SEGMENT_PUBLISHED,
                events_pb2.SegmentPublished(
                    segment_id=row.segment_id, version=row.version, member_count=count, publish_time=_timestamp(now)
                ),
            )
            published = await self._segment(session, row.segment_id)
        trace.get_current_span().set_attribute("segments.members", count)
        log.info("segment_published", segment_id=row.segment_id, members=count)
        return service_pb2.PublishSegmentResponse(segment=segment_proto(published))

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
        after = _decode_token(request.page_token, {"segment": request.segment_id}, "after")
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        async with self.db.transaction() as session:
            row = await self._published(session, request.segment_id)
            page = await store.members_page(session, row.segment_id, after, size + 1)
            members = page[:size]
            values = await store.attributes_of(session, [pid for pid, _ in members], names)
        token = _encode_token({"segment": row.segment_id, "after": members[-1][0]}) if len(page) > size else ""
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
        async with self.db.transaction() as session:
            row = await self._published(session, request.segment_id)
            member = await store.is_member(session, row.segment_id, request.profile_id)
        return service_pb2.CheckMembershipResponse(is_member=member, segment_version=row.version)

    # --- helpers ------------------------------------------------------------------------------

    async def _segment(self, session: AsyncSession, segment_id: str, *, for_update: bool = False) -> store.SegmentRow:
        if not segment_id:
            raise InvalidArgument("segment_id is required", field="segment_id")
        row = await store.get_segment(session, segment_id, for_update=for_update)
        if row is None:
            raise NotFound(f"segment {segment_id} not found; ListSegments shows the existing ones", field="segment_id")
        return row

    async def _published(self, session: AsyncSession, segment_id: str) -> store.SegmentRow:
        row = await self._segment(session, segment_id)
        if row.state != store.PUBLISHED:
            raise FailedPrecondition(
                f"segment {segment_id} is {row.state}; publish it with PublishSegment first", field="segment_id"
            )
        return row
