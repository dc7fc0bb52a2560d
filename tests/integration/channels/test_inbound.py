"""Inbound messages that quote none of ours (an SMS "STOP", a WhatsApp "YES" typed fresh) answer the last message sent
to their sender's number, found by a keyed hash of it; a STOP by SMS becomes a suppression in segments that stops
the next send."""

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import select, update

from devstack.nats_server import free_port
from devstack.provider_sinks import ProviderSinks
from gateway.app import build as build_gateway
from gateway.settings import GatewaySettings
from gateway.webhooks import EXOTEL_ZONE
from plumbing.bus import Bus
from plumbing.ids import new_id
from plumbing.outbox import utcnow
from services import streams
from services.channels import store
from tests.integration.channels.conftest import Channels, Listener, SmtpRelay, StartChannels
from tests.integration.channels.support import dispatch_on, new_campaign_id, publish, published_state
from tests.integration.segments.server import serving
from tests.waiting import eventually
from xsell.channels.v1 import events_pb2, resources_pb2, service_pb2
from xsell.segments.v1 import resources_pb2 as segments_resources
from xsell.segments.v1 import service_pb2 as segments_service
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub
from xsell.type.v1 import channel_pb2

NUMBER = "+919876543210"  # devstack.samples' number for SMS and WhatsApp
SENT = resources_pb2.DELIVERY_STATE_SENT
UNSUBSCRIBED = resources_pb2.ENGAGEMENT_KIND_UNSUBSCRIBED


async def _sent(listener: Listener, bus: Bus, channel: str, profile_id: str = "prof_1") -> str:
    campaign_id = new_campaign_id()
    await publish(bus, dispatch_on(channel, campaign_id, profile_id=profile_id))
    await published_state(listener, campaign_id, SENT)
    return campaign_id


def _inbound(inbound_from: str, channel: int, kind: int = UNSUBSCRIBED) -> service_pb2.RecordEngagementRequest:
    return service_pb2.RecordEngagementRequest(
        request_id=new_id("in_"), kind=kind, reply_text="STOP", inbound_from=inbound_from, inbound_channel=channel
    )  # type: ignore[arg-type]


async def test_an_inbound_message_answers_the_last_message_to_that_number_on_its_channel(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    first_sms = await _sent(listener, nats_bus, "sms")
    last_sms = await _sent(listener, nats_bus, "sms")
    whatsapp = await _sent(listener, nats_bus, "whatsapp")

    # Exotel writes the sender with the trunk 0; the message was sent to the international form.
    stop = _inbound("09876543210", channel_pb2.CHANNEL_SMS)
    answer = await channels.stub.RecordEngagement(stop)
    assert answer.message.campaign_id == last_sms
    assert await channels.stub.RecordEngagement(stop) == answer  # a retry is recorded once
    # The idempotency record's fingerprint is not the hash of the request with the number in it.
    unkeyed = service_pb2.RecordEngagementRequest()
    unkeyed.CopyFrom(stop)
    unkeyed.ClearField("request_id")
    async with channels.db.snapshot() as session:
        fingerprints = set((await session.execute(select(store.idempotency.c.request_hash))).scalars())
    assert (
        fingerprints and hashlib.sha256(unkeyed.SerializeToString(deterministic=True)).hexdigest() not in fingerprints
    )
    assert answer.message.timeline[-1].engagement_kind == UNSUBSCRIBED
    replied = await channels.stub.RecordEngagement(
        _inbound("919876543210", channel_pb2.CHANNEL_WHATSAPP, resources_pb2.ENGAGEMENT_KIND_REPLIED)
    )
    assert replied.message.campaign_id == whatsapp

    async def heard() -> list[events_pb2.EngagementRecorded]:
        return [
            events_pb2.EngagementRecorded.FromString(h.data) for h in listener.on(streams.ENGAGEMENT_RECORDED, last_sms)
        ]

    (event,) = await eventually(heard)
    assert (event.kind, event.profile_id, event.channel) == (UNSUBSCRIBED, "prof_1", channel_pb2.CHANNEL_SMS)
    # The number is kept only as its keyed hash.
    async with channels.db.snapshot() as session:
        keys = {row.recipient_key for row in (await session.execute(store.messages.select())).all()}
    assert len(keys) == 1 and "9876543210" not in str(keys)

    # Older than 30 days: a reply answers nothing any more ...
    async with channels.db.transaction() as session:
        old = utcnow() - timedelta(days=31)
        await session.execute(update(store.messages).values(created_at=old))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await channels.stub.RecordEngagement(
            _inbound(NUMBER, channel_pb2.CHANNEL_SMS, resources_pb2.ENGAGEMENT_KIND_REPLIED)
        )
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    assert "inbound_from" in (missing.value.details() or "") and "9876543210" not in (missing.value.details() or "")
    # ... but a STOP, or WhatsApp's resume, is about the person: it still finds them by their last message, since
    # someone who stopped gets no newer one.
    late_stop = await channels.stub.RecordEngagement(_inbound(NUMBER, channel_pb2.CHANNEL_SMS))
    assert late_stop.message.campaign_id == last_sms
    resumed = await channels.stub.RecordEngagement(
        _inbound(NUMBER, channel_pb2.CHANNEL_WHATSAPP, resources_pb2.ENGAGEMENT_KIND_RESUBSCRIBED)
    )
    assert resumed.message.campaign_id == whatsapp
    assert first_sms != last_sms


@pytest.mark.parametrize(
    ("inbound_from", "channel", "field"),
    [
        (NUMBER, channel_pb2.CHANNEL_EMAIL, "inbound_channel"),
        (NUMBER, channel_pb2.CHANNEL_UNSPECIFIED, "inbound_channel"),
        ("not a number", channel_pb2.CHANNEL_SMS, "inbound_from"),
    ],
)
async def test_an_inbound_sender_needs_a_number_and_an_sms_or_whatsapp_channel(
    start_channels: StartChannels, smtp_relay: SmtpRelay, inbound_from: str, channel: int, field: str
) -> None:
    channels = await start_channels(smtp_relay.port)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await channels.stub.RecordEngagement(_inbound(inbound_from, channel))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")


@dataclass
class Edge:
    channels: Channels
    segments: SegmentsServiceStub
    gateway_http: str


@pytest.fixture
async def edge(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_url: str,
    tmp_path: Path,
) -> AsyncIterator[Edge]:
    """Real segments (suppressions at send time), channels and the gateway's SMS webhooks."""
    segments_db = f"sqlite+aiosqlite:///{tmp_path / 'segments.db'}"
    async with serving(segments_db, nats_url, tmp_path / "segments") as (segments, process):
        channels = await start_channels(
            smtp_relay.port,
            segments_target=f"127.0.0.1:{process.server.port}",
            **provider_sinks.channels_settings(),
        )
        port = free_port()
        gateway = await build_gateway(
            GatewaySettings(
                grpc_port=0,
                http_port=port,
                var_dir=tmp_path / "gateway",
                database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
                channels_target=f"127.0.0.1:{channels.process.server.port}",
                sms_callback_token="inbound-token",  # type: ignore[arg-type]
            ),
            TracerProvider(),
        )
        await gateway.start()
        try:
            yield Edge(channels, segments, f"http://127.0.0.1:{port}")
        finally:
            await gateway.stop(0)


async def test_an_sms_stop_without_a_quote_suppresses_the_person_and_the_next_sms_is_not_sent(
    edge: Edge, provider_sinks: ProviderSinks, nats_bus: Bus, listener: Listener
) -> None:
    profile_id = f"prof_{new_id()}"
    await _sent(listener, nats_bus, "sms", profile_id)
    at = utcnow().astimezone(EXOTEL_ZONE)
    form = {"SmsSid": new_id("in"), "From": "09876543210", "To": "08047112345", "Date": f"{at:%Y-%m-%d %H:%M:%S}"}
    async with aiohttp.ClientSession() as http:
        url = f"{edge.gateway_http}/webhooks/sms/exotel/inbound-token/inbound"
        async with http.post(url, data={**form, "Body": "Stop"}) as response:
            assert response.status == 200

    async def suppressed() -> bool:
        answer = await edge.segments.CheckSuppression(
            segments_service.CheckSuppressionRequest(profile_id=profile_id, channel=channel_pb2.CHANNEL_SMS)
        )
        return bool(answer.suppressed)

    await eventually(suppressed)
    after = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", after, profile_id=profile_id))
    failed = await published_state(listener, after, resources_pb2.DELIVERY_STATE_FAILED)
    assert "suppressed" in failed.reason
    assert provider_sinks.sms.for_campaign(after) == []


async def test_a_message_made_for_a_number_the_person_has_since_replaced_is_not_sent_to_it(
    edge: Edge, provider_sinks: ProviderSinks, nats_bus: Bus, listener: Listener
) -> None:
    """Channels asks real segments about the number each message was made for, at the moment of sending."""
    profile_id = f"prof_{new_id()}"

    async def phone(number: str) -> None:
        person = segments_resources.Profile(profile_id=profile_id)
        person.attributes["phone"].string_value = number
        upserted = await edge.segments.UpsertProfiles(
            segments_service.UpsertProfilesRequest(request_id=new_id("req_"), profiles=[person])
        )
        assert not upserted.errors

    await phone(NUMBER)
    before = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", before, profile_id=profile_id, to_number=NUMBER))
    await published_state(listener, before, SENT)
    await phone("+919812345678")  # the CRM gives the person a new number
    stale, current = new_campaign_id(), new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", stale, profile_id=profile_id, to_number=NUMBER))
    await publish(nats_bus, dispatch_on("sms", current, profile_id=profile_id, to_number="+919812345678"))

    failed = await published_state(listener, stale, resources_pb2.DELIVERY_STATE_FAILED)
    assert failed.reason.startswith("address replaced at send time: the person's phone has been replaced")
    await published_state(listener, current, SENT)
    assert provider_sinks.sms.for_campaign(stale) == []
    assert [r.body["To"] for r in provider_sinks.sms.for_campaign(current)] == ["+919812345678"]
