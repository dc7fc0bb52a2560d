"""The shared gRPC bootstrap: health, reflection, error mapping and graceful shutdown on a real port."""

import asyncio
import sqlite3

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.exc import OperationalError

from plumbing.errors import InvalidArgument
from plumbing.grpc_server import GrpcServer
from xsell.gateway.v1 import resources_pb2, service_pb2, service_pb2_grpc

SERVICE = "xsell.gateway.v1.GatewayService"


class SlowOrFailingGateway(service_pb2_grpc.GatewayServiceServicer):
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def GetCaller(self, request, context):  # type: ignore[no-untyped-def]
        self.started.set()
        await self.release.wait()
        return service_pb2.GetCallerResponse(caller=resources_pb2.Caller(client_name="slow"))

    async def LookupCampaignRecord(self, request, context):  # type: ignore[no-untyped-def]
        if request.campaign_id == "boom":
            raise RuntimeError("unexpected")
        if request.campaign_id == "locked":
            raise OperationalError("INSERT INTO t", {}, sqlite3.OperationalError("database is locked"))
        raise InvalidArgument("must look like CSELL-NOV-T06-0884", field="campaign_id")


@pytest.fixture
async def server():  # type: ignore[no-untyped-def]
    servicer = SlowOrFailingGateway()
    server = GrpcServer("127.0.0.1", 0, None)
    server.add(SERVICE, lambda s: service_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, s))
    await server.start()
    await server.mark_serving()
    yield server, servicer
    await server.stop(0)


async def test_health_and_reflection(server) -> None:  # type: ignore[no-untyped-def]
    grpc_server, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name async for r in responses for s in r.list_services_response.service]
        assert SERVICE in names and "grpc.health.v1.Health" in names


async def test_domain_error_becomes_status_with_field_violation(server) -> None:  # type: ignore[no-untyped-def]
    grpc_server, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}") as channel:
        stub = service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.LookupCampaignRecord(service_pb2.LookupCampaignRecordRequest(campaign_id="bad"))
        error = raised.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "campaign_id: must look like CSELL-NOV-T06-0884"
        trailer = dict(error.trailing_metadata())["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(trailer)
        bad_request = error_details_pb2.BadRequest()
        status.details[0].Unpack(bad_request)
        assert bad_request.field_violations[0].field == "campaign_id"


async def test_a_refusal_is_logged_with_its_reason_under_the_campaign_id_its_request_names(server) -> None:  # type: ignore[no-untyped-def]
    """A LOS call refused ("record the sanction first") left one line, rpc_rejected, with neither the campaign ID nor
    the reason: a search of the logs for the campaign ID did not find that its disbursement had been refused."""
    grpc_server, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}") as channel:
        stub = service_pb2_grpc.GatewayServiceStub(channel)
        request = service_pb2.LookupCampaignRecordRequest(campaign_id="CSELL-NOV-T00-0003")
        with (
            structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs,
            pytest.raises(grpc.aio.AioRpcError),
        ):
            await stub.LookupCampaignRecord(request)
    (rejected,) = [line for line in logs if line["event"] == "rpc_rejected"]
    assert rejected["campaign.id"] == "CSELL-NOV-T00-0003"
    assert rejected["reason"] == "campaign_id: must look like CSELL-NOV-T06-0884"
    assert rejected["code"] == "INVALID_ARGUMENT"


async def test_bytes_protobuf_cannot_parse_are_invalid_argument_on_every_kind_of_handler(server) -> None:  # type: ignore[no-untyped-def]
    grpc_server, _ = server
    garbage = b"\xff\xff\xff\xff not a message"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await channel.unary_unary(f"/{SERVICE}/LookupCampaignRecord")(garbage)
        # The health Watch streams with context.write() rather than yielding.
        with pytest.raises(grpc.aio.AioRpcError) as written_stream:
            async for _ in channel.unary_stream("/grpc.health.v1.Health/Watch")(garbage):
                pass
        for error, message_type in (
            (unary.value, "xsell.gateway.v1.LookupCampaignRecordRequest"),
            (written_stream.value, "grpc.health.v1.HealthCheckRequest"),
        ):
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert error.details().startswith(f"the request is not a valid {message_type}: ")
            status = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
            assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_unexpected_error_is_internal_with_a_trace_hint(server) -> None:  # type: ignore[no-untyped-def]
    grpc_server, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}") as channel:
        stub = service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.LookupCampaignRecord(service_pb2.LookupCampaignRecordRequest(campaign_id="boom"))
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        assert "unexpected" not in raised.value.details()


async def test_a_database_lock_timeout_is_unavailable_so_the_caller_retries(server) -> None:  # type: ignore[no-untyped-def]
    grpc_server, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}") as channel:
        stub = service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.LookupCampaignRecord(service_pb2.LookupCampaignRecordRequest(campaign_id="locked"))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "locked by another writer" in raised.value.details()
        assert "retry" in raised.value.details()


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
async def test_graceful_shutdown_reports_not_serving_and_finishes_in_flight_calls(traced: bool) -> None:
    # Traced as every service runs: OpenTelemetry's interceptor iterates streaming handlers, and the health Watch
    # (a coroutine writing with context.write()) answered UNKNOWN under it.
    servicer = SlowOrFailingGateway()
    server = GrpcServer("127.0.0.1", 0, TracerProvider() if traced else None)
    server.add(SERVICE, lambda s: service_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, s))
    await server.start()
    await server.mark_serving()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GatewayServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = asyncio.ensure_future(stub.GetCaller(service_pb2.GetCallerRequest()))
        await servicer.started.wait()
        stopping = asyncio.create_task(server.stop(10))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        servicer.release.set()
        reply = await in_flight
        await stopping
    assert reply.caller.client_name == "slow"
