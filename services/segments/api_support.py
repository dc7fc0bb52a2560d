"""Helpers every part of the segments servicer shares: timestamps, page tokens and sizes, segment protos."""

from collections.abc import Sequence
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.errors import FailedPrecondition, InvalidArgument, NotFound
from services.segments import records, store
from services.segments.maintenance import Change
from xsell.segments.v1 import events_pb2, resources_pb2
from xsell.type.v1 import record_error_pb2


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def check_batch(size: int, name: str) -> None:
    """A batch of 1 to records.MAX_BATCH records; a larger one is refused whole, saying how to split it."""
    if not 1 <= size <= records.MAX_BATCH:
        split = f"; split the batch into requests of at most {records.MAX_BATCH}" if size else ""
        raise InvalidArgument(
            f"{name} must hold 1 to {records.MAX_BATCH} records per request, got {size}{split}", field=name
        )


def record_errors(problems: Sequence[records.RecordProblem]) -> list[record_error_pb2.RecordError]:
    return [
        record_error_pb2.RecordError(index=p.index, record_id=p.record_id, field=p.field, reason=p.reason)
        for p in problems
    ]


def segment_proto(head: store.SegmentRow, version: store.VersionRow) -> resources_pb2.Segment:
    """One version of a segment; member_count is the segment's when this version is the published one."""
    published_version = head.version if head.state == store.PUBLISHED else 0
    segment = resources_pb2.Segment(
        segment_id=head.segment_id,
        display_name=version.display_name,
        description=version.description,
        rule=resources_pb2.Rule.FromString(version.rule),
        state=resources_pb2.SegmentState.Value(f"SEGMENT_STATE_{version.state}"),
        version=version.version,
        member_count=head.member_count if version.version == published_version else 0,
        create_time=timestamp(head.create_time),
        author=version.author,
        approver=version.approver,
        update_time=timestamp(version.update_time),
        published_version=published_version,
    )
    if head.publish_time is not None:
        segment.publish_time.CopyFrom(timestamp(head.publish_time))
    return segment


def membership_changed(changes: Sequence[Change], now: datetime) -> list[events_pb2.MembershipChanged]:
    """The MembershipChanged events of entries and exits detected at `now`."""
    return [
        events_pb2.MembershipChanged(
            segment_id=c.segment_id,
            segment_version=c.segment_version,
            profile_id=c.profile_id,
            change=events_pb2.MEMBERSHIP_CHANGE_ENTERED if c.entered else events_pb2.MEMBERSHIP_CHANGE_EXITED,
            change_time=timestamp(now),
        )
        for c in changes
    ]


async def load_segment(session: AsyncSession, segment_id: str, *, for_update: bool = False) -> store.SegmentRow:
    if not segment_id:
        raise InvalidArgument("segment_id is required", field="segment_id")
    row = await store.get_segment(session, segment_id, for_update=for_update)
    if row is None:
        raise NotFound(f"segment {segment_id} not found; ListSegments shows the existing ones", field="segment_id")
    return row


async def load_published(session: AsyncSession, segment_id: str) -> store.SegmentRow:
    row = await load_segment(session, segment_id)
    if row.state != store.PUBLISHED:
        raise FailedPrecondition(
            f"segment {segment_id} is {row.state}; publish it with PublishSegment first",
            field="segment_id",
            subject=segment_subject(segment_id),
        )
    return row


def segment_subject(segment_id: str) -> str:
    """The segment a refusal is about, as its PreconditionFailure names it."""
    return f"segments/{segment_id}"


async def load_version(session: AsyncSession, head: store.SegmentRow, version: int) -> store.VersionRow:
    """The given version of the segment; 0 means the latest."""
    if version < 0:
        raise InvalidArgument(f"version must be 0 (the latest) or a version number, got {version}", field="version")
    if version == 0:
        found = (await store.latest_versions(session, [head.segment_id])).get(head.segment_id)
    else:
        found = await store.get_version(session, head.segment_id, version)
    if found is None:
        raise NotFound(
            f"segment {head.segment_id} has no version {version}; GetSegment with version 0 shows the latest",
            field="version",
        )
    return found
