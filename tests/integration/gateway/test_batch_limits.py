"""A client's batches through the real gateway to a real segments service, on SQLite and PostgreSQL: a batch over the
record limit is refused naming the field, the limit and how to split it; the largest batch of bounded records fits the
byte limit; a request over the byte limit is refused by gRPC with both sizes; and the gateway's byte limit, raised,
is the one a client meets (the service reads what the gateway passes on)."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import scopes
from services.segments import suppressions
from services.segments.records import MAX_BATCH, MAX_ID_LENGTH
from services.segments.values import MAX_TEXT_LENGTH
from tests.integration.gateway.conftest import GatewayFactory
from tests.status_details import field_violations
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub
from xsell.type.v1 import channel_pb2

MIB = 1024 * 1024


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _profiles(count: int, text_length: int) -> api.UpsertProfilesRequest:
    text = r.Value(string_value="x" * text_length)
    return api.UpsertProfilesRequest(
        request_id=f"profiles-{count}-{text_length}",
        profiles=[
            r.Profile(profile_id=f"p{index}", attributes={"plan_type": text, "option_type": text})
            for index in range(count)
        ],
    )


async def test_a_batch_over_the_record_limit_is_refused_naming_the_field_the_limit_and_to_split_it(
    start_gateway: GatewayFactory, segments_target: str
) -> None:
    gateway = await start_gateway(segments_target=segments_target)
    key = await gateway.add_key(scopes.INGEST)
    segments = SegmentsServiceStub(gateway.channel())
    now = _stamp(datetime.now(UTC))
    events = [
        r.Event(event_id=f"e{i}", profile_id="p1", name="app_opened", occur_time=now) for i in range(MAX_BATCH + 1)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await segments.IngestEvents(
            api.IngestEventsRequest(request_id="big", events=events), metadata=[("x-api-key", key)]
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        f"events: events must hold 1 to {MAX_BATCH} records per request, got {MAX_BATCH + 1}; "
        f"split the batch into requests of at most {MAX_BATCH}"
    )
    assert field_violations(refused.value) == ["events"]


async def test_the_largest_batch_of_suppressions_fits_the_gateways_default_request_size(
    start_gateway: GatewayFactory, segments_target: str
) -> None:
    gateway = await start_gateway(segments_target=segments_target)
    key = await gateway.add_key(scopes.SUPPRESSIONS_MANAGE)
    segments = SegmentsServiceStub(gateway.channel())
    # Every field at its longest: a suppression's size is bounded, so the record limit is the one it meets.
    request = api.AddSuppressionsRequest(
        request_id="r" * 200,
        suppressions=[
            r.Suppression(
                profile_id=f"{index:05d}".ljust(MAX_ID_LENGTH, "p"),
                channel=channel_pb2.CHANNEL_WHATSAPP,
                reason=r.SUPPRESSION_REASON_RECENT_DECLINE,
                note="n" * suppressions.MAX_NOTE,
                expire_time=_stamp(datetime.now(UTC) + timedelta(days=30)),
            )
            for index in range(MAX_BATCH)
        ],
    )
    assert request.ByteSize() < gateway.settings.max_request_bytes
    added = await segments.AddSuppressions(request, metadata=[("x-api-key", key)], timeout=60)
    assert not added.errors


async def test_a_request_over_the_byte_limit_is_refused_with_both_sizes_and_a_raised_limit_reaches_the_service(
    start_gateway: GatewayFactory, segments_target: str
) -> None:
    # 2,600 profiles of two 1,000-character attributes each: within the record limit, over 4 MiB.
    request = _profiles(2600, MAX_TEXT_LENGTH - 24)
    assert 5 * MIB < request.ByteSize() < 8 * MIB
    default = await start_gateway(segments_target=segments_target)
    key = await default.add_key(scopes.INGEST)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await SegmentsServiceStub(default.channel()).UpsertProfiles(request, metadata=[("x-api-key", key)])
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # gRPC's own words, as docs/gateway.md quotes them: the request's size and the limit.
    assert f"({request.ByteSize()} vs. {4 * MIB})" in (refused.value.details() or "")

    raised = await start_gateway(segments_target=segments_target, max_request_bytes=8 * MIB)
    key = await raised.add_key(scopes.INGEST)
    upserted = await SegmentsServiceStub(raised.channel()).UpsertProfiles(
        request, metadata=[("x-api-key", key)], timeout=120
    )
    assert (upserted.accepted_count, len(upserted.errors)) == (2600, 0)
