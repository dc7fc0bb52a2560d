"""Through the gateway, the real attribution service answers exactly as it does directly: same code, text, details."""

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway import scopes
from services.attribution.app import build as build_attribution
from services.attribution.settings import AttributionSettings
from tests.integration.gateway.conftest import GatewayFactory
from xsell.attribution.v1 import resources_pb2 as attribution_resources
from xsell.attribution.v1 import service_pb2 as attribution_pb2
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc
from xsell.type.v1 import money_pb2


@pytest.fixture
async def attribution_target(nats_url: str, tmp_path: Path) -> AsyncIterator[str]:
    settings = AttributionSettings(
        grpc_port=0, nats_url=nats_url, var_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'attr.db'}"
    )
    process = await build_attribution(settings, TracerProvider())
    await process.start()
    yield f"127.0.0.1:{process.server.port}"
    await process.stop(0)


async def outcome(call) -> tuple[grpc.StatusCode, str, bytes | None]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    trailers = dict(raised.value.trailing_metadata() or ())
    return raised.value.code(), raised.value.details() or "", trailers.get("grpc-status-details-bin")


async def test_attribution_errors_are_the_same_through_the_gateway(
    start_gateway: GatewayFactory, attribution_target: str
) -> None:
    gateway = await start_gateway(attribution_target=attribution_target)
    key = await gateway.add_key(scopes.CRM_LEADS, scopes.OUTREACH_READ)
    through_gateway = attribution_grpc.AttributionServiceStub(gateway.channel())
    async with grpc.aio.insecure_channel(attribution_target) as direct_channel:
        direct = attribution_grpc.AttributionServiceStub(direct_channel)
        requests = [
            (
                "CreateLead",
                attribution_pb2.CreateLeadRequest(request_id="r1", campaign_id="CSELL-1", crm_lead_id="x" * 101),
            ),
            ("CreateLead", attribution_pb2.CreateLeadRequest(request_id="r2", campaign_id="CSELL-UNKNOWN-1")),
            ("GetCampaignAttribution", attribution_pb2.GetCampaignAttributionRequest(campaign_id="CSELL-UNKNOWN-1")),
        ]
        for method, request in requests:
            expected = await outcome(getattr(direct, method)(request))
            got = await outcome(getattr(through_gateway, method)(request, metadata=[("x-api-key", key)]))
            assert got == expected, method
            assert expected[0] in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
            assert expected[2], "the service sends google.rpc.Status details"


async def test_conversions_and_fixed_costs_pass_through_the_gateway_with_their_scopes(
    start_gateway: GatewayFactory, attribution_target: str
) -> None:
    gateway = await start_gateway(attribution_target=attribution_target)
    los = await gateway.add_key(scopes.LOS_EVENTS)
    marketer = await gateway.add_key(scopes.CAMPAIGNS_MANAGE)
    through_gateway = attribution_grpc.AttributionServiceStub(gateway.channel())
    conversion = attribution_pb2.RecordConversionRequest(
        request_id="r-sip",
        conversion_id="SIP-1",
        kind=attribution_resources.CONVERSION_KIND_SIP_REGISTERED,
        profile_id="prf_meera",
        product_code="MF_SIP",
        amount=money_pb2.Money(minor_units=6_000_000, currency_code="INR"),
    )
    # No outreach of the person in the window: recorded, unattributed, priced by the default model.
    recorded = await through_gateway.RecordConversion(conversion, metadata=[("x-api-key", los)])
    assert recorded.conversion.linkage == attribution_resources.CONVERSION_LINKAGE_UNATTRIBUTED
    assert recorded.conversion.lifetime_revenue.minor_units == 1_560_000  # ₹60,000 × 2.60 % × 10 years
    refused = await outcome(through_gateway.RecordConversion(conversion, metadata=[("x-api-key", marketer)]))
    assert refused[0] == grpc.StatusCode.PERMISSION_DENIED and "los.events" in refused[1]

    fixed_cost = attribution_pb2.RecordFixedCostRequest(
        request_id="r-fee",
        campaign_key="cmp_unknown",
        amount=money_pb2.Money(minor_units=1_000_000, currency_code="INR"),
    )
    async with grpc.aio.insecure_channel(attribution_target) as direct_channel:
        direct = attribution_grpc.AttributionServiceStub(direct_channel)
        for method, request, key in (
            ("RecordFixedCost", fixed_cost, marketer),
            ("RecordConversion", attribution_pb2.RecordConversionRequest(request_id="r-bad", conversion_id="X"), los),
        ):
            expected = await outcome(getattr(direct, method)(request))
            assert await outcome(getattr(through_gateway, method)(request, metadata=[("x-api-key", key)])) == expected
            assert expected[0] in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), method
    refused = await outcome(through_gateway.RecordFixedCost(fixed_cost, metadata=[("x-api-key", los)]))
    assert refused[0] == grpc.StatusCode.PERMISSION_DENIED
