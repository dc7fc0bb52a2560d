"""With OTEL_EXPORTER_OTLP_ENDPOINT set, spans leave over OTLP/gRPC instead of the local span store."""

import asyncio
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from plumbing.telemetry import CAMPAIGN_ID, outreach_span, setup_tracing


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Answers like an OpenTelemetry collector's OTLP receiver and keeps what it got."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_are_exported_over_otlp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    try:
        provider = setup_tracing("campaigns", tmp_path)
        with outreach_span(provider.get_tracer("t"), "outreach.create", "CSELL-NOV-T06-0884", root=True):
            pass
        # A failure whose text quotes a person's number and address (a driver's error with its parameters).
        with (
            pytest.raises(ValueError),
            outreach_span(provider.get_tracer("t"), "channels.dispatch", "CSELL-NOV-T06-0884"),
        ):
            raise ValueError("refused: ('+91 98765 43210', 'priya.k@example.in')")
        # force_flush blocks on the exporter's own channel; run it off the loop that serves the collector.
        assert await asyncio.to_thread(provider.force_flush, 10_000)
        provider.shutdown()
    finally:
        await server.stop(0)
    spans = [
        (resource.resource, span)
        for request in collector.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert [span.name for _, span in spans] == ["outreach.create", "channels.dispatch"]
    failed = spans[1][1]
    exported = failed.status.message + " ".join(
        attribute.value.string_value for event in failed.events for attribute in event.attributes
    )
    assert failed.status.code == failed.status.STATUS_CODE_ERROR and "ValueError" in exported
    assert "98765" not in exported and "priya" not in exported, exported
    resource, span = spans[0]
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "campaigns"
    assert {a.key: a.value.string_value for a in span.attributes}[CAMPAIGN_ID] == "CSELL-NOV-T06-0884"
    assert not (tmp_path / "traces").exists()
