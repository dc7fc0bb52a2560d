"""The composition root of the channels service: settings, database, bus, servicer, provider adapters, consumer."""

from pathlib import Path

import structlog
from opentelemetry.sdk.trace import TracerProvider

from plumbing.bus import Bus, Consumer, StreamWatch
from plumbing.db import Database
from plumbing.grpc_server import GrpcServer
from plumbing.idempotency import Idempotency
from plumbing.outbox import Outbox, OutboxRelay
from plumbing.runtime import BackgroundTask, ServiceProcess
from services import streams
from services.channels import store
from services.channels.api import ChannelsApi
from services.channels.consent import SegmentsSuppressions
from services.channels.consumers import DispatchHandler, EmailSettings, Providers, SendPolicy
from services.channels.flow import Backoff, QuietHours, Throttle
from services.channels.providers.google_oauth import ServiceAccount, ServiceAccountTokens
from services.channels.providers.http import HttpTransport, proxies_from_environment
from services.channels.providers.push import FcmPush
from services.channels.providers.sms import ExotelSms
from services.channels.providers.webhook import SignedWebhook
from services.channels.providers.whatsapp import WhatsAppCloud
from services.channels.resend import Resender
from services.channels.settings import ChannelsSettings
from services.channels.smtp import SmtpSender
from xsell.campaigns.v1.events_pb2 import DispatchRequested
from xsell.channels.v1 import service_pb2_grpc

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(settings: ChannelsSettings, provider: TracerProvider) -> ServiceProcess:
    tracer = provider.get_tracer("xsell.channels")
    db = Database.of_service(settings, "channels")
    await db.migrate(MIGRATIONS)
    bus = await Bus.of_service(settings, "channels")
    await bus.ensure_streams(streams.ALL_STREAMS, replicas=settings.stream_replicas)
    watch = StreamWatch(bus, [stream.name for stream in streams.ALL_STREAMS])
    # The relay publishes on a connection of its own: the server reads a connection's commands in order, and
    # on the consumers' one their pull requests and acks waited behind every event being stored.
    publisher = await Bus.of_service(settings, "channels-outbox")
    relay = OutboxRelay.of_service(db, store, publisher, tracer, settings)
    outbox = Outbox(store.outbox, on_commit=relay.notify)

    recipient_secret = settings.recipient_key_secret.get_secret_value().encode()
    servicer = ChannelsApi(db, outbox, Idempotency(store.idempotency), tracer, recipient_secret=recipient_secret)
    server = GrpcServer.of_service(settings, provider)
    server.add(
        "xsell.channels.v1.ChannelsService",
        lambda s: service_pb2_grpc.add_ChannelsServiceServicer_to_server(servicer, s),
    )

    http = HttpTransport(
        timeout_seconds=settings.http_timeout_seconds,
        connect_timeout_seconds=settings.http_connect_timeout_seconds,
        # Calls in flight never exceed dispatch_concurrency; as many kept-alive connections serve them all.
        max_connections=settings.dispatch_concurrency,
        # A cluster whose egress goes through a forward proxy names it in HTTPS_PROXY (and NO_PROXY), as for curl.
        proxies=proxies_from_environment(),
    )
    if http.proxies:
        log.info("providers_through_proxy", proxies=http.proxies)
    smtp = SmtpSender(
        settings.smtp_host,
        settings.smtp_port,
        start_tls=settings.smtp_starttls,
        implicit_tls=settings.smtp_implicit_tls,
        tls_ca_file=settings.smtp_tls_ca_file,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        timeout_seconds=settings.smtp_timeout_seconds,
        connections=settings.smtp_connections,
        messages_per_session=settings.smtp_messages_per_session,
        delivery_reports=settings.smtp_delivery_reports,
    )
    providers = Providers(
        email=smtp,
        http=http,
        sms=ExotelSms(
            settings.sms_base_url,
            settings.sms_account_sid,
            settings.sms_api_key,
            settings.sms_api_token.get_secret_value(),
            settings.sms_dlt_entity_id,
            settings.sms_type,
            settings.sms_status_callback_url,
        ),
        whatsapp=WhatsAppCloud(
            settings.whatsapp_base_url,
            settings.whatsapp_api_version,
            settings.whatsapp_phone_number_id,
            settings.whatsapp_access_token.get_secret_value(),
        ),
        push=FcmPush(settings.push_base_url, settings.fcm_project_id, settings.fcm_access_token.get_secret_value()),
        # With a service account, push carries a token minted and refreshed in-process instead of the fixed one.
        access_tokens=(
            {"push": ServiceAccountTokens(ServiceAccount.load(settings.fcm_service_account.get_secret_value()), http)}
            if settings.fcm_service_account is not None
            else {}
        ),
        webhook=SignedWebhook(settings.webhook_secret.get_secret_value()),
        webhook_allowed_hosts=frozenset(settings.webhook_allowed_hosts),
        throttles={
            name: Throttle.of(rate, concurrency) for name, (rate, concurrency) in settings.provider_limits.items()
        },
    )
    suppressions = SegmentsSuppressions(settings.segments_target, provider) if settings.segments_target else None
    policy = SendPolicy(
        backoff=Backoff(settings.retry_base_seconds, settings.retry_cap_seconds),
        max_attempts=streams.CHANNELS_DISPATCH.max_deliver,
        quiet_hours={
            channel: QuietHours.parse(window, settings.quiet_hours_time_zone)
            for channel, window in settings.quiet_hours.items()
        },
        suppressions=suppressions,
        recheck_after_seconds=settings.recheck_after_seconds,
    )
    dispatch = DispatchHandler(
        db,
        outbox,
        providers,
        tracer,
        email=EmailSettings(
            from_address=settings.from_address,
            return_path=settings.return_path,
            message_id_domain=settings.message_id_domain,
            tracking_base_url=settings.tracking_base_url,
            tracking_secret=settings.tracking_secret.get_secret_value(),
            smtp_peer=(settings.smtp_host, settings.smtp_port),
            esp_events=settings.smtp_esp_events,
            ses_configuration_set=settings.smtp_ses_configuration_set,
        ),
        policy=policy,
        recipient_secret=recipient_secret,
    )
    consumer = Consumer(
        bus,
        streams.CHANNELS_DISPATCH,
        DispatchRequested,
        dispatch,
        tracer,
        concurrency=settings.dispatch_concurrency,
        # Each request to a handler as it arrives: one waiting behind a fetched batch waited for the batch's
        # slowest hand-over (latency at 1k/s, four pairs on a quiet machine: p50 17.7-19.5 -> 7.9-13.0 ms).
        keep_full=True,
        on_dead_letter=dispatch.dead_lettered,
    )
    # Hand-overs again (resend.py) go through the same handler, delivered by a durable of channels' own stream.
    resends = Consumer(
        bus,
        streams.CHANNELS_RESEND,
        DispatchRequested,
        dispatch,
        tracer,
        concurrency=16,
        on_dead_letter=dispatch.dead_lettered,
    )
    resender = Resender(
        db,
        bus,
        outbox,
        settings.resend_without_receipt_seconds,
        tracer,
        poll_interval=settings.resend_poll_seconds,
        email_reports=settings.email_reports,
    )
    await consumer.declare()
    await resends.declare()
    return ServiceProcess(
        "channels",
        server,
        tasks=[
            BackgroundTask("outbox-relay", relay.run, relay.stop),
            BackgroundTask("stream-watch", watch.run, watch.stop),
            BackgroundTask("dispatch-consumer", consumer.run, consumer.stop),
            BackgroundTask("resend-consumer", resends.run, resends.stop),
            BackgroundTask("resender", resender.run, resender.stop),
        ],
        closers=[
            db.dispose,
            bus.drain,
            publisher.drain,
            http.close,
            smtp.close,
            *([suppressions.close] if suppressions else []),
        ],
    )
