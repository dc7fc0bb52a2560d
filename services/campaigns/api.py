"""CampaignsService over gRPC: proto in, domain and store calls, proto out; errors are plumbing.errors types."""

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.errors import Aborted, InvalidArgument, NotFound
from plumbing.grpc_server import caller_of
from plumbing.idempotency import Idempotency
from plumbing.ids import new_id
from plumbing.outbox import utcnow
from plumbing.page_tokens import decode_token, encode_token, page_size
from plumbing.telemetry import current_traceparent
from services.campaigns import lifecycle, store
from services.campaigns.api_content import ContentApi, ContentServices
from services.campaigns.api_explain import ExplainApi
from services.campaigns.api_reports import ReportsApi
from services.campaigns.automation import automation_from_proto, automation_of
from services.campaigns.campaigns import CampaignState, plan_launch, require_published, unknown_campaign
from services.campaigns.messages import audit_proto, campaign_proto, campaign_values, outreach_proto
from services.campaigns.scheduling import DeliveryOptions
from services.campaigns.segments_client import SegmentsClient
from services.campaigns.triggers import TriggerCatalog
from xsell.campaigns.v1 import service_pb2, service_pb2_grpc

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=Message)

DEFAULT_CAMPAIGN_PAGE, MAX_CAMPAIGN_PAGE = 50, 500
DEFAULT_OUTREACH_PAGE, MAX_OUTREACH_PAGE = 100, 1000
DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE = 100, 1000


class CampaignsApi(ContentApi, ReportsApi, ExplainApi, service_pb2_grpc.CampaignsServiceServicer):
    def __init__(
        self,
        db: Database,
        idempotency: Idempotency,
        segments: SegmentsClient,
        *,
        default_time_zone: str,
        on_launch: Callable[[], None],
        content: ContentServices,
        require_approval: bool = True,
        triggers: TriggerCatalog | None = None,
    ) -> None:
        self.content = content
        self.triggers = triggers or TriggerCatalog(version="")
        self.db = db
        self.idempotency = idempotency
        self.segments = segments
        self.default_time_zone = default_time_zone
        self.on_launch = on_launch
        self.require_approval = require_approval

    async def _campaign_row(self, session: AsyncSession, campaign_key: str) -> Any:
        row = await store.get_campaign(session, campaign_key)
        if row is None:
            raise unknown_campaign(campaign_key)
        return row

    async def _record(
        self, session: AsyncSession, campaign_key: str, *, action: str, actor: str, note: str = "", snapshot: bool
    ) -> Any:
        """Writes the audit entry (and for a new version its snapshot) of the change just made; returns the row."""
        row = await self._campaign_row(session, campaign_key)
        now = utcnow()
        await store.add_audit(
            session, campaign_key, version=row.version, action=action, actor=actor, state=row.state, note=note, at=now
        )
        if snapshot:
            definition = campaign_proto(row).SerializeToString(deterministic=True)
            await store.insert_version(session, campaign_key, row.version, definition, row.author, now)
        log.info("campaign_" + action, campaign_key=campaign_key, version=row.version, state=row.state)
        return row

    async def _transition(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        campaign_key: str,
        actor: str,
        decide: Callable[[Any], lifecycle.Transition],
        extra: Callable[[Any, lifecycle.Transition], dict[str, Any]] | None = None,
    ) -> R:
        """One lifecycle step: decide from the current row, compare-and-set, audit, answer; idempotent by request_id."""

        async def work(session: AsyncSession) -> R:
            row = await self._campaign_row(session, campaign_key)
            step = decide(row)
            values: dict[str, Any] = {"state": step.to_state.value}
            if extra is not None:
                values.update(extra(row, step))
            if not await store.transition(session, campaign_key, row.state, row.version, values):
                raise Aborted(f"campaign {campaign_key} changed meanwhile; reload it and retry", field="campaign_key")
            changed = await self._record(
                session, campaign_key, action=step.action, actor=actor, note=step.note, snapshot=False
            )
            return response_type(campaign=campaign_proto(changed))

        return await self.idempotency.run_once(self.db, method, request, response_type, work)

    async def CreateCampaign(
        self, request: service_pb2.CreateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.CreateCampaignResponse:
        method = "CreateCampaign"
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(session, method, request, service_pb2.CreateCampaignResponse)
        if previous is not None:
            return previous
        spec = await self.validated_spec(request.campaign)
        automation = automation_from_proto(request.campaign, self.triggers, spec.trigger_code)
        # The segments call happens outside any transaction: a SQLite write lock must not wait on the network.
        segment = await self.segments.get_segment(spec.segment_id)
        require_published(spec.segment_id, segment.state)

        actor = caller_of(context)

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
                    "version": 1,
                    "author": actor,
                    "automation": automation.to_json(),
                },
            )
            row = await self._record(session, campaign_key, action="created", actor=actor, snapshot=True)
            return service_pb2.CreateCampaignResponse(campaign=campaign_proto(row))

        return await self.idempotency.run_once(self.db, method, request, service_pb2.CreateCampaignResponse, create)

    async def GetCampaign(
        self, request: service_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetCampaignResponse:
        async with self.db.snapshot() as session:
            row = await store.get_campaign(session, request.campaign_key)
        if row is None:
            raise unknown_campaign(request.campaign_key)
        return service_pb2.GetCampaignResponse(campaign=campaign_proto(row))

    async def ListCampaigns(
        self, request: service_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListCampaignsResponse:
        size = page_size(request.page_size, DEFAULT_CAMPAIGN_PAGE, MAX_CAMPAIGN_PAGE)
        before = decode_token("ListCampaigns", request.page_token, {}, "before")
        async with self.db.snapshot() as session:
            rows = await store.list_campaigns(session, before, size + 1)
        response = service_pb2.ListCampaignsResponse(campaigns=[campaign_proto(row) for row in rows[:size]])
        if len(rows) > size:
            response.next_page_token = encode_token("ListCampaigns", {"before": rows[size - 1].campaign_key})
        return response

    async def LaunchCampaign(
        self, request: service_pb2.LaunchCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.LaunchCampaignResponse:
        actor = caller_of(context)

        async def launch(session: AsyncSession) -> service_pb2.LaunchCampaignResponse:
            row = await self._campaign_row(session, request.campaign_key)
            lifecycle.check_launchable(
                row.campaign_key, CampaignState(row.state), require_approval=self.require_approval
            )
            now = utcnow()
            plan = plan_launch(row.send_time, row.time_zone, now, DeliveryOptions.from_json(row.options).recurrence)
            if not await store.mark_launched(session, row.campaign_key, row.state, plan.state.value, now):
                raise Aborted(f"campaign {row.campaign_key} changed while launching; retry", field="campaign_key")
            await store.ensure_counter(session, row.programme, plan.month, row.trigger_code)
            # A triggered campaign has no run to release: each trigger creates its outreach (trigger_handler).
            if automation_of(row).trigger is None:
                await store.insert_run(
                    session,
                    {
                        "run_id": new_id("run_"),
                        "campaign_key": row.campaign_key,
                        "month": plan.month,
                        "due_at": plan.due_at,
                        "occurrence_at": plan.due_at,
                        "created_at": now,
                        # This call's span: the release's outreaches' root spans link to it ("what started it").
                        "started_by": current_traceparent(),
                    },
                )
            launched = await self._record(session, row.campaign_key, action="launched", actor=actor, snapshot=False)
            return service_pb2.LaunchCampaignResponse(campaign=campaign_proto(launched))

        response = await self.idempotency.run_once(
            self.db, "LaunchCampaign", request, service_pb2.LaunchCampaignResponse, launch
        )
        self.on_launch()
        return response

    async def GetOutreach(
        self, request: service_pb2.GetOutreachRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetOutreachResponse:
        async with self.db.snapshot() as session:
            row = await store.get_outreach(session, request.campaign_id)
        if row is None and not request.campaign_id:
            raise InvalidArgument(
                "campaign_id is required: the ID printed on the outreach, e.g. CSELL-NOV-T06-0884", field="campaign_id"
            )
        if row is None:
            raise NotFound(
                f"campaign ID {request.campaign_id!r} does not exist; use the ID printed on the outreach",
                field="campaign_id",
            )
        return service_pb2.GetOutreachResponse(outreach=outreach_proto(row))

    async def ListOutreaches(
        self, request: service_pb2.ListOutreachesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListOutreachesResponse:
        if not request.campaign_key:
            raise InvalidArgument("campaign_key is required", field="campaign_key")
        size = page_size(request.page_size, DEFAULT_OUTREACH_PAGE, MAX_OUTREACH_PAGE)
        after = decode_token("ListOutreaches", request.page_token, {"campaign_key": request.campaign_key}, "after")
        async with self.db.snapshot() as session:
            if await store.get_campaign(session, request.campaign_key) is None:
                raise unknown_campaign(request.campaign_key)
            rows = await store.list_outreaches(session, request.campaign_key, after, size + 1)
        response = service_pb2.ListOutreachesResponse(outreaches=[outreach_proto(row) for row in rows[:size]])
        if len(rows) > size:
            response.next_page_token = encode_token(
                "ListOutreaches", {"campaign_key": request.campaign_key, "after": rows[size - 1].campaign_id}
            )
        return response

    async def UpdateCampaign(
        self, request: service_pb2.UpdateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.UpdateCampaignResponse:
        method = "UpdateCampaign"
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(session, method, request, service_pb2.UpdateCampaignResponse)
        if previous is not None:
            return previous
        spec = await self.validated_spec(request.campaign)
        automation = automation_from_proto(request.campaign, self.triggers, spec.trigger_code)
        segment = await self.segments.get_segment(spec.segment_id)
        require_published(spec.segment_id, segment.state)
        actor = caller_of(context)

        async def work(session: AsyncSession) -> service_pb2.UpdateCampaignResponse:
            row = await self._campaign_row(session, request.campaign_key)
            if request.expected_version and request.expected_version != row.version:
                raise Aborted(
                    f"campaign {row.campaign_key} is at version {row.version}, not {request.expected_version}; "
                    "someone changed it meanwhile: reload it and apply your change again",
                    field="expected_version",
                )
            step = lifecycle.update(row.campaign_key, CampaignState(row.state))
            values = {
                **campaign_values(spec),
                "segment_version": segment.version,
                "state": step.to_state.value,
                "version": row.version + 1,
                "author": actor,
                "approver": None,
                "automation": automation.to_json(),
            }
            if not await store.transition(session, row.campaign_key, row.state, row.version, values):
                raise Aborted(
                    f"campaign {row.campaign_key} changed meanwhile; reload it and retry", field="campaign_key"
                )
            changed = await self._record(session, row.campaign_key, action=step.action, actor=actor, snapshot=True)
            return service_pb2.UpdateCampaignResponse(campaign=campaign_proto(changed))

        return await self.idempotency.run_once(self.db, method, request, service_pb2.UpdateCampaignResponse, work)

    async def SubmitCampaign(
        self, request: service_pb2.SubmitCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.SubmitCampaignResponse:
        await self.check_before_submit(request)
        return await self._transition(
            "SubmitCampaign",
            request,
            service_pb2.SubmitCampaignResponse,
            request.campaign_key,
            caller_of(context),
            lambda row: lifecycle.submit(row.campaign_key, CampaignState(row.state), row.version, request.version),
        )

    async def ApproveCampaign(
        self, request: service_pb2.ApproveCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ApproveCampaignResponse:
        actor = caller_of(context)
        return await self._transition(
            "ApproveCampaign",
            request,
            service_pb2.ApproveCampaignResponse,
            request.campaign_key,
            actor,
            lambda row: lifecycle.approve(
                row.campaign_key,
                CampaignState(row.state),
                row.version,
                request.version,
                row.author,
                actor,
                request.note,
            ),
            lambda row, step: {"approver": actor},
        )

    async def RejectCampaign(
        self, request: service_pb2.RejectCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RejectCampaignResponse:
        return await self._transition(
            "RejectCampaign",
            request,
            service_pb2.RejectCampaignResponse,
            request.campaign_key,
            caller_of(context),
            lambda row: lifecycle.reject(
                row.campaign_key, CampaignState(row.state), row.version, request.version, request.reason
            ),
        )

    async def PauseCampaign(
        self, request: service_pb2.PauseCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.PauseCampaignResponse:
        return await self._transition(
            "PauseCampaign",
            request,
            service_pb2.PauseCampaignResponse,
            request.campaign_key,
            caller_of(context),
            lambda row: lifecycle.pause(row.campaign_key, CampaignState(row.state), request.reason),
            lambda row, step: {"paused_from": row.state, "pause_reason": step.note or "paused by an operator"},
        )

    async def ResumeCampaign(
        self, request: service_pb2.ResumeCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ResumeCampaignResponse:
        response = await self._transition(
            "ResumeCampaign",
            request,
            service_pb2.ResumeCampaignResponse,
            request.campaign_key,
            caller_of(context),
            lambda row: lifecycle.resume(row.campaign_key, CampaignState(row.state), row.paused_from),
            lambda row, step: {"paused_from": None, "pause_reason": None},
        )
        self.on_launch()
        return response

    async def CancelCampaign(
        self, request: service_pb2.CancelCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.CancelCampaignResponse:
        actor = caller_of(context)

        async def work(session: AsyncSession) -> service_pb2.CancelCampaignResponse:
            row = await self._campaign_row(session, request.campaign_key)
            step = lifecycle.cancel(row.campaign_key, CampaignState(row.state), request.reason)
            if not await store.transition(session, row.campaign_key, row.state, row.version, {"state": step.to_state}):
                raise Aborted(f"campaign {row.campaign_key} changed meanwhile; retry", field="campaign_key")
            await store.cancel_open_runs(session, row.campaign_key, utcnow())
            changed = await self._record(
                session, row.campaign_key, action=step.action, actor=actor, note=step.note, snapshot=False
            )
            return service_pb2.CancelCampaignResponse(campaign=campaign_proto(changed))

        return await self.idempotency.run_once(
            self.db, "CancelCampaign", request, service_pb2.CancelCampaignResponse, work
        )

    async def ListCampaignAudit(
        self, request: service_pb2.ListCampaignAuditRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListCampaignAuditResponse:
        size = page_size(request.page_size, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE)
        keyset = (
            decode_token("ListCampaignAudit", request.page_token, {"campaign_key": request.campaign_key}, "after")
            or "0"
        )
        if not keyset.isdigit():
            # ListOutreaches' token has this shape with a campaign ID for the keyset: int() raised, INTERNAL.
            raise InvalidArgument(
                "page_token is not one this service issued; pass next_page_token unchanged", field="page_token"
            )
        after = int(keyset)
        async with self.db.snapshot() as session:
            await self._campaign_row(session, request.campaign_key)
            rows = await store.list_audit(session, request.campaign_key, after, size + 1)
        response = service_pb2.ListCampaignAuditResponse(entries=[audit_proto(row) for row in rows[:size]])
        if len(rows) > size:
            response.next_page_token = encode_token(
                "ListCampaignAudit", {"campaign_key": request.campaign_key, "after": str(rows[size - 1].seq)}
            )
        return response
