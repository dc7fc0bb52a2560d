"""Every exposed RPC refuses missing, wrong, revoked and under-scoped keys before forwarding; the right key passes."""

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway import scopes
from gateway.forwarding import is_server_streaming, request_type
from tests.integration.gateway.conftest import DOWNSTREAM_REPLY, Downstream, GatewayFactory, RunningGateway
from tests.waiting import eventually
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.gateway.v1 import service_pb2 as gateway_pb2

# An unknown field 999 on the request: the downstream must see the caller's exact bytes.
EXTRA_FIELD = b"\xba\x3e\x03raw"
CAMPAIGN_ID = "CSELL-NOV-T06-0884"
GET_CALLER = "/xsell.gateway.v1.GatewayService/GetCaller"
LOOKUP = "/xsell.gateway.v1.GatewayService/LookupCampaignRecord"
GET_OUTREACH = "/xsell.campaigns.v1.CampaignsService/GetOutreach"


def request_bytes(method: str) -> bytes:
    message = request_type(method)()
    if "campaign_id" in message.DESCRIPTOR.fields_by_name:
        message.campaign_id = CAMPAIGN_ID  # type: ignore[attr-defined]
    if method in scopes.APP_EVENT_KINDS:
        # What an app.events key may send (a push opened, received): the matrix is about keys, not content.
        field, allowed, _ = scopes.APP_EVENT_KINDS[method]
        setattr(message, field, min(allowed))
    return message.SerializeToString() + EXTRA_FIELD


async def call(gateway: RunningGateway, method: str, metadata: tuple[tuple[str, str], ...]) -> bytes:
    channel = gateway.channels[0] if gateway.channels else gateway.channel()
    response: bytes = await channel.unary_unary(method)(request_bytes(method), metadata=metadata, timeout=10)
    return response


async def refused(gateway: RunningGateway, method: str, metadata: tuple[tuple[str, str], ...]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(gateway, method, metadata)
    return raised.value


def exposed_in_contracts() -> list[str]:
    """Every RPC of the exposed services, read from the contracts, less the ones declared internal."""
    methods = []
    for service in (*scopes.FORWARDED_SERVICES, scopes.GATEWAY_SERVICE):
        descriptor = descriptor_pool.Default().FindServiceByName(service)
        methods += [f"/{service}/{method.name}" for method in descriptor.methods]
    return [method for method in methods if method not in scopes.INTERNAL_METHODS]


async def test_authorization_matrix_over_every_exposed_rpc(
    start_gateway: GatewayFactory, downstream: Downstream, database_url: str
) -> None:
    gateway = await start_gateway(database_url)
    recorder = downstream.services
    key_by_scope = {scope: await gateway.add_key(scope, client=f"client-{scope}") for scope in scopes.GRANTABLE_SCOPES}
    revoked = await gateway.add_key(scopes.ADMIN, revoked=True)
    admin_key = key_by_scope[scopes.ADMIN]
    wrong_secret = admin_key[:-4] + ("aaaa" if not admin_key.endswith("aaaa") else "bbbb")
    unknown = "xsk_01jdoesnotexist0000000000_" + "s" * 43
    unscoped = [method for method in exposed_in_contracts() if method not in scopes.METHOD_SCOPES]
    assert unscoped == [], f"RPCs with no row in gateway/scopes.py METHOD_SCOPES: {unscoped}"
    exposed = {method: scopes.METHOD_SCOPES[method] for method in exposed_in_contracts()}
    assert len(exposed) == len(scopes.METHOD_SCOPES), "the matrix covers every row of the scope table"

    for method, required in exposed.items():
        missing = await refused(gateway, method, ())
        assert (missing.code(), missing.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "send your API key in the x-api-key metadata",
        ), method
        for bad in (wrong_secret, unknown, revoked, "not-a-key", "xsk_abc"):
            error = await refused(gateway, method, (("x-api-key", bad),))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (method, bad)
        assert "revoked" in (await refused(gateway, method, (("x-api-key", revoked),))).details()
        if required == scopes.AUTHENTICATED:
            continue
        for other in scopes.GRANTABLE_SCOPES - {required, scopes.ADMIN}:
            denied = await refused(gateway, method, (("x-api-key", key_by_scope[other]),))
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, (method, other)
            assert repr(required) in denied.details(), denied.details()
    assert recorder.calls == [], "a refused call reached a service"

    for method, required in exposed.items():
        key = key_by_scope[required if required != scopes.AUTHENTICATED else scopes.REPORTS_READ]
        for metadata in ((("x-api-key", key),), (("authorization", f"Bearer {key}"),), (("x-api-key", admin_key),)):
            recorder.calls.clear()
            response = await call(gateway, method, metadata)
            if method == GET_CALLER:
                caller = gateway_pb2.GetCallerResponse.FromString(response).caller
                assert caller.key_id == metadata[0][1].split(" ")[-1].split("_")[1]
                assert caller.client_name in {f"client-{scopes.REPORTS_READ}", f"client-{scopes.ADMIN}"}
                assert recorder.calls == []
            elif method == LOOKUP:
                assert [received.request for received in recorder.to(GET_OUTREACH)] == [
                    campaigns_pb2.GetOutreachRequest(campaign_id=CAMPAIGN_ID).SerializeToString()
                ]
            else:
                assert response == DOWNSTREAM_REPLY, method
                assert [(received.method, received.request) for received in recorder.calls] == [
                    (method, request_bytes(method))
                ], method
                assert recorder.calls[0].metadata.get("x-api-key") is None, "the caller's key must not travel on"
                assert "authorization" not in recorder.calls[0].metadata


async def served_services(gateway: RunningGateway) -> set[str]:
    async def list_services():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in reflection_pb2_grpc.ServerReflectionStub(gateway.channel()).ServerReflectionInfo(
        list_services()
    ):
        return {service.name for service in reply.list_services_response.service}
    raise AssertionError("reflection answered nothing")


async def test_every_service_the_gateway_serves_is_in_the_matrix(start_gateway: GatewayFactory) -> None:
    """What the running gateway serves, by reflection, is what the matrix above walks: nothing served escapes it."""
    gateway = await start_gateway()
    served = await served_services(gateway)
    assert served - scopes.PUBLIC_SERVICES == {*scopes.FORWARDED_SERVICES, scopes.GATEWAY_SERVICE}
    served_methods = {
        f"/{service}/{method.name}"
        for service in served - scopes.PUBLIC_SERVICES
        for method in descriptor_pool.Default().FindServiceByName(service).methods
    }
    assert served_methods - scopes.INTERNAL_METHODS == set(exposed_in_contracts())


async def test_a_refused_streaming_call_reaches_no_service(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    """Server-streaming RPCs go through the same checks when called as streams, the way grpcurl or a CRM calls them."""
    gateway = await start_gateway()
    streaming = [method for method in exposed_in_contracts() if is_server_streaming(method)]
    assert streaming, "the contracts have server-streaming RPCs"
    wrong_scope = await gateway.add_key(scopes.CRM_LEADS)
    revoked = await gateway.add_key(scopes.ADMIN, revoked=True)
    for method in streaming:
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("x-api-key", revoked),), grpc.StatusCode.UNAUTHENTICATED),
            ((("x-api-key", wrong_scope),), grpc.StatusCode.PERMISSION_DENIED),
        ):
            stream = gateway.channel().unary_stream(method)(request_bytes(method), metadata=metadata, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in stream:
                    pass
            assert raised.value.code() == code, (method, metadata)
    assert downstream.services.calls == []


async def test_an_internal_rpc_is_not_reachable(start_gateway: GatewayFactory, downstream: Downstream) -> None:
    gateway = await start_gateway()
    admin = await gateway.add_key(scopes.ADMIN)
    error = await refused(gateway, "/xsell.segments.v1.SegmentsService/BatchGetProfiles", (("x-api-key", admin),))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert downstream.services.calls == []


async def test_a_revoked_key_stops_working_within_the_cache_time(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(key_cache_seconds=0.2)
    key = await gateway.add_key(scopes.REPORTS_READ)
    await call(gateway, GET_CALLER, (("x-api-key", key),))
    await gateway.keys.revoke(key.split("_")[1], at=datetime.now(UTC))

    async def rejected() -> bool:
        try:
            await call(gateway, GET_CALLER, (("x-api-key", key),))
        except grpc.aio.AioRpcError as error:
            return error.code() == grpc.StatusCode.UNAUTHENTICATED
        return False

    assert await eventually(rejected, timeout=10)


async def test_the_bootstrap_key_is_an_admin_and_survives_a_restart(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    bootstrap = "xsk_e2e_4f7a9c2d1e8b6a5f3c0d"
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'bootstrap.db'}"
    for _ in range(2):
        gateway = await start_gateway(database_url, bootstrap_api_key=bootstrap)
        reply = gateway_pb2.GetCallerResponse.FromString(await call(gateway, GET_CALLER, (("x-api-key", bootstrap),)))
        assert (reply.caller.key_id, reply.caller.client_name, list(reply.caller.scopes)) == (
            "e2e",
            "bootstrap",
            ["admin"],
        )
        await call(gateway, "/xsell.segments.v1.SegmentsService/GetProfile", (("x-api-key", bootstrap),))
        await gateway.stop()
