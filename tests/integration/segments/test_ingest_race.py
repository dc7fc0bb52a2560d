"""A concurrent duplicate of an IngestEvents call (the same request_id at another replica, a client's retry of a call
still in flight) that loses the race on the idempotency key gets the winner's answer, as every other mutating RPC's
does (Idempotency.run_once), on PostgreSQL, where the loser waits for the winner's commit and then fails on the key."""

import asyncio
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from plumbing.idempotency import request_fingerprint
from tests.waiting import eventually
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_duplicate_that_loses_the_race_on_the_request_id_gets_the_winners_answer(
    segments: SegmentsServiceStub, database_url: str
) -> None:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    event = r.Event(event_id="e1", profile_id="p1", name="emi_calculator", occur_time=stamp)
    request = api.IngestEventsRequest(request_id="crm-batch-7", events=[event])
    winners = api.IngestEventsResponse(accepted_count=1)
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as first:
            # The first call, at another replica: its answer written, not yet committed.
            await first.execute(
                text(
                    "INSERT INTO idempotency (method, request_id, scope, request_hash, response, created_at) "
                    "VALUES ('IngestEvents', :request_id, '', :hash, :response, now())"
                ),
                {
                    "request_id": request.request_id,
                    "hash": request_fingerprint(request),
                    "response": winners.SerializeToString(),
                },
            )
            duplicate = asyncio.ensure_future(segments.IngestEvents(request, timeout=60))

            async def waiting_on_the_first() -> bool:
                async with engine.connect() as watcher:
                    waits = await watcher.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                        )
                    )
                return bool(waits)

            await eventually(waiting_on_the_first)
            await first.commit()
        answer = await duplicate
    finally:
        await engine.dispose()
    assert answer == winners
