"""The grpc.aio server every service runs: health, reflection, tracing, logging context and error mapping."""

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.exc import DBAPIError

from plumbing.db import transient_failure
from plumbing.errors import DomainError, FailedPrecondition, InvalidArgument, Unavailable
from plumbing.grpc_client import KEEPALIVE_SECONDS
from plumbing.idempotency import request_scope
from plumbing.metrics import meter
from plumbing.telemetry import CAMPAIGN_ID

if TYPE_CHECKING:
    from plumbing.settings import ServiceSettings

log = structlog.get_logger("plumbing.grpc")

Register = Callable[[grpc.aio.Server], None]

CLIENT_METADATA = "x-xsell-client"
"""Set by the gateway to the authenticated client's name; services record it as the actor in audit logs."""


ONLY_CHANNEL_METADATA = "x-xsell-only-channel"
"""Set by the gateway for a caller whose key may report on one channel's messages only (app.events: push)."""


REQUEST_SCOPE_METADATA = "x-xsell-request-scope"
"""Set by the gateway to the scope of the caller's request ids (plumbing.idempotency.api_key_scope); a call without it
(from inside the cluster, or a gateway of the release before) is unscoped."""


def caller_of(context: grpc.aio.ServicerContext, default: str = "internal") -> str:
    """Who made the call: the gateway's client name, or `default` for calls from inside the cluster."""
    return _metadata(context, CLIENT_METADATA) or default


def only_channel_of(context: grpc.aio.ServicerContext) -> str | None:
    """The one channel the gateway's caller may report on (a Channel name), or None when it may report on any."""
    return _metadata(context, ONLY_CHANNEL_METADATA) or None


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str) and value:
            return value
    return ""


SERVICE_MAX_REQUEST_BYTES = 32 * 1024 * 1024
"""The largest request a service reads (gRPC's own default is 4 MiB), as large as the responses its callers read
(plumbing.grpc_client): the gateway's XSELL_GATEWAY_MAX_REQUEST_BYTES, at most this, is the limit a client meets, and a
request the gateway passes on is never refused by the service's transport in words about another limit."""


MAX_ERROR_TEXT = 1000
"""The most of an error's text a refusal carries. It is sent twice (grpc-message and the status details), and a
caller's 10,000-character value echoed in it passed gRPC's 16 KiB limit on trailers: the caller then got
RESOURCE_EXHAUSTED instead of the refusal that named the field."""


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else f"{text[: MAX_ERROR_TEXT - 30]}... ({len(text)} characters)"


PROTOBUF_MAX_DEPTH = 100
"""How deep protobuf (upb) nests messages when it parses one; a request nested deeper does not parse at all."""

# upb's reason for a request past that depth, in the words a caller can act on.
_DECODE_REASONS = {
    "Exceeded upb_DecodeOptions_MaxDepth": f"its messages nest more than {PROTOBUF_MAX_DEPTH} levels deep"
}


class Undecodable:
    """What a request deserializer returns in place of bytes protobuf could not parse. grpc.aio answers an exception
    raised by a deserializer with UNKNOWN, before any interceptor's handler runs (no span, no key check, no log
    context); this marker lets the call reach ErrorMappingInterceptor, which refuses it with INVALID_ARGUMENT."""

    __slots__ = ("refusal",)

    def __init__(self, refusal: InvalidArgument) -> None:
        self.refusal = refusal


def catching_decode_errors(deserializer: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """`deserializer`, answering an Undecodable where protobuf raises DecodeError."""

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return Undecodable(_undecodable(deserializer, method, error))

    return deserialize


def _undecodable(deserializer: Callable[[bytes], Any], method: str, error: DecodeError) -> InvalidArgument:
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = descriptor.full_name if descriptor is not None else f"request of {method}"
    # upb's text names the type before its reason: "Error parsing message with type 'x.v1.Y': Wire format was corrupt".
    reason = str(error).rpartition("': ")[2]
    reason = _DECODE_REASONS.get(reason, reason).rstrip(".") or "protobuf could not parse it"
    return InvalidArgument(
        f"the request is not a valid {name}: {reason}; send that message as protobuf serializes it, nested at most"
        f" {PROTOBUF_MAX_DEPTH} levels deep, with strings in UTF-8"
    )


def _status_details(error: DomainError) -> tuple[tuple[str, bytes], ...]:
    """The google.rpc.Status trailer, with a BadRequest field violation when a field is named, and a
    PreconditionFailure violation when a failed precondition names its subject."""
    status = status_pb2.Status(code=error.code.value[0], message=_bounded(str(error)))
    details: list[Message] = []
    if error.field:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_bounded(error.field), description=_bounded(error.message)
                    )
                ]
            )
        )
    if isinstance(error, FailedPrecondition) and error.subject:
        details.append(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=error.kind, subject=_bounded(error.subject), description=_bounded(error.message)
                    )
                ]
            )
        )
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


NUL_SQLSTATE = "22021"
"""PostgreSQL's character_not_in_repertoire: how it refuses a NUL in text, stored or compared."""


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first string in `message` (a field, a list item, a map key or value) that holds a NUL, e.g.
    "profiles[1].attributes.city.string_value"; None when no string does."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            for key in value:
                if isinstance(key, str) and "\x00" in key:
                    return f"{path}[{key!r}]"
                found = _nul_in(value[key], f"{path}.{key}")
                if found is not None:
                    return found
            continue
        for index, item in enumerate(value if field.is_repeated else [value]):
            found = _nul_in(item, f"{path}[{index}]" if field.is_repeated else path)
            if found is not None:
                return found
    return None


def _nul_in(value: Any, path: str) -> str | None:
    if isinstance(value, Message):
        return nul_field(value, f"{path}.")
    return path if isinstance(value, str) and "\x00" in value else None


def _nul_refusal(error: BaseException, request: Any) -> InvalidArgument | None:
    """INVALID_ARGUMENT naming the request's string that holds a NUL, when that is why the database refused the call.
    A service checks its own ids; this catches the rest, on the failure path only: SQLite stores and compares a NUL,
    PostgreSQL refuses it, and such a call answered INTERNAL there (GetOutreach, GetCampaign, ListOutreaches...)."""
    if not isinstance(error, DBAPIError) or not isinstance(request, Message):
        return None
    original = error.orig
    if (getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)) != NUL_SQLSTATE:
        return None
    path = nul_field(request)
    if path is None:
        return None
    return InvalidArgument(f"{path} holds a NUL character, which no text may hold; remove it", field=path)


async def _abort_for(error: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    if (reason := transient_failure(error)) is not None:
        log.warning("rpc_unavailable", method=method, reason=reason)
        error = Unavailable(f"{reason}; nothing was written, retry the call")
    if isinstance(error, DomainError):
        # The refusal's text, as the caller got it: the line a LOS call's "record the sanction first" is found by.
        log.info("rpc_rejected", method=method, code=error.code.name, field=error.field, reason=_bounded(str(error)))
        await context.abort(error.code, _bounded(str(error)), trailing_metadata=_status_details(error))
    span_context = trace.get_current_span().get_span_context()
    trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else "none"
    log.error("rpc_failed", method=method, exc_info=error)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error in {method}; quote trace id {trace_id} when reporting it",
        trailing_metadata=(("grpc-status-details-bin", status_pb2.Status(code=code_pb2.INTERNAL).SerializeToString()),),
    )


def _status_of(error: BaseException | None) -> str:
    if error is None:
        return "OK"
    if isinstance(error, DomainError):
        return error.code.name
    if transient_failure(error) is not None:
        return "UNAVAILABLE"
    if isinstance(error, grpc.aio.AbortError):
        return "ABORTED_BY_HANDLER"
    return "INTERNAL"


def _log_context(method: str, request: Any) -> dict[str, str]:
    """The call's log context: its method, and the campaign ID its request names (a LOS event's, a look-up's), so
    that every line of the call, its refusal included, is found by campaign.id. The handler's outreach span binds it
    too, but only inside the span: the refusal is logged here, after it."""
    context = {"rpc": method}
    campaign_id = getattr(request, "campaign_id", None)
    if isinstance(campaign_id, str) and campaign_id:
        context[CAMPAIGN_ID] = campaign_id
    return context


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Binds the method to the log context, times each call, and turns domain errors into status codes."""

    def __init__(self) -> None:
        self._duration = meter().create_histogram(
            "xsell.rpc.server.duration", unit="ms", description="Time to handle one gRPC call, by method and outcome."
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        deserializer = handler.request_deserializer
        if deserializer is not None:
            deserializer = catching_decode_errors(deserializer, method)
        if handler.unary_unary:
            inner_unary = handler.unary_unary

            duration = self._duration

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                failure: BaseException | None = None
                scope = request_scope.set(_metadata(context, REQUEST_SCOPE_METADATA))
                with structlog.contextvars.bound_contextvars(**_log_context(method, request)):
                    try:
                        if type(request) is Undecodable:
                            raise request.refusal
                        return await inner_unary(request, context)
                    except grpc.aio.AbortError as error:
                        failure = error
                        raise
                    except Exception as error:  # noqa: BLE001 - mapped to a status, never swallowed
                        failure = _nul_refusal(error, request) or error
                        await _abort_for(failure, context, method)
                    finally:
                        request_scope.reset(scope)
                        elapsed = (time.perf_counter() - started) * 1000
                        duration.record(elapsed, {"rpc.method": method, "rpc.outcome": _status_of(failure)})
                        log.debug("rpc_handled", ms=round(elapsed, 2))

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream
            if inspect.iscoroutinefunction(inner_stream):
                # Handlers that stream with context.write() (the health Watch) keep their own errors. Made an async
                # generator that yields nothing: OpenTelemetry's server interceptor iterates every streaming handler
                # (`async for`), and a coroutine's Watch answered UNKNOWN whenever tracing was on.
                async def written_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    if type(request) is Undecodable:
                        await _abort_for(request.refusal, context, method)
                    await inner_stream(request, context)
                    return
                    yield

                return grpc.unary_stream_rpc_method_handler(
                    written_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
                )
            if not inspect.isasyncgenfunction(inner_stream):
                return handler

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with structlog.contextvars.bound_contextvars(**_log_context(method, request)):
                    try:
                        if type(request) is Undecodable:
                            raise request.refusal
                        async for item in inner_stream(request, context):
                            yield item
                    except grpc.aio.AbortError:
                        raise
                    except Exception as error:  # noqa: BLE001 - mapped to a status, never swallowed
                        await _abort_for(_nul_refusal(error, request) or error, context, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        # Client-streaming handlers (reflection's) parse each request as they read it, inside the handler.
        return handler


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS listener; with `client_ca` the server requires client certificates it signed (mTLS)."""

    certificate: Path
    private_key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        root = self.client_ca.read_bytes() if self.client_ca is not None else None
        return grpc.ssl_server_credentials(
            [(self.private_key.read_bytes(), self.certificate.read_bytes())],
            root_certificates=root,
            require_client_auth=root is not None,
        )


MIN_PING_INTERVAL_SECONDS = KEEPALIVE_SECONDS / 2
"""The most often a client may ping a connection, idle or not, before the server counts it abuse (gRPC's default is
every 5 minutes, and then only during calls: xsell's clients ping every KEEPALIVE_SECONDS, and a server holding them
to the default would end their connections with GOAWAY "too_many_pings", a stream in flight with it)."""


def connection_options(max_age_seconds: float, max_age_grace_seconds: float) -> list[tuple[str, int]]:
    """A server's options for the life of its connections: each ends after `max_age_seconds` (gRPC adds +/-10 %
    jitter, so a scale-up's clients do not all come back at once) with a GOAWAY, after which the client opens a new
    one and resolves its target again; calls in flight get `max_age_grace_seconds` to finish. 0 keeps connections
    for ever. And the pings xsell's clients send (plumbing.grpc_client.KEEPALIVE_SECONDS) are welcome."""
    options = [
        ("grpc.keepalive_permit_without_calls", 1),
        # gRPC core's name for it (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS): a name it does not know is
        # ignored in silence, the default (5 minutes) applies, and the third ping of a quiet call ends its connection.
        ("grpc.http2.min_ping_interval_without_data_ms", int(MIN_PING_INTERVAL_SECONDS * 1000)),
    ]
    if max_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", int(max_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max_age_grace_seconds * 1000)),
        ]
    return options


class GrpcServer:
    """A grpc.aio server with the standard health service and reflection for the services it hosts."""

    @classmethod
    def of_service(
        cls, settings: "ServiceSettings", tracer_provider: TracerProvider | None, **extra: Any
    ) -> "GrpcServer":
        """A process's server on its settings' host and port, its connections aged as they say; `extra` are the
        rest of __init__'s arguments (the gateway's interceptors, options and TLS)."""
        return cls(
            settings.grpc_host,
            settings.grpc_port,
            tracer_provider,
            max_connection_age_seconds=settings.grpc_max_connection_age_seconds,
            max_connection_age_grace_seconds=settings.grpc_max_connection_age_grace_seconds,
            **extra,
        )

    def __init__(
        self,
        host: str,
        port: int,
        tracer_provider: TracerProvider | None,
        *,
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
        tls: TlsFiles | None = None,
        max_connection_age_seconds: float = 0,
        max_connection_age_grace_seconds: float = 0,
    ) -> None:
        """`max_connection_age_seconds` and its grace: see connection_options (the settings
        grpc_max_connection_age_seconds and grpc_max_connection_age_grace_seconds); 0 keeps connections for ever."""
        self.tls = tls
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if tracer_provider is not None:
            interceptors.append(aio_server_interceptor(tracer_provider=tracer_provider))
        interceptors.extend(extra_interceptors)
        interceptors.append(ErrorMappingInterceptor())
        defaults = {
            "grpc.max_receive_message_length": SERVICE_MAX_REQUEST_BYTES,
            **dict(connection_options(max_connection_age_seconds, max_connection_age_grace_seconds)),
        }
        self.server = grpc.aio.server(interceptors=interceptors, options=list((defaults | dict(options)).items()))
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._address = f"{host}:{port}"
        self._host = host
        self._service_names: list[str] = []
        self.port = 0

    def add(self, service_name: str, register: Register) -> None:
        """Hosts a service, e.g. add("xsell.segments.v1.SegmentsService", lambda s: add_..._to_server(servicer, s))."""
        register(self.server)
        self._service_names.append(service_name)

    async def start(self) -> int:
        """Binds, starts, and reports NOT_SERVING until mark_serving(); returns the bound port."""
        reflection.enable_server_reflection(
            [*self._service_names, reflection.SERVICE_NAME, "grpc.health.v1.Health"], self.server
        )
        if self.tls is None:
            self.port = self.server.add_insecure_port(self._address)
        else:
            self.port = self.server.add_secure_port(self._address, self.tls.credentials())
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC server to {self._address}")
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        return self.port

    async def mark_serving(self) -> None:
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Health goes NOT_SERVING first so balancers stop routing, then in-flight calls get `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
