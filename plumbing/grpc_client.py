"""Traced gRPC client channels between services."""

from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider

KEEPALIVE_SECONDS = 30
"""How often each connection is pinged, busy or idle. A pod whose node died answers nothing, not even a reset: without
the ping round_robin would go on giving it calls, each waiting out its deadline, for as long as TCP retransmits (about
15 minutes). The servers accept pings this often (plumbing.grpc_server.MIN_PING_INTERVAL_SECONDS)."""

KEEPALIVE_TIMEOUT_SECONDS = 10
"""How long a ping may wait for its answer before the connection is given up and its pod's address resolved again."""


def client_channel(
    target: str, tracer_provider: TracerProvider | None, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An insecure channel inside the cluster, with client spans that carry the trace context.

    In Kubernetes the target is `dns:///<service>-grpc:<port>`, a headless Service: the name resolves to every ready
    pod's address, round_robin keeps a connection to each and spreads the calls over them. The servers end each
    connection after their max connection age (plumbing.grpc_server), and the channel resolves the name again when
    one ends (at most every 30 s, gRPC's grpc.dns_min_time_between_resolutions_ms), so pods that a scale-up added
    take calls within minutes. `options` are added to these (a name given twice keeps its first value; tests add a
    shorter resolution interval)."""
    interceptors = aio_client_interceptors(tracer_provider=tracer_provider) if tracer_provider else None
    return grpc.aio.insecure_channel(
        target,
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", 32 * 1024 * 1024),
            ("grpc.lb_policy_name", "round_robin"),
            # The targets are names of this cluster's Services; none publishes a service config in DNS TXT records.
            ("grpc.service_config_disable_resolution", 1),
            ("grpc.keepalive_time_ms", KEEPALIVE_SECONDS * 1000),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_SECONDS * 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Keep pinging through a long server stream (StreamSegmentMembers) in which the client sends nothing:
            # by default gRPC stops after two pings without data of its own, and the ping would guard nothing.
            ("grpc.http2.max_pings_without_data", 0),
            *options,
        ],
    )
