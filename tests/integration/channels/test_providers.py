"""Each HTTP adapter against its local provider server, which checks the real request shape and answers like it."""

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devstack.nats_server import free_port
from devstack.provider_sinks import Fault, ProviderSink, ProviderSinks
from devstack.samples import SMS_TEMPLATE
from services.channels.delivery import (
    Accepted,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderThrottled,
    ProviderUnavailable,
)
from services.channels.outgoing import OutgoingPush, OutgoingSms, OutgoingWebhook, OutgoingWhatsApp
from services.channels.providers.base import HttpAdapter
from services.channels.providers.http import HttpTransport
from services.channels.providers.push import FcmPush
from services.channels.providers.sms import ExotelSms
from services.channels.providers.webhook import SignedWebhook
from services.channels.providers.whatsapp import WhatsAppCloud

CAMPAIGN_ID = "CSELL-NOV-T06-0884"


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    http = HttpTransport(timeout_seconds=5.0, connect_timeout_seconds=2.0)
    yield http
    await http.close()


def sms_adapter(sinks: ProviderSinks, **overrides: Any) -> ExotelSms:
    c = sinks.credentials
    adapter = ExotelSms(sinks.sms.base_url, c.sms_account_sid, c.sms_api_key, c.sms_api_token, "1101000000000000001")
    return dataclasses.replace(adapter, **overrides)


def whatsapp_adapter(sinks: ProviderSinks, **overrides: Any) -> WhatsAppCloud:
    c = sinks.credentials
    adapter = WhatsAppCloud(
        sinks.whatsapp.base_url, c.whatsapp_api_version, c.whatsapp_phone_number_id, c.whatsapp_access_token
    )
    return dataclasses.replace(adapter, **overrides)


def push_adapter(sinks: ProviderSinks, **overrides: Any) -> FcmPush:
    c = sinks.credentials
    return dataclasses.replace(FcmPush(sinks.push.base_url, c.fcm_project_id, c.fcm_access_token), **overrides)


def webhook_adapter(sinks: ProviderSinks, **overrides: Any) -> SignedWebhook:
    return dataclasses.replace(SignedWebhook(sinks.credentials.webhook_secret), **overrides)


SMS = OutgoingSms("+919876543210", "ACMEBK", SMS_TEMPLATE, "Dear customer, your loan of Rs 5,00,000 is pre-approved.")
WHATSAPP = OutgoingWhatsApp("+919876543210", "preapproved_loan_offer", "en", ("Priya", "5,00,000"))
PUSH = OutgoingPush("fcm-token-abc123", "Pre-approved", "Your loan is ready", "acmebank://offers/T06")


def webhook_message(sinks: ProviderSinks) -> OutgoingWebhook:
    return OutgoingWebhook(sinks.webhook_url(), {"task": "call", "product": "personal_loan"})


async def send(transport: HttpTransport, adapter: HttpAdapter[Any], message: Any) -> Accepted:
    return adapter.accepted(await transport.send(adapter.request(CAMPAIGN_ID, "prof_1", message)))


async def test_sms_goes_to_exotel_in_its_format_with_the_dlt_fields(
    provider_sinks: ProviderSinks, transport: HttpTransport
) -> None:
    accepted = await send(transport, sms_adapter(provider_sinks), SMS)

    assert accepted.provider_message_id.endswith("sms")
    [received] = provider_sinks.sms.for_campaign(CAMPAIGN_ID)
    assert received.body == {
        "From": "ACMEBK",
        "To": "+919876543210",
        "Body": SMS.body,
        "DltEntityId": "1101000000000000001",
        "DltTemplateId": SMS_TEMPLATE,
        "SmsType": "promotional",
        "CustomField": CAMPAIGN_ID,
    }
    assert received.path == f"/v1/Accounts/{provider_sinks.credentials.sms_account_sid}/Sms/send.json"


async def test_whatsapp_sends_an_approved_template_with_its_body_parameters(
    provider_sinks: ProviderSinks, transport: HttpTransport
) -> None:
    accepted = await send(transport, whatsapp_adapter(provider_sinks), WHATSAPP)

    assert accepted.provider_message_id.startswith("wamid.")
    [received] = provider_sinks.whatsapp.for_campaign(CAMPAIGN_ID)
    assert received.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "919876543210",
        "type": "template",
        "template": {
            "name": "preapproved_loan_offer",
            "language": {"code": "en"},
            "components": [
                {
                    "type": "body",
                    "parameters": [{"type": "text", "text": "Priya"}, {"type": "text", "text": "5,00,000"}],
                }
            ],
        },
        "biz_opaque_callback_data": CAMPAIGN_ID,
    }


async def test_push_goes_to_fcm_v1_with_the_campaign_id_as_collapse_key_and_data(
    provider_sinks: ProviderSinks, transport: HttpTransport
) -> None:
    accepted = await send(transport, push_adapter(provider_sinks), PUSH)

    assert accepted.provider_message_id.startswith(f"projects/{provider_sinks.credentials.fcm_project_id}/messages/")
    [received] = provider_sinks.push.for_campaign(CAMPAIGN_ID)
    message = received.body["message"]
    assert message["token"] == "fcm-token-abc123"
    assert message["notification"] == {"title": "Pre-approved", "body": "Your loan is ready"}
    assert message["data"] == {"campaign_id": CAMPAIGN_ID, "deep_link": "acmebank://offers/T06"}
    assert message["android"] == {"collapse_key": CAMPAIGN_ID, "notification": {"tag": CAMPAIGN_ID}}
    assert message["apns"] == {"headers": {"apns-collapse-id": CAMPAIGN_ID}}


async def test_webhook_is_signed_and_a_repeated_idempotency_key_is_dropped_by_the_receiver(
    provider_sinks: ProviderSinks, transport: HttpTransport
) -> None:
    adapter = webhook_adapter(provider_sinks)
    first = await send(transport, adapter, webhook_message(provider_sinks))
    again = await send(transport, adapter, webhook_message(provider_sinks))

    assert first.provider_message_id == again.provider_message_id != ""
    [received] = provider_sinks.webhook.for_campaign(CAMPAIGN_ID)
    assert received.body == {
        "campaign_id": CAMPAIGN_ID,
        "profile_id": "prof_1",
        "payload": {"task": "call", "product": "personal_loan"},
    }
    assert received.headers["Idempotency-Key"] == CAMPAIGN_ID
    assert provider_sinks.webhook.duplicates == 1


async def test_the_servers_refuse_requests_in_the_wrong_shape(
    provider_sinks: ProviderSinks, transport: HttpTransport
) -> None:
    """The servers are the check of the request format: wrong credentials or shapes fail like at the provider."""
    with pytest.raises(ProviderUnavailable, match="sms HTTP 401"):
        await send(transport, sms_adapter(provider_sinks, api_token="wrong"), SMS)
    with pytest.raises(ProviderRejected, match="sms HTTP 400: 400 Missing parameter DltEntityId"):
        await send(transport, sms_adapter(provider_sinks, dlt_entity_id=""), SMS)
    with pytest.raises(ProviderRejected, match="whatsapp HTTP 400: error 100"):
        await send(transport, whatsapp_adapter(provider_sinks, api_version="v1.0"), WHATSAPP)
    with pytest.raises(ProviderUnavailable, match="push HTTP 401"):
        await send(transport, push_adapter(provider_sinks, access_token="expired"), PUSH)
    with pytest.raises(ProviderUnavailable, match="webhook HTTP 401"):
        await send(
            transport, webhook_adapter(provider_sinks, secret="not-the-shared-one"), webhook_message(provider_sinks)
        )
    stale = webhook_adapter(provider_sinks, clock=lambda: time.time() - 3600)
    with pytest.raises(ProviderUnavailable, match="webhook HTTP 401"):
        await send(transport, stale, webhook_message(provider_sinks))
    assert all(not sink.received for sink in provider_sinks.all)


@pytest.mark.parametrize(
    ("sink_name", "message", "says"),
    [
        ("sms", dataclasses.replace(SMS, to_number="+915876543210"), "Invalid Recipient"),
        ("sms", dataclasses.replace(SMS, dlt_template_id="1107000000000000000"), "not an approved template"),
        ("whatsapp", dataclasses.replace(WHATSAPP, template_name="unapproved_offer"), "error 132001"),
        ("whatsapp", dataclasses.replace(WHATSAPP, parameters=("Priya",)), "error 132000"),
        ("whatsapp", dataclasses.replace(WHATSAPP, to_number="+915876543210"), "error 131026"),
        ("push", dataclasses.replace(PUSH, device_token="unregistered-device"), "UNREGISTERED"),
    ],
)
async def test_what_the_provider_refuses_for_good_is_a_permanent_rejection_without_the_number(
    provider_sinks: ProviderSinks, transport: HttpTransport, sink_name: str, message: Any, says: str
) -> None:
    adapter = {"sms": sms_adapter, "whatsapp": whatsapp_adapter, "push": push_adapter}[sink_name](provider_sinks)
    with pytest.raises(ProviderRejected) as raised:
        await send(transport, adapter, message)
    assert says in raised.value.reason
    assert "5876543210" not in raised.value.reason
    assert not getattr(provider_sinks, sink_name).received
    # Only what says something about the person's address is a bounce: a push token FCM no longer knows (segments
    # suppresses the token until the app registers anew), a number not on WhatsApp (suppressed there for a while), a
    # number Exotel says cannot take an SMS (suppressed on SMS until the phone changes); not a template refused.
    bounces = {
        "UNREGISTERED": "UNREGISTERED permanent",
        "error 131026": "UNREACHABLE whatsapp 131026",
        "Invalid Recipient": "INVALID_NUMBER exotel 400 Invalid Recipient",
    }
    assert raised.value.bounce == bounces.get(says, "")


def _adapter_and_message(sinks: ProviderSinks, name: str) -> tuple[ProviderSink, HttpAdapter[Any], Any]:
    return {
        "sms": (sinks.sms, sms_adapter(sinks), SMS),
        "whatsapp": (sinks.whatsapp, whatsapp_adapter(sinks), WHATSAPP),
        "push": (sinks.push, push_adapter(sinks), PUSH),
        "webhook": (sinks.webhook, webhook_adapter(sinks), webhook_message(sinks)),
    }[name]


@pytest.mark.parametrize("name", ["sms", "whatsapp", "push", "webhook"])
async def test_throttling_and_outages_are_transient_and_say_when_to_come_back(
    provider_sinks: ProviderSinks, transport: HttpTransport, name: str
) -> None:
    sink, adapter, message = _adapter_and_message(provider_sinks, name)
    sink.fail_next(Fault.THROTTLE, Fault.UNAVAILABLE)

    with pytest.raises(ProviderThrottled) as throttled:
        await send(transport, adapter, message)
    # WhatsApp reports throughput limits as an error code with no Retry-After; the others send one.
    assert throttled.value.retry_after == (None if name == "whatsapp" else 1.0)
    with pytest.raises(ProviderUnavailable) as unavailable:
        await send(transport, adapter, message)
    assert not isinstance(unavailable.value, ProviderThrottled)
    assert sink.received == []

    await send(transport, adapter, message)
    assert len(sink.for_campaign(CAMPAIGN_ID)) == 1


@pytest.mark.parametrize("name", ["sms", "whatsapp", "push", "webhook"])
async def test_a_connection_lost_after_the_provider_took_the_message_is_an_unknown_outcome(
    provider_sinks: ProviderSinks, transport: HttpTransport, name: str
) -> None:
    sink, adapter, message = _adapter_and_message(provider_sinks, name)
    sink.fail_next(Fault.ACCEPT_THEN_DROP)

    with pytest.raises(ProviderOutcomeUnknown):
        await send(transport, adapter, message)
    assert len(sink.for_campaign(CAMPAIGN_ID)) == 1


async def test_a_provider_that_is_not_listening_certainly_has_nothing(
    provider_sinks: ProviderSinks, transport: HttpTransport
) -> None:
    adapter = sms_adapter(provider_sinks, base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ProviderUnavailable) as raised:
        await send(transport, adapter, SMS)
    assert not isinstance(raised.value, ProviderOutcomeUnknown)
    assert "connection to 127.0.0.1" in raised.value.reason
