"""python -m bench.report [dir]: the figures in bench/results/*.json as Markdown, for docs/benchmarks.md."""

import json
import sys
from pathlib import Path
from typing import Any


def _load(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _verdict(met: Any) -> str:
    return "met" if met is True else "**not met**"


def render(directory: Path) -> str:
    lines: list[str] = []
    any_document = next(
        (doc for doc in (_load(directory, n) for n in ("recompute", "ingest", "latency", "rss")) if doc), None
    )
    if any_document is None:
        return "No results yet: run `make bench`.\n"
    machine = any_document["machine"]
    lines.append(
        f"Scale {any_document['scale']:g} ({any_document['profiles']:,} profiles, {any_document['events']:,} events), "
        f"seed {any_document['seed']}; {machine['cpu_model']}, {machine['cpu_cores']} cores, {machine['ram_gb']} GB; "
        f"Python {machine['python']}, PostgreSQL {machine.get('postgresql_server')}, SQLite {machine.get('sqlite')}."
    )
    lines.append("")
    datasets = any_document.get("datasets") or {}
    for backend, manifest in datasets.items():
        lines.append(
            f"- Dataset on {backend}: {manifest['attribute_rows']:,} attribute rows, {manifest['events']:,} events, "
            f"loaded in {manifest['total_s']:.0f} s ({manifest['generate_and_insert_s']:.0f} s rows, "
            f"{manifest['index_s']:.0f} s indexes)."
        )
    lines.append("")
    ingest = _load(directory, "ingest")
    if ingest:
        lines.append(f"**Ingest** (goal ≥ 20,000 events/s): {_verdict(ingest['goal_met'])}")
        lines.append("")
        lines.append("| backend | gRPC events/s | slowest 5 s | NATS events/s | service CPU (cores) | measured (UTC) |")
        lines.append("|---|---|---|---|---|---|")
        for backend, result in ingest["backends"].items():
            grpc_result, nats_result = result.get("grpc", {}), result.get("nats", {})
            lines.append(
                f"| {backend} | {grpc_result.get('events_per_s')} | {grpc_result.get('min_5s_window_events_per_s')} | "
                f"{nats_result.get('events_per_s', nats_result.get('skipped'))} | "
                f"{grpc_result.get('service', {}).get('cpu_cores_used')} | {str(result.get('measured_at', ''))[:16]} |"
            )
        lines.append("")
    recompute = _load(directory, "recompute")
    if recompute:
        lines.append(f"**Full recompute** (goal ≤ 1 s and ≤ 1.5× the floor): {_verdict(recompute['goal_met'])}")
        lines.append("")
        backends = list(recompute["backends"])
        header = "| segment | " + " | ".join(f"{b} members | {b} s | {b} floor s | {b} ×" for b in backends) + " |"
        lines.append(header)
        lines.append("|---|" + "---|---|---|---|" * len(backends))
        keys = [row["segment"] for row in recompute["backends"][backends[0]]["segments"]]
        for key in keys:
            cells = []
            for backend in backends:
                row = next((r for r in recompute["backends"][backend]["segments"] if r["segment"] == key), None)
                if row is None:
                    cells.append("| | | |")
                    continue
                cells.append(f"{row['members']:,} | {row['recompute_s']} | {row['floor_s']} | {row['ratio']}")
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    latency = _load(directory, "latency")
    if latency:
        lines.append(f"**Membership latency** (goal p99 ≤ 5 ms at 1k events/s): {_verdict(latency['goal_met'])}")
        lines.append("")
        lines.append(
            "| backend | unloaded p50 / p99 ms | at 1k/s: achieved/s | committed p50 / p99 ms | "
            "on NATS p50 / p99 ms | failed | measured (UTC) |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for backend, r in latency["backends"].items():
            lines.append(
                f"| {backend} | {r.get('unloaded_p50_ms')} / {r.get('unloaded_p99_ms')} | "
                f"{r.get('achieved_rate_per_s')} | {r.get('committed_p50_ms')} / {r.get('committed_p99_ms')} | "
                f"{r.get('nats_p50_ms')} / {r.get('nats_p99_ms')} | {r.get('failed_calls')} | "
                f"{str(r.get('measured_at', ''))[:16]} |"
            )
        lines.append("")
    rss = _load(directory, "rss")
    if rss:
        lines.append(f"**Peak RSS while streaming** (goal: bounded): {_verdict(rss['goal_met'])}")
        lines.append("")
        lines.append("| backend | audience | members | members/s | baseline MB | peak MB |")
        lines.append("|---|---|---|---|---|---|")
        for backend, r in rss["backends"].items():
            for size in ("small_audience", "large_audience"):
                a = r.get(size)
                if a:
                    lines.append(
                        f"| {backend} | {a['segment']} | {a['members_streamed']:,} | {a['members_per_s']} | "
                        f"{a['baseline_rss_mb']} | {a['peak_rss_mb']} |"
                    )
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench/results")), end="")
