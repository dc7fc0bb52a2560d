"""Maker-checker in tests: a version is submitted, approved by a second client, then published."""

from plumbing.grpc_server import CLIENT_METADATA
from plumbing.ids import new_id
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub

# Calls without the gateway's client header act as "internal"; the checker is someone else.
CHECKER = ((CLIENT_METADATA, "checker"),)


async def approve(stub: SegmentsServiceStub, segment_id: str) -> r.Segment:
    """Submits the latest version if it is a draft and approves it as the checker."""
    latest = (await stub.GetSegment(api.GetSegmentRequest(segment_id=segment_id))).segment
    if latest.state == r.SEGMENT_STATE_DRAFT:
        await stub.SubmitSegment(
            api.SubmitSegmentRequest(request_id=new_id("req_"), segment_id=segment_id, version=latest.version)
        )
    if latest.state in (r.SEGMENT_STATE_DRAFT, r.SEGMENT_STATE_SUBMITTED):
        latest = (
            await stub.ApproveSegment(
                api.ApproveSegmentRequest(request_id=new_id("req_"), segment_id=segment_id, version=latest.version),
                metadata=CHECKER,
            )
        ).segment
    return latest


async def publish(stub: SegmentsServiceStub, segment_id: str) -> r.Segment:
    """The latest version approved by the checker and published."""
    await approve(stub, segment_id)
    response = await stub.PublishSegment(api.PublishSegmentRequest(request_id=new_id("req_"), segment_id=segment_id))
    return response.segment
