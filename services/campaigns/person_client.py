"""People as a trigger or a resend needs them from segments: attributes and the suppressions in force."""

from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from plumbing.errors import Unavailable
from plumbing.telemetry import TRACEPARENT, current_traceparent
from services.campaigns.segments_client import AudienceMember, attribute_values, suppressed_on
from xsell.segments.v1 import service_pb2, service_pb2_grpc

_CALL_TIMEOUT_SECONDS = 10.0
BATCH_GET_MAX = 1000
"""Segments' bound on the ids of one BatchGetProfiles call."""


_CALL_ATTRIBUTES = {
    "rpc.system": "grpc",
    "rpc.service": "xsell.segments.v1.SegmentsService",
    "rpc.method": "BatchGetProfiles",
}


class PersonLookup:
    """BatchGetProfiles: one call for many people.

    Given a channel without client spans (the composition root's untraced one): a call carries its caller's trace
    context itself (`traceparent` metadata), so segments' server span is a child of the caller's span (a trigger
    batch), which is described with the call's attributes. The client span the interceptor makes cost ~120 µs of
    CPU per call (client_channel with and without it, 3,000 calls each), ~3% of a trigger batch.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = service_pb2_grpc.SegmentsServiceStub(channel)

    async def members(self, profile_ids: list[str], now: datetime) -> dict[str, AudienceMember]:
        """Each person found, as a release would stream them, with the suppressions in force at `now`;
        those segments has no profile for are absent."""
        at = Timestamp()
        at.FromDatetime(now)
        found: dict[str, AudienceMember] = {}
        # An empty id names nobody, and segments refuses a whole call for one (INVALID_ARGUMENT): it is left out
        # here, so the people asked for beside it are still found.
        unique = [profile_id for profile_id in dict.fromkeys(profile_ids) if profile_id]
        traceparent = current_traceparent()
        metadata = ((TRACEPARENT, traceparent),) if traceparent else None
        if unique:
            trace.get_current_span().set_attributes({**_CALL_ATTRIBUTES, "xsell.profiles.asked": len(unique)})
        for start in range(0, len(unique), BATCH_GET_MAX):
            chunk = unique[start : start + BATCH_GET_MAX]
            try:
                response = await self._stub.BatchGetProfiles(
                    service_pb2.BatchGetProfilesRequest(profile_ids=chunk, at_time=at),
                    timeout=_CALL_TIMEOUT_SECONDS,
                    metadata=metadata,
                )
            except grpc.aio.AioRpcError as error:
                trace.get_current_span().set_attribute("rpc.grpc.status_code", error.code().value[0])
                raise Unavailable(
                    f"the segments service could not return {len(chunk)} profiles ({error.code().name}); retry shortly"
                ) from error
            for person in response.profiles:
                profile = person.profile
                found[profile.profile_id] = AudienceMember(
                    profile_id=profile.profile_id,
                    attributes=attribute_values(profile.attributes),
                    suppressed_on=suppressed_on(person.suppressions) if person.suppressions else {},
                )
        return found
