"""What the CLI prints: aligned tables for people, JSON on request, progress on stderr."""

import json
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TextIO, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from xsell.type.v1 import money_pb2

T = TypeVar("T")


def as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Any, out: TextIO) -> None:
    if isinstance(value, Message):
        value = as_dict(value)
    elif isinstance(value, list):
        value = [as_dict(item) if isinstance(item, Message) else item for item in value]
    print(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False), file=out)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(str(header)), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def enum_word(value: str, prefix: str) -> str:
    """CAMPAIGN_STATE_RUNNING -> RUNNING."""
    return value[len(prefix) :] if value.startswith(prefix) else value


def stamp(message: Message, name: str) -> str:
    """A timestamp field as `2026-11-26 07:58:32Z`, or - when unset."""
    if not message.HasField(name):
        return "-"
    return getattr(message, name).ToDatetime().replace(microsecond=0).isoformat(sep=" ") + "Z"


def money(amount: money_pb2.Money) -> str:
    """₹2,50,000 or ₹99.50 (Indian digit grouping) for rupees; 12.50 USD for other currencies; - when unset."""
    if not amount.currency_code:
        return "-"
    units = Decimal(amount.minor_units) / 100
    if amount.currency_code != "INR":
        return f"{units:.2f} {amount.currency_code}"
    sign = "-" if units < 0 else ""
    whole, _, fraction = f"{abs(units):.2f}".partition(".")
    head, tail = whole[:-3], whole[-3:]
    groups: list[str] = []
    while len(head) > 2:
        groups.insert(0, head[-2:])
        head = head[:-2]
    grouped = ",".join([head, *groups, tail] if head else [*groups, tail])
    return f"{sign}₹{grouped}" + ("" if fraction == "00" else f".{fraction}")


def waiting(future: "grpc.Future", what: str, err: TextIO, *, interval: float = 0.5) -> Any:
    """The future's result, ticking elapsed time on stderr meanwhile: a publish can take minutes on a big base."""
    started = time.monotonic()
    live = err.isatty()
    print(f"{what} ...", end="" if live else "\n", file=err, flush=True)
    try:
        while not future.done():
            time.sleep(interval)
            if live:
                print(f"\r{what} ... {time.monotonic() - started:.0f}s", end="", file=err, flush=True)
        return future.result()
    finally:
        elapsed = time.monotonic() - started
        print(f"\r{what} ... done in {elapsed:.1f}s" if live else f"{what}: {elapsed:.1f}s", file=err, flush=True)


class Progress:
    """`[3/20] examples/segments/x.yaml: created seg_...` lines on stderr while applying many files."""

    def __init__(self, total: int, err: TextIO = sys.stderr) -> None:
        self._total = total
        self._done = 0
        self._err = err

    def step(self, label: str, work: Callable[[], T]) -> T:
        self._done += 1
        result = work()
        print(f"[{self._done}/{self._total}] {label}: {result}", file=self._err, flush=True)
        return result
