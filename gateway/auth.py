"""Who is calling and whether they may: API-key authentication and per-method scopes, before any forwarding."""

import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry import metrics

from gateway import scopes
from gateway.keys import ApiKey, MalformedKey, parse_key, secret_matches
from gateway.limits import RateLimit, RateLimiter
from gateway.store import KeyStore

log = structlog.get_logger(__name__)

MISSING_KEY = "send your API key in the x-api-key metadata"
INVALID_KEY = "the API key is not valid; check it was copied whole, or ask for a new one"
REVOKED_KEY = "the API key has been revoked; ask for a new one"
_MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class Caller:
    """The authenticated client of the current call."""

    key_id: str
    client_name: str
    scopes: frozenset[str]
    rate_limit: RateLimit | None = None


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("gateway_caller", default=None)


class AuthenticationFailed(Exception):
    """The presented key is missing, malformed, unknown, wrong or revoked; the message says which to the caller."""


def presented_key(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The key from `x-api-key`, or from `authorization: Bearer <key>`."""
    bearer = None
    for name, value in metadata or ():
        text = value.decode() if isinstance(value, bytes) else str(value)
        if name == "x-api-key" and text.strip():
            return text.strip()
        if name == "authorization":
            kind, _, token = text.strip().partition(" ")
            if kind.lower() == "bearer" and token.strip():
                bearer = token.strip()
    return bearer


class Authenticator:
    """Checks keys against the store, caching each look-up for a few seconds so revocation takes effect quickly."""

    def __init__(self, store: KeyStore, cache_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def authenticate(self, text: str | None) -> Caller:
        if not text:
            raise AuthenticationFailed(MISSING_KEY)
        try:
            presented = parse_key(text)
        except MalformedKey as error:
            raise AuthenticationFailed(f"the API key is malformed: {error}") from error
        key = await self._lookup(presented.key_id)
        # Unknown and wrong keys get the same answer, so a guesser learns nothing about which ids exist.
        if key is None or not secret_matches(presented.secret, key.key_hash):
            log.info("api_key_rejected", key_id=presented.key_id, reason="unknown_or_wrong")
            raise AuthenticationFailed(INVALID_KEY)
        if key.revoked:
            log.info("api_key_rejected", key_id=presented.key_id, reason="revoked")
            raise AuthenticationFailed(REVOKED_KEY)
        return Caller(key.key_id, key.client_name, key.scopes, key.rate_limit)

    async def _lookup(self, key_id: str) -> ApiKey | None:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self._store.get(key_id)
        if len(self._cache) >= _MAX_CACHED_KEYS:
            # Bounded: random key ids from a guesser must not grow memory without limit.
            self._cache = {kid: entry for kid, entry in self._cache.items() if entry[0] > now}
            if len(self._cache) >= _MAX_CACHED_KEYS:
                self._cache.clear()
        self._cache[key_id] = (now + self._cache_seconds, key)
        return key


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, rate-limits and authorises every call except health and reflection, before the handler runs.

    Fails closed: a method with no row in the scope table is refused even if a handler exists for it.
    """

    def __init__(self, authenticator: Authenticator, limiter: RateLimiter | None = None) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        self._refused = metrics.get_meter("xsell.gateway").create_counter(
            "xsell.gateway.refused",
            unit="{call}",
            description="Calls the gateway refused before any service, by reason (unauthenticated, "
            "rate_limited, permission_denied) and client (empty when unauthenticated).",
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or scopes.is_public(method):
            return handler
        required = scopes.required_scope(method)
        if required is None or not (handler.unary_unary or handler.unary_stream):
            return grpc.unary_unary_rpc_method_handler(_not_exposed(method))
        authenticator = self._authenticator
        limiter = self._limiter
        refused = self._refused

        async def admit(context: grpc.aio.ServicerContext) -> Caller:
            try:
                caller = await authenticator.authenticate(presented_key(context.invocation_metadata()))
            except AuthenticationFailed as error:
                refused.add(1, {"reason": "unauthenticated", "client": ""})
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
            # Before the scope check: a client calling methods it may not call still spends its budget.
            if limiter is not None and (wait := limiter.take(caller.key_id, caller.rate_limit)) > 0:
                limit = limiter.limit_for(caller.rate_limit)
                log.info("rpc_rate_limited", rpc=method, key_id=caller.key_id, retry_in=round(wait, 3))
                refused.add(1, {"reason": "rate_limited", "client": caller.client_name})
                message = f"API key {caller.key_id} is over its rate limit of {limit}; retry in {wait:.2f}s"
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, message, trailing_metadata=_retry_details(message, wait, caller)
                )
            if not scopes.authorizes(caller.scopes, required):
                log.info("rpc_forbidden", rpc=method, key_id=caller.key_id, needs=required)
                refused.add(1, {"reason": "permission_denied", "client": caller.client_name})
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this API key lacks the scope {required!r} that {method} needs; it has {sorted(caller.scopes)}",
                )
            return caller

        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                caller = await admit(context)
                token = current_caller.set(caller)
                try:
                    with structlog.contextvars.bound_contextvars(client=caller.client_name, key_id=caller.key_id):
                        async for response in inner_stream(request, context):
                            yield response
                finally:
                    current_caller.reset(token)

            return grpc.unary_stream_rpc_method_handler(
                guarded_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        inner = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            caller = await admit(context)
            token = current_caller.set(caller)
            try:
                with structlog.contextvars.bound_contextvars(client=caller.client_name, key_id=caller.key_id):
                    return await inner(request, context)
            finally:
                current_caller.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _retry_details(message: str, wait: float, caller: Caller) -> tuple[tuple[str, bytes], ...]:
    """google.rpc.Status with RetryInfo (when to retry) and QuotaFailure (whose quota), as gRPC clients expect."""
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(1, int(wait * 1e9)))
    for detail in (
        error_details_pb2.RetryInfo(retry_delay=delay),
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"api_key:{caller.key_id}", description="calls per second of this API key"
                )
            ]
        ),
    ):
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


def _not_exposed(method: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not exposed by the gateway")

    return refuse
