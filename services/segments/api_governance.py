"""Maker-checker: versions, submission, approval by someone else, archive, and the audit log."""

import grpc

from plumbing.errors import Unimplemented
from xsell.segments.v1 import service_pb2


class GovernanceApi:
    """The governance RPCs of SegmentsApi; state lives on the SegmentsApi instance."""

    async def UpdateSegment(
        self, request: service_pb2.UpdateSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.UpdateSegmentResponse:
        raise Unimplemented("UpdateSegment is not served yet")

    async def SubmitSegment(
        self, request: service_pb2.SubmitSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.SubmitSegmentResponse:
        raise Unimplemented("SubmitSegment is not served yet")

    async def ApproveSegment(
        self, request: service_pb2.ApproveSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ApproveSegmentResponse:
        raise Unimplemented("ApproveSegment is not served yet")

    async def RejectSegment(
        self, request: service_pb2.RejectSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RejectSegmentResponse:
        raise Unimplemented("RejectSegment is not served yet")

    async def ArchiveSegment(
        self, request: service_pb2.ArchiveSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ArchiveSegmentResponse:
        raise Unimplemented("ArchiveSegment is not served yet")

    async def ListSegmentAudit(
        self, request: service_pb2.ListSegmentAuditRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListSegmentAuditResponse:
        raise Unimplemented("ListSegmentAudit is not served yet")
