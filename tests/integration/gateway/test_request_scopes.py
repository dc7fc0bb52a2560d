"""Through the real gateway, in front of a real segments service on SQLite and PostgreSQL: a request_id is the caller's
own. Two API keys that number their requests alike are two callers' requests, each applied and answered; one key's
retry gets its first answer; an answer remembered before request ids had scopes (unscoped: a gateway of the release
before, or a call from inside the cluster) still answers a retry of exactly that request, which is not applied again."""

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import scopes
from tests.integration.gateway.conftest import GatewayFactory
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub


def _plan(profile_id: str, plan: str, request_id: str = "1") -> api.UpsertProfilesRequest:
    return api.UpsertProfilesRequest(
        request_id=request_id,
        profiles=[r.Profile(profile_id=profile_id, attributes={"plan_type": r.Value(string_value=plan)})],
    )


def _events(request_id: str, *profile_ids: str) -> api.IngestEventsRequest:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return api.IngestEventsRequest(
        request_id=request_id,
        events=[
            r.Event(event_id=f"ev-{profile_id}", profile_id=profile_id, name="app_opened", occur_time=stamp)
            for profile_id in profile_ids
        ],
    )


async def _plan_of(segments: SegmentsServiceStub, profile_id: str, key: str) -> str:
    got = await segments.GetProfile(api.GetProfileRequest(profile_id=profile_id), metadata=[("x-api-key", key)])
    return got.profile.attributes["plan_type"].string_value


async def test_two_keys_same_request_id_are_two_requests_and_each_retry_gets_its_own_answer(
    start_gateway: GatewayFactory, segments_target: str
) -> None:
    gateway = await start_gateway(segments_target=segments_target)
    crm = await gateway.add_key(scopes.INGEST, scopes.PROFILES_READ, client="crm")
    los = await gateway.add_key(scopes.INGEST, scopes.PROFILES_READ, client="los")
    segments = SegmentsServiceStub(gateway.channel())

    # Both number their requests from "1": the LOS's "1" is not the CRM's (it was ABORTED as a reused request_id).
    first = await segments.UpsertProfiles(_plan("crm-1", "regular"), metadata=[("x-api-key", crm)])
    other = await segments.UpsertProfiles(_plan("los-1", "direct"), metadata=[("x-api-key", los)])
    assert (first.accepted_count, other.accepted_count) == (1, 1)
    assert await _plan_of(segments, "crm-1", crm) == "regular"
    assert await _plan_of(segments, "los-1", los) == "direct"

    # Each key's retry gets its own first answer and changes nothing; another payload under its id is its reuse.
    await segments.UpsertProfiles(_plan("crm-1", "growth", request_id="2"), metadata=[("x-api-key", crm)])
    retried = await segments.UpsertProfiles(_plan("crm-1", "regular"), metadata=[("x-api-key", crm)])
    assert retried == first
    assert await _plan_of(segments, "crm-1", crm) == "growth"
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await segments.UpsertProfiles(_plan("los-2", "direct"), metadata=[("x-api-key", los)])
    assert reused.value.code() == grpc.StatusCode.ABORTED

    # IngestEvents shares transactions between concurrent calls: the same request_id from two keys at once is
    # two calls, each applied and answered for its own events.
    los_batch = _events("batch-7", "los-7a", "los-7b")
    crm_events, los_events = await asyncio.gather(
        segments.IngestEvents(_events("batch-7", "crm-7"), metadata=[("x-api-key", crm)]),
        segments.IngestEvents(los_batch, metadata=[("x-api-key", los)]),
    )
    assert (crm_events.accepted_count, los_events.accepted_count) == (1, 2)
    for profile_id, key in (("crm-7", crm), ("los-7a", los), ("los-7b", los)):
        # An event creates its person's profile: each key's batch was stored.
        got = await segments.GetProfile(api.GetProfileRequest(profile_id=profile_id), metadata=[("x-api-key", key)])
        assert got.profile.profile_id == profile_id
    again = await segments.IngestEvents(los_batch, metadata=[("x-api-key", los)])
    assert again == los_events


async def test_an_answer_from_before_the_upgrade_answers_its_retry_which_is_not_applied_again(
    start_gateway: GatewayFactory, segments_target: str
) -> None:
    gateway = await start_gateway(segments_target=segments_target)
    crm = await gateway.add_key(scopes.INGEST, scopes.PROFILES_READ, client="crm")
    los = await gateway.add_key(scopes.INGEST, scopes.PROFILES_READ, client="los")
    through_gateway = SegmentsServiceStub(gateway.channel())
    # Made before the upgrade: through a gateway that scoped nothing, as this direct call does (an unscoped answer).
    async with grpc.aio.insecure_channel(segments_target) as channel:
        direct = SegmentsServiceStub(channel)
        before = await direct.UpsertProfiles(_plan("crm-9", "regular", request_id="9"))
        await direct.UpsertProfiles(_plan("crm-9", "growth", request_id="10"))

    # The CRM's retry after the upgrade is answered from the stored response; applied again, it would set regular.
    retried = await through_gateway.UpsertProfiles(
        _plan("crm-9", "regular", request_id="9"), metadata=[("x-api-key", crm)]
    )
    assert retried == before
    assert await _plan_of(through_gateway, "crm-9", crm) == "growth"
    # An unscoped answer to another request is nobody's: the LOS's own "9" is applied, not ABORTED.
    own = await through_gateway.UpsertProfiles(_plan("los-9", "direct", request_id="9"), metadata=[("x-api-key", los)])
    assert own.accepted_count == 1
    assert await _plan_of(through_gateway, "los-9", los) == "direct"
