"""Provider webhooks on the gateway's HTTP edge: signatures checked, callbacks turned into channels calls."""

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import grpc
import pytest
from yarl import URL

from gateway.webhooks import EXOTEL_ZONE, twilio_signature
from plumbing.bounces import WHATSAPP_MARKETING_SETTING
from plumbing.errors import Aborted
from plumbing.idempotency import Idempotency, request_fingerprint
from plumbing.telemetry import CAMPAIGN_ID, outreach_trace_id
from tests.integration.gateway.conftest import (
    ENGAGEMENT,
    RECEIPT,
    Downstream,
    GatewayFactory,
    RunningGateway,
    engagements,
    receipts,
    unused_target,
)
from xsell.channels.v1 import resources_pb2 as channels_resources
from xsell.channels.v1 import service_pb2 as channels_pb2
from xsell.type.v1 import channel_pb2

APP_SECRET = "test-app-secret"
SMS_TOKEN = "test-sms-callback-token"
SMS_SECRET = "test-sms-signing-secret"
OUTREACH = "CSELL-NOV-T06-0884"
WAMID = "wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSQUJDREVGMDEyMzQ1Njc4OQA="
BOUNCED = channels_resources.ENGAGEMENT_KIND_BOUNCED


async def _gateway(start_gateway: GatewayFactory, **overrides: Any) -> RunningGateway:
    return await start_gateway(whatsapp_app_secret=APP_SECRET, sms_callback_token=SMS_TOKEN, **overrides)


def _whatsapp(value: dict[str, Any], field: str = "messages") -> bytes:
    document = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": field, "value": value}]}],
    }
    return json.dumps(document).encode()


def _status(status: str, *, age: timedelta = timedelta(0), **extra: Any) -> bytes:
    stamp = str(int(time.time() - age.total_seconds()))
    entry = {"id": WAMID, "status": status, "timestamp": stamp, "recipient_id": "919876543210"}
    return _whatsapp(
        {"messaging_product": "whatsapp", "statuses": [{**entry, "biz_opaque_callback_data": OUTREACH, **extra}]}
    )


def _signed(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


async def test_a_signed_delivered_status_becomes_a_receipt_and_its_replay_is_refused(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway)
    body = _status("delivered")
    answers = []
    for _ in range(2):
        async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
            answers.append((response.status, await response.text()))
    # The replay is acknowledged (a provider must not retry it) and not passed on.
    assert answers == [(200, "ok\n"), (200, "already accepted; not recorded again\n")]
    (first,) = receipts(downstream)
    assert (first.campaign_id, first.state, first.provider_message_id) == (
        OUTREACH,
        channels_resources.DELIVERY_STATE_DELIVERED,
        WAMID,
    )
    # Behind the gateway's memory, channels records a request_id once (a replay at another replica).
    assert first.request_id == f"wa:{WAMID}:delivered"


async def test_a_status_that_names_its_campaign_id_is_recorded_in_the_outreachs_trace(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    """A click joined the outreach's trace; a provider's report did not: the failed WhatsApp message's receipt, and
    channels' span of it, were a trace of their own, which `make trace` of the campaign ID never showed."""
    gateway = await _gateway(start_gateway)
    body = _status("failed", errors=[{"code": 131026, "title": "Message undeliverable"}])
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
        assert response.status == 200
    (received,) = downstream.services.to(RECEIPT)
    assert received.metadata["traceparent"].split("-")[1] == outreach_trace_id(OUTREACH)
    (span,) = [span for span in gateway.spans.get_finished_spans() if span.name == "gateway webhook receipt"]
    assert span.attributes is not None and span.attributes[CAMPAIGN_ID] == OUTREACH
    assert format(span.context.trace_id, "032x") == outreach_trace_id(OUTREACH)


async def test_a_stale_status_is_acknowledged_and_not_recorded_beside_a_fresh_one(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, webhook_max_age_seconds=3600)
    old = json.loads(_status("delivered", age=timedelta(hours=2)))
    fresh = json.loads(_status("failed", errors=[{"code": 131026, "title": "Message undeliverable"}]))
    statuses = old["entry"][0]["changes"][0]["value"]["statuses"] + fresh["entry"][0]["changes"][0]["value"]["statuses"]
    old["entry"][0]["changes"][0]["value"]["statuses"] = statuses
    body = json.dumps(old).encode()
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
        assert response.status == 200
    (only,) = receipts(downstream)
    assert only.state == channels_resources.DELIVERY_STATE_FAILED


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda body: _signed(body, "another-secret"), id="other-secret"),
        pytest.param(lambda body: _signed(body.replace(b"delivered", b"failed")), id="tampered-body"),
        pytest.param(lambda body: {"Content-Type": "application/json"}, id="unsigned"),
    ],
)
async def test_a_callback_whose_signature_does_not_match_is_refused_and_not_recorded(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession, headers: Any
) -> None:
    gateway = await _gateway(start_gateway)
    body = _status("delivered")
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=headers(body)) as response:
        assert response.status == 401
    assert downstream.services.calls == []


async def test_failed_and_read_statuses_become_a_failure_receipt_and_an_open(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway)
    failed = _status("failed", errors=[{"code": 131000, "title": "Something went wrong"}])
    read = _status("read")
    for body in (failed, read):
        async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
            assert response.status == 200
    (receipt,) = receipts(downstream)
    assert receipt.state == channels_resources.DELIVERY_STATE_FAILED
    assert receipt.reason == "whatsapp 131000 Something went wrong"
    (opened,) = engagements(downstream)
    assert (opened.campaign_id, opened.kind) == (OUTREACH, channels_resources.ENGAGEMENT_KIND_OPENED)


async def test_an_open_channels_refuses_as_never_handed_over_is_acknowledged_not_asked_again(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    """Channels answers FAILED_PRECONDITION for engagement on a message no provider was given: no retry can change
    that, so the post is answered 200 (a 503 would have Meta post it again for days)."""

    async def refusing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "campaign ID was never handed to a provider")
        raise AssertionError  # abort raises

    downstream.services.responders[ENGAGEMENT] = refusing
    gateway = await _gateway(start_gateway)
    body = _status("read")
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
        assert (response.status, await response.text()) == (200, "ok\n")
    (opened,) = engagements(downstream)
    assert opened.kind == channels_resources.ENGAGEMENT_KIND_OPENED


@pytest.mark.parametrize(
    ("code", "title", "engagement"),
    [
        # Not on WhatsApp (or too old an app): a bounce segments suppresses WhatsApp on for a while.
        (131026, "Message undeliverable", ("unreachable", channels_resources.ENGAGEMENT_KIND_BOUNCED, "131026")),
        # In Meta's marketing experiment: no business's marketing template reaches the number.
        (
            "130472",
            "User's number is part of an experiment",
            ("unreachable", channels_resources.ENGAGEMENT_KIND_BOUNCED, "130472"),
        ),
        # They stopped marketing messages from this business: an opt-out.
        (
            131050,
            "User has stopped marketing messages",
            ("stopped", channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED, WHATSAPP_MARKETING_SETTING),
        ),
        # Meta's per-person marketing limit: this message, not the person; nothing more.
        (131049, "This message was not delivered to maintain healthy ecosystem engagement", None),
    ],
    ids=["not-on-whatsapp", "experiment", "stopped-marketing", "marketing-limit"],
)
async def test_a_failure_that_says_something_about_the_person_is_recorded_beside_the_receipt(
    start_gateway: GatewayFactory,
    downstream: Downstream,
    http: aiohttp.ClientSession,
    code: int | str,
    title: str,
    engagement: tuple[str, int, str] | None,
) -> None:
    gateway = await _gateway(start_gateway)
    body = _status("failed", errors=[{"code": code, "title": title}])
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
        assert response.status == 200
    (receipt,) = receipts(downstream)
    assert (receipt.state, receipt.reason) == (channels_resources.DELIVERY_STATE_FAILED, f"whatsapp {code} {title}")
    recorded = engagements(downstream)
    if engagement is None:
        assert recorded == []
        return
    suffix, kind, detail = engagement
    (person,) = recorded
    assert (person.request_id, person.campaign_id, person.kind) == (f"wa:{WAMID}:{suffix}", OUTREACH, kind)
    assert person.detail == (f"UNREACHABLE whatsapp {detail}" if detail.isdigit() else detail)


async def test_a_signed_body_in_another_shape_than_metas_is_acknowledged_without_a_crash(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway)
    now = str(int(time.time()))
    value = {
        "messaging_product": "whatsapp",
        "statuses": ["not an object", {"id": WAMID, "status": "failed", "timestamp": now, "errors": "not a list"}],
        "messages": [
            {"from": "919876543210", "id": "wamid.odd", "timestamp": now, "type": "text", "text": "not an object"},
            {"from": "919876543210", "id": "wamid.odd2", "timestamp": now, "type": "text", "context": ["x"]},
        ],
        "user_preferences": "not a list",
    }
    body = _whatsapp(value)
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
        assert response.status == 200
    # The status names no outreach (no biz_opaque_callback_data): ignored. The messages carry no text: replies
    # without one, on the last message to the sender.
    assert receipts(downstream) == []
    assert [(e.reply_text, e.provider_message_id) for e in engagements(downstream)] == [("", ""), ("", "")]


async def test_a_person_who_stops_marketing_messages_in_whatsapp_is_unsubscribed_and_resubscribed_on_resume(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway, replica = await _gateway(start_gateway), await _gateway(start_gateway)
    # The last is Meta retrying the first, at another replica (whose replay memory has not seen it).
    for value, edge in (("stop", gateway), ("resume", gateway), ("stop", replica)):
        preference = {
            "wa_id": "919876543210",
            "detail": "User requested to stop marketing messages",
            "category": "marketing_messages",
            "value": value,
            "timestamp": 1764400000,
        }
        body = _whatsapp(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"profile": {"name": "Priya"}, "wa_id": "919876543210"}],
                "user_preferences": ["not an object", preference],  # the stray element is skipped
            },
            field="user_preferences",
        )
        async with http.post(f"{edge.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
            assert response.status == 200
    first, resumed, retried = engagements(downstream)
    assert (first.kind, first.campaign_id) == (channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED, "")
    assert (first.inbound_from, first.inbound_channel) == ("919876543210", channel_pb2.CHANNEL_WHATSAPP)
    # The resume is a resubscribe; both say they came from WhatsApp's setting, which is all a resume may lift.
    assert resumed.kind == channels_resources.ENGAGEMENT_KIND_RESUBSCRIBED
    assert first.detail == resumed.detail == WHATSAPP_MARKETING_SETTING
    # One request_id for the same change, so channels records it once; it does not carry the number.
    assert first.request_id == retried.request_id != resumed.request_id
    assert first.request_id.startswith("wa:preference:") and "9876543210" not in first.request_id


@pytest.mark.parametrize(
    ("message", "kind", "text"),
    [
        ({"type": "text", "text": {"body": "YES"}}, channels_resources.ENGAGEMENT_KIND_REPLIED, "YES"),
        (
            {"type": "button", "button": {"text": "Interested", "payload": "p"}},
            channels_resources.ENGAGEMENT_KIND_REPLIED,
            "Interested",
        ),
        ({"type": "text", "text": {"body": " stop "}}, channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED, " stop "),
        ({"type": "text", "text": {"body": "No."}}, channels_resources.ENGAGEMENT_KIND_DECLINED, "No."),
        (
            {"type": "interactive", "interactive": {"button_reply": {"id": "b2", "title": "Not interested"}}},
            channels_resources.ENGAGEMENT_KIND_DECLINED,
            "Not interested",
        ),
    ],
)
async def test_an_inbound_reply_quoting_our_message_is_recorded_by_its_wamid(
    start_gateway: GatewayFactory,
    downstream: Downstream,
    http: aiohttp.ClientSession,
    message: dict[str, Any],
    kind: int,
    text: str,
) -> None:
    gateway = await _gateway(start_gateway)
    inbound = {
        "from": "919876543210",
        "id": "wamid.INBOUND1",
        "timestamp": str(int(time.time())),
        "context": {"from": "15550001111", "id": WAMID},
    }
    body = _whatsapp({"messaging_product": "whatsapp", "messages": [{**inbound, **message}]})
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
        assert response.status == 200
    (reply,) = engagements(downstream)
    assert (reply.provider_message_id, reply.campaign_id, reply.kind, reply.reply_text) == (WAMID, "", kind, text)
    assert reply.request_id == "wa:wamid.INBOUND1"


async def test_meta_subscription_check_needs_the_verify_token(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, whatsapp_verify_token="verify-me")
    query = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "verify-me"}
    async with http.get(f"{gateway.http}/webhooks/whatsapp", params=query) as response:
        assert (response.status, await response.text()) == (200, "1158201444")
    async with http.get(f"{gateway.http}/webhooks/whatsapp", params={**query, "hub.verify_token": "guess"}) as response:
        assert response.status == 403
    # Not ASCII: refused as any wrong token, not a server error.
    async with http.get(
        f"{gateway.http}/webhooks/whatsapp", params={**query, "hub.verify_token": "vérify"}
    ) as response:
        assert response.status == 403


async def test_an_exotel_status_callback_needs_the_url_token_and_becomes_a_receipt(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway)
    form = {"SmsSid": "b6a1c2d3sms", "Status": "failed-dnd", "DetailedStatus": "FAILED_DND", "CustomField": OUTREACH}
    for wrong in ("wrong-token", "t%C3%B6ken"):
        async with http.post(f"{gateway.http}/webhooks/sms/exotel/{wrong}", data=form) as response:
            assert response.status == 401
    assert downstream.services.calls == []
    async with http.post(f"{gateway.http}/webhooks/sms/exotel/{SMS_TOKEN}", data=form) as response:
        assert response.status == 200
    (receipt,) = receipts(downstream)
    assert (receipt.campaign_id, receipt.state, receipt.reason) == (
        OUTREACH,
        channels_resources.DELIVERY_STATE_FAILED,
        "exotel failed-dnd FAILED_DND",
    )
    assert receipt.request_id == "exotel:b6a1c2d3sms:failed-dnd"
    # The number is on the DND registry: a bounce too, which segments suppresses SMS on for a while.
    (dnd,) = engagements(downstream)
    assert (dnd.campaign_id, dnd.kind, dnd.detail, dnd.request_id) == (
        OUTREACH,
        channels_resources.ENGAGEMENT_KIND_BOUNCED,
        "DND failed-dnd",
        "exotel:b6a1c2d3sms:dnd",
    )


@pytest.mark.parametrize(
    ("status", "detailed", "bounce"),
    [
        # Status failed with the DND detail, as well as Status failed-dnd: the number is on the registry.
        ("failed", "FAILED_DND", ("dnd", "DND failed")),
        # The number does not exist: a bad address, suppressed on SMS until the phone changes.
        ("failed", "FAILED_INVALID_NUMBER", ("invalid", "INVALID_NUMBER exotel FAILED_INVALID_NUMBER")),
        ("undelivered", "INVALID_NUMBER", ("invalid", "INVALID_NUMBER exotel INVALID_NUMBER")),
        # The operator could not deliver it in time, or the handset was off: a failure, nothing against the number.
        ("expired", "", None),
        ("undelivered", "FAILED_UNAVAILABLE", None),
        ("failed", "FAILED_SPAM", None),
    ],
)
async def test_an_exotel_failure_is_a_failed_receipt_and_a_bounce_when_it_is_about_the_number(
    start_gateway: GatewayFactory,
    downstream: Downstream,
    http: aiohttp.ClientSession,
    status: str,
    detailed: str,
    bounce: tuple[str, str] | None,
) -> None:
    gateway = await _gateway(start_gateway)
    form = {"SmsSid": "c7d8sms", "Status": status, "DetailedStatus": detailed, "CustomField": OUTREACH}
    async with http.post(f"{gateway.http}/webhooks/sms/exotel/{SMS_TOKEN}", data=form) as response:
        assert response.status == 200
    (receipt,) = receipts(downstream)
    assert (receipt.state, receipt.reason) == (
        channels_resources.DELIVERY_STATE_FAILED,
        f"exotel {status} {detailed}".strip(),
    )
    recorded = engagements(downstream)
    if bounce is None:
        assert recorded == []
        return
    (bounced,) = recorded
    assert (bounced.kind, bounced.request_id, bounced.detail) == (
        channels_resources.ENGAGEMENT_KIND_BOUNCED,
        f"exotel:c7d8sms:{bounce[0]}",
        bounce[1],
    )


async def test_when_channels_is_down_the_provider_is_asked_to_send_again(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, channels_target=unused_target(), downstream_timeout_seconds=1.0)
    body = _status("delivered")
    # A callback that was not recorded is not remembered: the provider's retry is a retry, not a replay.
    for _ in range(2):
        async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
            assert response.status == 503


def _exotel_form(status: str = "failed-dnd", sent: datetime | None = None) -> dict[str, str]:
    sent_at = (sent or datetime.now(UTC)).astimezone(EXOTEL_ZONE)
    return {
        "SmsSid": "b6a1c2d3sms",
        "Status": status,
        "DetailedStatus": "FAILED_DND",
        "DateSent": f"{sent_at:%Y-%m-%d %H:%M:%S}",
        "CustomField": OUTREACH,
    }


def _twilio_signed(url: str, form: dict[str, str], secret: str = SMS_SECRET) -> dict[str, str]:
    return {"X-Twilio-Signature": twilio_signature(secret, url, form.items())}


async def test_a_signed_sms_callback_is_checked_against_its_url_and_fields_and_refused_when_tampered(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, sms_callback_secret=SMS_SECRET)
    url = f"{gateway.http}/webhooks/sms/exotel/{SMS_TOKEN}"
    form = _exotel_form()
    for headers, sent in (
        ({}, form),  # unsigned
        (_twilio_signed(url, form, "another-secret"), form),
        (_twilio_signed(url, form), {**form, "Status": "sent"}),  # a field changed after signing
        (_twilio_signed(url.replace("exotel", "other"), form), form),  # signed for another URL
    ):
        async with http.post(url, data=sent, headers=headers) as response:
            assert response.status == 401
    assert downstream.services.calls == []
    for _ in range(2):
        async with http.post(url, data=form, headers=_twilio_signed(url, form)) as response:
            assert response.status == 200
    (receipt,) = receipts(downstream)  # the second, a replay, was refused
    assert (receipt.campaign_id, receipt.state) == (OUTREACH, channels_resources.DELIVERY_STATE_FAILED)


async def test_a_stale_sms_callback_is_not_recorded_and_a_public_url_is_what_is_signed(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    public = "https://xsell.bank.example"
    gateway = await _gateway(
        start_gateway, sms_callback_secret=SMS_SECRET, webhook_max_age_seconds=3600, webhook_public_base_url=public
    )
    path = f"/webhooks/sms/exotel/{SMS_TOKEN}"
    stale = _exotel_form(sent=datetime.now(UTC) - timedelta(hours=3))
    async with http.post(f"{gateway.http}{path}", data=stale, headers=_twilio_signed(public + path, stale)) as response:
        assert response.status == 200
    assert downstream.services.calls == []
    fresh = _exotel_form("sent")
    # Signed for the public URL the provider called, not the address the gateway listens on.
    async with http.post(f"{gateway.http}{path}", data=fresh, headers=_twilio_signed(public + path, fresh)) as response:
        assert response.status == 200
    (receipt,) = receipts(downstream)
    assert receipt.state == channels_resources.DELIVERY_STATE_DELIVERED


async def test_without_configured_secrets_every_provider_callback_is_refused(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway()
    body = _status("delivered")
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body, "")) as response:
        assert response.status == 401
    query = {"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": ""}
    async with http.get(f"{gateway.http}/webhooks/whatsapp", params=query) as response:
        assert response.status == 403
    async with http.post(f"{gateway.http}/webhooks/sms/exotel/x", data={"CustomField": OUTREACH}) as response:
        assert response.status == 401
    assert downstream.services.calls == []


async def test_a_late_stop_is_still_an_opt_out_though_a_late_reply_is_not_recorded(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, webhook_max_age_seconds=3600)
    late = str(int(time.time() - 3 * 3600))
    for text in ("STOP", "Interested"):
        message = {
            "from": "919876543210",
            "id": f"wamid.in-{text}",
            "timestamp": late,
            "type": "text",
            "text": {"body": text},
            "context": {"from": "15550001111", "id": WAMID},
        }
        body = _whatsapp({"messaging_product": "whatsapp", "messages": [message]})
        async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
            assert response.status == 200
    (opt_out,) = engagements(downstream)
    assert (opt_out.kind, opt_out.provider_message_id) == (channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED, WAMID)


async def test_a_whatsapp_message_typed_fresh_answers_the_last_message_to_its_sender(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway)
    for text in ("YES", "stop."):
        message = {
            "from": "919876543210",
            "id": f"wamid.fresh-{text}",
            "timestamp": str(int(time.time())),
            "type": "text",
            "text": {"body": text},
        }
        body = _whatsapp({"messaging_product": "whatsapp", "messages": [message]})
        async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
            assert response.status == 200
    reply, opt_out = engagements(downstream)
    for recorded in (reply, opt_out):
        assert (recorded.campaign_id, recorded.provider_message_id) == ("", "")
        assert (recorded.inbound_from, recorded.inbound_channel) == ("919876543210", channel_pb2.CHANNEL_WHATSAPP)
    assert (reply.kind, reply.reply_text) == (channels_resources.ENGAGEMENT_KIND_REPLIED, "YES")
    assert opt_out.kind == channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED


def _inbound_sms(body: str, sid: str = "in7f3c", received: datetime | None = None) -> dict[str, str]:
    at = (received or datetime.now(UTC)).astimezone(EXOTEL_ZONE)
    return {"SmsSid": sid, "From": "09876543210", "To": "08047112345", "Date": f"{at:%Y-%m-%d %H:%M:%S}", "Body": body}


async def test_an_inbound_sms_is_a_reply_or_an_opt_out_from_the_last_sms_to_its_sender(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, sms_callback_secret=SMS_SECRET)
    url = f"{gateway.http}/webhooks/sms/exotel/{SMS_TOKEN}/inbound"
    stop, reply = _inbound_sms("Stop 56161", "in-stop"), _inbound_sms("Call me tomorrow", "in-reply")
    async with http.post(url, data=stop, headers=_twilio_signed(url, stop)) as response:
        assert (response.status, await response.text()) == (200, "")  # nothing is texted back
    # Exotel's passthru may call with GET: the fields are in the signed URL (as the client writes it).
    get_url = str(URL(f"{url}?{urlencode(reply)}"))
    async with http.get(get_url, headers=_twilio_signed(get_url, {})) as response:
        assert response.status == 200
    # Tampered, and replayed: neither is recorded.
    async with http.post(url, data={**stop, "Body": "Hi"}, headers=_twilio_signed(url, stop)) as response:
        assert response.status == 401
    async with http.post(url, data=stop, headers=_twilio_signed(url, stop)) as response:
        assert response.status == 200
    opt_out, answered = engagements(downstream)
    assert (opt_out.kind, opt_out.request_id) == (channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED, "exotel-in:in-stop")
    assert (answered.kind, answered.reply_text) == (channels_resources.ENGAGEMENT_KIND_REPLIED, "Call me tomorrow")
    for recorded in (opt_out, answered):
        assert (recorded.inbound_from, recorded.inbound_channel) == ("09876543210", channel_pb2.CHANNEL_SMS)
        assert recorded.campaign_id == recorded.provider_message_id == ""


async def test_a_late_inbound_sms_stop_is_honoured_and_a_late_reply_is_not(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, webhook_max_age_seconds=3600)
    url = f"{gateway.http}/webhooks/sms/exotel/{SMS_TOKEN}/inbound"
    late = datetime.now(UTC) - timedelta(hours=3)
    for form in (_inbound_sms("STOP", "late-stop", late), _inbound_sms("yes please", "late-yes", late)):
        async with http.post(url, data=form) as response:
            assert response.status == 200
    (opt_out,) = engagements(downstream)
    assert opt_out.kind == channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED


async def test_what_cannot_be_recorded_in_a_post_is_skipped_and_the_rest_recorded(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    """A post is answered as a whole, and the provider repeats one that was not answered 200 for days: an item that
    can never be recorded must not hold back the others. A second failure of one message with another code (its
    request_id already recorded with other content), an item without the provider's id, a lone surrogate in a text
    and a timestamp past a float are each skipped; the delivered status and the STOP after them are recorded."""
    recorded_first: dict[str, bytes] = {}

    async def like_channels(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        receipt = channels_pb2.RecordDeliveryReceiptRequest.FromString(request)
        stored = recorded_first.setdefault(receipt.request_id, request)
        if stored != request:  # channels' own refusal of a request_id reused for other content
            refusal = Idempotency.answer(
                "RecordDeliveryReceipt",
                receipt,
                (request_fingerprint(channels_pb2.RecordDeliveryReceiptRequest.FromString(stored)), b""),
                channels_pb2.RecordDeliveryReceiptResponse,
            )
            assert isinstance(refusal, Aborted)
            await context.abort(grpc.StatusCode.ABORTED, str(refusal))
        return b""

    downstream.services.responders[RECEIPT] = like_channels
    gateway = await _gateway(start_gateway)
    now = str(int(time.time()))
    first_failure = {"id": WAMID, "status": "failed", "timestamp": now, "errors": [{"code": 131000}]}
    other_failure = {**first_failure, "errors": [{"code": 131026}]}
    delivered = {"id": "wamid.other", "status": "delivered", "timestamp": now}
    without_id = {"status": "delivered", "timestamp": now}
    too_late = {"id": "wamid.far", "status": "delivered", "timestamp": 10**400}
    statuses = [
        {**status, "biz_opaque_callback_data": OUTREACH}
        for status in (first_failure, other_failure, without_id, too_late, delivered)
    ]
    messages = [
        {"from": "919876543210", "id": "wamid.in1", "timestamp": now, "type": "text", "text": {"body": "Hi \ud83d"}},
        {"from": "919876543210", "timestamp": now, "type": "text", "text": {"body": "YES"}},
        {"from": "919876543210", "id": "wamid.in2", "timestamp": now, "type": "text", "text": {"body": "STOP"}},
    ]
    body = _whatsapp({"messaging_product": "whatsapp", "statuses": statuses, "messages": messages})
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
        assert (response.status, await response.text()) == (200, "ok\n")
    states = [(r.request_id, r.state) for r in receipts(downstream)]
    assert states == [
        (f"wa:{WAMID}:failed", channels_resources.DELIVERY_STATE_FAILED),
        (f"wa:{WAMID}:failed", channels_resources.DELIVERY_STATE_FAILED),  # refused by channels: skipped
        ("wa:wamid.far:delivered", channels_resources.DELIVERY_STATE_DELIVERED),  # judged by its signature alone
        ("wa:wamid.other:delivered", channels_resources.DELIVERY_STATE_DELIVERED),
    ]
    # What the second failure says about the person is still recorded, under a request_id of its own.
    unreachable, stop = engagements(downstream)
    assert (unreachable.request_id, unreachable.kind) == (f"wa:{WAMID}:unreachable", BOUNCED)
    assert (stop.request_id, stop.kind) == ("wa:wamid.in2", channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"entry": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="nested-past-recursion"),
        pytest.param(b'{"entry": [], "n": ' + b"9" * 5000 + b"}", id="5000-digit-number"),
        pytest.param(b"\xff\xfe not UTF-8", id="not-utf8"),
    ],
)
async def test_a_signed_body_python_cannot_read_is_refused_with_400(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession, body: bytes
) -> None:
    gateway = await _gateway(start_gateway)
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=_signed(body)) as response:
        assert (response.status, await response.text()) == (400, "body is not JSON\n")
    assert downstream.services.calls == []


async def test_an_sms_callback_that_is_not_utf8_or_names_no_sid_is_refused_with_400(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway)
    url = f"{gateway.http}/webhooks/sms/exotel/{SMS_TOKEN}"
    form = "application/x-www-form-urlencoded"
    for body, content_type in (
        (b"SmsSid=p2&Status=failed&Body=\xff", form),
        (b"SmsSid=p2&Status=failed", f"{form}; charset=x-nonexistent"),
    ):
        async with http.post(url, data=body, headers={"Content-Type": content_type}) as response:
            assert response.status == 400
    # Without SmsSid its request_id would be every sid-less callback's.
    async with http.post(url, data={k: v for k, v in _exotel_form().items() if k != "SmsSid"}) as response:
        assert (response.status, await response.text()) == (400, "SmsSid is required\n")
    assert downstream.services.calls == []


async def test_a_stale_signed_sms_callback_whose_time_was_moved_into_other_fields_is_refused(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    """The Twilio-style signature joins names and values without a separator: a captured stale callback's DateSent
    moved into a field "D" = "ateSent<its date>", or onto the end of the value before it, keeps the signature."""
    gateway = await _gateway(start_gateway, sms_callback_secret=SMS_SECRET, webhook_max_age_seconds=3600)
    url = f"{gateway.http}/webhooks/sms/exotel/{SMS_TOKEN}"
    stale = _exotel_form(sent=datetime.now(UTC) - timedelta(days=3))
    signature = _twilio_signed(url, stale)
    without_time = {key: value for key, value in stale.items() if key != "DateSent"}
    into_a_name = {**without_time, "D": "ateSent" + stale["DateSent"]}
    into_a_value = {**without_time, "CustomField": stale["CustomField"] + "DateSent" + stale["DateSent"]}
    for re_split in (into_a_name, into_a_value):
        assert _twilio_signed(url, re_split) == signature
        async with http.post(url, data=re_split, headers=signature) as response:
            assert response.status == 400
            assert "DateSent is split across other fields" in await response.text()
    inbound_url = f"{url}/inbound"
    reply = _inbound_sms("Yes interested", "in-old", datetime.now(UTC) - timedelta(days=3))
    moved = {**{key: value for key, value in reply.items() if key != "Date"}, "Da": "te" + reply["Date"]}
    async with http.post(inbound_url, data=moved, headers=_twilio_signed(inbound_url, reply)) as response:
        assert response.status == 400
    assert downstream.services.calls == []


async def test_a_signed_sms_failure_without_a_time_or_with_exotels_epoch_is_recorded(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    """A failure Exotel never sent may carry no DateSent, or its placeholder "1970-01-01 05:30:00": judged by its
    signature, not refused, nor dropped as 56 years stale (a DND bounce lost so would keep the number mailed)."""
    gateway = await _gateway(start_gateway, sms_callback_secret=SMS_SECRET, webhook_max_age_seconds=3600)
    url = f"{gateway.http}/webhooks/sms/exotel/{SMS_TOKEN}"
    without_time = {key: value for key, value in _exotel_form().items() if key != "DateSent"}
    at_the_epoch = {**_exotel_form(), "SmsSid": "epoch1sms", "DateSent": "1970-01-01 05:30:00"}
    for form in (without_time, at_the_epoch):
        async with http.post(url, data=form, headers=_twilio_signed(url, form)) as response:
            assert response.status == 200
    assert [r.request_id for r in receipts(downstream)] == [
        "exotel:b6a1c2d3sms:failed-dnd",
        "exotel:epoch1sms:failed-dnd",
    ]
    assert len(engagements(downstream)) == 2  # each a DND bounce too
