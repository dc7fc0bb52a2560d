"""Traced gRPC client channels between services."""

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider


def client_channel(target: str, tracer_provider: TracerProvider | None) -> grpc.aio.Channel:
    """An insecure channel inside the cluster, with client spans that carry the trace context."""
    interceptors = aio_client_interceptors(tracer_provider=tracer_provider) if tracer_provider else None
    return grpc.aio.insecure_channel(
        target,
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", 32 * 1024 * 1024),
            # With a dns:/// target on a headless Service, calls spread over every pod, not the first one.
            ("grpc.lb_policy_name", "round_robin"),
        ],
    )
