"""plumbing.metrics.Tally: per-message counts as plain integers, reported by an observable counter."""

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from plumbing.metrics import Tally, tally


def test_counts_are_reported_with_their_labels_when_the_meter_collects() -> None:
    counts = Tally(("durable", "outcome"))
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    meter.create_observable_counter("handled", callbacks=[counts.observe])
    for _ in range(3):
        counts.add(("dispatch", "ack"))
    counts.add(("dispatch", "nak"), 2)

    data = reader.get_metrics_data()
    assert data is not None
    [metric] = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    points = {tuple(sorted(p.attributes.items())): p.value for p in metric.data.data_points}  # type: ignore[union-attr]
    assert points == {
        (("durable", "dispatch"), ("outcome", "ack")): 3,
        (("durable", "dispatch"), ("outcome", "nak")): 2,
    }
    assert metric.data.is_monotonic  # type: ignore[union-attr]


def test_one_tally_per_name_is_shared_because_a_second_observable_counter_would_be_ignored() -> None:
    first = tally("test", "xsell.test.shared", labels=("durable",))
    assert tally("test", "xsell.test.shared", labels=("durable",)) is first
    with pytest.raises(ValueError, match="labels"):
        tally("test", "xsell.test.shared", labels=("provider",))
