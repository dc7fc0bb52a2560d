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
from xsell.attribution.v1 import service_pb2 as attribution_pb2
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc


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
    key = await gateway.add_key(scopes.CRM_LEADS, scopes.REPORTS_READ)
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
