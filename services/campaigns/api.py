"""CampaignsService over gRPC: proto in, domain and store calls, proto out; errors are plumbing.errors types."""

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.errors import Aborted, InvalidArgument, NotFound
from plumbing.idempotency import Idempotency
from plumbing.ids import new_id
from plumbing.outbox import utcnow
from services.campaigns import store
from services.campaigns.campaigns import CampaignState, plan_launch, require_published, validate_spec
from services.campaigns.messages import campaign_proto, campaign_values, outreach_proto, spec_from_proto
from services.campaigns.segments_client import SegmentsClient
from xsell.campaigns.v1 import service_pb2, service_pb2_grpc

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=Message)

DEFAULT_CAMPAIGN_PAGE, MAX_CAMPAIGN_PAGE = 50, 500
DEFAULT_OUTREACH_PAGE, MAX_OUTREACH_PAGE = 100, 1000


def _page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument(f"page_size must be between 0 and {maximum} (0 means {default})", field="page_size")
    return min(requested or default, maximum)


def _encode_token(payload: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_token(token: str, expected_keys: set[str]) -> dict[str, str]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as error:
        raise InvalidArgument(
            "page_token is not a token this service issued; pass next_page_token unchanged", field="page_token"
        ) from error
    if not isinstance(payload, dict) or set(payload) != expected_keys:
        raise InvalidArgument(
            "page_token is not a token this service issued; pass next_page_token unchanged", field="page_token"
        )
    return payload


class CampaignsApi(service_pb2_grpc.CampaignsServiceServicer):
    def __init__(
        self,
        db: Database,
        idempotency: Idempotency,
        segments: SegmentsClient,
        *,
        default_time_zone: str,
        on_launch: Callable[[], None],
    ) -> None:
        self.db = db
        self.idempotency = idempotency
        self.segments = segments
        self.default_time_zone = default_time_zone
        self.on_launch = on_launch

    async def _idempotent(
        self, method: str, request: Message, response_type: type[R], work: Callable[[AsyncSession], Awaitable[R]]
    ) -> R:
        """Runs `work(session)` once per request_id; a concurrent duplicate that lost the race gets the first answer."""
        try:
            async with self.db.transaction() as session:
                if (previous := await self.idempotency.previous(session, method, request, response_type)) is not None:
                    return previous
                response = await work(session)
                await self.idempotency.remember(session, method, request, response)
            return response
        except IntegrityError:
            async with self.db.transaction() as session:
                previous = await self.idempotency.previous(session, method, request, response_type)
            if previous is None:
                raise
            return previous

    async def CreateCampaign(
        self, request: service_pb2.CreateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.CreateCampaignResponse:
        method = "CreateCampaign"
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(session, method, request, service_pb2.CreateCampaignResponse)
        if previous is not None:
            return previous
        spec, _ = validate_spec(spec_from_proto(request.campaign), self.default_time_zone)
        # The segments call happens outside any transaction: a SQLite write lock must not wait on the network.
        segment = await self.segments.get_segment(spec.segment_id)
        require_published(spec.segment_id, segment.state)

        async def create(session: AsyncSession) -> service_pb2.CreateCampaignResponse:
            campaign_key = new_id("cmp_")
            await store.insert_campaign(
                session,
                {
                    "campaign_key": campaign_key,
                    **campaign_values(spec),
                    "segment_version": segment.version,
                    "state": CampaignState.DRAFT.value,
                    "outreach_count": 0,
                    "created_at": utcnow(),
                    "launched_at": None,
                },
            )
            row = await store.get_campaign(session, campaign_key)
            log.info("campaign_created", campaign_key=campaign_key, segment_version=segment.version)
            return service_pb2.CreateCampaignResponse(campaign=campaign_proto(row))

        return await self._idempotent(method, request, service_pb2.CreateCampaignResponse, create)

    async def GetCampaign(
        self, request: service_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetCampaignResponse:
        async with self.db.transaction() as session:
            row = await store.get_campaign(session, request.campaign_key)
        if row is None:
            raise NotFound(f"campaign {request.campaign_key!r} does not exist", field="campaign_key")
        return service_pb2.GetCampaignResponse(campaign=campaign_proto(row))

    async def ListCampaigns(
        self, request: service_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListCampaignsResponse:
        size = _page_size(request.page_size, DEFAULT_CAMPAIGN_PAGE, MAX_CAMPAIGN_PAGE)
        before = _decode_token(request.page_token, {"before"})["before"] if request.page_token else None
        async with self.db.transaction() as session:
            rows = await store.list_campaigns(session, before, size + 1)
        response = service_pb2.ListCampaignsResponse(campaigns=[campaign_proto(row) for row in rows[:size]])
        if len(rows) > size:
            response.next_page_token = _encode_token({"before": rows[size - 1].campaign_key})
        return response

    async def LaunchCampaign(
        self, request: service_pb2.LaunchCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.LaunchCampaignResponse:
        async def launch(session: AsyncSession) -> service_pb2.LaunchCampaignResponse:
            row = await store.get_campaign(session, request.campaign_key)
            if row is None:
                raise NotFound(f"campaign {request.campaign_key!r} does not exist", field="campaign_key")
            now = utcnow()
            plan = plan_launch(row.campaign_key, CampaignState(row.state), row.send_time, row.time_zone, now)
            if not await store.mark_launched(session, row.campaign_key, row.state, plan.state.value, now):
                raise Aborted(f"campaign {row.campaign_key} changed while launching; retry", field="campaign_key")
            await store.ensure_counter(session, row.programme, plan.month, row.trigger_code)
            await store.insert_run(
                session,
                {
                    "run_id": new_id("run_"),
                    "campaign_key": row.campaign_key,
                    "month": plan.month,
                    "due_at": plan.due_at,
                    "created_at": now,
                },
            )
            launched = await store.get_campaign(session, row.campaign_key)
            log.info("campaign_launched", campaign_key=row.campaign_key, state=plan.state.value, month=plan.month)
            return service_pb2.LaunchCampaignResponse(campaign=campaign_proto(launched))

        response = await self._idempotent("LaunchCampaign", request, service_pb2.LaunchCampaignResponse, launch)
        self.on_launch()
        return response

    async def GetOutreach(
        self, request: service_pb2.GetOutreachRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetOutreachResponse:
        async with self.db.transaction() as session:
            row = await store.get_outreach(session, request.campaign_id)
        if row is None:
            raise NotFound(f"campaign ID {request.campaign_id} does not exist", field="campaign_id")
        return service_pb2.GetOutreachResponse(outreach=outreach_proto(row))

    async def ListOutreaches(
        self, request: service_pb2.ListOutreachesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListOutreachesResponse:
        if not request.campaign_key:
            raise InvalidArgument("campaign_key is required", field="campaign_key")
        size = _page_size(request.page_size, DEFAULT_OUTREACH_PAGE, MAX_OUTREACH_PAGE)
        after = None
        if request.page_token:
            token = _decode_token(request.page_token, {"campaign_key", "after"})
            if token["campaign_key"] != request.campaign_key:
                raise InvalidArgument(
                    "page_token belongs to another campaign; pass the same campaign_key as the first page",
                    field="page_token",
                )
            after = token["after"]
        async with self.db.transaction() as session:
            if await store.get_campaign(session, request.campaign_key) is None:
                raise NotFound(f"campaign {request.campaign_key!r} does not exist", field="campaign_key")
            rows = await store.list_outreaches(session, request.campaign_key, after, size + 1)
        response = service_pb2.ListOutreachesResponse(outreaches=[outreach_proto(row) for row in rows[:size]])
        if len(rows) > size:
            response.next_page_token = _encode_token(
                {"campaign_key": request.campaign_key, "after": rows[size - 1].campaign_id}
            )
        return response
