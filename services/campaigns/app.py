"""The composition root of the campaigns service: settings, database, bus, segments client, servicer, loops."""

import dataclasses
from datetime import timedelta
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from plumbing.bus import Bus, Consumer, StreamWatch
from plumbing.db import Database
from plumbing.grpc_client import client_channel
from plumbing.grpc_server import GrpcServer
from plumbing.idempotency import Idempotency
from plumbing.outbox import Outbox, OutboxRelay
from plumbing.runtime import BackgroundTask, ServiceProcess
from services import streams
from services.campaigns import store
from services.campaigns.api import CampaignsApi
from services.campaigns.api_content import ContentServices
from services.campaigns.consumers import OutreachSignals
from services.campaigns.content_files import load_library
from services.campaigns.outreach_maker import CompiledTemplates, OutreachMaker
from services.campaigns.person_client import PersonLookup
from services.campaigns.profiles_client import ProfileDirectory
from services.campaigns.release import ReleaseRunner
from services.campaigns.resend_runner import ResendRunner
from services.campaigns.segments_client import SegmentsClient
from services.campaigns.settings import CampaignsSettings
from services.campaigns.trigger_handler import TriggerHandler
from services.campaigns.triggers import load_trigger_catalog
from xsell.campaigns.v1 import service_pb2_grpc
from xsell.channels.v1.events_pb2 import DeliveryUpdated, EngagementRecorded
from xsell.segments.v1.events_pb2 import MembershipChanged

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "xsell.campaigns.v1.CampaignsService"


async def build(settings: CampaignsSettings, provider: TracerProvider) -> ServiceProcess:
    tracer = provider.get_tracer("xsell.campaigns")
    # Read first: a malformed catalog or registry stops the start before anything else is opened.
    library = load_library(settings.product_catalog_file, settings.template_registry_file)
    triggers = load_trigger_catalog(settings.trigger_catalog_file)
    db = Database.of_service(settings, "campaigns")
    await db.migrate(MIGRATIONS)
    bus = await Bus.of_service(settings, "campaigns")
    await bus.ensure_streams(streams.ALL_STREAMS, replicas=settings.stream_replicas)
    watch = StreamWatch(bus, [stream.name for stream in streams.ALL_STREAMS])
    # The relay publishes on a connection of its own: on the consumers' connection the server read a trigger batch's
    # tens of events (stored and acknowledged one after another) before the trigger consumer's next pull request.
    publisher = await Bus.of_service(settings, "campaigns-outbox")
    relay = OutboxRelay.of_service(db, store, publisher, tracer, settings)
    segments_channel = client_channel(settings.segments_target, provider)
    segments = SegmentsClient(segments_channel)
    runner = ReleaseRunner(
        db,
        segments,
        Outbox(store.outbox, on_commit=relay.notify),
        tracer,
        page_size=settings.release_page_size,
        poll_interval=settings.release_poll_seconds,
        library=library,
        one_offer_per_day=settings.one_offer_per_day,
        wake_relay=relay.notify,
    )
    servicer = CampaignsApi(
        db,
        Idempotency(store.idempotency),
        segments,
        default_time_zone=settings.default_time_zone,
        on_launch=runner.notify,
        content=ContentServices(
            ProfileDirectory(segments_channel), library, Outbox(store.outbox, on_commit=relay.notify), tracer
        ),
        require_approval=settings.require_approval,
        triggers=triggers,
    )
    # Triggers (a batch at a time) and resends (one by one) go through the same gate as the release runner.
    follow_up_outbox = Outbox(store.outbox, on_commit=relay.notify)
    templates = CompiledTemplates(library)
    maker = OutreachMaker(runner.gate, follow_up_outbox, tracer, templates)
    # Its own channel, without client spans: each look-up carries its caller's trace context itself (PersonLookup).
    lookup_channel = client_channel(settings.segments_target, None)
    people = PersonLookup(lookup_channel)
    trigger_handler = TriggerHandler(db, people, runner.gate, templates, tracer, relay=relay)
    trigger_consumer = Consumer(
        bus,
        dataclasses.replace(streams.CAMPAIGNS_TRIGGERS, batch_size=settings.trigger_concurrency),
        MembershipChanged,
        None,
        tracer,
        batch_handler=trigger_handler.on_membership_changed_batch,
    )
    await trigger_consumer.declare()
    resends = ResendRunner(
        db,
        people,
        maker,
        follow_up_outbox,
        page_size=settings.release_page_size,
        poll_interval=settings.release_poll_seconds,
        fallback_window=timedelta(hours=settings.fallback_window_hours),
    )
    signals = OutreachSignals(db)
    # A fetch per transaction: every message brings two receipts or more, at channels' rate.
    delivery_consumer = Consumer(
        bus, streams.CAMPAIGNS_DELIVERY, DeliveryUpdated, None, tracer, batch_handler=signals.on_delivery_batch
    )
    engagement_consumer = Consumer(
        bus, streams.CAMPAIGNS_ENGAGEMENT, EngagementRecorded, None, tracer, batch_handler=signals.on_engagement_batch
    )
    await delivery_consumer.declare()
    await engagement_consumer.declare()
    server = GrpcServer.of_service(settings, provider)
    server.add(SERVICE_NAME, lambda s: service_pb2_grpc.add_CampaignsServiceServicer_to_server(servicer, s))

    async def close_segments_channel() -> None:
        await segments_channel.close()
        await lookup_channel.close()

    return ServiceProcess(
        "campaigns",
        server,
        tasks=[
            BackgroundTask("outbox-relay", relay.run, relay.stop),
            BackgroundTask("stream-watch", watch.run, watch.stop),
            BackgroundTask("release-runner", runner.run, runner.stop),
            BackgroundTask("delivery-consumer", delivery_consumer.run, delivery_consumer.stop),
            BackgroundTask("engagement-consumer", engagement_consumer.run, engagement_consumer.stop),
            BackgroundTask("trigger-consumer", trigger_consumer.run, trigger_consumer.stop),
            BackgroundTask("follow-up-runner", resends.run, resends.stop),
        ],
        # Closed in reverse: the segments channel first, then NATS drains (the relay's connection, the consumers'),
        # then the database.
        closers=[db.dispose, bus.drain, publisher.drain, close_segments_channel],
    )
