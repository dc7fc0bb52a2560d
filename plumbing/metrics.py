"""OpenTelemetry metrics: a Prometheus /metrics endpoint per process, and OTLP export when a collector is set."""

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
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
    otlp = (
        bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        and os.environ.get("OTEL_METRICS_EXPORTER", "otlp") != "none"
    )
    if otlp:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    # Exemplars (a sampled trace per histogram bucket) reach only an OTLP backend; the Prometheus reader drops them. Off
    # unless metrics go over OTLP (or OTEL_METRICS_EXEMPLAR_FILTER says otherwise): offering every measurement made in
    # a sampled span to the reservoir cost ~2 of a histogram record's ~7.5 µs, twice per dispatched message.
    exemplars = None if otlp or os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER") else AlwaysOffExemplarFilter()
    provider = MeterProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "xsell"}),
        metric_readers=readers,
        exemplar_filter=exemplars,
    )
    return MetricsServer(provider, http_server)


def meter() -> metrics.Meter:
    """The plumbing's meter from the process's meter provider (a no-op one until run_service sets it)."""
    return metrics.get_meter("xsell.plumbing")


class Tally:
    """A monotonic counter kept as plain integers, reported by an observable counter when the meter collects.

    For counts taken per message: Counter.add cleans and hashes its attributes, builds a measurement and
    takes a lock, 20-35 µs each time, where a tally's add is a dict increment. Get one with `tally()`.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self._counts: Counter[tuple[str, ...]] = Counter()

    def add(self, values: tuple[str, ...], amount: int = 1) -> None:
        """Counts `amount` for the label values `values` (in the order of `labels`)."""
        self._counts[values] += amount

    def value(self, values: tuple[str, ...]) -> int:
        return self._counts[values]

    def observe(self, _options: CallbackOptions) -> list[Observation]:
        # Called on the metrics server's thread: list() copies the counts in one step under the GIL.
        counts = list(self._counts.items())
        return [Observation(n, dict(zip(self.labels, values, strict=True))) for values, n in counts]


_tallies: dict[str, Tally] = {}


def tally(meter_name: str, name: str, *, labels: Sequence[str], unit: str = "", description: str = "") -> Tally:
    """The process's tally for the counter `name`, registered with the meter on first use.

    One per name and process, shared by every caller: the SDK ignores the callbacks of a second
    observable instrument with a name already registered, so a second registration would lose its counts.
    """
    existing = _tallies.get(name)
    if existing is not None:
        if existing.labels != tuple(labels):
            raise ValueError(f"tally {name} has labels {existing.labels}, not {tuple(labels)}")
        return existing
    created = Tally(labels)
    metrics.get_meter(meter_name).create_observable_counter(
        name, callbacks=[created.observe], unit=unit, description=description
    )
    _tallies[name] = created
    return created
