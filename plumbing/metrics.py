"""OpenTelemetry metrics: a Prometheus /metrics endpoint per process, and OTLP export when a collector is set."""

import os
from typing import Any

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource


class MetricsServer:
    """The meter provider of one process and the HTTP server that exposes it to Prometheus."""

    def __init__(self, provider: MeterProvider, http_server: Any | None) -> None:
        self.provider = provider
        self._http_server = http_server
        self.port = http_server.server_port if http_server is not None else 0

    def shutdown(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
        self.provider.shutdown()


def setup_metrics(service: str, host: str, port: int | None) -> MetricsServer:
    """Serves /metrics on host:port when port is not None (0 picks a free port); OTLP when the env says so."""
    readers: list[MetricReader] = []
    http_server = None
    if port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server

        # A registry of this process's own, so nothing else that uses prometheus_client leaks in.
        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry))
        http_server, _thread = start_http_server(port, addr=host, registry=registry)
    # OTEL_METRICS_EXPORTER=none (the standard variable) keeps metrics off OTLP while spans still use it:
    # in Kubernetes Prometheus scrapes the metrics port instead.
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and os.environ.get("OTEL_METRICS_EXPORTER", "otlp") != "none":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    provider = MeterProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "xsell"}), metric_readers=readers
    )
    return MetricsServer(provider, http_server)


def meter() -> metrics.Meter:
    """The plumbing's meter from the process's meter provider (a no-op one until run_service sets it)."""
    return metrics.get_meter("xsell.plumbing")
