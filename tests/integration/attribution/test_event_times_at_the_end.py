"""A time whose local day lies past 9999-12-31 (a Timestamp late on the last day, at the views' UTC offset) is that
message's problem in a fetch: refused alone, the fetch's other messages applied."""

from datetime import UTC, datetime

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import func, select

from plumbing.db import Database
from plumbing.errors import InvalidArgument
from services.attribution import store
from services.attribution.consumers import Handlers
from tests.integration.attribution.test_event_batches import (  # noqa: F401 - handlers is a fixture
    _count,
    _created,
    _delivery,
    _receipt,
    handlers,
)
from xsell.channels.v1 import resources_pb2 as channels_pb2

LAST_EVENING = datetime(9999, 12, 31, 22, 0, tzinfo=UTC)  # already 1 January 10000 in Kolkata


async def test_a_time_whose_local_day_is_past_year_9999_is_refused_alone(
    handlers: tuple[Handlers, Database, InMemorySpanExporter],  # noqa: F811
) -> None:
    handler, db, _ = handlers
    outcomes = await handler.on_outreach_created_batch(
        [(_created("CSELL-NOV-T06-0001"), _delivery()), (_created("CSELL-NOV-T06-0002", LAST_EVENING), _delivery())]
    )
    assert outcomes[0] is None and isinstance(outcomes[1], InvalidArgument)
    assert tuple(await _count(db, select(func.count()).select_from(store.outreaches))) == (1,)

    receipts = [
        (_receipt("CSELL-NOV-T06-0001", channels_pb2.DELIVERY_STATE_DELIVERED, LAST_EVENING), _delivery()),
        (
            _receipt("CSELL-NOV-T06-0001", channels_pb2.DELIVERY_STATE_SENT, datetime(2025, 11, 14, tzinfo=UTC)),
            _delivery(),
        ),
    ]
    outcomes = await handler.on_delivery_updated_batch(receipts)
    assert isinstance(outcomes[0], InvalidArgument) and outcomes[1] is None
    assert tuple(await _count(db, select(func.count()).select_from(store.costs))) == (1,)
