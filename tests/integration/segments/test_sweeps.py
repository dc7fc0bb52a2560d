"""Windows that lapse with time alone: the sweeper moves people in and out without any new event."""

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.bus import Bus
from plumbing.ids import new_id
from services import streams
from tests.integration.segments.approval import publish
from tests.integration.segments.server import serving, sweeper_of
from tests.unit.segments.builders import sip_only
from tests.waiting import eventually
from xsell.segments.v1 import events_pb2
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub


def _event(profile_id: str, name: str, when: datetime) -> r.Event:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return r.Event(event_id=new_id("e_"), profile_id=profile_id, name=name, occur_time=stamp)


async def _sip_only(stub: SegmentsServiceStub) -> r.Segment:
    created = await stub.CreateSegment(
        api.CreateSegmentRequest(request_id=new_id("req_"), segment=r.Segment(display_name="SIP-only", rule=sip_only()))
    )
    return await publish(stub, created.segment.segment_id)


async def _is_member(stub: SegmentsServiceStub, segment_id: str, profile_id: str) -> bool:
    check = await stub.CheckMembership(api.CheckMembershipRequest(segment_id=segment_id, profile_id=profile_id))
    return check.is_member


async def test_a_lumpsum_leaving_the_365_day_window_makes_a_sip_only_investor_at_the_next_sweep(
    database_url: str, nats_url: str, tmp_path: Path, nats_bus: Bus
) -> None:
    now = datetime.now(UTC)
    async with serving(database_url, nats_url, tmp_path, sweep_interval_seconds=3600) as (stub, process):
        await stub.IngestEvents(
            api.IngestEventsRequest(
                request_id=new_id("req_"),
                events=[
                    _event("lapsing", "sip_registered", now - timedelta(days=10)),
                    _event("lapsing", "lumpsum_invested", now - timedelta(days=300)),
                    _event("recent", "sip_registered", now - timedelta(days=10)),
                    _event("recent", "lumpsum_invested", now - timedelta(days=30)),
                ],
            )
        )
        segment = await _sip_only(stub)
        assert segment.member_count == 0
        received: list[events_pb2.MembershipChanged] = []

        async def collect(msg) -> None:  # type: ignore[no-untyped-def]
            change = events_pb2.MembershipChanged.FromString(msg.data)
            if change.segment_id == segment.segment_id:
                received.append(change)

        subscription = await nats_bus.nc.subscribe(streams.MEMBERSHIP_CHANGED, cb=collect)
        try:
            sweeper = sweeper_of(process)
            # 100 days on: the lumpsum is 400 days old, the SIP 110; nothing new has happened.
            later = now + timedelta(days=100)
            assert await sweeper.sweep(later) >= 1
            await eventually(lambda: asyncio.sleep(0, result=len(received) >= 1))
        finally:
            await subscription.unsubscribe()
        assert [(c.profile_id, c.change, c.segment_version) for c in received] == [
            ("lapsing", events_pb2.MEMBERSHIP_CHANGE_ENTERED, 1)
        ]
        assert await _is_member(stub, segment.segment_id, "lapsing")
        assert not await _is_member(stub, segment.segment_id, "recent")
        # The sweep stored how far it got: sweeping to the same moment again finds nobody.
        assert await sweeper.sweep(later) == 0


async def test_the_background_sweeper_runs_on_its_interval(database_url: str, nats_url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    async with serving(database_url, nats_url, tmp_path, sweep_interval_seconds=0.2) as (stub, _):
        await stub.IngestEvents(
            api.IngestEventsRequest(
                request_id=new_id("req_"),
                events=[
                    _event("soon", "sip_registered", now - timedelta(days=10)),
                    # Still inside "the last 365 days" for a few seconds more.
                    _event("soon", "lumpsum_invested", now - timedelta(days=365) + timedelta(seconds=6)),
                ],
            )
        )
        segment = await _sip_only(stub)
        assert segment.member_count == 0
        await eventually(lambda: _is_member(stub, segment.segment_id, "soon"), timeout=30)
