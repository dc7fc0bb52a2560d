"""Passes calls through to the services' own APIs: raw bytes in and out, deadline, trace context and errors kept."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
import structlog
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from gateway import scopes
from gateway.auth import Caller, current_caller
from plumbing.grpc_server import CLIENT_METADATA, ONLY_CHANNEL_METADATA, REQUEST_SCOPE_METADATA
from plumbing.idempotency import api_key_scope
from plumbing.telemetry import outreach_span

log = structlog.get_logger(__name__)

STATUS_DETAILS = "grpc-status-details-bin"


def _method_descriptor(method: str) -> Any:
    service, _, name = method.lstrip("/").partition("/")
    return descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]


def request_type(method: str) -> type[Message]:
    """The request message class of a full method name, from the default descriptor pool (the *_pb2 modules)."""
    return message_factory.GetMessageClass(_method_descriptor(method).input_type)


def is_server_streaming(method: str) -> bool:
    return bool(_method_descriptor(method).server_streaming)


def campaign_id_of(message_type: type[Message], request: bytes) -> str:
    """The request's `campaign_id`, or "" when it has none or does not parse (the service rejects those)."""
    if "campaign_id" not in message_type.DESCRIPTOR.fields_by_name:
        return ""
    message = message_type()
    try:
        message.ParseFromString(request)
    except DecodeError:
        return ""
    value = getattr(message, "campaign_id", "")
    return value if isinstance(value, str) else ""


def app_event_refusal(method: str, message_type: type[Message], request: bytes) -> str:
    """Why a caller with app.events may not make this request ("" when it may): an app backend reports what people
    do with a push, and nothing that settles or suppresses another message."""
    field, allowed, names = scopes.APP_EVENT_KINDS[method]
    message = message_type()
    try:
        message.ParseFromString(request)
    except DecodeError:
        return ""  # the service refuses it with INVALID_ARGUMENT
    if getattr(message, field) in allowed:
        return ""
    return f"an {scopes.APP_EVENTS} key may record only {field} {names} on a push message; this request sets another"


def caller_metadata(caller: Caller | None) -> tuple[tuple[str, str], ...]:
    """Who the service is called for: the client's name (the actor of audit logs) and the scope of its request ids, so
    that two keys' request_id "1" are two requests (the key's public id; a call from inside the cluster has none)."""
    if caller is None:
        return ()
    return ((CLIENT_METADATA, caller.client_name), (REQUEST_SCOPE_METADATA, api_key_scope(caller.key_id)))


def downstream_timeout(context: grpc.aio.ServicerContext, cap: float) -> float:
    """The caller's remaining deadline, capped so no forwarded call outlives `cap` seconds."""
    remaining = context.time_remaining()
    return cap if remaining is None else min(remaining, cap)


async def abort_with_downstream_error(
    context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError, service: str
) -> NoReturn:
    """Re-raises a service's error to the caller with its code, message and google.rpc.Status details."""
    trailers = tuple((name, value) for name, value in (error.trailing_metadata() or ()) if name == STATUS_DETAILS)
    message = error.details() or ""
    if error.code() == grpc.StatusCode.UNAVAILABLE and not trailers:
        # Raised by the channel, not by the service: its text names internal addresses, which stay inside.
        log.warning("downstream_unavailable", service=service, detail=message)
        message = f"{service} is unavailable right now; retry with backoff"
    await context.abort(error.code(), message, trailing_metadata=trailers)
    raise AssertionError("context.abort raises AbortError")  # grpc's stubs do not say so


class Forwarder:
    """Builds the generic handlers that serve a service's methods by forwarding the raw request bytes."""

    def __init__(self, tracer: trace.Tracer, timeout_cap: float) -> None:
        self._tracer = tracer
        self._timeout_cap = timeout_cap

    def handler(self, service: str, methods: list[str], channel: grpc.aio.Channel) -> grpc.GenericRpcHandler:
        handlers = {}
        for method in methods:
            if is_server_streaming(method):
                handlers[method.rpartition("/")[2]] = grpc.unary_stream_rpc_method_handler(
                    self._forward_stream(service, method, channel)
                )
            else:
                handlers[method.rpartition("/")[2]] = grpc.unary_unary_rpc_method_handler(
                    self._forward(service, method, channel)
                )
        return grpc.method_handlers_generic_handler(service, handlers)

    def _forward_stream(
        self, service: str, method: str, channel: grpc.aio.Channel
    ) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]:
        """Streams pass through message by message, under the caller's own deadline only: an audience of
        millions takes longer than any cap, and the caller resumes after the last id it got if cut off."""
        call = channel.unary_stream(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            metadata = caller_metadata(current_caller.get())
            stream = call(request, timeout=context.time_remaining(), metadata=metadata)
            try:
                async for response in stream:
                    yield response
            except grpc.aio.AioRpcError as error:
                await abort_with_downstream_error(context, error, service)
            finally:
                stream.cancel()

        return forward

    def _forward(
        self, service: str, method: str, channel: grpc.aio.Channel
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        # No serializers: the caller's bytes go downstream untouched, and the service's bytes come back.
        call = channel.unary_unary(method)
        message_type = request_type(method)
        span_name = f"gateway {method.rpartition('/')[2]}"
        narrowed = method in scopes.APP_EVENT_KINDS
        tracer = self._tracer
        timeout_cap = self._timeout_cap

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            timeout = downstream_timeout(context, timeout_cap)
            if timeout <= 0:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before forwarding")
            caller = current_caller.get()
            metadata = caller_metadata(caller)
            if narrowed and caller is not None and scopes.ADMIN not in caller.scopes:
                refusal = app_event_refusal(method, message_type, request)
                if refusal:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
                metadata += ((ONLY_CHANNEL_METADATA, "CHANNEL_PUSH"),)
            campaign_id = campaign_id_of(message_type, request)
            if not campaign_id:
                return await send(request, context, timeout, metadata)
            # The gateway's span joins the outreach's trace, and the client interceptor carries it downstream. The
            # service's refusal is the span's status, and the caller's abort comes after the span: raised inside it,
            # the abort made every refused call's span "ERROR: AbortError: Locally aborted."
            with outreach_span(tracer, span_name, campaign_id) as span:
                try:
                    response: bytes = await call(request, timeout=timeout, metadata=metadata)
                except grpc.aio.AioRpcError as error:
                    span.set_status(Status(StatusCode.ERROR, f"{error.code().name}: {error.details() or ''}"))
                    refused = error
                else:
                    return response
            await abort_with_downstream_error(context, refused, service)

        async def send(request: bytes, context: grpc.aio.ServicerContext, timeout: float, metadata: Any) -> bytes:
            try:
                response: bytes = await call(request, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                await abort_with_downstream_error(context, error, service)
            return response

        return forward
