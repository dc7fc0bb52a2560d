"""Makes xsell's streams and durables in NATS account XSELL, as user `provisioner`, before the services start.

    python -m services.nats_provision    # reads XSELL_NATS_URL, _USER, _PASSWORD, _TLS_CA and XSELL_STREAM_REPLICAS

Where NATS has accounts (services/nats_access.py), a service's account imports only its own part of XSELL's
JetStream API (its durables' pulls, acks and state, streams' state), so it can make nothing: this does, idempotently
(`make run` before the services; in Kubernetes each service pod's init container). On a server without accounts
(tests, benchmarks) the services make them themselves, as before.
"""

import asyncio
import random
import sys
import time

import nats.errors
import structlog
from nats.js.errors import ServerError

from plumbing.bus import Bus, NatsRefused
from plumbing.settings import ToolSettings
from services import streams

log = structlog.get_logger(__name__)


ATTEMPTS_SECONDS = 120.0
"""How long provisioning keeps trying: on a new 3-member cluster, a dozen pods provisioning at once (a rollout, a
first install) had most of their stream and durable calls time out until the streams existed (a review measured it);
idempotent calls asked again get through."""


async def provision(bus: Bus, replicas: int = 1, *, within: float = ATTEMPTS_SECONDS) -> None:
    """Every stream (created, or updated to its configuration in the code) and every durable (created if missing),
    asked again after a pause that grows, with jitter, while the server times out or refuses, for `within` s."""
    deadline = time.monotonic() + within
    pause = 0.5
    while True:
        try:
            await bus.ensure_streams(streams.ALL_STREAMS, replicas=replicas)
            for consumer in streams.CONSUMERS:
                await bus.ensure_consumer(consumer)
            return
        except (TimeoutError, ServerError, nats.errors.Error) as error:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("nats_provision_retried", error=str(error) or type(error).__name__, pause_seconds=pause)
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 10.0)


async def _main() -> int:
    settings = ToolSettings()
    try:
        bus = await Bus.of_service(settings, "nats-provision")
    except NatsRefused as error:
        print(
            f"error: {error}; this reads XSELL_NATS_URL, XSELL_NATS_TLS_CA, XSELL_NATS_USER and "
            "XSELL_NATS_PASSWORD (user provisioner)",
            file=sys.stderr,
        )
        return 2
    try:
        await provision(bus, settings.stream_replicas)
    finally:
        await bus.drain()
    print(f"provisioned {len(streams.ALL_STREAMS)} streams and {len(streams.CONSUMERS)} durables")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
