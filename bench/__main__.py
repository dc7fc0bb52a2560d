"""python -m bench (make bench): build or reuse the dataset, then measure and record each figure."""

import argparse
import asyncio
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import generator
from bench.dataset import PostgresDataset, SqliteDataset
from bench.postgres import BenchPostgres
from bench.results import WORKING_DATABASE, Context, machine_info

FIGURES = ("recompute", "latency", "ingest", "rss")
BACKENDS = ("sqlite", "postgresql")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 1M profiles and 10M events; 0.01 = 10k/100k")
    parser.add_argument("--seed", type=int, default=42, help="generator seed (datasets are cached per scale+seed)")
    parser.add_argument("--figures", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of sqlite,postgresql")
    parser.add_argument("--var", type=Path, default=Path("var/bench"), help="datasets, PostgreSQL data, run files")
    parser.add_argument("--results", type=Path, default=Path("bench/results"), help="where <figure>.json go")
    parser.add_argument("--workers", type=int, default=2, help="generator processes while loading")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached datasets")
    parser.add_argument("--prepare-only", action="store_true", help="build the datasets and stop")
    args = parser.parse_args(argv)
    args.figures = [f for f in args.figures.split(",") if f]
    args.backends = [b for b in args.backends.split(",") if b]
    for figure in args.figures:
        if figure not in FIGURES:
            parser.error(f"unknown figure {figure}; one of {', '.join(FIGURES)}")
    for backend in args.backends:
        if backend not in BACKENDS:
            parser.error(f"unknown backend {backend}; one of {', '.join(BACKENDS)}")
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    return args


async def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    anchor = generator.default_anchor(datetime.now(UTC))
    spec = generator.Spec(args.scale, args.seed, anchor)
    postgres = BenchPostgres((args.var / "pg").resolve()) if "postgresql" in args.backends else None
    try:
        datasets: dict[str, SqliteDataset | PostgresDataset] = {}
        if "sqlite" in args.backends:
            datasets["sqlite"] = SqliteDataset(args.var, spec)
        if postgres is not None:
            postgres.start()
            await postgres.configure()
            datasets["postgresql"] = PostgresDataset(args.var, spec, postgres)
        manifests = {}
        for backend, dataset in datasets.items():
            print(f"dataset {backend} {spec.key}: ", end="", flush=True)
            cached = None if args.rebuild else await _cached(dataset)
            if cached is not None:
                print(f"cached (built {cached.built_at} in {cached.total_s}s, anchor {cached.anchor})", flush=True)
                manifests[backend] = cached
            else:
                print("building", flush=True)
                manifests[backend] = await dataset.build(args.workers)
                print(f"  built in {manifests[backend].total_s}s", flush=True)
        if args.prepare_only:
            return 0
        context = Context(
            spec=spec,
            machine=await machine_info(postgres),
            results_dir=args.results if args.scale == 1.0 else args.results / f"scale-{args.scale:g}",
            # Per scale and seed: a quick run beside a full one must not touch the full one's files.
            run_dir=(args.var / "run" / spec.key).resolve(),
            datasets=datasets,
            manifests=manifests,
            postgres=postgres,
            figures=args.figures,
        )
        from bench import figures

        for figure in args.figures:
            await figures.run(figure, context)
        print(f"bench finished in {time.monotonic() - started:.0f}s", flush=True)
        return 0
    finally:
        # Working copies are per run: the cached datasets stay, the copies go.
        for backend in args.backends:
            for leftover in (args.var / "run" / spec.key / backend).glob("segments.db*"):
                leftover.unlink()
        if postgres is not None:
            if postgres.started:
                await postgres.drop_database(WORKING_DATABASE)
            postgres.stop()


async def _cached(dataset: SqliteDataset | PostgresDataset):  # type: ignore[no-untyped-def]
    if isinstance(dataset, SqliteDataset):
        return dataset.cached()
    return await dataset.cached()


async def guarded(args: argparse.Namespace) -> int:
    """main(), cancelled on SIGINT / SIGTERM so every process it started is stopped on the way out."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await main(args)
    except asyncio.CancelledError:
        print("bench interrupted; its processes are stopped", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(asyncio.run(guarded(parse_args(sys.argv[1:]))))
