"""Maker-checker over gRPC on SQLite and PostgreSQL: versions, four eyes, publishing a new version, audit, archive."""

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.bus import Bus
from plumbing.grpc_server import CLIENT_METADATA
from plumbing.ids import new_id
from services import streams
from tests.integration.segments.approval import publish
from tests.integration.segments.server import serving
from tests.status_details import field_violations, precondition_violations
from tests.unit.segments.builders import all_, any_, event, segment, sip_only
from tests.waiting import eventually
from xsell.segments.v1 import events_pb2
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub

MAKER = ((CLIENT_METADATA, "maker"),)
CHECKER = ((CLIENT_METADATA, "checker"),)


def _event(profile_id: str, name: str, days_ago: float) -> r.Event:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(days=days_ago))
    return r.Event(event_id=new_id("e_"), profile_id=profile_id, name=name, occur_time=stamp)


async def _refused(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


def _submit(stub: SegmentsServiceStub, segment_id: str, version: int, metadata=MAKER):  # type: ignore[no-untyped-def]
    return stub.SubmitSegment(
        api.SubmitSegmentRequest(request_id=new_id("req_"), segment_id=segment_id, version=version), metadata=metadata
    )


def _approve(stub: SegmentsServiceStub, segment_id: str, version: int, metadata=CHECKER, request_id=None):  # type: ignore[no-untyped-def]
    return stub.ApproveSegment(
        api.ApproveSegmentRequest(
            request_id=request_id or new_id("req_"), segment_id=segment_id, version=version, note="looks right"
        ),
        metadata=metadata,
    )


def _publish(stub: SegmentsServiceStub, segment_id: str, metadata=CHECKER):  # type: ignore[no-untyped-def]
    return stub.PublishSegment(
        api.PublishSegmentRequest(request_id=new_id("req_"), segment_id=segment_id), metadata=metadata
    )


async def test_a_version_goes_from_draft_to_published_only_with_another_persons_approval(
    segments: SegmentsServiceStub, nats_bus: Bus
) -> None:
    await segments.IngestEvents(
        api.IngestEventsRequest(
            request_id=new_id("req_"),
            events=[
                _event("asha", "sip_registered", 10),
                _event("ravi", "sip_registered", 20),
                _event("kiran", "sip_registered", 30),
                _event("kiran", "lumpsum_invested", 5),
                _event("meera", "session_start", 2),
            ],
        )
    )
    created = (
        await segments.CreateSegment(
            api.CreateSegmentRequest(
                request_id=new_id("req_"),
                segment=r.Segment(display_name="SIP investors", rule=event("sip_registered", days=365)),
            ),
            metadata=MAKER,
        )
    ).segment
    sid = created.segment_id
    assert (created.state, created.version, created.author, created.approver) == (r.SEGMENT_STATE_DRAFT, 1, "maker", "")
    assert created.published_version == 0

    code, details = await _refused(_publish(segments, sid))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"segment {sid} version 1 is DRAFT" in details and "SubmitSegment" in details
    with pytest.raises(grpc.aio.AioRpcError) as draft:
        await _publish(segments, sid)
    # The field the request named, and the segment whose state forbids it.
    assert field_violations(draft.value) == ["segment_id"]
    [(kind, subject, description)] = precondition_violations(draft.value)
    assert (kind, subject) == ("STATE", f"segments/{sid}") and f"{sid} version 1 is DRAFT" in description
    code, details = await _refused(_approve(segments, sid, 1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "is DRAFT" in details

    assert (await _submit(segments, sid, 1)).segment.state == r.SEGMENT_STATE_SUBMITTED
    code, details = await _refused(_submit(segments, sid, 1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "is SUBMITTED" in details
    with pytest.raises(grpc.aio.AioRpcError) as own:
        await _approve(segments, sid, 1, metadata=MAKER)
    assert own.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert own.value.details() == "version: the author cannot approve their own segment; ask another approver"
    assert precondition_violations(own.value) == [
        ("APPROVAL", f"segments/{sid}", "the author cannot approve their own segment; ask another approver")
    ]

    code, details = await _refused(
        segments.RejectSegment(
            api.RejectSegmentRequest(request_id=new_id("req_"), segment_id=sid, version=1), metadata=CHECKER
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("reason:")
    rejected = await segments.RejectSegment(
        api.RejectSegmentRequest(request_id=new_id("req_"), segment_id=sid, version=1, reason="window too wide"),
        metadata=CHECKER,
    )
    assert rejected.segment.state == r.SEGMENT_STATE_DRAFT
    await _submit(segments, sid, 1)
    approve_id = new_id("req_")
    approved = await _approve(segments, sid, 1, request_id=approve_id)
    assert (approved.segment.state, approved.segment.approver) == (r.SEGMENT_STATE_APPROVED, "checker")
    # A retried approval with the same request_id answers the same and records nothing more.
    assert await _approve(segments, sid, 1, request_id=approve_id) == approved

    published = (await _publish(segments, sid)).segment
    assert (published.state, published.version, published.published_version) == (r.SEGMENT_STATE_PUBLISHED, 1, 1)
    assert published.member_count == 3

    # An edit makes version 2, a draft; version 1 stays published and maintained.
    updated = (
        await segments.UpdateSegment(
            api.UpdateSegmentRequest(
                request_id=new_id("req_"), segment_id=sid, rule=any_(sip_only(), event("session_start", days=30))
            ),
            metadata=MAKER,
        )
    ).segment
    assert (updated.version, updated.state, updated.author, updated.display_name) == (
        2,
        r.SEGMENT_STATE_DRAFT,
        "maker",
        "SIP investors",
    )
    latest = (await segments.GetSegment(api.GetSegmentRequest(segment_id=sid))).segment
    assert (latest.version, latest.state, latest.published_version, latest.member_count) == (
        2,
        r.SEGMENT_STATE_DRAFT,
        1,
        0,
    )
    first = (await segments.GetSegment(api.GetSegmentRequest(segment_id=sid, version=1))).segment
    assert (first.state, first.member_count, first.approver) == (r.SEGMENT_STATE_PUBLISHED, 3, "checker")
    # A campaign pinned to version 2 cannot stream it before it is published.
    code, details = await _refused(
        segments.StreamSegmentMembers(api.StreamSegmentMembersRequest(segment_id=sid, version=2)).read()
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "publishes version 1, not the pinned version 2" in details

    received: list[events_pb2.MembershipChanged] = []

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        change = events_pb2.MembershipChanged.FromString(msg.data)
        if change.segment_id == sid:
            received.append(change)

    subscription = await nats_bus.nc.subscribe(streams.MEMBERSHIP_CHANGED, cb=collect)
    try:
        await _submit(segments, sid, 2)
        await _approve(segments, sid, 2)
        second = (await _publish(segments, sid)).segment
        await eventually(lambda: asyncio.sleep(0, result=len(received) >= 2))
    finally:
        await subscription.unsubscribe()
    assert (second.version, second.state, second.published_version, second.member_count) == (
        2,
        r.SEGMENT_STATE_PUBLISHED,
        2,
        3,
    )
    assert sorted((c.profile_id, c.change, c.segment_version) for c in received) == [
        ("kiran", events_pb2.MEMBERSHIP_CHANGE_EXITED, 2),
        ("meera", events_pb2.MEMBERSHIP_CHANGE_ENTERED, 2),
    ]
    retired = (await segments.GetSegment(api.GetSegmentRequest(segment_id=sid, version=1))).segment
    assert retired.state == r.SEGMENT_STATE_ARCHIVED
    check = await segments.CheckMembership(api.CheckMembershipRequest(segment_id=sid, profile_id="meera"))
    assert check.is_member and check.segment_version == 2

    archived = await segments.ArchiveSegment(
        api.ArchiveSegmentRequest(request_id=new_id("req_"), segment_id=sid), metadata=MAKER
    )
    assert (archived.segment.state, archived.segment.published_version) == (r.SEGMENT_STATE_ARCHIVED, 0)
    code, _ = await _refused(segments.ListSegmentMembers(api.ListSegmentMembersRequest(segment_id=sid)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _ = await _refused(segments.StreamSegmentMembers(api.StreamSegmentMembersRequest(segment_id=sid)).read())
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, details = await _refused(
        segments.ArchiveSegment(api.ArchiveSegmentRequest(request_id=new_id("req_"), segment_id=sid))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already ARCHIVED" in details
    code, _ = await _refused(
        segments.UpdateSegment(api.UpdateSegmentRequest(request_id=new_id("req_"), segment_id=sid, rule=sip_only()))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION

    entries: list[r.AuditEntry] = []
    token = ""
    while True:
        page = await segments.ListSegmentAudit(
            api.ListSegmentAuditRequest(segment_id=sid, page_size=4, page_token=token)
        )
        assert len(page.entries) <= 4
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            break
    assert [(e.version, e.action, e.actor) for e in entries] == [
        (1, "created", "maker"),
        (1, "submitted", "maker"),
        (1, "rejected", "checker"),
        (1, "submitted", "maker"),
        (1, "approved", "checker"),
        (1, "published", "checker"),
        (2, "updated", "maker"),
        (2, "submitted", "maker"),
        (2, "approved", "checker"),
        (2, "published", "checker"),
        (2, "archived", "maker"),
    ]
    assert entries[2].note == "window too wide" and entries[4].note == "looks right"
    assert all(e.segment_id == sid and e.HasField("time") for e in entries)
    assert [e.time.ToDatetime() for e in entries] == sorted(e.time.ToDatetime() for e in entries)


async def test_lookup_and_argument_errors(segments: SegmentsServiceStub) -> None:
    sid = (
        await segments.CreateSegment(
            api.CreateSegmentRequest(request_id=new_id("req_"), segment=r.Segment(display_name="x", rule=sip_only()))
        )
    ).segment.segment_id
    code, details = await _refused(segments.GetSegment(api.GetSegmentRequest(segment_id=sid, version=9)))
    assert code == grpc.StatusCode.NOT_FOUND and "no version 9" in details
    code, _ = await _refused(_submit(segments, "seg_missing", 1))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = await _refused(_submit(segments, sid, 0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("version:")
    code, _ = await _refused(_submit(segments, sid, 4))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = await _refused(
        segments.UpdateSegment(api.UpdateSegmentRequest(request_id=new_id("req_"), segment_id=sid))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("rule:")
    code, details = await _refused(
        segments.UpdateSegment(
            api.UpdateSegmentRequest(request_id=new_id("req_"), segment_id=sid, rule=all_(sip_only(), r.Rule()))
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "rule.all.rules[1]" in details
    code, _ = await _refused(segments.ListSegmentAudit(api.ListSegmentAuditRequest(segment_id=sid, page_token="junk")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await _refused(segments.ListSegmentAudit(api.ListSegmentAuditRequest(segment_id="seg_missing")))
    assert code == grpc.StatusCode.NOT_FOUND
    # Nothing was written by the refused calls: only the creation is in the log, and no version 2 exists.
    audit = await segments.ListSegmentAudit(api.ListSegmentAuditRequest(segment_id=sid))
    assert [e.action for e in audit.entries] == ["created"]


async def test_references_block_archiving_and_cycles(segments: SegmentsServiceStub) -> None:
    base = (
        await segments.CreateSegment(
            api.CreateSegmentRequest(request_id=new_id("req_"), segment=r.Segment(display_name="base", rule=sip_only()))
        )
    ).segment.segment_id
    await publish(segments, base)
    derived = (
        await segments.CreateSegment(
            api.CreateSegmentRequest(
                request_id=new_id("req_"),
                segment=r.Segment(display_name="derived", rule=all_(segment(base), event("session_start", days=30))),
            )
        )
    ).segment.segment_id
    await publish(segments, derived)
    code, details = await _refused(
        segments.ArchiveSegment(api.ArchiveSegmentRequest(request_id=new_id("req_"), segment_id=base))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and derived in details
    code, details = await _refused(
        segments.UpdateSegment(
            api.UpdateSegmentRequest(request_id=new_id("req_"), segment_id=base, rule=segment(derived))
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "refers back" in details


async def test_without_required_approval_a_draft_publishes_directly(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    async with serving(database_url, nats_url, tmp_path, require_approval=False) as (stub, _):
        sid = (
            await stub.CreateSegment(
                api.CreateSegmentRequest(
                    request_id=new_id("req_"), segment=r.Segment(display_name="x", rule=sip_only())
                )
            )
        ).segment.segment_id
        published = (await stub.PublishSegment(api.PublishSegmentRequest(request_id="p", segment_id=sid))).segment
        assert (published.state, published.published_version, published.approver) == (r.SEGMENT_STATE_PUBLISHED, 1, "")
