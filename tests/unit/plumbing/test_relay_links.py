"""A relay batch's span keeps a link to every event it published: the span limit is at least the batch size."""

from pathlib import Path

from opentelemetry.trace import Link, SpanContext, TraceFlags

from plumbing.outbox import BATCH_SIZE
from plumbing.telemetry import setup_tracing


def test_a_full_relay_batch_span_keeps_every_events_link(tmp_path: Path) -> None:
    provider = setup_tracing("links-test", tmp_path)
    links = [Link(SpanContext(n + 1, n + 1, is_remote=True, trace_flags=TraceFlags(1))) for n in range(BATCH_SIZE)]
    span = provider.get_tracer("test").start_span("send outbox", links=links)
    span.end()
    assert len(span.links) == BATCH_SIZE  # type: ignore[attr-defined]
    provider.shutdown()
