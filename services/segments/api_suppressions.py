"""Suppression lists: global and per channel, with reasons and expiry; they always win over membership."""

import grpc

from plumbing.errors import Unimplemented
from xsell.segments.v1 import service_pb2


class SuppressionsApi:
    """The suppressions RPCs of SegmentsApi; state lives on the SegmentsApi instance."""

    async def AddSuppressions(
        self, request: service_pb2.AddSuppressionsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.AddSuppressionsResponse:
        raise Unimplemented("AddSuppressions is not served yet")

    async def RemoveSuppression(
        self, request: service_pb2.RemoveSuppressionRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RemoveSuppressionResponse:
        raise Unimplemented("RemoveSuppression is not served yet")

    async def ListSuppressions(
        self, request: service_pb2.ListSuppressionsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListSuppressionsResponse:
        raise Unimplemented("ListSuppressions is not served yet")

    async def CheckSuppression(
        self, request: service_pb2.CheckSuppressionRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.CheckSuppressionResponse:
        raise Unimplemented("CheckSuppression is not served yet")
