"""Segments as content checks and previews see it: the attribute catalog, and one profile's attributes."""

import grpc

from plumbing.errors import InvalidArgument, NotFound, Unavailable
from services.campaigns.segments_client import attribute_value
from xsell.segments.v1 import service_pb2, service_pb2_grpc

_CALL_TIMEOUT_SECONDS = 30.0
_CATALOG_PAGE = 1000


class ProfileDirectory:
    """Calls SegmentsService over the traced channel the composition root created for campaigns."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = service_pb2_grpc.SegmentsServiceStub(channel)

    async def attribute_types(self) -> dict[str, int]:
        """Every attribute declared in segments' catalog (computed ones too), with its AttributeType number."""
        types: dict[str, int] = {}
        token = ""
        while True:
            try:
                response = await self._stub.ListAttributes(
                    service_pb2.ListAttributesRequest(page_size=_CATALOG_PAGE, page_token=token),
                    timeout=_CALL_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError as error:
                raise Unavailable(
                    f"the segments service could not list the attribute catalog ({error.code().name}); the content "
                    "checks need it: retry shortly"
                ) from error
            types.update((definition.name, definition.type) for definition in response.attributes)
            if not response.next_page_token:
                return types
            token = response.next_page_token

    async def attributes_of(self, profile_id: str) -> dict[str, object]:
        """The profile's attributes as plain Python values; NotFound names the profile_id field."""
        if not profile_id:
            raise InvalidArgument(
                "profile_id is required: the profile whose attributes personalise the content", field="profile_id"
            )
        try:
            response = await self._stub.GetProfile(
                service_pb2.GetProfileRequest(profile_id=profile_id), timeout=_CALL_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(
                    f"profile_id {profile_id!r} is not a profile in segments; pick an existing (test) profile",
                    field="profile_id",
                ) from error
            raise Unavailable(
                f"the segments service could not return the profile ({error.code().name}); retry shortly"
            ) from error
        return {name: attribute_value(value) for name, value in response.profile.attributes.items()}
