"""The composition root of the channels service: settings, database, bus, servicer, SMTP sender, consumer."""

from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from plumbing.bus import Bus, Consumer
from plumbing.db import Database
from plumbing.grpc_server import GrpcServer
from plumbing.idempotency import Idempotency
from plumbing.outbox import Outbox, OutboxRelay
from plumbing.runtime import BackgroundTask, ServiceProcess
from services import streams
from services.channels import store
from services.channels.api import ChannelsApi
from services.channels.consumers import DispatchHandler
from services.channels.settings import ChannelsSettings
from services.channels.smtp import SmtpSender
from xsell.campaigns.v1.events_pb2 import DispatchRequested
from xsell.channels.v1 import service_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(settings: ChannelsSettings, provider: TracerProvider) -> ServiceProcess:
    tracer = provider.get_tracer("xsell.channels")
    db = Database(settings.resolved_database_url("channels"))
    await db.migrate(MIGRATIONS)
    bus = await Bus.connect(settings.nats_url, name="channels")
    await bus.ensure_streams(streams.ALL_STREAMS)
    relay = OutboxRelay(db, store.outbox, bus, tracer)
    outbox = Outbox(store.outbox, on_commit=relay.notify)

    servicer = ChannelsApi(db, outbox, Idempotency(store.idempotency), tracer)
    server = GrpcServer(settings.grpc_host, settings.grpc_port, provider)
    server.add(
        "xsell.channels.v1.ChannelsService",
        lambda s: service_pb2_grpc.add_ChannelsServiceServicer_to_server(servicer, s),
    )

    sender = SmtpSender(
        settings.smtp_host,
        settings.smtp_port,
        start_tls=settings.smtp_starttls,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        timeout_seconds=settings.smtp_timeout_seconds,
    )
    dispatch = DispatchHandler(
        db,
        outbox,
        sender,
        tracer,
        from_address=settings.from_address,
        message_id_domain=settings.message_id_domain,
        tracking_base_url=settings.tracking_base_url,
        tracking_secret=settings.tracking_secret.get_secret_value(),
        smtp_peer=(settings.smtp_host, settings.smtp_port),
    )
    consumer = Consumer(
        bus, streams.CHANNELS_DISPATCH, DispatchRequested, dispatch, tracer, concurrency=settings.dispatch_concurrency
    )
    await consumer.declare()
    return ServiceProcess(
        "channels",
        server,
        tasks=[
            BackgroundTask("outbox-relay", relay.run, relay.stop),
            BackgroundTask("dispatch-consumer", consumer.run, consumer.stop),
        ],
        closers=[db.dispose, bus.drain],
    )
