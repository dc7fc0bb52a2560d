"""SendGrid's Event Webhook on the gateway's HTTP edge: verified posts become channels calls; nothing else does."""

import base64
import json
import time
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.esp_events import SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.integration.gateway.conftest import (
    Downstream,
    GatewayFactory,
    RunningGateway,
    engagements,
    receipts,
    unused_target,
)
from xsell.channels.v1 import resources_pb2 as channels_resources

DOMAIN = "mail.bank.example.in"
OUTREACH = "CSELL-NOV-T06-0884"
SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())
VERIFICATION_KEY = base64.b64encode(
    SIGNING_KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()


async def _gateway(start_gateway: GatewayFactory, **overrides: Any) -> RunningGateway:
    return await start_gateway(sendgrid_verification_key=VERIFICATION_KEY, message_id_domain=DOMAIN, **overrides)


def _event(name: str, number: int, *, age: float = 0.0, **fields: Any) -> dict[str, Any]:
    """One event as SendGrid writes it for a message sent over its SMTP relay with our unique arg."""
    return {
        "email": "priya@example.in",
        "timestamp": int(time.time() - age),
        "event": name,
        "smtp-id": f"<{OUTREACH}@{DOMAIN}>",
        "sg_event_id": f"sg-event-{number}",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "xsell_campaign_id": OUTREACH,
        **fields,
    }


def _signed(events: list[dict[str, Any]], *, key: ec.EllipticCurvePrivateKey = SIGNING_KEY) -> tuple[bytes, dict]:
    body = (json.dumps(events) + "\r\n").encode()
    timestamp = str(int(time.time()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    headers = {
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        TIMESTAMP_HEADER: timestamp,
        "Content-Type": "application/json",
    }
    return body, headers


async def _post(http: aiohttp.ClientSession, gateway: RunningGateway, body: bytes, headers: dict) -> int:
    async with http.post(f"{gateway.http}/webhooks/email/sendgrid", data=body, headers=headers) as response:
        return response.status


async def test_each_event_becomes_the_receipt_or_engagement_it_reports(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway)
    body, headers = _signed(
        [
            _event("processed", 1),
            _event("deferred", 2, response="451 try later"),
            _event("delivered", 3, response="250 OK"),
            _event("open", 4),
            _event("click", 5, url="https://bank.example.in/apply?o=T06"),
            _event("bounce", 6, type="bounce", status="5.1.1", reason="550 5.1.1 <priya@example.in>: user unknown"),
            _event("dropped", 7, reason="Bounced Address"),
            _event("spamreport", 8),
            _event("group_unsubscribe", 9, asm_group_id=42),
            # Named only by the Message-ID channels wrote (no unique arg): still ours.
            {**_event("delivered", 10), "xsell_campaign_id": None},
            # Another system's message on the same account: no outreach of ours, nothing recorded.
            {**_event("delivered", 11), "xsell_campaign_id": None, "smtp-id": "<abc@ismtpd0039p1iad1.sendgrid.net>"},
        ]
    )
    assert await _post(http, gateway, body, headers) == 200
    states = channels_resources.DeliveryState
    assert [(r.request_id, states.Name(r.state), r.reason) for r in receipts(downstream)] == [
        ("sendgrid:sg-event-1", "DELIVERY_STATE_SENT", ""),
        ("sendgrid:sg-event-3", "DELIVERY_STATE_DELIVERED", ""),
        # A bounce proves SendGrid had the message: it settles a hand-over whose answer was lost.
        ("sendgrid:sg-event-6:sent", "DELIVERY_STATE_SENT", ""),
        ("sendgrid:sg-event-7", "DELIVERY_STATE_FAILED", "sendgrid dropped: Bounced Address"),
        ("sendgrid:sg-event-10", "DELIVERY_STATE_DELIVERED", ""),
    ]
    assert {r.campaign_id for r in receipts(downstream)} == {OUTREACH}
    kinds = channels_resources.EngagementKind
    assert [(e.request_id, kinds.Name(e.kind), e.detail, e.url) for e in engagements(downstream)] == [
        ("sendgrid:sg-event-4", "ENGAGEMENT_KIND_OPENED", "open", ""),
        ("sendgrid:sg-event-5", "ENGAGEMENT_KIND_CLICKED", "click", "https://bank.example.in/apply?o=T06"),
        # The status, never the server's text (it names the address).
        ("sendgrid:sg-event-6", "ENGAGEMENT_KIND_BOUNCED", "5.1.1 permanent", ""),
        ("sendgrid:sg-event-8", "ENGAGEMENT_KIND_COMPLAINED", "spamreport", ""),
        ("sendgrid:sg-event-9", "ENGAGEMENT_KIND_UNSUBSCRIBED", "group_unsubscribe", ""),
    ]


async def test_a_forged_replayed_or_unconfigured_post_is_not_recorded(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway)
    body, headers = _signed([_event("delivered", 1)])
    forged, forged_headers = _signed([_event("delivered", 2)], key=ec.generate_private_key(ec.SECP256R1()))
    assert await _post(http, gateway, forged, forged_headers) == 401
    assert await _post(http, gateway, body.replace(b"delivered", b"dropped"), headers) == 401
    assert await _post(http, gateway, body, {**headers, TIMESTAMP_HEADER: str(int(time.time()) + 1)}) == 401
    assert receipts(downstream) == []
    assert await _post(http, gateway, body, headers) == 200
    assert await _post(http, gateway, body, headers) == 200  # the replay is acknowledged, and not recorded again
    assert len(receipts(downstream)) == 1
    # Without a verification key every post is refused: nothing unverified reaches channels.
    unconfigured = await start_gateway(message_id_domain=DOMAIN)
    assert await _post(http, unconfigured, *_signed([_event("delivered", 3)])) == 401
    assert len(receipts(downstream)) == 1


async def test_a_stale_event_is_dropped_but_a_late_opt_out_is_honoured(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, webhook_max_age_seconds=3600)
    week = 7 * 86400.0
    body, headers = _signed(
        [_event("delivered", 1, age=week), _event("unsubscribe", 2, age=week), _event("delivered", 3)]
    )
    assert await _post(http, gateway, body, headers) == 200
    assert [r.request_id for r in receipts(downstream)] == ["sendgrid:sg-event-3"]
    assert [e.request_id for e in engagements(downstream)] == ["sendgrid:sg-event-2"]


async def test_when_channels_is_down_sendgrid_is_asked_to_post_again(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, channels_target=unused_target())
    assert await _post(http, gateway, *_signed([_event("delivered", 1)])) == 503


async def test_a_body_that_is_not_an_array_of_events_is_refused(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway)
    for body in (b"{not json", b'{"event": "delivered"}'):
        timestamp = str(int(time.time()))
        signature = base64.b64encode(SIGNING_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
        headers = {SIGNATURE_HEADER: signature, TIMESTAMP_HEADER: timestamp}
        assert await _post(http, gateway, body, headers) == 400
    assert receipts(downstream) == []


async def test_an_event_that_cannot_be_recorded_is_skipped_and_the_rest_of_the_batch_recorded(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    """A timestamp past a float, or an event without its id (every such event's request_id would be the same), is
    skipped; the unsubscribe after it is recorded, and the batch answered 200 (SendGrid would post it for days)."""
    gateway = await _gateway(start_gateway)
    events = [
        _event("processed", 1),
        _event("delivered", 2, timestamp=10**400),
        _event("open", 3, sg_event_id=None),
        _event("unsubscribe", 4),
    ]
    body = (json.dumps(events) + "\r\n").encode()
    timestamp = str(int(time.time()))
    signature = base64.b64encode(SIGNING_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    assert await _post(http, gateway, body, {SIGNATURE_HEADER: signature, TIMESTAMP_HEADER: timestamp}) == 200
    assert [r.request_id for r in receipts(downstream)] == ["sendgrid:sg-event-1", "sendgrid:sg-event-2"]
    (unsubscribe,) = engagements(downstream)
    assert unsubscribe.request_id == "sendgrid:sg-event-4"


async def test_a_signed_batch_up_to_five_mib_is_read(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    """aiohttp reads 1 MiB of a body by default; SendGrid's batches may be larger, up to the route's own limit."""
    gateway = await _gateway(start_gateway)
    padding = "x" * 1000
    events = [_event("delivered", number, note=padding) for number in range(1500)]  # ~1.9 MB
    body, headers = _signed(events)
    assert len(body) > 1024 * 1024
    assert await _post(http, gateway, body, headers) == 200
    assert len(receipts(downstream)) == 1500
