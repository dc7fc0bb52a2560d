"""plumbing.loop_lag.LoopLag: how late the event loop runs a timer, recorded every tick."""

import asyncio
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from plumbing.loop_lag import BUCKETS_MS, LoopLag


async def test_a_call_that_holds_the_loop_is_recorded_as_that_much_lag() -> None:
    reader = InMemoryMetricReader()
    lag = LoopLag(0.01, meter_=MeterProvider(metric_readers=[reader]).get_meter("test"))
    watching = asyncio.create_task(lag.run())
    await asyncio.sleep(0.05)
    time.sleep(0.06)  # noqa: ASYNC251 - the blocking call on the loop that the lag must show (a checkpointing commit)
    await asyncio.sleep(0.05)
    await lag.stop()
    await asyncio.wait_for(watching, timeout=1)

    data = reader.get_metrics_data()
    assert data is not None
    [metric] = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert metric.name == "xsell.event_loop.lag" and metric.unit == "ms"
    [point] = metric.data.data_points  # type: ignore[union-attr]
    assert isinstance(point, HistogramDataPoint)
    assert tuple(point.explicit_bounds) == BUCKETS_MS
    assert point.count >= 2
    assert point.max >= 50  # the blocked 60 ms, less at most the one tick that had not yet passed
