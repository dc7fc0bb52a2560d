"""The gateway's own gRPC API: who is calling, and one outreach's whole record in one call."""

import asyncio
from typing import Any

import grpc
import structlog
from opentelemetry import trace

from gateway.auth import current_caller
from gateway.forwarding import abort_with_downstream_error, downstream_timeout
from plumbing.errors import InvalidArgument, NotFound, Unauthenticated
from plumbing.telemetry import outreach_span
from xsell.attribution.v1 import service_pb2 as attribution_pb2
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.campaigns.v1 import service_pb2_grpc as campaigns_grpc
from xsell.channels.v1 import service_pb2 as channels_pb2
from xsell.channels.v1 import service_pb2_grpc as channels_grpc
from xsell.gateway.v1 import resources_pb2, service_pb2, service_pb2_grpc

log = structlog.get_logger(__name__)


class GatewayApi(service_pb2_grpc.GatewayServiceServicer):
    """GetCaller and LookupCampaignRecord; the services' own APIs are forwarded, not served here."""

    def __init__(
        self,
        campaigns: campaigns_grpc.CampaignsServiceStub,
        channels: channels_grpc.ChannelsServiceStub,
        attribution: attribution_grpc.AttributionServiceStub,
        tracer: trace.Tracer,
        timeout_cap: float,
    ) -> None:
        self._campaigns = campaigns
        self._channels = channels
        self._attribution = attribution
        self._tracer = tracer
        self._timeout_cap = timeout_cap

    async def GetCaller(
        self, request: service_pb2.GetCallerRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetCallerResponse:
        caller = current_caller.get()
        if caller is None:
            raise Unauthenticated("send your API key in the x-api-key metadata")
        return service_pb2.GetCallerResponse(
            caller=resources_pb2.Caller(
                key_id=caller.key_id, client_name=caller.client_name, scopes=sorted(caller.scopes)
            )
        )

    async def LookupCampaignRecord(
        self, request: service_pb2.LookupCampaignRecordRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.LookupCampaignRecordResponse:
        campaign_id = request.campaign_id.strip()
        if not campaign_id:
            raise InvalidArgument("give the outreach's campaign ID, e.g. CSELL-NOV-T06-0884", field="campaign_id")
        timeout = downstream_timeout(context, self._timeout_cap)
        with outreach_span(self._tracer, "gateway LookupCampaignRecord", campaign_id):
            parts: tuple[Any, ...] = await asyncio.gather(
                self._campaigns.GetOutreach(campaigns_pb2.GetOutreachRequest(campaign_id=campaign_id), timeout=timeout),
                self._channels.GetMessage(channels_pb2.GetMessageRequest(campaign_id=campaign_id), timeout=timeout),
                self._attribution.GetCampaignAttribution(
                    attribution_pb2.GetCampaignAttributionRequest(campaign_id=campaign_id), timeout=timeout
                ),
                return_exceptions=True,
            )
            outreach, message, attribution = parts
            if _not_found(outreach):
                raise NotFound(f"no outreach has the campaign ID {campaign_id!r}", field="campaign_id")
            record = resources_pb2.CampaignRecord()
            for service, part, field in (
                ("campaigns", outreach, "outreach"),
                ("channels", message, "message"),
                ("attribution", attribution, "attribution"),
            ):
                if _not_found(part):
                    # Not sent yet, or nothing attributed yet: that part of the record stays empty.
                    continue
                if isinstance(part, grpc.aio.AioRpcError):
                    await abort_with_downstream_error(context, part, service)
                if isinstance(part, BaseException):
                    raise part
                getattr(record, field).CopyFrom(getattr(part, field))
        return service_pb2.LookupCampaignRecordResponse(record=record)


def _not_found(result: Any) -> bool:
    return isinstance(result, grpc.aio.AioRpcError) and result.code() == grpc.StatusCode.NOT_FOUND
