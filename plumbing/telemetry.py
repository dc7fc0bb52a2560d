"""OpenTelemetry set-up, the local span store, and the spans that follow one campaign ID across processes."""

import contextvars
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from time import time_ns
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import NonRecordingSpan, SpanContext

from plumbing.logging import redact_text

CAMPAIGN_ID = "campaign.id"
"""The span attribute (and log key) that carries an outreach's campaign ID."""
SPAN_EXPORT_BATCH = 64
"""Spans exported at a time (BatchSpanProcessor's max_export_batch_size; OTEL_BSP_MAX_EXPORT_BATCH_SIZE overrides it).

The exporter's thread holds the interpreter lock while it encodes a batch (~11 µs a span to the local store), and the
service's event loop waits for it: 512 spans (the SDK's default) held the loop ~5.6 ms at a time, a few times a second
at 1,000 trigger entries/s. 64 spans hold it ~0.7 ms, then the thread lets go to write."""

SPAN_EXPORT_DELAY_MS = 200
"""The longest a finished span waits for export (BatchSpanProcessor's schedule_delay_millis; OTEL_BSP_SCHEDULE_DELAY
overrides it). The SDK's default, 5 s, kept every span of the last 5 s in memory: the outbox relay's span of a batch
links up to 500 traces (~0.3 MiB with the SDK's objects per link), and while a relay drained 50,000 events (~3 s) the
process grew 34 MiB, 26 MiB of it in the interpreter's arenas, which stay; with 200 ms (and batches of 64) it grew
9 MiB and no arena was added."""

SPAN_QUEUE_MAX = 8_192
"""Finished spans waiting for export, at most (BatchSpanProcessor's max_queue_size; OTEL_BSP_MAX_QUEUE_SIZE overrides
it); more are dropped. A release page hands over a root span per outreach at once (2,000 at the bench's page size):
with the SDK's 2,048 a loaded machine's exporter thread fell behind and dropped a few roots per 250,000 outreaches."""

RELAY_LINKS_MAX = 1_000
"""Links a span may keep: enough for one relay batch (plumbing.outbox.BATCH_SIZE), each event linked to the trace it
belongs to."""

_forced_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("xsell_forced_ids", default=None)


def outreach_ids(campaign_id: str) -> tuple[int, int]:
    """The trace id and root span id of a campaign ID's trace, derived from the ID itself.

    Every process can continue an outreach's trace from the campaign ID alone, days later,
    without looking up stored context; `xsell trace` finds it the same way.
    """
    digest = hashlib.sha256(f"xsell-outreach:{campaign_id}".encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


def outreach_trace_id(campaign_id: str) -> str:
    return format(outreach_ids(campaign_id)[0], "032x")


class _OutreachIdGenerator(IdGenerator):
    """Random ids, except for the one outreach root span, whose ids come from its campaign ID."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        forced = _forced_ids.get()
        if forced is not None:
            return forced[1]
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced_ids.get()
        if forced is not None:
            return forced[0]
        return self._random.generate_trace_id()


def outreach_context_span(campaign_id: str) -> SpanContext:
    """The outreach's root span, as a remote span context."""
    trace_id, span_id = outreach_ids(campaign_id)
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def outreach_context(campaign_id: str) -> otel_context.Context:
    """A context whose parent is the outreach's root span, for continuing its trace."""
    return trace.set_span_in_context(NonRecordingSpan(outreach_context_span(campaign_id)))


TRACEPARENT = "traceparent"


def headers_span_context(headers: Mapping[str, str]) -> SpanContext | None:
    """The remote span context of a W3C `traceparent` header (version 00), or None.

    A plain split, because the propagator's regular-expression parse cost more CPU than anything
    else in relaying or consuming an event; `parent_from_headers` falls back to it.
    """
    value = headers.get(TRACEPARENT)
    if value is None or len(value) != 55 or value[:3] != "00-" or value[35] != "-" or value[52] != "-":
        return None
    trace_hex, span_hex, flags_hex = value[3:35], value[36:52], value[53:]
    try:
        trace_id, span_id, flags = int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def current_traceparent() -> str | None:
    """The W3C `traceparent` (version 00) of the current span, or None outside any span: what the propagator would
    inject, formatted directly (for a hot call that carries its caller's context without a client span of its own)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def parent_from_headers(headers: Mapping[str, str]) -> otel_context.Context:
    """The context a message's headers carry, for the span that continues its trace."""
    remote = headers_span_context(headers)
    if remote is None:
        # Not a plain W3C version-00 header (another propagator, a future version): the full extract.
        return propagate.extract(headers)
    return trace.set_span_in_context(NonRecordingSpan(remote))


@contextmanager
def outreach_span(
    tracer: trace.Tracer,
    name: str,
    campaign_id: str,
    *,
    root: bool = False,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: dict[str, Any] | None = None,
    follows: str = "",
) -> Iterator[trace.Span]:
    """A span in the campaign ID's trace, linked to whatever trace the caller is in.

    `root=True` creates the outreach's root span itself (once, where the outreach is created);
    otherwise the span continues that trace as a child of the root. `follows` names another outreach this one follows
    (a fallback the failed one, a resend its original): the span links that outreach's root too, so a look-up of
    either campaign ID finds it. An empty campaign ID is a bug in the caller: every such span would share the one
    trace made from "".
    """
    if not campaign_id:
        raise ValueError(f"outreach_span {name!r} needs a campaign ID; use a plain span where there is none")
    current = trace.get_current_span().get_span_context()
    attrs = {CAMPAIGN_ID: campaign_id, **(attributes or {})}
    if not root and current.is_valid and current.trace_id == outreach_ids(campaign_id)[0]:
        # Already inside the outreach's trace (a server span continuing it): nest under it.
        with (
            tracer.start_as_current_span(name, kind=kind, attributes=attrs) as span,
            structlog.contextvars.bound_contextvars(**{CAMPAIGN_ID: campaign_id}),
        ):
            yield span
        return
    links = [Link(current)] if current.is_valid else []
    if follows:
        links.append(Link(outreach_context_span(follows)))
    if root:
        token = _forced_ids.set(outreach_ids(campaign_id))
        try:
            span = tracer.start_span(name, context=otel_context.Context(), kind=kind, attributes=attrs, links=links)
        finally:
            _forced_ids.reset(token)
    else:
        span = tracer.start_span(name, context=outreach_context(campaign_id), kind=kind, attributes=attrs, links=links)
    with (
        trace.use_span(span, end_on_exit=True),
        structlog.contextvars.bound_contextvars(**{CAMPAIGN_ID: campaign_id}),
    ):
        yield span


_NOTHING: Mapping[str, Any] = MappingProxyType({})
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)

HELD = "outreach.held"
"""The span event of an outreach held back (quiet hours, a consent check that could not be made, a provider's
retry): its campaign ID, the reason in words and when it is tried again, on the span that held it."""
RELEASED = "outreach.released"
"""The span event of an outreach going on after a hold: its campaign ID and the reason it was held for."""
HOLD_REASON = "outreach.hold.reason"
HOLD_UNTIL = "outreach.hold.until"


def hold_attributes(campaign_id: str, reason: str, until: datetime | None = None) -> dict[str, Any]:
    """The attributes of an outreach.held / outreach.released event: the reason in words (redacted as a log line is:
    a provider's refusal may quote an address) and, for a hold, when it is released or tried again (ISO 8601 UTC)."""
    attributes: dict[str, Any] = {CAMPAIGN_ID: campaign_id, HOLD_REASON: redact_text(reason)}
    if until is not None:
        attributes[HOLD_UNTIL] = until.astimezone(UTC).isoformat(timespec="seconds")
    return attributes


def hold_event(name: str, campaign_id: str, reason: str, until: datetime | None = None) -> Event:
    """An outreach.held or outreach.released event (hold_attributes), timed now, for a span recorded finished."""
    return Event(name, hold_attributes(campaign_id, reason, until))


class OutreachRecord(NamedTuple):
    """One outreach's span to record finished (record_outreach_roots, record_outreach_steps): its campaign ID, its
    own attributes, the headers of the message that caused it (their traceparent is linked) and its events."""

    campaign_id: str
    attributes: Mapping[str, Any] = _NOTHING
    cause: Mapping[str, str] = _NOTHING
    events: Sequence[Event] = ()


def record_outreach_roots(
    tracer: trace.Tracer,
    name: str,
    roots: Iterable[OutreachRecord],
    *,
    attributes: Mapping[str, Any] = _NOTHING,
    links: Sequence[Link] = (),
) -> None:
    """The root spans of outreaches a batch made (a trigger batch, a release page), recorded together once the batch
    committed: each with the ids its campaign ID derives, so the outreach's trace has its root, linked to the caller's
    span (the batch's), to the span of the message that caused it (its `cause` headers' traceparent: the segment
    entry) and to `links` (what started a release: its run's span and the launch). `attributes` are every root's.

    Each is a finished span handed straight to the SDK tracer's span processor (the tracer's public `resource`,
    `span_processor` and `instrumentation_info`): 4-8 µs where starting and ending one through the tracer took
    38-42 µs, which on the trigger path, one per outreach, showed in the trigger -> dispatch p99. Another tracer
    (a no-op one) gets them through start_span."""
    _record_finished(tracer, name, roots, root=True, attributes=attributes, links=links)


def record_outreach_steps(
    tracer: trace.Tracer,
    name: str,
    steps: Iterable[OutreachRecord],
    *,
    attributes: Mapping[str, Any] = _NOTHING,
    links: Sequence[Link] = (),
) -> None:
    """Spans in outreaches' traces, each a child of its outreach's root, recorded finished as record_outreach_roots
    records roots (linked to the caller's span and to `links`): a step of many outreaches at once that one span of
    the batch describes (a dispatch page), where some outreaches need their own (the ones it held back)."""
    _record_finished(tracer, name, steps, root=False, attributes=attributes, links=links)


def _record_finished(
    tracer: trace.Tracer,
    name: str,
    records: Iterable[OutreachRecord],
    *,
    root: bool,
    attributes: Mapping[str, Any],
    links: Sequence[Link],
) -> None:
    batch = trace.get_current_span().get_span_context()
    shared = [Link(batch), *links] if batch.is_valid else list(links)
    sdk = tracer if isinstance(tracer, SdkTracer) else None
    now = time_ns()
    if sdk is None:
        for record in records:
            record_links = [*shared, *_cause_links(record.cause)]
            attrs = {CAMPAIGN_ID: record.campaign_id, **attributes, **record.attributes}
            trace_id, span_id = outreach_ids(record.campaign_id)
            token = _forced_ids.set((trace_id, span_id)) if root else None
            try:
                parent = otel_context.Context() if root else outreach_context(record.campaign_id)
                span = tracer.start_span(name, context=parent, attributes=attrs, links=record_links)
            finally:
                if token is not None:
                    _forced_ids.reset(token)
            for event in record.events:
                span.add_event(event.name, event.attributes, event.timestamp)
            span.end()
        return
    scope = InstrumentationScope(sdk.instrumentation_info.name, sdk.instrumentation_info.version)
    on_end, resource, new_span_id = sdk.span_processor.on_end, sdk.resource, sdk.id_generator.generate_span_id
    for record in records:
        campaign_id = record.campaign_id
        trace_id, root_id = outreach_ids(campaign_id)
        # One list for every span of the call that has no cause of its own (a release page's): the spans only read it.
        record_links = [*shared, *_cause_links(record.cause)] if record.cause else shared
        attrs = (
            {CAMPAIGN_ID: campaign_id, **attributes, **record.attributes}
            if record.attributes
            else {
                CAMPAIGN_ID: campaign_id,
                **attributes,
            }
        )
        on_end(
            ReadableSpan(
                name=name,
                context=SpanContext(trace_id, root_id if root else new_span_id(), False, _SAMPLED),
                parent=None if root else SpanContext(trace_id, root_id, True, _SAMPLED),
                resource=resource,
                attributes=attrs,
                events=record.events,
                links=record_links,
                start_time=now,
                end_time=now,
                instrumentation_scope=scope,
            )
        )


def _cause_links(headers: Mapping[str, str]) -> list[Link]:
    cause = headers_span_context(headers) if headers else None
    return [Link(cause)] if cause is not None else []


@contextmanager
def outreach_spans(
    tracer: trace.Tracer,
    name: str,
    messages: Sequence[tuple[str, Mapping[str, str]]],
    *,
    names: Sequence[str] | None = None,
) -> Iterator[list[trace.Span]]:
    """outreach_span for the messages of a batch applied together: one span per (campaign ID, headers), in order, in
    its campaign ID's trace (under the message's own span when its headers carry one of that trace) and linked to
    the caller's span (the batch's); all open while the block runs and ended together, ERROR when it raises. Each is
    called `name`, or its own of `names`."""
    batch = trace.get_current_span().get_span_context()
    links = [Link(batch)] if batch.is_valid else []
    spans = []
    for position, (campaign_id, headers) in enumerate(messages):
        span_name = names[position] if names is not None else name
        if not campaign_id:
            raise ValueError(f"outreach_spans {name!r} needs a campaign ID for every message")
        trace_id = outreach_ids(campaign_id)[0]
        remote = headers_span_context(headers)
        if batch.is_valid and batch.trace_id == trace_id:
            # A batch of one, whose span continues the outreach's trace: nested under it, as outreach_span does.
            span = tracer.start_span(span_name, attributes={CAMPAIGN_ID: campaign_id})
        else:
            parent = (
                trace.set_span_in_context(NonRecordingSpan(remote))
                if remote is not None and remote.trace_id == trace_id
                else outreach_context(campaign_id)
            )
            span = tracer.start_span(span_name, context=parent, attributes={CAMPAIGN_ID: campaign_id}, links=links)
        spans.append(span)
    try:
        yield spans
    except BaseException as error:
        for span in spans:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        raise
    finally:
        for span in spans:
            span.end()


class RedactingExporter(SpanExporter):
    """What leaves the process over OTLP redacted as the local span store keeps it and as log lines are: an ERROR
    span's status description and its exception events' texts (a driver's error quoting its parameters, an
    exception's message) may hold an address or a number. A span with neither goes as it is."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([_redacted(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _redacted(span: ReadableSpan) -> ReadableSpan:
    if not span.status.description and not span.events:
        return span
    status = span.status
    if status.description:
        status = Status(status.status_code, redact_text(status.description))
    events = [
        Event(
            event.name,
            {key: redact_text(value) if isinstance(value, str) else value for key, value in event.attributes.items()}
            if event.attributes
            else event.attributes,
            event.timestamp,
        )
        for event in span.events
    ]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class JsonlSpanExporter(SpanExporter):
    """The local span store: one JSON line per span in var/traces/<service>.jsonl, readable with no installs."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # orjson: UTF-8 bytes at several times json.dumps' speed (the exporter's thread shares the interpreter lock
        # with the service's loop, so its CPU is the service's). A link is written once per export however many spans
        # of the batch share it (a release page's roots all link the page and the launch): by the Link object, alive
        # while the spans are.
        links: dict[int, dict[str, str]] = {}
        lines = [orjson.dumps(_span_record(span, links)) for span in spans]
        with self._lock, self.path.open("ab") as file:
            file.write(b"\n".join(lines) + b"\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


_KIND_NAMES = {kind: kind.name for kind in SpanKind}
_STATUS_NAMES = {code: code.name for code in StatusCode}


def _span_record(span: ReadableSpan, links: dict[int, dict[str, str]] | None = None) -> dict[str, Any]:
    """One span as the local store keeps it. ~4 µs where the enums' names, an empty description's redaction and each
    link's formatting took ~8 µs (a release records a root span per outreach, ~18,000 a second)."""
    context = span.get_span_context()
    assert context is not None
    parent, status = span.parent, span.status
    known = links if links is not None else {}
    record: dict[str, Any] = {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "name": span.name,
        "kind": _KIND_NAMES[span.kind],
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": _STATUS_NAMES[status.status_code],
        # Why an ERROR span failed ("bounced: UNREACHABLE whatsapp 131026"): without it `make trace` said ERROR only.
        # Redacted as a log line is: an exception's text (a driver's error with its parameters) may hold an address.
        "status_description": redact_text(status.description) if status.description else "",
        "attributes": dict(span.attributes or {}),
        "links": [known.get(id(link)) or _link_record(link, known) for link in span.links],
    }
    if span.events:
        # What happened to the outreach inside the span (held, released), redacted as a log line is. Not exceptions:
        # the status description says why a span failed, and a stack trace would be most of the store.
        events = [
            {
                "name": event.name,
                "time_ns": event.timestamp,
                "attributes": {
                    key: redact_text(value) if isinstance(value, str) else value
                    for key, value in (event.attributes or {}).items()
                },
            }
            for event in span.events
            if event.name != "exception"
        ]
        if events:
            record["events"] = events
    return record


def _link_record(link: Link, known: dict[int, dict[str, str]]) -> dict[str, str]:
    record = known[id(link)] = {
        "trace_id": format(link.context.trace_id, "032x"),
        "span_id": format(link.context.span_id, "016x"),
    }
    return record


class _ChildSpansOnly(trace.Tracer):
    """A tracer that starts spans only under a current span; elsewhere it answers the invalid span (nothing recorded,
    nothing exported)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self, name: str, context: otel_context.Context | None = None, *args: Any, **kwargs: Any
    ) -> trace.Span:
        if not trace.get_current_span(context).get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._tracer.start_span(name, context, *args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: otel_context.Context | None = None, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        if not trace.get_current_span(context).get_span_context().is_valid:
            yield trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(name, context, *args, **kwargs) as span:
            yield span


class StatementSpans(trace.TracerProvider):
    """The tracer provider of SQLAlchemy's instrumentation: a statement's CLIENT span (and a connection's) only inside
    an operation's span, whose trace it belongs to. Outside any, the background loops' polls (an idle stack's
    campaigns, channels and attribution read their tables every second or so) wrote a root span for every connect,
    BEGIN and SELECT: ~0.9 MB a minute of parentless spans in the local store (or a collector) with nothing to find
    them by. Tracers are taken from the global provider when they are asked for, so set-up order does not matter."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _ChildSpansOnly(trace.get_tracer_provider().get_tracer(*args, **kwargs))


def setup_tracing(service: str, var_dir: Path) -> TracerProvider:
    """A tracer provider exporting over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, else to the local span store."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "xsell"}),
        id_generator=_OutreachIdGenerator(),
        # The relay's one span per published batch links every event in it (OutboxRelay.batch_size).
        span_limits=SpanLimits(max_links=RELAY_LINKS_MAX),
    )
    exporter: SpanExporter
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = RedactingExporter(OTLPSpanExporter())
    else:
        exporter = JsonlSpanExporter(var_dir / "traces" / f"{service}.jsonl")
    export_batch = int(os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or SPAN_EXPORT_BATCH)
    export_delay = float(os.environ.get("OTEL_BSP_SCHEDULE_DELAY") or SPAN_EXPORT_DELAY_MS)
    queue = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE") or SPAN_QUEUE_MAX)
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter, max_queue_size=queue, max_export_batch_size=export_batch, schedule_delay_millis=export_delay
        )
    )
    return provider


def read_spans(var_dir: Path) -> list[dict[str, Any]]:
    """Every span in the local span store, across all processes."""
    spans: list[dict[str, Any]] = []
    for path in sorted((var_dir / "traces").glob("*.jsonl")):
        with path.open(encoding="utf-8") as file:
            spans.extend(json.loads(line) for line in file if line.strip())
    return spans


def spans_for_campaign_id(var_dir: Path, campaign_id: str) -> list[dict[str, Any]]:
    """The spans of a campaign ID's trace, and the spans linked to it (a relay's batch), oldest first; then, each
    marked "cause", the spans in other traces its root span links to, with their ancestors: what made the outreach
    (the segment entry that fired a trigger and the call that brought it, the outreach a fallback follows)."""
    trace_id = outreach_trace_id(campaign_id)
    every = read_spans(var_dir)
    spans = [
        span
        for span in every
        if span["trace_id"] == trace_id or any(link["trace_id"] == trace_id for link in span.get("links", ()))
    ]
    by_id = {span["span_id"]: span for span in every}
    causes: dict[str, dict[str, Any]] = {}
    for root in (span for span in spans if span["trace_id"] == trace_id and span["parent_span_id"] is None):
        for link in root.get("links", ()):
            found = by_id.get(link["span_id"]) if link["trace_id"] != trace_id else None
            while found is not None and found["span_id"] not in causes:
                causes[found["span_id"]] = {**found, "cause": True}
                found = by_id.get(found.get("parent_span_id") or "")
    return sorted(spans, key=lambda span: span["start_ns"]) + sorted(causes.values(), key=lambda span: span["start_ns"])
