"""Helpers of the channels integration tests: DispatchRequested events, publishing, waiting on outcomes."""

from datetime import UTC, datetime

import grpc
from sqlalchemy import insert

from devstack.samples import fill_http_message
from plumbing.bus import Bus
from plumbing.ids import new_id
from services import streams
from services.channels import store
from services.channels.delivery import DeliveryState
from tests.integration.channels.conftest import Channels, Listener
from tests.waiting import eventually
from xsell.campaigns.v1.events_pb2 import (
    DispatchRequested,
    EmailMessage,
)
from xsell.channels.v1 import events_pb2, resources_pb2, service_pb2
from xsell.type.v1 import channel_pb2

HTML = (
    '<html><body><p>Hi, your loan is pre-approved. <a href="https://bank.example.in/apply?o=T06">Apply</a></p>'
    '<p><a href="https://bank.example.in/rates">Rates</a> | <a href="xsell:unsubscribe">Unsubscribe</a></p>'
    "</body></html>"
)
TEXT = "Apply: https://bank.example.in/apply?o=T06\nUnsubscribe: xsell:unsubscribe\n"


def new_campaign_id() -> str:
    return f"CSELL-IT-{new_id()}"


def dispatch(campaign_id: str, to_address: str = "priya@example.in", **overrides: object) -> DispatchRequested:
    event = DispatchRequested(
        event_id=new_id("evt_"),
        campaign_id=campaign_id,
        profile_id="prof_1",
        channel=channel_pb2.CHANNEL_EMAIL,
        email=EmailMessage(
            to_address=to_address, from_name="Acme Bank", subject="Pre-approved", html_body=HTML, text_body=TEXT
        ),
    )
    for name, value in overrides.items():
        if value is None:
            event.ClearField(name)  # type: ignore[arg-type]
        else:
            setattr(event, name, value)
    return event


async def publish(bus: Bus, event: DispatchRequested) -> int:
    """Publishes under a fresh Nats-Msg-Id, as a campaigns relay retry outside the duplicate window would."""
    ack = await bus.js.publish(
        streams.DISPATCH_REQUESTED,
        event.SerializeToString(),
        headers={"Nats-Msg-Id": new_id("msg_"), "Xsell-Campaign-Id": event.campaign_id},
    )
    return int(ack.seq)


async def handled(bus: Bus, seq: int) -> None:
    """Waits until the channels durable has finished with stream sequence `seq` (acked or terminated)."""

    async def done() -> bool:
        info = await bus.js.consumer_info(streams.CAMPAIGNS_STREAM.name, streams.CHANNELS_DISPATCH.durable)
        return int(info.ack_floor.stream_seq) >= seq

    await eventually(done)


async def get_message(channels: Channels, campaign_id: str) -> resources_pb2.Message:
    response = await channels.stub.GetMessage(service_pb2.GetMessageRequest(campaign_id=campaign_id))
    return response.message


async def message_if_any(channels: Channels, campaign_id: str) -> resources_pb2.Message | None:
    """The message, or None while channels has not consumed its request yet."""
    try:
        return await get_message(channels, campaign_id)
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:
            return None
        raise


def states(record: resources_pb2.Message) -> list[str]:
    return [
        resources_pb2.DeliveryState.Name(entry.delivery_state)
        for entry in record.timeline
        if entry.WhichOneof("step") == "delivery_state"
    ]


def updates(listener: Listener, campaign_id: str) -> list[events_pb2.DeliveryUpdated]:
    return [events_pb2.DeliveryUpdated.FromString(h.data) for h in listener.on(streams.DELIVERY_UPDATED, campaign_id)]


async def published_state(listener: Listener, campaign_id: str, state: int) -> events_pb2.DeliveryUpdated:
    async def heard() -> events_pb2.DeliveryUpdated | None:
        return next((u for u in updates(listener, campaign_id) if u.state == state), None)

    return await eventually(heard)


def dispatch_on(channel: str, campaign_id: str, *, webhook_url: str = "", **fields: object) -> DispatchRequested:
    """A DispatchRequested on an HTTP channel, with a valid message unless `fields` change it."""
    event = DispatchRequested(event_id=new_id("evt_"), campaign_id=campaign_id, profile_id="prof_1")
    fill_http_message(event, channel, webhook_url=webhook_url, device_token="fcm-token-abc123")
    message = getattr(event, channel)
    for name, value in fields.items():
        if name == "profile_id":
            event.profile_id = str(value)
        elif isinstance(value, list):
            del getattr(message, name)[:]
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return event


async def left_sending(channels: Channels, campaign_id: str, channel: str = "CHANNEL_EMAIL") -> None:
    """A message whose process wrote its intent, handed it over (or not) and died before recording the outcome: SENDING,
    no attempt counted."""
    now = datetime.now(UTC)
    async with channels.db.transaction() as session:
        await session.execute(
            insert(store.messages).values(
                campaign_id=campaign_id,
                channel=channel,
                profile_id="prof_1",
                state=DeliveryState.SENDING.value,
                attempts=0,
                reason="",
                created_at=now,
                updated_at=now,
            )
        )
