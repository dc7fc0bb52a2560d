"""The life of one service process: start everything, serve until SIGTERM, then shut down in order."""

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace import TracerProvider

from plumbing.grpc_server import GrpcServer
from plumbing.logging import setup_logging
from plumbing.loop_lag import LoopLag
from plumbing.metrics import setup_metrics
from plumbing.settings import ServiceSettings
from plumbing.telemetry import setup_tracing

log = structlog.get_logger("plumbing.runtime")


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
        for close in reversed(self.closers):
            await close()
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
        metrics_server.shutdown()
        provider.shutdown()
