"""Bytes protobuf cannot parse, sent through the gateway: the key is checked first, then INVALID_ARGUMENT, whether
the gateway parses the request itself or forwards it to the service that does."""

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway import scopes
from services.attribution.app import build as build_attribution
from services.attribution.settings import AttributionSettings
from tests.integration.gateway.conftest import GatewayFactory
from xsell.gateway.v1 import service_pb2 as gateway_pb2

GARBAGE = b"\xff\xff\xff\xff not a message"
GET_CALLER = "/xsell.gateway.v1.GatewayService/GetCaller"
CREATE_LEAD = "/xsell.attribution.v1.AttributionService/CreateLead"


@pytest.fixture
async def attribution_target(nats_url: str, tmp_path: Path) -> AsyncIterator[str]:
    settings = AttributionSettings(
        grpc_port=0, nats_url=nats_url, var_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'attr.db'}"
    )
    process = await build_attribution(settings, TracerProvider())
    await process.start()
    yield f"127.0.0.1:{process.server.port}"
    await process.stop(0)


async def _refusal(channel: grpc.aio.Channel, method: str, *metadata: tuple[str, str]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(method)(GARBAGE, metadata=metadata, timeout=10)  # no serializers: bytes as they are
    return raised.value


async def test_garbage_is_invalid_argument_for_a_caller_with_a_key(
    start_gateway: GatewayFactory, attribution_target: str
) -> None:
    gateway = await start_gateway(attribution_target=attribution_target)
    key = await gateway.add_key(scopes.CRM_LEADS)
    channel = gateway.channel()

    for method in (GET_CALLER, CREATE_LEAD):
        anonymous = await _refusal(channel, method)
        assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED, (method, anonymous.details())

    own = await _refusal(channel, GET_CALLER, ("x-api-key", key))
    assert own.code() == grpc.StatusCode.INVALID_ARGUMENT, own.details()
    assert own.details().startswith("the request is not a valid xsell.gateway.v1.GetCallerRequest: ")

    forwarded = await _refusal(channel, CREATE_LEAD, ("x-api-key", key))
    async with grpc.aio.insecure_channel(attribution_target) as direct_channel:
        direct = await _refusal(direct_channel, CREATE_LEAD)
    assert forwarded.code() == grpc.StatusCode.INVALID_ARGUMENT, forwarded.details()
    assert forwarded.details().startswith("the request is not a valid xsell.attribution.v1.CreateLeadRequest: ")
    assert (forwarded.details(), forwarded.trailing_metadata()) == (direct.details(), direct.trailing_metadata())

    reply = await channel.unary_unary(GET_CALLER)(
        gateway_pb2.GetCallerRequest().SerializeToString(), metadata=(("x-api-key", key),), timeout=10
    )
    assert gateway_pb2.GetCallerResponse.FromString(reply).caller.client_name == "test-client"
