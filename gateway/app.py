"""The gateway's composition root: key store, auth, forwarding to the four services, GatewayService, HTTP edge."""

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from opentelemetry.sdk.trace import TracerProvider

from gateway import scopes
from gateway.api import GatewayApi
from gateway.auth import Authenticator, AuthInterceptor
from gateway.dashboard import Dashboard
from gateway.esp_events import SendGridEvents
from gateway.forwarding import Forwarder
from gateway.keys import MIN_SECRET_LENGTH, ApiKey, MalformedKey, hash_secret, parse_key
from gateway.limits import RateLimit, RateLimiter
from gateway.mailbox import BounceMailbox
from gateway.ses_events import SesEvents
from gateway.settings import GatewaySettings
from gateway.store import KeyStore
from gateway.tracking import TrackingEdge
from gateway.webhooks import ProviderWebhooks
from plumbing.db import Database
from plumbing.grpc_client import client_channel
from plumbing.grpc_server import GrpcServer
from plumbing.runtime import BackgroundTask, ServiceProcess

# The generated modules fill the default descriptor pool: forwarding reads request types and
# reflection reads the services from it.
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc
from xsell.campaigns.v1 import service_pb2_grpc as campaigns_grpc
from xsell.channels.v1 import service_pb2_grpc as channels_grpc
from xsell.gateway.v1 import service_pb2_grpc as gateway_grpc
from xsell.segments.v1 import service_pb2 as _segments_pb2  # noqa: F401

MIGRATIONS = Path(__file__).parent / "migrations"
BOOTSTRAP_CLIENT = "bootstrap"


@dataclass
class GatewayProcess(ServiceProcess):
    """A ServiceProcess whose start also waits for the HTTP edge (and the bounce mailbox) to listen, so every port is
    known."""

    http: TrackingEdge | None = None
    mailbox: BounceMailbox | None = None

    async def start(self) -> int:
        port = await super().start()
        if self.http is not None:
            await self.http.wait_ready()
        if self.mailbox is not None:
            await self.mailbox.wait_ready()
        return port


def bootstrap_key(text: str, now: datetime) -> ApiKey:
    """The admin key `make run` and the e2e tests use, from XSELL_GATEWAY_BOOTSTRAP_API_KEY."""
    try:
        presented = parse_key(text)
    except MalformedKey as error:
        raise ValueError(f"XSELL_GATEWAY_BOOTSTRAP_API_KEY is malformed: {error}") from error
    if len(presented.secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"XSELL_GATEWAY_BOOTSTRAP_API_KEY needs a secret of at least {MIN_SECRET_LENGTH} characters")
    return ApiKey(presented.key_id, BOOTSTRAP_CLIENT, hash_secret(presented.secret), frozenset({scopes.ADMIN}), now)


async def build(settings: GatewaySettings, provider: TracerProvider) -> ServiceProcess:
    tracer = provider.get_tracer("xsell.gateway")
    db = Database.of_service(settings, "gateway")
    await db.migrate(MIGRATIONS)
    keys = KeyStore(db)
    if settings.bootstrap_api_key is not None:
        await keys.put(bootstrap_key(settings.bootstrap_api_key.get_secret_value(), datetime.now(UTC)))

    default_limit = (
        RateLimit(settings.rate_limit_per_second, settings.rate_limit_burst)
        if settings.rate_limit_per_second > 0
        else None
    )
    targets = {
        scopes.SEGMENTS_SERVICE: settings.segments_target,
        scopes.CAMPAIGNS_SERVICE: settings.campaigns_target,
        scopes.CHANNELS_SERVICE: settings.channels_target,
        scopes.ATTRIBUTION_SERVICE: settings.attribution_target,
    }
    channels = {service: client_channel(target, provider) for service, target in targets.items()}

    authenticator = Authenticator(keys, settings.key_cache_seconds)
    server = GrpcServer.of_service(
        settings,
        provider,
        extra_interceptors=[AuthInterceptor(authenticator, RateLimiter(default_limit))],
        options=[("grpc.max_receive_message_length", settings.max_request_bytes)],
        tls=settings.tls(),
    )
    forwarder = Forwarder(tracer, settings.downstream_timeout_seconds)
    for service in scopes.FORWARDED_SERVICES:
        handler = forwarder.handler(service, scopes.exposed_methods(service), channels[service])
        server.add(service, _generic(handler))

    api = GatewayApi(
        campaigns_grpc.CampaignsServiceStub(channels[scopes.CAMPAIGNS_SERVICE]),
        channels_grpc.ChannelsServiceStub(channels[scopes.CHANNELS_SERVICE]),
        attribution_grpc.AttributionServiceStub(channels[scopes.ATTRIBUTION_SERVICE]),
        tracer,
        settings.downstream_timeout_seconds,
    )
    server.add(scopes.GATEWAY_SERVICE, lambda s: gateway_grpc.add_GatewayServiceServicer_to_server(api, s))

    async def serving() -> bool:
        # The overall ("") status always exists, so Check never needs a call context.
        response = await server.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    http = TrackingEdge(
        settings.http_host,
        settings.http_port,
        settings.tracking_secret.get_secret_value(),
        channels_grpc.ChannelsServiceStub(channels[scopes.CHANNELS_SERVICE]),
        tracer,
        serving,
        settings.tracking_record_timeout_seconds,
        extra_routes=[
            ProviderWebhooks(
                channels_grpc.ChannelsServiceStub(channels[scopes.CHANNELS_SERVICE]),
                campaigns=campaigns_grpc.CampaignsServiceStub(channels[scopes.CAMPAIGNS_SERVICE]),
                whatsapp_app_secret=settings.whatsapp_app_secret.get_secret_value(),
                whatsapp_verify_token=settings.whatsapp_verify_token.get_secret_value(),
                sms_callback_token=settings.sms_callback_token.get_secret_value(),
                timeout_seconds=settings.downstream_timeout_seconds,
                sms_callback_secret=settings.sms_callback_secret.get_secret_value(),
                max_age_seconds=settings.webhook_max_age_seconds,
                public_base_url=settings.webhook_public_base_url,
                tracer=tracer,
            ).add_routes,
            SendGridEvents(
                channels_grpc.ChannelsServiceStub(channels[scopes.CHANNELS_SERVICE]),
                verification_key=settings.sendgrid_verification_key,
                tracer=tracer,
                message_id_domain=settings.message_id_domain,
                timeout_seconds=settings.downstream_timeout_seconds,
                max_age_seconds=settings.webhook_max_age_seconds,
            ).add_routes,
            SesEvents(
                channels_grpc.ChannelsServiceStub(channels[scopes.CHANNELS_SERVICE]),
                topic_arns=settings.ses_topic_arns,
                cert_url_pattern=settings.sns_cert_url_pattern,
                pinned_certificates=settings.sns_signing_certificates,
                tracer=tracer,
                message_id_domain=settings.message_id_domain,
                timeout_seconds=settings.downstream_timeout_seconds,
                max_age_seconds=settings.webhook_max_age_seconds,
            ).add_routes,
            Dashboard(
                authenticator,
                attribution_grpc.AttributionServiceStub(channels[scopes.ATTRIBUTION_SERVICE]),
                tracer,
                settings.downstream_timeout_seconds,
            ).add_routes,
        ],
    )

    async def close_channels() -> None:
        for channel in channels.values():
            await channel.close()

    tasks = [BackgroundTask("http-edge", http.run, http.stop)]
    mailbox = None
    if settings.bounce_mailbox_port is not None:
        mailbox = BounceMailbox(
            settings.bounce_mailbox_host,
            settings.bounce_mailbox_port,
            channels_grpc.ChannelsServiceStub(channels[scopes.CHANNELS_SERVICE]),
            message_id_domain=settings.message_id_domain,
            timeout_seconds=settings.downstream_timeout_seconds,
            envelope_secret=settings.tracking_secret.get_secret_value(),
            tracer=tracer,
        )
        tasks.append(BackgroundTask("bounce-mailbox", mailbox.run, mailbox.stop))
    return GatewayProcess(
        "gateway",
        server,
        tasks=tasks,
        closers=[db.dispose, close_channels],
        http=http,
        mailbox=mailbox,
    )


def _generic(handler: grpc.GenericRpcHandler):  # type: ignore[no-untyped-def]
    return lambda s: s.add_generic_rpc_handlers((handler,))
