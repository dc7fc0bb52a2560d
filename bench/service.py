"""The services as production runs them (`python -m services.<name>`, with their own NATS), for the benches."""

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.nats_server import NatsServer, free_port
from plumbing.grpc_server import CLIENT_METADATA
from xsell.segments.v1 import resources_pb2, service_pb2, service_pb2_grpc

HOST = "127.0.0.1"
SERVICE = "xsell.segments.v1.SegmentsService"
MAKER, CHECKER = "bench-maker", "bench-checker"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)]


class ServiceProcess:
    """One xsell service as production runs it (`python -m services.<name>`, spans to its local store) with its
    own NATS server, or the bench's when `nats_url` is given; bound to 127.0.0.1 and stopped by stop().

    Its log is `<run_dir>/<name>.log` and its var dir `<run_dir>/var`; `env` adds or overrides settings
    (`XSELL_<NAME>_…`); the caller's own `XSELL_…` variables are left out, so a developer's shell never
    changes a figure. Logging is at warning: an info line per call would cost the measured process as much
    as a statement.
    """

    def __init__(
        self,
        name: str,
        run_dir: Path,
        database_url: str,
        env: dict[str, str] | None = None,
        *,
        grpc_service: str,
        nats_url: str | None = None,
    ) -> None:
        self.name = name
        self.run_dir = run_dir
        self.database_url = database_url
        self.extra_env = env or {}
        self.grpc_service = grpc_service
        self.nats = NatsServer(run_dir / "nats")
        self.nats_url = nats_url
        self.port = free_port(HOST)
        self.metrics_port = free_port(HOST)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    async def start(self, timeout: float = 600) -> None:
        await asyncio.to_thread(self._launch)
        await self._wait_serving(timeout)

    def _launch(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.nats_url is None:
            self.nats.start(self.run_dir / "nats.log")
        prefix = f"XSELL_{self.name.upper()}_"
        env = {
            **{key: value for key, value in os.environ.items() if not key.startswith("XSELL_")},
            f"{prefix}GRPC_HOST": HOST,
            f"{prefix}GRPC_PORT": str(self.port),
            f"{prefix}DATABASE_URL": self.database_url,
            f"{prefix}NATS_URL": self.nats_url or self.nats.url,
            f"{prefix}VAR_DIR": str(self.run_dir / "var"),
            f"{prefix}LOG_LEVEL": "warning",
            # Every process serves /metrics; a free port keeps two runs (or a make run) apart.
            f"{prefix}METRICS_PORT": str(self.metrics_port),
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )

    async def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=self.grpc_service), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.name} not serving after {timeout}s; see {self.log_path}")

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far (what a figure cost, whatever else runs on the machine)."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    async def loop_lag_readings(self) -> dict[float, int]:
        """The process's xsell.event_loop.lag histogram as it stands: readings at or under each bucket's bound (ms)."""
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        # float() reads Prometheus' "+Inf" bound, the bucket that holds every reading.
        return {float(bound): int(float(count)) for bound, count in _LAG_BUCKET.findall(text)}

    def rss_mib(self) -> float:
        return float(psutil.Process(self.pid).memory_info().rss) / 2**20

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.nats_url is None:
            self.nats.stop()


_LAG_BUCKET = re.compile(r'^xsell_event_loop_lag_milliseconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)$', re.MULTILINE)


def loop_lag(before: dict[float, int], after: dict[float, int]) -> dict[str, Any]:
    """What the loop-lag readings taken between `before` and `after` say: how many, how many over 5 and 20 ms, and
    the bucket bounds the p50, p99 and largest readings fall under (the histogram keeps no finer detail)."""
    bounds = sorted(after)
    cumulative = [after[b] - before.get(b, 0) for b in bounds]
    total = cumulative[-1] if cumulative else 0

    def under(share: float) -> float | None:
        if not total:
            return None
        for bound, count in zip(bounds, cumulative, strict=True):
            if count >= share * total:
                return bound
        return None

    def over(bound: float) -> int:
        return total - (after.get(bound, 0) - before.get(bound, 0))

    return {
        "readings": total,
        "over_5_ms": over(5.0),
        "over_20_ms": over(20.0),
        "p50_at_most_ms": under(0.5),
        "p99_at_most_ms": under(0.99),
        "max_at_most_ms": under(1.0),
    }


class SegmentsProcess(ServiceProcess):
    """The segments service on a dataset copy."""

    def __init__(self, run_dir: Path, database_url: str, extra_env: dict[str, str] | None = None) -> None:
        super().__init__("segments", run_dir, database_url, extra_env, grpc_service=SERVICE)


@contextlib.contextmanager
def profiled(pid: int, output: Path | None) -> Iterator[None]:
    """py-spy sampling `pid` at 200 Hz for the block's duration into `output` (raw, collapsed stacks), when given (a
    bench's --profile); nothing otherwise. Non-blocking: the process is not paused to be sampled, so its latencies
    stay what they are (pausing it made the trigger bench's p50 five times longer)."""
    if output is None:
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    command = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--output", str(output), "--rate", "200"]
    profiler = subprocess.Popen([*command, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(60)


@contextlib.asynccontextmanager
async def channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as opened:
        yield opened


def actor(name: str) -> Sequence[tuple[str, str]]:
    return ((CLIENT_METADATA, name),)


async def publish(
    stub: service_pb2_grpc.SegmentsServiceStub, key: str, display_name: str, rule: resources_pb2.Rule
) -> resources_pb2.Segment:
    """Create, then submit and approve by a different actor where maker-checker is on, then publish."""
    created = await stub.CreateSegment(
        service_pb2.CreateSegmentRequest(
            request_id=f"bench-create-{key}-{time.time_ns()}",
            segment=resources_pb2.Segment(display_name=display_name[:200], description=f"bench: {key}", rule=rule),
        ),
        metadata=actor(MAKER),
    )
    segment = created.segment
    for step in ("SubmitSegment", "ApproveSegment"):
        try:
            if step == "SubmitSegment":
                await stub.SubmitSegment(
                    service_pb2.SubmitSegmentRequest(
                        request_id=f"bench-submit-{segment.segment_id}",
                        segment_id=segment.segment_id,
                        version=segment.version,
                    ),
                    metadata=actor(MAKER),
                )
            else:
                await stub.ApproveSegment(
                    service_pb2.ApproveSegmentRequest(
                        request_id=f"bench-approve-{segment.segment_id}",
                        segment_id=segment.segment_id,
                        version=segment.version,
                        note="bench",
                    ),
                    metadata=actor(CHECKER),
                )
        except grpc.aio.AioRpcError as error:
            # Before governance lands (UNIMPLEMENTED) a draft publishes directly.
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            break
    published = await stub.PublishSegment(
        service_pb2.PublishSegmentRequest(
            request_id=f"bench-publish-{segment.segment_id}", segment_id=segment.segment_id
        ),
        metadata=actor(CHECKER),
        timeout=1800,
    )
    return published.segment


def raw_unary(opened: grpc.aio.Channel, method: str, response_type: Any) -> Any:
    """A unary call that takes pre-serialised request bytes, so the client's proto building is not measured."""
    return opened.unary_unary(
        f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=response_type.FromString
    )
