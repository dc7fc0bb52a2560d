"""plumbing.metrics.setup_metrics: exemplars only where a backend can receive them."""

import pytest
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, TraceBasedExemplarFilter

from plumbing.metrics import setup_metrics


@pytest.mark.parametrize(
    ("variable", "expected"),
    [(None, AlwaysOffExemplarFilter), ("trace_based", TraceBasedExemplarFilter)],
    ids=["prometheus only: off", "OTEL_METRICS_EXEMPLAR_FILTER set: as it says"],
)
def test_exemplars_are_off_unless_metrics_go_over_otlp_or_the_standard_variable_asks(
    monkeypatch: pytest.MonkeyPatch, variable: str | None, expected: type
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    if variable is None:
        monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)
    else:
        monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", variable)

    server = setup_metrics("test", "127.0.0.1", None)
    try:
        # The SDK keeps the filter in its private config: there is no public reader of it.
        assert isinstance(server.provider._sdk_config.exemplar_filter, expected)
    finally:
        server.shutdown()
