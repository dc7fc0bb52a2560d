"""The life of one service process: start everything, serve until SIGTERM, then shut down in order."""

import asyncio
import gc
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace import TracerProvider

from plumbing.bus import STOP_WAIT_SECONDS
from plumbing.grpc_server import GrpcServer
from plumbing.logging import setup_logging
from plumbing.loop_lag import LoopLag
from plumbing.metrics import setup_metrics
from plumbing.settings import ServiceSettings
from plumbing.telemetry import setup_tracing

log = structlog.get_logger("plumbing.runtime")

CLOSE_SECONDS = 10.0
"""The longest the closers take together once the loops stopped. nats.py's drain of a connection may take its
drain_timeout (5 s) and then a flush of up to 10 s, and a service drains two; a database that stopped answering holds
the engine's dispose for as long as TCP lets it. What is not closed by then is left to the process's exit: a message
whose ack did not leave is delivered again and skipped by the inbox, an event not marked published is published
again and deduplicated by its Nats-Msg-Id."""

TELEMETRY_FLUSH_SECONDS = 5.0
"""The longest the last spans (and metrics, where they go over OTLP) take to leave at exit. With the collector away the
span processor's shutdown waits up to 30 s for its queue, each export retrying for 10 s; past this bound what is left
is dropped, since a rollout or a node drain must not wait on a collector that is down."""


def shutdown_seconds(grace: float) -> float:
    """The longest a process takes from SIGTERM to its exit with `shutdown_grace_seconds` = `grace`: in-flight calls
    get `grace`, the loops STOP_WAIT_SECONDS to stop pulling and `grace` again to finish the messages in hand, the
    closers CLOSE_SECONDS and the exporters TELEMETRY_FLUSH_SECONDS. A pod's terminationGracePeriodSeconds must cover
    it after its preStop sleep, or the kubelet kills the process mid-shutdown (tests/deploy checks the manifests)."""
    return grace + STOP_WAIT_SECONDS + grace + CLOSE_SECONDS + TELEMETRY_FLUSH_SECONDS


@dataclass
class BackgroundTask:
    """A long-running loop (outbox relay, consumer, scheduler) with the way to stop it."""

    name: str
    run: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]


@dataclass
class ServiceProcess:
    """Everything a service's composition root hands back: the server, its loops, and what to close."""

    name: str
    server: GrpcServer
    tasks: list[BackgroundTask] = field(default_factory=list)
    # Closed in reverse order after the server and the loops stopped (bus drain, engine dispose).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _running: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> int:
        port = await self.server.start()
        # Every process reports how long work holds its event loop (xsell.event_loop.lag).
        lag = LoopLag()
        self.tasks.append(BackgroundTask("loop-lag", lag.run, lag.stop))
        for task in self.tasks:
            self._running.append(asyncio.create_task(self._supervise(task), name=task.name))
        await self.server.mark_serving()
        log.info("service_started", grpc_port=port)
        return port

    async def _supervise(self, task: BackgroundTask) -> None:
        try:
            await task.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A dead loop must not leave a process that looks healthy but does nothing.
            log.exception("background_task_crashed", task=task.name)
            await self.server.health.enter_graceful_shutdown()
            raise

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING, in-flight calls finish, loops stop, NATS drains, databases close."""
        log.info("service_stopping", grace_s=grace)
        await self.server.stop(grace)
        # All at once: a consumer's stop waits out its fetch (up to a second), and one after another
        # that added a second per consumer to every shutdown.
        await asyncio.gather(*(task.stop() for task in self.tasks))
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=grace)
            for still_running in pending:
                still_running.cancel()
        closing = asyncio.timeout(CLOSE_SECONDS)
        try:
            async with closing:
                for close in reversed(self.closers):
                    await close()
        except TimeoutError:
            if not closing.expired():
                raise  # a closer's own timeout, not the bound's
            log.warning("service_close_cut_short", after_s=CLOSE_SECONDS)
        log.info("service_stopped")


S = TypeVar("S", bound=ServiceSettings)


def run_service(name: str, settings: S, build: Callable[[S, TracerProvider], Awaitable[ServiceProcess]]) -> None:
    """The body of every service's __main__: logging, tracing, build, serve until SIGTERM or SIGINT."""
    setup_logging(name, settings.log_level)
    provider = setup_tracing(name, settings.var_dir)
    trace.set_tracer_provider(provider)
    metrics_server = setup_metrics(name, settings.grpc_host, settings.metrics_port)
    metrics.set_meter_provider(metrics_server.provider)
    if metrics_server.port:
        log.info("metrics_serving", port=metrics_server.port)

    async def main() -> None:
        process = await build(settings, provider)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await process.start()
        # What building and starting made (engines and their compiled statements, templates, stubs, migrations'
        # modules) lives as long as the process: collected once, then frozen, the collector's full passes no
        # longer walk it (a full pass of ~40 ms in campaigns, each a window of messages late by as much).
        gc.collect()
        gc.freeze()
        await stop.wait()
        await process.stop(settings.shutdown_grace_seconds)

    try:
        asyncio.run(main())
    finally:
        within(TELEMETRY_FLUSH_SECONDS, metrics_server.shutdown, provider.shutdown)


def within(seconds: float, *steps: Callable[[], object]) -> None:
    """Runs each of `steps` on a thread of its own, all at once, and waits for them at most `seconds` in all. Daemon
    threads, so one still waiting does not hold the process's exit; and each step has begun, so the providers' own
    shutdowns at exit (atexit) find them shut down instead of waiting their full timeouts again."""
    workers = [threading.Thread(target=step, name="shutdown-step", daemon=True) for step in steps]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + seconds
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    if any(worker.is_alive() for worker in workers):
        log.warning("telemetry_flush_cut_short", after_s=seconds)
