"""Send-time consent: asks segments, which owns suppressions and consent, whether a person may still be contacted
on a channel."""

import grpc
from opentelemetry.sdk.trace import TracerProvider

from plumbing.grpc_client import client_channel
from services.channels.delivery import scrub
from xsell.segments.v1 import resources_pb2, service_pb2, service_pb2_grpc


class ConsentUnknown(Exception):
    """Segments could not be asked; the message waits, because suppressions must win over sending."""


class SegmentsSuppressions:
    """CheckSuppression on the segments service, for one person and channel, at the moment of sending."""

    def __init__(self, target: str, provider: TracerProvider | None, *, timeout_seconds: float = 5.0) -> None:
        self.target = target
        self.provider = provider
        self.timeout_seconds = timeout_seconds
        self._channel: grpc.aio.Channel | None = None

    async def suppressed(self, profile_id: str, channel: int, address: str = "") -> str | None:
        """Why the person may not be contacted on `channel` now at `address` (the one the message was made for;
        "" for a webhook), or None when they may."""
        if self._channel is None:
            self._channel = client_channel(self.target, self.provider)
        stub = service_pb2_grpc.SegmentsServiceStub(self._channel)
        try:
            response = await stub.CheckSuppression(
                service_pb2.CheckSuppressionRequest(profile_id=profile_id, channel=channel, address=address),  # type: ignore[arg-type]
                timeout=self.timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                # Segments answered, and refuses the question itself (an address longer than it compares): asking
                # again gets the same answer. Not sent unchecked, and not retried: held for good with why, as a
                # suppression is (the validators refuse what segments is known to refuse before it is asked).
                refusal = scrub(error.details() or "")
                return f"suppressions could not be checked: segments refused the request ({refusal}); nothing is sent"
            raise ConsentUnknown(f"segments CheckSuppression failed with {error.code().name}") from error
        if response.suppressed:
            reasons = sorted({resources_pb2.SuppressionReason.Name(s.reason) for s in response.suppressions})
            return f"suppressed at send time: {', '.join(reasons) or 'suppression in force'}"
        if response.consent_missing:
            # e.g. WhatsApp without an opt-in (withdrawn since release): never sent, as a suppression is not.
            return f"no consent at send time: {response.consent_missing}"
        if response.address_replaced:
            # Campaigns read the address when it made the message (a staggered step or quiet hours may be days
            # later): the old one may be someone else's now, a recycled number above all.
            return f"address replaced at send time: {response.address_replaced}; not sent to the old one"
        return None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
