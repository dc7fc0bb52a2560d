"""The CLI's connection to the gateway: key, address, deadline, request ids, and errors a person can act on."""

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc
from xsell.campaigns.v1 import service_pb2_grpc as campaigns_grpc
from xsell.channels.v1 import service_pb2_grpc as channels_grpc
from xsell.gateway.v1 import service_pb2_grpc as gateway_grpc
from xsell.segments.v1 import service_pb2_grpc as segments_grpc

DEFAULT_GATEWAY = "127.0.0.1:50051"
DEV_KEY_FILE = Path("var") / "dev-api-key"
"""Where `make run` keeps its local admin key: the default when XSELL_API_KEY is not set."""


class CliError(Exception):
    """A problem the CLI finds itself (a bad file, a name that matches nothing); exits 2."""


class Refused(Exception):
    """A refusal by the gateway, with what the person can do about it (`hints`, printed after it); exits 1."""

    def __init__(self, error: grpc.RpcError, *hints: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.hints = hints


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a failed call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return code, details or ""


def api_key_from(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("XSELL_API_KEY"):
        return os.environ["XSELL_API_KEY"]
    return DEV_KEY_FILE.read_text().strip() if DEV_KEY_FILE.exists() else None


def random_request_id(verb: str) -> str:
    """For steps that may rightly repeat (pause, resume): one id per invocation."""
    return f"cli-{verb}-{uuid.uuid4().hex}"


def derived_request_id(*parts: str | int | bytes) -> str:
    """The same id for the same inputs, so running the same command again is deduplicated by the service."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode())
        digest.update(b"\x00")
    return f"cli-{digest.hexdigest()[:40]}"


@dataclass
class Gateway:
    """The stubs the CLI uses, each call carrying the API key and a deadline."""

    channel: grpc.Channel
    api_key: str | None
    timeout: float

    @classmethod
    def connect(
        cls,
        target: str,
        api_key: str | None,
        timeout: float,
        *,
        tls_ca: Path | None = None,
        tls_certificate: Path | None = None,
        tls_key: Path | None = None,
    ) -> "Gateway":
        """Plaintext by default; TLS when a CA is given, mTLS when a client certificate and key are given too."""
        if tls_ca is None and tls_certificate is None:
            return cls(grpc.insecure_channel(target), api_key, timeout)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls_ca.read_bytes() if tls_ca is not None else None,
            private_key=tls_key.read_bytes() if tls_key is not None else None,
            certificate_chain=tls_certificate.read_bytes() if tls_certificate is not None else None,
        )
        return cls(grpc.secure_channel(target, credentials), api_key, timeout)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.api_key),) if self.api_key else ()

    @property
    def segments(self) -> segments_grpc.SegmentsServiceStub:
        return segments_grpc.SegmentsServiceStub(self.channel)

    @property
    def campaigns(self) -> campaigns_grpc.CampaignsServiceStub:
        return campaigns_grpc.CampaignsServiceStub(self.channel)

    @property
    def channels(self) -> channels_grpc.ChannelsServiceStub:
        return channels_grpc.ChannelsServiceStub(self.channel)

    @property
    def attribution(self) -> attribution_grpc.AttributionServiceStub:
        return attribution_grpc.AttributionServiceStub(self.channel)

    @property
    def gateway(self) -> gateway_grpc.GatewayServiceStub:
        return gateway_grpc.GatewayServiceStub(self.channel)

    def call(self, rpc: Any, request: Any, *, timeout: float | None = None) -> Any:
        return rpc(request, metadata=self.metadata, timeout=timeout or self.timeout)

    def future(self, rpc: Any, request: Any, *, timeout: float | None = None) -> Any:
        return rpc.future(request, metadata=self.metadata, timeout=timeout or self.timeout)

    def close(self) -> None:
        self.channel.close()


def describe_rpc_error(error: grpc.RpcError) -> list[str]:
    """The status code and message, then each field violation and retry hint from the status details."""
    code, details = status_of(error)
    lines = [f"error: {code.name}: {details}"]
    if code == grpc.StatusCode.UNAVAILABLE and details and "unavailable right now" not in details:
        lines.append("  is the gateway running? set XSELL_GATEWAY or --gateway to its host:port")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        lines.append("  set XSELL_API_KEY or --api-key to a key from `python -m gateway keys create`")
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        status = None
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(bad_request):
            for violation in bad_request.field_violations:
                line = f"{violation.field}: {violation.description}"
                if line != details:  # the services' messages already start with the field path
                    lines.append(f"  {line}")
        elif detail.Unpack(retry):
            delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            lines.append(f"  retry in {delay:.2f}s")
    return lines


def print_rpc_error(error: grpc.RpcError, err: TextIO) -> None:
    for line in describe_rpc_error(error):
        print(line, file=err)
