"""SES's events through SNS on the gateway's HTTP edge: signed notifications of an allowed topic become channels calls,
a subscription is confirmed; nothing else is recorded. The SNS side is devstack's poster: its key, and its certificate
and SubscribeURL served on a local port."""

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiosmtpd.smtp import Envelope

from devstack.esp_sink import SES_TOPIC_ARN, SesEventPoster, sns_post
from tests.integration.gateway.conftest import (
    Downstream,
    GatewayFactory,
    RunningGateway,
    engagements,
    receipts,
    unused_target,
)
from tests.waiting import eventually
from xsell.channels.v1 import resources_pb2 as channels_resources

DOMAIN = "mail.bank.example.in"
OUTREACH = "CSELL-NOV-T06-0884"
SES_ID = "0109019c1a2b3c4d-5e6f-0000"


@pytest.fixture
async def sns() -> AsyncIterator[SesEventPoster]:
    poster = await SesEventPoster("").start()
    yield poster
    await poster.stop()


async def _gateway(start_gateway: GatewayFactory, sns: SesEventPoster, **overrides: Any) -> RunningGateway:
    settings: dict[str, Any] = {
        "ses_topic_arns": [SES_TOPIC_ARN],
        "sns_cert_url_pattern": sns.cert_url_pattern,
        "message_id_domain": DOMAIN,
    }
    return await start_gateway(**(settings | overrides))


def _event(name: str, details: dict[str, Any] | None = None, **mail: Any) -> dict[str, Any]:
    """SES's event of a message channels sent through the configuration set, tagged with its outreach."""
    event: dict[str, Any] = {
        "eventType": name,
        "mail": {
            "timestamp": "2026-11-28T09:15:02.000Z",
            "source": "offers@bank.example.in",
            "messageId": SES_ID,
            "destination": ["priya@example.in"],
            "headers": [{"name": "Message-ID", "value": f"<{OUTREACH}@{DOMAIN}>"}],
            "commonHeaders": {"messageId": SES_ID},
            "tags": {"ses:configuration-set": ["xsell"], "xsell_campaign_id": [OUTREACH]},
            **mail,
        },
    }
    if details is not None:
        event[name[:1].lower() + name[1:].replace(" ", "")] = details
    return event


async def _post(http: aiohttp.ClientSession, gateway: RunningGateway, message: dict[str, Any]) -> int:
    body, headers = sns_post(message)
    async with http.post(f"{gateway.http}/webhooks/email/ses", data=body, headers=headers) as response:
        return response.status


def _receipts(downstream: Downstream) -> list[tuple[str, str, str]]:
    states = channels_resources.DeliveryState
    return [(r.request_id, states.Name(r.state), r.reason) for r in receipts(downstream)]


def _engagements(downstream: Downstream) -> list[tuple[str, str, str, str]]:
    kinds = channels_resources.EngagementKind
    return [(e.request_id, kinds.Name(e.kind), e.detail, e.url) for e in engagements(downstream)]


async def test_each_event_becomes_the_receipt_or_engagement_it_reports(
    start_gateway: GatewayFactory, sns: SesEventPoster, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, sns)
    refused = {"emailAddress": "priya@example.in", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 <priya@...>"}
    events = [
        _event("Send", {}),
        _event("DeliveryDelay", {"delayType": "TransientCommunicationFailure"}),
        _event("Delivery", {"smtpResponse": "250 2.0.0 OK"}),
        _event("Open", {"timestamp": "2026-11-28T10:00:00.000Z"}),
        _event("Click", {"timestamp": "2026-11-28T10:01:00.000Z", "link": "https://bank.example.in/apply?o=T06"}),
        _event("Bounce", {"bounceType": "Transient", "bouncedRecipients": [{**refused, "status": "4.2.2"}]}),
        _event("Bounce", {"bounceType": "Permanent", "bounceSubType": "General", "bouncedRecipients": [refused]}),
        _event("Reject", {"reason": "Bad content"}, messageId="ses-rejected"),
        _event("Complaint", {"complaintFeedbackType": "abuse"}),
        # Named only by the Message-ID channels wrote (no tag): still ours.
        _event("Delivery", {}, messageId="ses-untagged", tags={}),
        # Another system's message on the same account: no outreach of ours, nothing recorded.
        _event("Delivery", {}, messageId="ses-other", tags={}, headers=[], commonHeaders={"messageId": "<a@b.in>"}),
    ]
    for event in events:
        assert await _post(http, gateway, sns.notification(event)) == 200
    assert _receipts(downstream) == [
        (f"ses:{SES_ID}:send", "DELIVERY_STATE_SENT", ""),
        (f"ses:{SES_ID}:delivery", "DELIVERY_STATE_DELIVERED", ""),
        # A bounce proves SES had the message: it settles a hand-over whose answer was lost.
        (f"ses:{SES_ID}:bounce:sent", "DELIVERY_STATE_SENT", ""),
        ("ses:ses-rejected:reject", "DELIVERY_STATE_FAILED", "ses reject: Bad content"),
        ("ses:ses-untagged:delivery", "DELIVERY_STATE_DELIVERED", ""),
    ]
    assert {r.campaign_id for r in receipts(downstream)} == {OUTREACH}
    assert {r.provider_message_id for r in receipts(downstream)} == {SES_ID, "ses-rejected", "ses-untagged"}
    assert _engagements(downstream) == [
        (f"ses:{SES_ID}:open:2026-11-28T10:00:00.000Z", "ENGAGEMENT_KIND_OPENED", "open", ""),
        (
            f"ses:{SES_ID}:click:2026-11-28T10:01:00.000Z",
            "ENGAGEMENT_KIND_CLICKED",
            "click",
            "https://bank.example.in/apply?o=T06",
        ),
        # The status, never the diagnostic code (it names the address).
        (f"ses:{SES_ID}:bounce", "ENGAGEMENT_KIND_BOUNCED", "5.1.1 permanent", ""),
        (f"ses:{SES_ID}:complaint", "ENGAGEMENT_KIND_COMPLAINED", "abuse", ""),
    ]


async def test_a_forged_foreign_or_replayed_post_is_not_recorded(
    start_gateway: GatewayFactory, sns: SesEventPoster, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, sns)
    delivered = sns.notification(_event("Delivery", {}))
    # Signed by another key, its certificate at the trusted URL.
    forger = await SesEventPoster("").start()
    try:
        forged = {**forger.notification(_event("Delivery", {})), "SigningCertURL": sns.cert_url}
        assert await _post(http, gateway, forged) == 401
        # A certificate outside the pattern is not even fetched: the forger's own is refused.
        assert await _post(http, gateway, forger.notification(_event("Delivery", {}))) == 401
    finally:
        await forger.stop()
    tampered = json.loads(delivered["Message"]) | {"eventType": "Complaint", "complaint": {}}
    assert await _post(http, gateway, {**delivered, "Message": json.dumps(tampered)}) == 401
    # Signed by SNS, but about a topic that is not ours.
    theirs = sns.signed({**delivered, "TopicArn": "arn:aws:sns:ap-south-1:999999999999:theirs"})
    assert await _post(http, gateway, theirs) == 401
    # At a trusted URL, but not a certificate.
    assert await _post(http, gateway, {**delivered, "SigningCertURL": f"{sns.base_url}/confirm"}) == 401
    assert receipts(downstream) == []

    assert await _post(http, gateway, delivered) == 200
    assert await _post(http, gateway, delivered) == 200  # the replay is acknowledged, and not recorded again
    assert len(receipts(downstream)) == 1
    # Without topics every post is refused: nothing unverified reaches channels.
    unconfigured = await start_gateway(sns_cert_url_pattern=sns.cert_url_pattern, message_id_domain=DOMAIN)
    assert await _post(http, unconfigured, sns.notification(_event("Delivery", {}))) == 401
    assert len(receipts(downstream)) == 1


async def test_with_pinned_certificates_nothing_is_fetched_and_only_their_signatures_hold(
    start_gateway: GatewayFactory, sns: SesEventPoster, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    """Where the gateway may not reach SNS (only channels leaves the cluster), the certificates are configured."""
    forger = await SesEventPoster("").start()
    pinned = await _gateway(start_gateway, sns, sns_signing_certificates=sns.certificate_pem + forger.certificate_pem)
    await forger.stop()
    await sns.stop()  # nothing to fetch from: the pinned certificates are all there is
    try:
        assert await _post(http, pinned, sns.notification(_event("Delivery", {}))) == 200
        # The second pinned certificate (SNS's next, say) verifies too, at a URL on SNS's hosts.
        rotated = {**forger.notification(_event("Send", {})), "SigningCertURL": sns.cert_url}
        assert await _post(http, pinned, rotated) == 200
        stranger = await SesEventPoster("").start()
        try:
            forged = {**stranger.notification(_event("Complaint", {})), "SigningCertURL": sns.cert_url}
            assert await _post(http, pinned, forged) == 401
        finally:
            await stranger.stop()
    finally:
        await sns.start()
    assert sorted(r.request_id for r in receipts(downstream)) == [f"ses:{SES_ID}:delivery", f"ses:{SES_ID}:send"]
    assert engagements(downstream) == []


async def test_a_stale_event_is_dropped_but_a_late_complaint_is_honoured(
    start_gateway: GatewayFactory, sns: SesEventPoster, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, sns, webhook_max_age_seconds=3600)
    week = 7 * 86400.0
    assert await _post(http, gateway, sns.notification(_event("Delivery", {}), age=week)) == 200
    assert await _post(http, gateway, sns.notification(_event("Complaint", {}), age=week)) == 200
    assert await _post(http, gateway, sns.notification(_event("Send", {}))) == 200
    assert [r.request_id for r in receipts(downstream)] == [f"ses:{SES_ID}:send"]
    assert [e.request_id for e in engagements(downstream)] == [f"ses:{SES_ID}:complaint"]


async def test_a_subscription_is_confirmed_by_getting_its_subscribe_url(
    start_gateway: GatewayFactory, sns: SesEventPoster, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, sns)
    elsewhere = sns.signed({**sns.subscription_confirmation("token-0"), "SubscribeURL": "http://localhost:1/confirm"})
    assert await _post(http, gateway, elsewhere) == 401
    assert sns.confirmed == []
    assert await _post(http, gateway, sns.subscription_confirmation("token-1")) == 200
    assert sns.confirmed == ["token-1"]
    unsubscribed = sns.signed({**sns.subscription_confirmation("token-2"), "Type": "UnsubscribeConfirmation"})
    assert await _post(http, gateway, unsubscribed) == 200
    assert sns.confirmed == ["token-1"]  # an unsubscription is not undone
    assert receipts(downstream) == [] and engagements(downstream) == []


async def test_when_channels_is_down_sns_is_asked_to_post_again(
    start_gateway: GatewayFactory, sns: SesEventPoster, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, sns, channels_target=unused_target())
    delivered = sns.notification(_event("Delivery", {}))
    assert await _post(http, gateway, delivered) == 503
    # Not remembered as accepted: SNS's retry of the same message is recorded once channels is back.
    assert await _post(http, gateway, delivered) == 503


async def test_a_body_that_is_not_an_sns_message_is_refused(
    start_gateway: GatewayFactory, sns: SesEventPoster, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, sns)
    for body in (b"{not json", b"[]"):
        async with http.post(f"{gateway.http}/webhooks/email/ses", data=body) as response:
            assert response.status == 400
    assert await _post(http, gateway, {**sns.notification(_event("Send", {})), "Type": "Something"}) == 401
    assert receipts(downstream) == []


async def test_what_the_relay_playing_ses_posts_is_recorded_a_refused_recipient_as_a_bounce(
    start_gateway: GatewayFactory, sns: SesEventPoster, downstream: Downstream
) -> None:
    gateway = await _gateway(start_gateway, sns)
    sns.url = f"{gateway.http}/webhooks/email/ses"
    sns.bounces = frozenset({"nobody@bank.example.in"})
    envelope = Envelope()
    envelope.mail_from = "bounces@mail.bank.example.in"
    envelope.rcpt_tos = ["nobody@bank.example.in"]
    envelope.content = (
        f"Message-ID: <{OUTREACH}@{DOMAIN}>\r\nX-SES-MESSAGE-TAGS: xsell_campaign_id={OUTREACH}\r\n\r\nHello\r\n"
    ).encode()
    sns.report(envelope)

    async def bounced() -> list[tuple[str, str, str, str]]:
        return _engagements(downstream)

    ((request_id, kind, detail, _),) = await eventually(bounced)
    assert (kind, detail) == ("ENGAGEMENT_KIND_BOUNCED", "5.1.1 permanent") and request_id.endswith(":bounce")
    assert [state for _, state, _ in _receipts(downstream)] == ["DELIVERY_STATE_SENT", "DELIVERY_STATE_SENT"]
    assert {r.campaign_id for r in receipts(downstream)} == {OUTREACH} and sns.failed == []


async def test_a_post_of_the_wrong_types_or_beyond_what_python_reads_is_refused_not_a_crash(
    start_gateway: GatewayFactory, sns: SesEventPoster, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(start_gateway, sns)
    for topic in ([], {}, 7):  # before any signature is checked
        assert await _post(http, gateway, {**sns.notification(_event("Delivery", {})), "TopicArn": topic}) == 401
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"n": ' + b"9" * 5000 + b"}"):
        async with http.post(f"{gateway.http}/webhooks/email/ses", data=body) as response:
            assert response.status == 400
    # Signed by SNS, its Message beyond what Python reads: acknowledged (SNS would post it for days) and ignored.
    message = {**sns.notification(_event("Delivery", {})), "Message": '{"n": ' + "9" * 5000 + "}"}
    assert await _post(http, gateway, sns.signed(message)) == 200
    assert receipts(downstream) == []


async def test_a_replay_with_its_subject_moved_into_its_message_id_is_still_a_replay(
    start_gateway: GatewayFactory, sns: SesEventPoster, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    """SNS joins the signed fields with newlines: "\\nSubject\\n<subject>" moved to the end of MessageId keeps the
    signature. The replay memory keys on the signed string, not on MessageId."""
    gateway = await _gateway(start_gateway, sns)
    notification = sns.notification(_event("Delivery", {}))
    with_subject = sns.signed({**notification, "Subject": "Amazon SES Email Event Notification"})
    moved = {key: value for key, value in with_subject.items() if key != "Subject"}
    moved["MessageId"] = f"{with_subject['MessageId']}\nSubject\n{with_subject['Subject']}"
    assert await _post(http, gateway, with_subject) == 200
    assert await _post(http, gateway, moved) == 200  # verified, and refused as the replay it is
    assert len(receipts(downstream)) == 1
