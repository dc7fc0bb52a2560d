"""The composition root of the segments service: database, bus, outbox relay, consumers and the gRPC servicer."""

from datetime import timedelta
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from plumbing import bounces
from plumbing.bus import Bus, Consumer, StreamWatch
from plumbing.db import Database
from plumbing.grpc_server import GrpcServer
from plumbing.outbox import Outbox, OutboxRelay
from plumbing.runtime import BackgroundTask, ServiceProcess
from services import streams
from services.segments import store
from services.segments.api import SegmentsApi
from services.segments.api_catalog import install_catalog_file
from services.segments.consumers import ProfileActivityConsumers
from services.segments.settings import SegmentsSettings
from services.segments.sweeper import Sweeper
from xsell.attribution.v1.events_pb2 import ConversionRecorded
from xsell.channels.v1.events_pb2 import EngagementRecorded
from xsell.segments.v1 import service_pb2_grpc
from xsell.segments.v1.service_pb2 import IngestEventsRequest, UpsertProfilesRequest

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(settings: SegmentsSettings, provider: TracerProvider) -> ServiceProcess:
    tracer = provider.get_tracer("xsell.segments")
    db = Database.of_service(settings, "segments")
    await db.migrate(MIGRATIONS)
    bus = await Bus.of_service(settings, "segments")
    await bus.ensure_streams(streams.ALL_STREAMS, replicas=settings.stream_replicas)
    watch = StreamWatch(bus, [stream.name for stream in streams.ALL_STREAMS])
    # The relay publishes on a connection of its own: the server reads a connection's commands in order, and
    # on the consumers' one their pull requests and acks waited behind every event being stored.
    publisher = await Bus.of_service(settings, "segments-outbox")
    relay = OutboxRelay.of_service(db, store, publisher, tracer, settings)
    outbox = Outbox(store.outbox, on_commit=relay.notify)
    servicer = SegmentsApi(db, outbox, settings, tracer)
    await install_catalog_file(db, servicer.activity, settings.catalog_file)
    handlers = ProfileActivityConsumers(
        db,
        servicer.activity,
        tracer,
        retention=servicer.retention,
        future_skew=servicer.future_skew,
        decline_for=timedelta(days=settings.decline_suppression_days),
        recheck_after={
            bounces.DND: timedelta(days=settings.dnd_recheck_days),
            bounces.UNREACHABLE: timedelta(days=settings.unreachable_recheck_days),
        },
    )
    # A fetch per transaction: a campaign's opens and clicks come at channels' rate, and a STOP waits behind them.
    engagement = Consumer(
        bus, streams.SEGMENTS_ENGAGEMENT, EngagementRecorded, None, tracer, batch_handler=handlers.on_engagement_batch
    )
    conversion = Consumer(bus, streams.SEGMENTS_CONVERSION, ConversionRecorded, handlers.on_conversion, tracer)
    await engagement.declare()
    await conversion.declare()
    # A few batches at once on PostgreSQL, one on SQLite's single writer; memory holds that many batches at most.
    concurrency = settings.bulk_ingest_concurrency or (1 if db.is_sqlite else 4)
    bulk_ingest = Consumer(
        bus, streams.SEGMENTS_BULK_INGEST, IngestEventsRequest, handlers.on_bulk_ingest, tracer, concurrency=concurrency
    )
    await bulk_ingest.declare()
    bulk_profiles = Consumer(
        bus,
        streams.SEGMENTS_BULK_PROFILES,
        UpsertProfilesRequest,
        handlers.on_bulk_profiles,
        tracer,
        concurrency=concurrency,
    )
    await bulk_profiles.declare()
    sweeper = Sweeper(db, servicer.activity, tracer, settings.sweep_interval_seconds)
    server = GrpcServer.of_service(settings, provider)
    server.add(
        "xsell.segments.v1.SegmentsService",
        lambda s: service_pb2_grpc.add_SegmentsServiceServicer_to_server(servicer, s),
    )
    return ServiceProcess(
        "segments",
        server,
        tasks=[
            BackgroundTask("outbox-relay", relay.run, relay.stop),
            BackgroundTask("stream-watch", watch.run, watch.stop),
            BackgroundTask("engagement-consumer", engagement.run, engagement.stop),
            BackgroundTask("conversion-consumer", conversion.run, conversion.stop),
            BackgroundTask("window-sweeper", sweeper.run, sweeper.stop),
            BackgroundTask("bulk-ingest-consumer", bulk_ingest.run, bulk_ingest.stop),
            BackgroundTask("bulk-profiles-consumer", bulk_profiles.run, bulk_profiles.stop),
        ],
        closers=[db.dispose, bus.drain, publisher.drain],
    )
