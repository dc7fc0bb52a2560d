"""Keeps the local span store (var/traces/) within a size per service, so a long `make run` does not fill the disk."""

from collections.abc import Mapping
from pathlib import Path

TRACES_MB_VARIABLE = "XSELL_DEV_TRACES_MB"
DEFAULT_TRACES_MB = 32
"""Per service. Idle, the five processes write about 0.5 MB of spans a minute between them, most of it campaigns'
background loops (0.4 MB): with 32 MB, a span of an idle campaigns service stays at least 40 minutes."""
PREVIOUS = ".previous.jsonl"


def traces_limit(environment: Mapping[str, str]) -> int:
    """XSELL_DEV_TRACES_MB in bytes (default 32 MB; 0 keeps everything); ValueError naming the variable otherwise."""
    text = environment.get(TRACES_MB_VARIABLE, "").strip() or str(DEFAULT_TRACES_MB)
    if not text.isdigit():
        raise ValueError(f"{TRACES_MB_VARIABLE}={text} is not a whole number of megabytes (0 keeps every span)")
    return int(text) * 1024 * 1024


def cap_span_store(directory: Path, max_bytes_per_service: int) -> list[Path]:
    """Rotates each service's <service>.jsonl that reached half of `max_bytes_per_service` to <service>.previous.jsonl,
    replacing the one before: a service's spans then take at most about `max_bytes_per_service`, and the newest half
    (at least) are kept. Returns the files rotated; a cap of 0 rotates nothing.

    Safe while the services write: the exporter (plumbing.telemetry.JsonlSpanExporter) opens the file anew for each
    batch, so a batch written during the rename lands whole in one file or the other, and `make trace` reads both
    (every *.jsonl)."""
    if max_bytes_per_service <= 0 or not directory.is_dir():
        return []
    rotated = []
    for current in sorted(directory.glob("*.jsonl")):
        if current.name.endswith(PREVIOUS):
            continue
        try:
            size = current.stat().st_size
        except FileNotFoundError:
            continue
        if size >= max_bytes_per_service // 2:
            current.replace(current.with_name(current.name.removesuffix(".jsonl") + PREVIOUS))
            rotated.append(current)
    return rotated
