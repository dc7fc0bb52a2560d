"""Forwarding keeps the services' errors, the caller's deadline and the trace; GatewayService joins three services."""

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.trace import StatusCode

from gateway import scopes
from gateway.keys import parse_key
from plumbing.grpc_server import REQUEST_SCOPE_METADATA
from plumbing.idempotency import api_key_scope
from plumbing.telemetry import CAMPAIGN_ID, outreach_trace_id
from tests.integration.gateway.conftest import Downstream, GatewayFactory, unused_target
from xsell.attribution.v1 import resources_pb2 as attribution_resources
from xsell.attribution.v1 import service_pb2 as attribution_pb2
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc
from xsell.campaigns.v1 import resources_pb2 as campaigns_resources
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.channels.v1 import service_pb2 as channels_pb2
from xsell.gateway.v1 import service_pb2 as gateway_pb2
from xsell.gateway.v1 import service_pb2_grpc as gateway_grpc
from xsell.segments.v1 import service_pb2 as segments_pb2
from xsell.segments.v1 import service_pb2_grpc as segments_grpc

CREATE_LEAD = "/xsell.attribution.v1.AttributionService/CreateLead"
GET_ATTRIBUTION = "/xsell.attribution.v1.AttributionService/GetCampaignAttribution"
GET_OUTREACH = "/xsell.campaigns.v1.CampaignsService/GetOutreach"
GET_MESSAGE = "/xsell.channels.v1.ChannelsService/GetMessage"
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID}-00f067aa0ba902b7-01"


def status_with_field_violation(code: grpc.StatusCode, message: str, field: str) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]
        )
    )
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


async def test_a_service_error_reaches_the_caller_with_its_code_message_and_details(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CRM_LEADS)
    status = status_with_field_violation(
        grpc.StatusCode.FAILED_PRECONDITION,
        "campaign_id: the outreach was cancelled; leads need a sent one",
        "campaign_id",
    )

    async def reject(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort returns no value")

    downstream.services.responders[CREATE_LEAD] = reject
    api = attribution_grpc.AttributionServiceStub(gateway.channel())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.CreateLead(
            attribution_pb2.CreateLeadRequest(request_id="r1", campaign_id="CSELL-1"), metadata=[("x-api-key", key)]
        )
    error = raised.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == status.message
    trailers = dict(error.trailing_metadata() or ())
    assert status_pb2.Status.FromString(trailers["grpc-status-details-bin"]) == status
    violation = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(violation)
    assert violation.field_violations[0].field == "campaign_id"
    # The outreach's trace says why, as the service said it ("ERROR: AbortError: Locally aborted." before).
    (span,) = [span for span in gateway.spans.get_finished_spans() if span.name == "gateway CreateLead"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == f"FAILED_PRECONDITION: {status.message}"


async def test_a_service_that_is_down_is_unavailable_without_leaking_its_address(
    start_gateway: GatewayFactory,
) -> None:
    down = unused_target()
    gateway = await start_gateway(segments_target=down)
    key = await gateway.add_key(scopes.SEGMENTS_MANAGE)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await segments_grpc.SegmentsServiceStub(gateway.channel()).ListSegments(
            segments_pb2.ListSegmentsRequest(), metadata=[("x-api-key", key)], timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert down not in (raised.value.details() or "")
    assert "retry" in (raised.value.details() or "")


async def test_the_caller_deadline_and_trace_travel_downstream(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    # Far apart on purpose: which deadline arrived is told by its size (gRPC rounds timeouts up on the wire).
    gateway = await start_gateway(downstream_timeout_seconds=1000)
    key = await gateway.add_key(scopes.SEGMENTS_MANAGE)
    api = segments_grpc.SegmentsServiceStub(gateway.channel())
    metadata = [("x-api-key", key), ("traceparent", CALLER_TRACEPARENT)]

    await api.ListSegments(segments_pb2.ListSegmentsRequest(), metadata=metadata, timeout=30)
    await api.ListSegments(segments_pb2.ListSegmentsRequest(), metadata=metadata)

    callers_deadline, capped = downstream.services.calls
    assert callers_deadline.time_remaining is not None and 0 < callers_deadline.time_remaining < 40
    assert capped.time_remaining is not None and 900 < capped.time_remaining < 1100
    for received in (callers_deadline, capped):
        assert received.metadata["traceparent"].split("-")[1] == CALLER_TRACE_ID
        assert received.metadata["x-xsell-client"] == "test-client"


async def test_a_request_with_a_campaign_id_joins_the_outreach_trace(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CRM_LEADS)
    await attribution_grpc.AttributionServiceStub(gateway.channel()).CreateLead(
        attribution_pb2.CreateLeadRequest(request_id="r1", campaign_id="CSELL-NOV-T06-0884"),
        metadata=[("x-api-key", key), ("traceparent", CALLER_TRACEPARENT)],
    )
    (received,) = downstream.services.calls
    assert received.metadata["traceparent"].split("-")[1] == outreach_trace_id("CSELL-NOV-T06-0884")
    (span,) = [span for span in gateway.spans.get_finished_spans() if span.name == "gateway CreateLead"]
    assert span.attributes is not None and span.attributes[CAMPAIGN_ID] == "CSELL-NOV-T06-0884"
    assert format(span.context.trace_id, "032x") == outreach_trace_id("CSELL-NOV-T06-0884")
    assert [format(link.context.trace_id, "032x") for link in span.links] == [CALLER_TRACE_ID]


async def test_a_request_over_the_size_limit_is_refused_before_forwarding(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway(max_request_bytes=1024)
    key = await gateway.add_key(scopes.INGEST)
    api = segments_grpc.SegmentsServiceStub(gateway.channel())
    small = segments_pb2.IngestEventsRequest(request_id="r" * 100)
    await api.IngestEvents(small, metadata=[("x-api-key", key)])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.IngestEvents(segments_pb2.IngestEventsRequest(request_id="r" * 2000), metadata=[("x-api-key", key)])
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [received.request for received in downstream.services.calls] == [small.SerializeToString()]


async def test_health_and_reflection_answer_without_a_key_and_list_every_exposed_service(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway()
    channel = gateway.channel()
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    async def list_services():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(list_services()):
        listed = {service.name for service in reply.list_services_response.service}
        break
    assert listed >= {*scopes.FORWARDED_SERVICES, scopes.GATEWAY_SERVICE}


async def test_lookup_campaign_record_joins_outreach_message_and_attribution(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CRM_LEADS)
    known = "CSELL-NOV-T06-0884"

    async def outreach(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        campaign_id = campaigns_pb2.GetOutreachRequest.FromString(request).campaign_id
        if campaign_id != known:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no outreach {campaign_id}")
        return campaigns_pb2.GetOutreachResponse(
            outreach=campaigns_resources.Outreach(campaign_id=known)
        ).SerializeToString()

    async def message(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "not sent yet")
        raise AssertionError

    async def attribution(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        campaign_id = attribution_pb2.GetCampaignAttributionRequest.FromString(request).campaign_id
        return attribution_pb2.GetCampaignAttributionResponse(
            attribution=attribution_resources.CampaignAttribution(campaign_id=campaign_id, romi=2.5)
        ).SerializeToString()

    downstream.services.responders |= {GET_OUTREACH: outreach, GET_MESSAGE: message, GET_ATTRIBUTION: attribution}
    api = gateway_grpc.GatewayServiceStub(gateway.channel())
    auth = [("x-api-key", key)]

    record = (
        await api.LookupCampaignRecord(gateway_pb2.LookupCampaignRecordRequest(campaign_id=known), metadata=auth)
    ).record
    assert record.outreach.campaign_id == known
    assert not record.HasField("message")
    assert (record.attribution.campaign_id, record.attribution.romi) == (known, 2.5)
    assert {received.method for received in downstream.services.calls} == {GET_OUTREACH, GET_MESSAGE, GET_ATTRIBUTION}
    assert all(
        received.metadata["traceparent"].split("-")[1] == outreach_trace_id(known)
        for received in downstream.services.calls
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.LookupCampaignRecord(gateway_pb2.LookupCampaignRecordRequest(campaign_id="CSELL-NOPE"), metadata=auth)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "CSELL-NOPE" in (raised.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.LookupCampaignRecord(gateway_pb2.LookupCampaignRecordRequest(), metadata=auth)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "campaign_id" in (raised.value.details() or "")


async def test_lookup_campaign_record_passes_on_a_failing_part(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CRM_LEADS)

    async def failing(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "ledger is being rebuilt; retry in a minute")
        raise AssertionError

    downstream.services.responders[GET_ATTRIBUTION] = failing
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway_grpc.GatewayServiceStub(gateway.channel()).LookupCampaignRecord(
            gateway_pb2.LookupCampaignRecordRequest(campaign_id="CSELL-1"), metadata=[("x-api-key", key)]
        )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == "ledger is being rebuilt; retry in a minute"


async def test_only_get_message_of_channels_is_served(start_gateway: GatewayFactory, downstream: Downstream) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.ADMIN)
    channel = gateway.channel()
    await channel.unary_unary(GET_MESSAGE)(
        channels_pb2.GetMessageRequest(campaign_id="CSELL-1").SerializeToString(), metadata=[("x-api-key", key)]
    )
    assert [received.method for received in downstream.services.calls] == [GET_MESSAGE]


async def test_the_service_is_told_the_scope_of_the_callers_request_ids_and_a_caller_cannot_choose_it(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    crm, los = await gateway.add_key(scopes.INGEST), await gateway.add_key(scopes.INGEST)
    api = segments_grpc.SegmentsServiceStub(gateway.channel())
    request = segments_pb2.IngestEventsRequest(request_id="1")
    await api.IngestEvents(request, metadata=[("x-api-key", crm)])
    # The LOS claims the CRM's scope: the service is told the LOS's own.
    forged = (REQUEST_SCOPE_METADATA, api_key_scope(parse_key(crm).key_id))
    await api.IngestEvents(request, metadata=[("x-api-key", los), forged])
    assert [received.metadata[REQUEST_SCOPE_METADATA] for received in downstream.services.calls] == [
        api_key_scope(parse_key(crm).key_id),
        api_key_scope(parse_key(los).key_id),
    ]
