"""The attribute catalog and computed attributes."""

import grpc

from plumbing.errors import Unimplemented
from xsell.segments.v1 import service_pb2


class CatalogApi:
    """The catalog RPCs of SegmentsApi; state lives on the SegmentsApi instance."""

    async def DefineAttributes(
        self, request: service_pb2.DefineAttributesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.DefineAttributesResponse:
        raise Unimplemented("DefineAttributes is not served yet")

    async def ListAttributes(
        self, request: service_pb2.ListAttributesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListAttributesResponse:
        raise Unimplemented("ListAttributes is not served yet")
