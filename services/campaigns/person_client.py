"""People as a trigger or a resend needs them from segments: attributes and the suppressions in force."""

from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.errors import Unavailable
from services.campaigns.segments_client import AudienceMember, attribute_values, suppressed_on
from xsell.segments.v1 import service_pb2, service_pb2_grpc

_CALL_TIMEOUT_SECONDS = 10.0
BATCH_GET_MAX = 1000
"""Segments' bound on the ids of one BatchGetProfiles call."""


class PersonLookup:
    """BatchGetProfiles over the composition root's channel: one call for many people."""

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
        for start in range(0, len(unique), BATCH_GET_MAX):
            chunk = unique[start : start + BATCH_GET_MAX]
            try:
                response = await self._stub.BatchGetProfiles(
                    service_pb2.BatchGetProfilesRequest(profile_ids=chunk, at_time=at), timeout=_CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as error:
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
