"""Push reports back through the institution's app backend: FCM tells the sender nothing, so the app reports a push
received (a receipt) and opened (an engagement) with the campaign ID from the push's data, through the gateway with an
`app.events` key, into the real channels service; that key records nothing else (no other kind, state or channel)."""

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from devstack.provider_sinks import ProviderSinks
from gateway import scopes
from gateway.app import build as build_gateway
from gateway.keys import ApiKey, format_key, generate_key, hash_secret
from gateway.settings import GatewaySettings
from gateway.store import KeyStore
from plumbing.bus import Bus
from plumbing.db import Database
from plumbing.ids import new_id
from services import streams
from tests.integration.channels.conftest import Listener, SmtpRelay, StartChannels
from tests.integration.channels.support import dispatch_on, new_campaign_id, publish, published_state
from tests.waiting import eventually
from xsell.channels.v1 import resources_pb2, service_pb2, service_pb2_grpc
from xsell.type.v1 import channel_pb2


async def _key(store: KeyStore, *granted: str) -> list[tuple[str, str]]:
    presented = generate_key()
    await store.add(
        ApiKey(presented.key_id, "app-backend", hash_secret(presented.secret), frozenset(granted), datetime.now(UTC))
    )
    return [("x-api-key", format_key(presented.key_id, presented.secret))]


async def test_the_app_backend_reports_a_push_received_and_opened_through_the_gateway(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    tmp_path: Path,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id, sms_id = new_campaign_id(), new_campaign_id()
    await publish(nats_bus, dispatch_on("push", campaign_id))
    await publish(nats_bus, dispatch_on("sms", sms_id))
    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)
    await published_state(listener, sms_id, resources_pb2.DELIVERY_STATE_SENT)
    [push] = provider_sinks.push.for_campaign(campaign_id)

    settings = GatewaySettings(
        grpc_port=0,
        http_port=0,
        var_dir=tmp_path / "gateway",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        channels_target=f"127.0.0.1:{channels.process.server.port}",
        log_level="warning",
    )
    gateway = await build_gateway(settings, TracerProvider())
    await gateway.start()
    db = Database(settings.database_url)
    try:
        store = KeyStore(db)
        app_backend = await _key(store, scopes.APP_EVENTS)
        analyst = await _key(store, scopes.REPORTS_READ)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.server.port}") as channel:
            stub = service_pb2_grpc.ChannelsServiceStub(channel)
            # The campaign ID as the app read it from the push's data.
            assert push.body["message"]["data"]["campaign_id"] == campaign_id
            received = service_pb2.RecordDeliveryReceiptRequest(
                request_id="app:r1", campaign_id=campaign_id, state=resources_pb2.DELIVERY_STATE_DELIVERED
            )
            answer = await stub.RecordDeliveryReceipt(received, metadata=app_backend)
            assert answer.message.state == resources_pb2.DELIVERY_STATE_DELIVERED
            opened = service_pb2.RecordEngagementRequest(
                request_id="app:o1", campaign_id=campaign_id, kind=resources_pb2.ENGAGEMENT_KIND_OPENED
            )
            answer = await stub.RecordEngagement(opened, metadata=app_backend)
            assert [
                e.engagement_kind for e in answer.message.timeline if e.WhichOneof("step") == "engagement_kind"
            ] == [resources_pb2.ENGAGEMENT_KIND_OPENED]
            # An app backend reports what people do with a push, and nothing that settles or suppresses more.
            for narrower in (
                service_pb2.RecordEngagementRequest(
                    request_id="app:u1", campaign_id=campaign_id, kind=resources_pb2.ENGAGEMENT_KIND_UNSUBSCRIBED
                ),
                service_pb2.RecordDeliveryReceiptRequest(
                    request_id="app:f1", campaign_id=campaign_id, state=resources_pb2.DELIVERY_STATE_FAILED
                ),
            ):
                method = getattr(stub, type(narrower).__name__.removesuffix("Request"))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await method(narrower, metadata=app_backend)
                assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
                assert "app.events key may record only" in (refused.value.details() or "")
            on_sms = service_pb2.RecordEngagementRequest(
                request_id="app:s1", campaign_id=sms_id, kind=resources_pb2.ENGAGEMENT_KIND_OPENED
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RecordEngagement(on_sms, metadata=app_backend)
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "CHANNEL_PUSH messages only" in (refused.value.details() or "")
            assert "CHANNEL_SMS" not in (refused.value.details() or "")  # nothing said of the other message
            # Nor can it look a message up by a number or a provider's id, which would tell it who got what and the
            # campaign ID: refused before any look-up, whether or not a message matches.
            [sms] = provider_sinks.sms.for_campaign(sms_id)
            for lookup in (
                {"inbound_from": sms.body["To"], "inbound_channel": channel_pb2.CHANNEL_SMS},
                {"inbound_from": "+919800000001", "inbound_channel": channel_pb2.CHANNEL_SMS},
                {"provider_message_id": "wamid.anything"},
            ):
                by_lookup = service_pb2.RecordEngagementRequest(
                    request_id=new_id("app:"), kind=resources_pb2.ENGAGEMENT_KIND_OPENED, **lookup
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.RecordEngagement(by_lookup, metadata=app_backend)
                assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
                assert "by campaign_id only" in (refused.value.details() or "")
                assert sms_id not in (refused.value.details() or "")
            receipt_on_sms = service_pb2.RecordDeliveryReceiptRequest(
                request_id="app:s2", campaign_id=sms_id, state=resources_pb2.DELIVERY_STATE_DELIVERED
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RecordDeliveryReceipt(receipt_on_sms, metadata=app_backend)
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            # A key without the scope reaches nothing.
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.RecordEngagement(opened, metadata=analyst)
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "app.events" in (denied.value.details() or "")
        await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_DELIVERED)

        async def engaged() -> bool:
            return len(listener.on(streams.ENGAGEMENT_RECORDED, campaign_id)) == 1

        assert await eventually(engaged)  # the OPENED, once: the refused requests recorded nothing
    finally:
        await gateway.stop(0)
        await db.dispose()
