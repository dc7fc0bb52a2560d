"""The attribution service's composition root: settings, database, bus, servicer and consumers wired once."""

from datetime import timedelta
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from plumbing.bus import Bus, Consumer, StreamWatch
from plumbing.db import Database
from plumbing.grpc_server import GrpcServer
from plumbing.idempotency import Idempotency
from plumbing.outbox import Inbox, Outbox, OutboxRelay
from plumbing.runtime import BackgroundTask, ServiceProcess
from services import streams
from services.attribution import store
from services.attribution.api import AttributionApi
from services.attribution.consumers import Handlers
from services.attribution.lead_watch import LeadWatch
from services.attribution.ledger import Ledger
from services.attribution.settings import AttributionSettings
from xsell.attribution.v1 import service_pb2_grpc
from xsell.campaigns.v1.events_pb2 import HoldoutAssigned, OutreachCreated, OutreachWithdrawn
from xsell.channels.v1.events_pb2 import DeliveryUpdated, EngagementRecorded

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(settings: AttributionSettings, provider: TracerProvider) -> ServiceProcess:
    tracer = provider.get_tracer("xsell.attribution")
    db = Database.of_service(settings, "attribution")
    await db.migrate(MIGRATIONS)
    bus = await Bus.of_service(settings, "attribution")
    await bus.ensure_streams(streams.ALL_STREAMS, replicas=settings.stream_replicas)
    watch = StreamWatch(bus, [stream.name for stream in streams.ALL_STREAMS])
    # The relay publishes on a connection of its own: the server reads a connection's commands in order, and
    # on the consumers' one their pull requests and acks waited behind every event being stored.
    publisher = await Bus.of_service(settings, "attribution-outbox")
    relay = OutboxRelay.of_service(db, store, publisher, tracer, settings)
    outbox = Outbox(store.outbox, on_commit=relay.notify)
    ledger = Ledger(settings.cost(), settings.currency, settings.report_utc_offset_minutes)

    servicer = AttributionApi(
        db,
        outbox,
        Idempotency(store.idempotency),
        ledger,
        settings.revenue(),
        tracer,
        last_touch_windows=settings.last_touch_window_days,
        future_skew=timedelta(seconds=settings.future_skew_seconds),
    )
    server = GrpcServer.of_service(settings, provider)
    server.add(
        "xsell.attribution.v1.AttributionService",
        lambda s: service_pb2_grpc.add_AttributionServiceServicer_to_server(servicer, s),
    )

    handlers = Handlers(db, Inbox(store.inbox), ledger, tracer)
    consumers: list[Consumer[Any]] = [
        Consumer(
            bus,
            streams.ATTRIBUTION_OUTREACH,
            OutreachCreated,
            None,
            tracer,
            batch_handler=handlers.on_outreach_created_batch,
        ),
        Consumer(
            bus,
            streams.ATTRIBUTION_DELIVERY,
            DeliveryUpdated,
            None,
            tracer,
            batch_handler=handlers.on_delivery_updated_batch,
        ),
        Consumer(
            bus,
            streams.ATTRIBUTION_ENGAGEMENT,
            EngagementRecorded,
            None,
            tracer,
            batch_handler=handlers.on_engagement_recorded_batch,
        ),
        Consumer(bus, streams.ATTRIBUTION_HOLDOUT, HoldoutAssigned, handlers.on_holdout_assigned, tracer),
        Consumer(bus, streams.ATTRIBUTION_WITHDRAWAL, OutreachWithdrawn, handlers.on_outreach_withdrawn, tracer),
    ]
    for consumer in consumers:
        await consumer.declare()
    lead_watch = LeadWatch(db)

    return ServiceProcess(
        "attribution",
        server,
        tasks=[
            BackgroundTask("outbox-relay", relay.run, relay.stop),
            BackgroundTask("stream-watch", watch.run, watch.stop),
            *(BackgroundTask(f"consumer-{c.spec.durable}", c.run, c.stop) for c in consumers),
            BackgroundTask("lead-watch", lead_watch.run, lead_watch.stop),
        ],
        closers=[db.dispose, bus.drain, publisher.drain],
    )
