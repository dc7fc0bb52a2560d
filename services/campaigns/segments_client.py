"""The segments service as campaigns sees it: a segment's state and version, and its members as a stream."""

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from types import MappingProxyType
from typing import NamedTuple

import grpc

from plumbing.errors import PRECONDITION_REFERENCE, FailedPrecondition, NotFound, Unavailable
from services.campaigns.rendering import Money
from xsell.segments.v1 import resources_pb2, service_pb2, service_pb2_grpc
from xsell.type.v1 import channel_pb2

_CALL_TIMEOUT_SECONDS = 30.0
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass(frozen=True)
class SegmentRef:
    """A segment's id, lifecycle state by name (e.g. "PUBLISHED") and version."""

    segment_id: str
    state: str
    version: int


NOT_SUPPRESSED: Mapping[str, tuple[int, ...]] = MappingProxyType({})


class AudienceMember(NamedTuple):
    """One member with the attributes asked for, as plain Python values.

    A named tuple rather than a frozen dataclass: a release makes one per person, and the frozen dataclass's
    __init__ (object.__setattr__ per field) was about a third of decoding a streamed member.
    """

    profile_id: str
    attributes: dict[str, object]
    # Every suppression in force, as reasons per channel name ("ALL" for global ones, "SMS"...).
    suppressed_on: Mapping[str, tuple[int, ...]] = NOT_SUPPRESSED


def suppressed_on(suppressions: Iterable[resources_pb2.Suppression]) -> dict[str, tuple[int, ...]]:
    """Reasons by channel name, each in the contract's order: "ALL" for global suppressions."""
    found: dict[str, set[int]] = {}
    for suppression in suppressions:
        channel = (
            "ALL"
            if suppression.channel == channel_pb2.CHANNEL_UNSPECIFIED
            else channel_pb2.Channel.Name(suppression.channel).removeprefix("CHANNEL_")
        )
        found.setdefault(channel, set()).add(suppression.reason)
    return {channel: tuple(sorted(reasons)) for channel, reasons in found.items()}


def attribute_value(value: resources_pb2.Value) -> object:
    """str, float, bool, frozenset[str], aware datetime or Money; None when unset."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "string_set_value":
        return frozenset(value.string_set_value.values)
    if kind == "timestamp_value":
        return value.timestamp_value.ToDatetime(tzinfo=UTC)
    if kind == "money_value":
        return Money(value.money_value.minor_units, value.money_value.currency_code)
    return None


def attribute_values(values: Mapping[str, resources_pb2.Value]) -> dict[str, object]:
    """A member's attributes as attribute_value gives them.

    `kind` is a oneof, so a non-empty string_value can only be a string: most attributes are read without
    WhichOneof (half of decoding a member); empty and other values go through attribute_value. The map is walked
    by key: its items() is the generic Python ItemsView, a quarter slower.
    """
    decoded: dict[str, object] = {}
    for name in values:
        value = values[name]
        decoded[name] = value.string_value or attribute_value(value)
    return decoded


def _unavailable(error: grpc.aio.AioRpcError, what: str) -> Unavailable:
    return Unavailable(f"the segments service could not {what} ({error.code().name}); retry shortly")


class SegmentsClient:
    """Calls SegmentsService over a traced channel created by the composition root."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = service_pb2_grpc.SegmentsServiceStub(channel)

    async def get_segment(self, segment_id: str) -> SegmentRef:
        try:
            response = await self._stub.GetSegment(
                service_pb2.GetSegmentRequest(segment_id=segment_id), timeout=_CALL_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    f"campaign.segment_id {segment_id!r} does not exist; pick one from ListSegments",
                    field="campaign.segment_id",
                ) from error
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise NotFound(
                    f"campaign.segment_id {segment_id!r} does not exist ({error.details()}); "
                    "pick one from ListSegments",
                    field="campaign.segment_id",
                ) from error
            raise _unavailable(error, "look up the segment") from error
        segment = response.segment
        state = resources_pb2.SegmentState.Name(segment.state).removeprefix("SEGMENT_STATE_")
        if segment.published_version and state != "ARCHIVED":
            # GetSegment answers with the latest version; a newer draft under review does not stop
            # campaigns from targeting (and pinning) the version whose members are maintained.
            return SegmentRef(segment.segment_id or segment_id, "PUBLISHED", segment.published_version)
        return SegmentRef(segment.segment_id or segment_id, state, segment.version)

    async def stream_members(
        self, segment_id: str, version: int, channel: int, attribute_names: Sequence[str], after_profile_id: str
    ) -> AsyncIterator[list[AudienceMember]]:
        """The pinned version's members after `after_profile_id`, in profile-id order, a chunk per message.

        Suppressed people (globally or on `channel`) come too, marked with their reasons, so the run can
        count them; segments decides who is suppressed.
        """
        request = service_pb2.StreamSegmentMembersRequest(
            segment_id=segment_id,
            version=version,
            attribute_names=list(attribute_names),
            after_profile_id=after_profile_id,
            channel=channel,  # type: ignore[arg-type]
            include_suppressed=True,
        )
        # No deadline on the whole stream: a large audience streams for as long as the run releases it.
        call = self._stub.StreamSegmentMembers(request)
        try:
            async for response in call:
                yield [
                    AudienceMember(
                        member.profile_id,
                        attribute_values(member.attributes),
                        suppressed_on(member.suppressions) if member.suppressions else NOT_SUPPRESSED,
                    )
                    for member in response.members
                ]
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRYABLE:
                raise _unavailable(error, "stream the segment's members") from error
            # NOT_FOUND, FAILED_PRECONDITION (archived, or republished past the pinned version)...:
            # the run cannot progress until someone acts.
            raise FailedPrecondition(
                f"segments refused to stream members of {segment_id} version {version} "
                f"({error.code().name}: {error.details()})",
                subject=f"segments/{segment_id}",
                kind=PRECONDITION_REFERENCE,
            ) from error
        finally:
            call.cancel()
