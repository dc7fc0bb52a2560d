"""One person as a trigger or a resend needs them from segments: attributes and the suppressions in force."""

import asyncio
from datetime import UTC, datetime

import grpc

from plumbing.errors import Unavailable
from services.campaigns.segments_client import AudienceMember, attribute_value, suppressed_on
from xsell.segments.v1 import service_pb2, service_pb2_grpc

_CALL_TIMEOUT_SECONDS = 10.0
_SUPPRESSION_PAGE = 1000


class PersonLookup:
    """GetProfile and ListSuppressions for one profile, concurrently, over the composition root's channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = service_pb2_grpc.SegmentsServiceStub(channel)

    async def member(self, profile_id: str, now: datetime) -> AudienceMember | None:
        """The person as a release would stream them; None when segments has no such profile."""
        try:
            profile, suppressions = await asyncio.gather(
                self._stub.GetProfile(
                    service_pb2.GetProfileRequest(profile_id=profile_id), timeout=_CALL_TIMEOUT_SECONDS
                ),
                self._stub.ListSuppressions(
                    service_pb2.ListSuppressionsRequest(profile_id=profile_id, page_size=_SUPPRESSION_PAGE),
                    timeout=_CALL_TIMEOUT_SECONDS,
                ),
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable(
                f"the segments service could not return profile {profile_id} ({error.code().name}); retry shortly"
            ) from error
        # ListSuppressions lists expired suppressions too; only those in force now count.
        in_force = [
            s
            for s in suppressions.suppressions
            if not s.HasField("expire_time") or s.expire_time.ToDatetime(tzinfo=UTC) > now
        ]
        return AudienceMember(
            profile_id=profile_id,
            attributes={name: attribute_value(value) for name, value in profile.profile.attributes.items()},
            suppressed_on=suppressed_on(in_force),
        )
