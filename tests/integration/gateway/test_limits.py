"""Per-key rate limits on a real gateway: refused calls never reach a service (size limits: test_forwarding)."""

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway import scopes
from gateway.limits import RateLimit
from tests.integration.gateway.conftest import Downstream, GatewayFactory, RunningGateway

GET_SEGMENT = "/xsell.segments.v1.SegmentsService/GetSegment"
UPSERT_PROFILES = "/xsell.segments.v1.SegmentsService/UpsertProfiles"
GET_CALLER = "/xsell.gateway.v1.GatewayService/GetCaller"


async def call(gateway: RunningGateway, method: str, key: str, request: bytes = b"") -> bytes:
    channel = gateway.channels[0] if gateway.channels else gateway.channel()
    response: bytes = await channel.unary_unary(method)(request, metadata=(("x-api-key", key),), timeout=10)
    return response


async def outcomes(gateway: RunningGateway, key: str, count: int, method: str = GET_SEGMENT) -> list[str]:
    results = []
    for _ in range(count):
        try:
            await call(gateway, method, key)
            results.append("OK")
        except grpc.aio.AioRpcError as error:
            results.append(error.code().name)
    return results


async def test_a_key_over_its_rate_is_refused_with_when_to_retry(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    # One call per 100 seconds after the burst: nothing refills while the test runs.
    gateway = await start_gateway(rate_limit_per_second=0.01, rate_limit_burst=3)
    key = await gateway.add_key(scopes.SEGMENTS_MANAGE)
    other = await gateway.add_key(scopes.SEGMENTS_MANAGE)

    assert await outcomes(gateway, key, 5) == ["OK", "OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    assert len(downstream.services.to(GET_SEGMENT)) == 3, "a refused call reached the service"
    assert await outcomes(gateway, other, 3) == ["OK"] * 3, "one client's bucket does not slow another"

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(gateway, GET_CALLER, key)
    error = raised.value
    key_id = key.split("_")[1]
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details().startswith(
        f"API key {key_id} is over its rate limit of 0.01 calls/s (bursts of 3); retry in "
    )
    status = rpc_status.from_call(error)
    assert status is not None
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(retry) and status.details[1].Unpack(quota)
    assert 90 < retry.retry_delay.ToTimedelta().total_seconds() <= 100
    assert quota.violations[0].subject == f"api_key:{key_id}"


async def test_a_key_of_its_own_limit_and_no_limit_when_turned_off(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(rate_limit_per_second=0.01, rate_limit_burst=1, key_cache_seconds=0)
    bulk = await gateway.add_key(scopes.INGEST)
    await gateway.keys.set_rate_limit(bulk.split("_")[1], RateLimit(per_second=0.01, burst=4))
    assert await outcomes(gateway, bulk, 5, UPSERT_PROFILES) == ["OK"] * 4 + ["RESOURCE_EXHAUSTED"]
    # Back to the gateway's default (burst 1), read again from the store at the next call.
    await gateway.keys.set_rate_limit(bulk.split("_")[1], None)
    stored = await gateway.keys.get(bulk.split("_")[1])
    assert stored is not None and stored.rate_limit is None

    unlimited = await start_gateway(rate_limit_per_second=0, database_url=None)
    key = await unlimited.add_key(scopes.SEGMENTS_MANAGE, client="unlimited")
    assert await outcomes(unlimited, key, 300) == ["OK"] * 300
