"""`xsell profiles load` / `xsell events load`: a file's records sent in batches; each refused line reported."""

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cli.client import Gateway
from cli.record_files import (
    Kind,
    Line,
    Refusal,
    catalog_cell_types,
    csv_has_untyped_columns,
    csv_header,
    file_format,
    local_field,
    read_records,
)
from xsell.segments.v1 import resources_pb2
from xsell.segments.v1 import service_pb2 as segments_pb2

MAX_BATCH_RECORDS = 5000
"""What one UpsertProfiles or IngestEvents call may carry (segments' records.MAX_BATCH)."""
MAX_BATCH_BYTES = 3 * 1024 * 1024
"""Under the gateway's default request limit (4 MiB), with room for the envelope."""
RETRIES = 3
MAX_RETRY_DELAY = 30.0


@dataclass
class Loaded:
    """What one file's load did."""

    path: str
    kind: str
    records: int = 0
    stored: int = 0
    refused: list[Refusal] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "kind": self.kind,
            "records": self.records,
            "stored": self.stored,
            "refused": [vars(refusal) for refusal in self.refused],
        }


def batches(lines: list[Line], batch_size: int, max_bytes: int = MAX_BATCH_BYTES) -> Iterator[list[Line]]:
    """Consecutive lines, at most `batch_size` records and about `max_bytes` per call."""
    batch: list[Line] = []
    size = 0
    for line in lines:
        record_size = line.record.ByteSize() + 8
        if batch and (len(batch) >= batch_size or size + record_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += record_size
    if batch:
        yield batch


def _catalog(gateway: Gateway, err: TextIO) -> dict[str, str]:
    """Attribute types for a CSV's untyped columns; empty (text) when the key may not read the catalog."""
    definitions: list[resources_pb2.AttributeDefinition] = []
    token = ""
    try:
        while True:
            reply = gateway.call(
                gateway.segments.ListAttributes, segments_pb2.ListAttributesRequest(page_size=1000, page_token=token)
            )
            definitions += reply.attributes
            token = reply.next_page_token
            if not token:
                return catalog_cell_types(definitions)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.PERMISSION_DENIED:  # type: ignore[attr-defined]
            raise
        print(
            "note: this key may not read the attribute catalog (ListAttributes needs segments.manage): columns "
            "without a type in the header (e.g. total_aum:inr, number_of_schemes:number) are sent as text",
            file=err,
        )
        return {}


def _retry_delay(error: grpc.RpcError, attempt: int, answered_before: bool) -> float | None:
    """How long to wait before sending the same batch (same request_id, so it applies once) again; None: give up."""
    code = error.code()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        try:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
        except ValueError:
            status = None
        for detail in status.details if status is not None else ():
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(retry):
                return min(retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9, MAX_RETRY_DELAY)
        return None
    # A gateway that answered a batch of this file is there: UNAVAILABLE is then a lock wait or a restart
    # ("nothing was written, retry the call"). Before any answer it is more likely down: say so at once.
    if code == grpc.StatusCode.UNAVAILABLE and answered_before:
        return float(2**attempt)
    return None


class _Sender:
    """Sends batches of one kind, retrying what the gateway asks to be retried."""

    def __init__(self, gateway: Gateway, kind: Kind, err: TextIO) -> None:
        self.gateway = gateway
        self.kind = kind
        self.err = err
        self.answered = False

    def send(self, batch: list[Line], label: str) -> Any:
        # One request_id per batch and invocation: a retry is applied once; running the command again re-applies
        # the file (profile upserts set the same values again, events are deduplicated by their event_id).
        request_id = f"cli-{self.kind}-load-{uuid.uuid4().hex}"
        if self.kind == "profiles":
            rpc: Any = self.gateway.segments.UpsertProfiles
            request: Any = segments_pb2.UpsertProfilesRequest(
                request_id=request_id,
                profiles=[line.record for line in batch],  # type: ignore[misc]
            )
        else:
            rpc = self.gateway.segments.IngestEvents
            request = segments_pb2.IngestEventsRequest(
                request_id=request_id,
                events=[line.record for line in batch],  # type: ignore[misc]
            )
        for attempt in range(RETRIES + 1):
            try:
                reply = self.gateway.call(rpc, request)
                self.answered = True
                return reply
            except grpc.RpcError as error:
                delay = _retry_delay(error, attempt, self.answered)
                if delay is None or attempt == RETRIES:
                    raise
                code = error.code().name  # type: ignore[attr-defined]
                print(f"{label}: {code}; sending it again in {delay:.1f}s", file=self.err, flush=True)
                time.sleep(delay)
        raise AssertionError("the loop returns or raises")


def load_file(gateway: Gateway, kind: Kind, path: Path, *, fmt: str | None, batch_size: int, err: TextIO) -> Loaded:
    chosen = file_format(path, fmt)
    catalog = _catalog(gateway, err) if chosen == "csv" and kind == "profiles" and _untyped(path, kind) else None
    lines, refused = read_records(path, kind, fmt=chosen, now=datetime.now(UTC), catalog=catalog)
    csv_columns = chosen == "csv"
    loaded = Loaded(str(path), kind, records=len(lines) + len(refused), refused=list(refused))
    for refusal in refused:
        print(refusal.describe(str(path)), file=err, flush=True)
    sender = _Sender(gateway, kind, err)
    chunks = list(batches(lines, batch_size))
    for number, batch in enumerate(chunks, start=1):
        first, last = batch[0].number, batch[-1].number
        label = f"[{number}/{len(chunks)}] {path} " + (f"lines {first}-{last}" if last > first else f"line {first}")
        try:
            reply = sender.send(batch, label)
        except grpc.RpcError:
            print(
                f"{label}: not stored; {loaded.stored} records of earlier lines were stored, none from here on",
                file=err,
                flush=True,
            )
            raise
        loaded.stored += reply.accepted_count
        for error in reply.errors:
            line = batch[error.index] if 0 <= error.index < len(batch) else None
            refusal = Refusal(
                line.number if line else 0,
                error.record_id or (line.record_id if line else ""),
                local_field(error.field, csv_columns=csv_columns),
                error.reason,
            )
            loaded.refused.append(refusal)
            print(refusal.describe(str(path)), file=err, flush=True)
        print(f"{label}: {reply.accepted_count} stored, {len(reply.errors)} refused", file=err, flush=True)
    loaded.refused.sort(key=lambda refusal: refusal.line)
    return loaded


def _untyped(path: Path, kind: Kind) -> bool:
    return path.is_file() and csv_has_untyped_columns(csv_header(path), kind)
