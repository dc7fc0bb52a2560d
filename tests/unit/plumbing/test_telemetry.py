"""A campaign ID's trace can be continued anywhere from the ID alone."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode

from devstack.trace import render
from plumbing.telemetry import (
    CAMPAIGN_ID,
    HELD,
    HOLD_REASON,
    HOLD_UNTIL,
    SPAN_EXPORT_BATCH,
    SPAN_EXPORT_DELAY_MS,
    JsonlSpanExporter,
    OutreachRecord,
    StatementSpans,
    _OutreachIdGenerator,
    headers_span_context,
    hold_attributes,
    hold_event,
    outreach_ids,
    outreach_span,
    parent_from_headers,
    record_outreach_roots,
    record_outreach_steps,
    setup_tracing,
    spans_for_campaign_id,
)


def _provider(exporter: object) -> TracerProvider:
    provider = TracerProvider(id_generator=_OutreachIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
    return provider


def test_outreach_ids_are_stable_and_distinct() -> None:
    assert outreach_ids("CSELL-NOV-T06-0884") == outreach_ids("CSELL-NOV-T06-0884")
    assert outreach_ids("CSELL-NOV-T06-0884") != outreach_ids("CSELL-NOV-T06-0885")


def test_root_and_later_spans_share_the_campaign_ids_trace() -> None:
    exporter = InMemorySpanExporter()
    tracer = _provider(exporter).get_tracer("t")
    trace_id, root_span_id = outreach_ids("CSELL-NOV-T06-0884")
    with (
        tracer.start_as_current_span("launch request"),
        outreach_span(tracer, "outreach.create", "CSELL-NOV-T06-0884", root=True),
    ):
        pass
    with outreach_span(tracer, "attribution.disbursement", "CSELL-NOV-T06-0884"):
        pass
    spans = {span.name: span for span in exporter.get_finished_spans()}
    root, later, launch = spans["outreach.create"], spans["attribution.disbursement"], spans["launch request"]
    assert root.context.trace_id == trace_id and root.context.span_id == root_span_id
    assert root.parent is None
    # The root links back to the request that caused it, which stays in its own trace.
    assert [link.context.span_id for link in root.links] == [launch.context.span_id]
    assert launch.context.trace_id != trace_id
    assert later.context.trace_id == trace_id and later.parent.span_id == root_span_id
    assert later.attributes[CAMPAIGN_ID] == "CSELL-NOV-T06-0884"


def test_a_fallbacks_trace_links_the_outreach_it_follows_and_a_look_up_of_either_finds_it(tmp_path: Path) -> None:
    """The SMS that followed a failed WhatsApp message was in its own trace only: `xsell trace` of the failed one
    did not show that anything followed."""
    exporter = JsonlSpanExporter(tmp_path / "traces" / "svc.jsonl")
    tracer = _provider(exporter).get_tracer("t")
    with outreach_span(tracer, "outreach.create", "CSELL-NOV-T00-0010", root=True, follows="CSELL-NOV-T00-0008"):
        pass
    (fallback,) = spans_for_campaign_id(tmp_path, "CSELL-NOV-T00-0010")
    assert [span["span_id"] for span in spans_for_campaign_id(tmp_path, "CSELL-NOV-T00-0008")] == [fallback["span_id"]]
    failed_trace, failed_root = outreach_ids("CSELL-NOV-T00-0008")
    assert fallback["links"] == [{"trace_id": format(failed_trace, "032x"), "span_id": format(failed_root, "016x")}]


def test_other_spans_keep_random_ids() -> None:
    exporter = InMemorySpanExporter()
    tracer = _provider(exporter).get_tracer("t")
    with tracer.start_as_current_span("a"):
        pass
    with tracer.start_as_current_span("b"):
        pass
    a, b = exporter.get_finished_spans()
    assert a.context.trace_id != b.context.trace_id


def test_local_span_store_finds_a_campaign_ids_spans(tmp_path: Path) -> None:
    exporter = JsonlSpanExporter(tmp_path / "traces" / "svc.jsonl")
    tracer = _provider(exporter).get_tracer("t")
    with (
        outreach_span(tracer, "outreach.create", "CSELL-NOV-T06-0884", root=True),
        tracer.start_as_current_span("child"),
    ):
        pass
    with outreach_span(tracer, "outreach.create", "CSELL-NOV-T06-0885", root=True):
        pass
    names = [span["name"] for span in spans_for_campaign_id(tmp_path, "CSELL-NOV-T06-0884")]
    assert sorted(names) == ["child", "outreach.create"]


def test_the_local_span_store_finds_a_batch_span_that_links_the_campaign_ids_trace(tmp_path: Path) -> None:
    exporter = JsonlSpanExporter(tmp_path / "traces" / "svc.jsonl")
    tracer = _provider(exporter).get_tracer("t")
    with outreach_span(tracer, "outreach.create", "CSELL-NOV-T06-0884", root=True) as outreach:
        pass
    with outreach_span(tracer, "outreach.create", "CSELL-NOV-T06-0885", root=True) as other:
        pass
    with tracer.start_as_current_span("send outbox", links=[Link(outreach.get_span_context())]):
        pass
    with tracer.start_as_current_span("unrelated batch", links=[Link(other.get_span_context())]):
        pass
    names = [span["name"] for span in spans_for_campaign_id(tmp_path, "CSELL-NOV-T06-0884")]
    assert names == ["outreach.create", "send outbox"]


def test_a_traceparent_header_is_read_as_the_propagator_reads_it() -> None:
    tracer = _provider(InMemorySpanExporter()).get_tracer("t")
    with tracer.start_as_current_span("creator") as creator:
        headers: dict[str, str] = {}
        propagate.inject(headers)
    remote = headers_span_context(headers)
    assert remote is not None
    assert (remote.trace_id, remote.span_id) == (
        creator.get_span_context().trace_id,
        creator.get_span_context().span_id,
    )
    assert remote.is_remote and remote.trace_flags.sampled
    extracted = trace.get_current_span(propagate.extract(headers)).get_span_context()
    assert trace.get_current_span(parent_from_headers(headers)).get_span_context() == extracted


def test_headers_without_a_plain_traceparent_fall_back_to_the_propagator() -> None:
    for value in (
        "",
        "00-zz0000000000000000000000000000aa-00f067aa0ba902b7-01",  # not hex
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # an all-zero trace id is invalid
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # a later version, longer
        "00-4bf92f3577b34da6-3ce929d0e0e4736-00f067aa0ba902b7-01",  # the right length, a dash misplaced
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0-",  # the right length, no flags
    ):
        assert headers_span_context({"traceparent": value}) is None
    assert headers_span_context({}) is None
    # The propagator decides for what the fast path does not read: a later version is still understood.
    later = {"traceparent": "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"}
    parent = trace.get_current_span(parent_from_headers(later)).get_span_context()
    assert parent.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert not trace.get_current_span(parent_from_headers({})).get_span_context().is_valid


def test_a_span_already_in_the_outreach_trace_nests_under_the_current_span() -> None:
    exporter = InMemorySpanExporter()
    tracer = _provider(exporter).get_tracer("t")
    with (
        outreach_span(tracer, "gateway RecordDisbursement", "CSELL-NOV-T06-0884"),
        tracer.start_as_current_span("server span") as server,
        outreach_span(tracer, "attribution.record_disbursement", "CSELL-NOV-T06-0884"),
    ):
        pass
    spans = {span.name: span for span in exporter.get_finished_spans()}
    inner = spans["attribution.record_disbursement"]
    assert inner.parent.span_id == server.get_span_context().span_id
    assert inner.links == ()


def _batching(provider: TracerProvider) -> tuple[int, float]:
    [processor] = provider._active_span_processor._span_processors  # type: ignore[attr-defined]
    batching = processor._batch_processor  # type: ignore[attr-defined]
    return batching._max_export_batch_size, batching._schedule_delay_millis


def test_spans_are_exported_in_small_batches_soon_after_they_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", raising=False)
    monkeypatch.delenv("OTEL_BSP_SCHEDULE_DELAY", raising=False)
    # The SDK's defaults (512 spans, 5 s) held the loop ~5.6 ms per export and kept 5 s of spans in memory.
    assert _batching(setup_tracing("campaigns", tmp_path)) == (SPAN_EXPORT_BATCH, SPAN_EXPORT_DELAY_MS)
    assert SPAN_EXPORT_BATCH <= 64
    assert SPAN_EXPORT_DELAY_MS <= 500


def test_the_standard_variables_override_the_export_batching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "256")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "1000")
    assert _batching(setup_tracing("campaigns", tmp_path)) == (256, 1000.0)


def test_statement_spans_are_recorded_only_inside_an_operations_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLAlchemy's instrumentation takes its tracer from StatementSpans: an idle stack's polls wrote a root span for
    every connect, BEGIN and SELECT (~0.9 MB a minute in the local store), with nothing to find them by."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    statements = StatementSpans().get_tracer("opentelemetry.instrumentation.sqlalchemy")

    alone = statements.start_span("SELECT campaigns.db")
    assert not alone.is_recording()
    alone.end()
    with statements.start_as_current_span("connect") as connect:
        assert not connect.is_recording()
    assert exporter.get_finished_spans() == ()

    with (
        provider.get_tracer("test").start_as_current_span("campaigns.follow_up") as operation,
        statements.start_as_current_span("connect"),
    ):
        statements.start_span("SELECT campaigns.db").end()
    names = {span.name: span for span in exporter.get_finished_spans()}
    assert set(names) == {"connect", "SELECT campaigns.db", "campaigns.follow_up"}
    parent = operation.get_span_context().span_id
    assert names["connect"].parent is not None and names["connect"].parent.span_id == parent
    select_parent = names["SELECT campaigns.db"].parent
    assert select_parent is not None and select_parent.span_id == names["connect"].context.span_id


def test_the_local_span_store_keeps_why_a_span_failed_and_the_trace_prints_it(tmp_path: Path) -> None:
    """The store kept ERROR and dropped the status's description: `make trace` of a failed WhatsApp message said
    `channels.receipt  ERROR`, and the reason (the provider's code) was in no span an SRE could read."""
    exporter = JsonlSpanExporter(tmp_path / "traces" / "svc.jsonl")
    tracer = _provider(exporter).get_tracer("t")
    with outreach_span(tracer, "channels.receipt", "CSELL-NOV-T00-0009") as span:
        span.set_status(Status(StatusCode.ERROR, "receipt: whatsapp 131026 Message undeliverable"))
    with outreach_span(tracer, "channels.engagement", "CSELL-NOV-T00-0009"):
        pass
    with outreach_span(tracer, "attribution.create_lead", "CSELL-NOV-T00-0009") as span:
        span.set_status(Status(StatusCode.ERROR, "IntegrityError: (asha.k@example.in, +91 98765 43210)"))
    spans = spans_for_campaign_id(tmp_path, "CSELL-NOV-T00-0009")
    assert [span["status_description"] for span in spans] == [
        "receipt: whatsapp 131026 Message undeliverable",
        "",
        "IntegrityError: ([redacted], [redacted])",
    ]
    failed, fine, _ = render(spans)
    assert failed.endswith("channels.receipt  ERROR: receipt: whatsapp 131026 Message undeliverable")
    assert fine.endswith("channels.engagement")


def test_a_release_pages_roots_link_the_page_and_the_launch_and_a_held_outreach_says_why(tmp_path: Path) -> None:
    """record_outreach_roots as a release page calls it (shared attributes and links), record_outreach_steps for the
    outreach a dispatch page held back; the local store keeps the hold event, and the printer shows it."""
    exporter = JsonlSpanExporter(tmp_path / "traces" / "campaigns.jsonl")
    tracer = _provider(exporter).get_tracer("t")
    with tracer.start_as_current_span("LaunchCampaign") as launch:
        pass
    launched = [Link(launch.get_span_context())]
    with tracer.start_as_current_span("campaign.release_page") as page:
        record_outreach_roots(
            tracer,
            "outreach.create",
            (OutreachRecord(campaign_id) for campaign_id in ("CSELL-NOV-T00-0001", "CSELL-NOV-T00-0002")),
            attributes={"campaign.key": "cmp_1"},
            links=launched,
        )
    until = datetime(2026, 11, 30, 3, 30, tzinfo=UTC)
    with tracer.start_as_current_span("campaign.dispatch_page"):
        why = "the campaign's quiet hours 21:00-09:00 in Asia/Kolkata"
        held = hold_event(HELD, "CSELL-NOV-T00-0002", why, until)
        record_outreach_steps(tracer, "outreach.dispatch", [OutreachRecord("CSELL-NOV-T00-0002", events=(held,))])
    spans = spans_for_campaign_id(tmp_path, "CSELL-NOV-T00-0002")
    root, step = spans[0], spans[1]
    trace_id, root_id = outreach_ids("CSELL-NOV-T00-0002")
    assert (root["trace_id"], root["span_id"], root["parent_span_id"]) == (f"{trace_id:032x}", f"{root_id:016x}", None)
    assert root["attributes"] == {CAMPAIGN_ID: "CSELL-NOV-T00-0002", "campaign.key": "cmp_1"}
    assert [link["span_id"] for link in root["links"]] == [
        f"{page.get_span_context().span_id:016x}",
        f"{launch.get_span_context().span_id:016x}",
    ]
    assert (step["name"], step["trace_id"], step["parent_span_id"]) == (
        "outreach.dispatch",
        root["trace_id"],
        root["span_id"],
    )
    (event,) = step["events"]
    assert event["name"] == HELD
    assert event["attributes"] == {
        CAMPAIGN_ID: "CSELL-NOV-T00-0002",
        HOLD_REASON: why,
        HOLD_UNTIL: "2026-11-30T03:30:00+00:00",
    }
    assert {span["name"] for span in spans if span.get("cause")} == {"campaign.release_page", "LaunchCampaign"}
    lines = render(spans)
    assert f"· {HELD}: {why} (until 2026-11-30T03:30:00+00:00)" in lines[2]


def test_the_local_store_keeps_no_exception_events_and_redacts_the_others(tmp_path: Path) -> None:
    exporter = JsonlSpanExporter(tmp_path / "traces" / "svc.jsonl")
    tracer = _provider(exporter).get_tracer("t")
    with outreach_span(tracer, "channels.dispatch", "CSELL-NOV-T00-0003") as span:
        span.record_exception(ValueError("boom"))
        span.add_event(HELD, hold_attributes("CSELL-NOV-T00-0003", "provider refused +91 98765 43210"))
    (record,) = spans_for_campaign_id(tmp_path, "CSELL-NOV-T00-0003")
    (event,) = record["events"]
    assert event["name"] == HELD and "98765" not in event["attributes"][HOLD_REASON]
