"""Preview with explain, membership explained for one person, and resumable member streaming."""

from collections.abc import AsyncIterator

import grpc

from plumbing.errors import Unimplemented
from xsell.segments.v1 import service_pb2


class AudienceApi:
    """The audience RPCs of SegmentsApi; state lives on the SegmentsApi instance."""

    async def PreviewSegment(
        self, request: service_pb2.PreviewSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.PreviewSegmentResponse:
        raise Unimplemented("PreviewSegment is not served yet")

    async def ExplainMembership(
        self, request: service_pb2.ExplainMembershipRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ExplainMembershipResponse:
        raise Unimplemented("ExplainMembership is not served yet")

    async def StreamSegmentMembers(
        self, request: service_pb2.StreamSegmentMembersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[service_pb2.StreamSegmentMembersResponse]:
        raise Unimplemented("StreamSegmentMembers is not served yet")
        yield service_pb2.StreamSegmentMembersResponse()
