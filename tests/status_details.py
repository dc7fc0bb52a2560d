"""What a refusal's google.rpc.Status trailer says, read as a gRPC client reads it."""

import grpc
from google.rpc import error_details_pb2, status_pb2


def _details(error: grpc.aio.AioRpcError) -> list[object]:
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    unpacked: list[object] = []
    for detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.PreconditionFailure):
            message = kind()
            if detail.Unpack(message):
                unpacked.append(message)
    return unpacked


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields the BadRequest detail names."""
    return [
        violation.field
        for detail in _details(error)
        if isinstance(detail, error_details_pb2.BadRequest)
        for violation in detail.field_violations
    ]


def precondition_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str, str]]:
    """(type, subject, description) of each PreconditionFailure violation."""
    return [
        (violation.type, violation.subject, violation.description)
        for detail in _details(error)
        if isinstance(detail, error_details_pb2.PreconditionFailure)
        for violation in detail.violations
    ]
