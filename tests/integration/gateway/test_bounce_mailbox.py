"""The gateway's return-path mailbox over real SMTP: bounces and complaint reports become RecordEngagement calls."""

from email.message import EmailMessage

import aiosmtplib
import grpc
import structlog

from devstack.smtp_sink import delivery_report
from plumbing.signing import signed_envelope_id
from plumbing.telemetry import outreach_trace_id
from services.channels.smtp import xtext
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

DOMAIN = "mail.bank.example"
CAMPAIGN_ID = "CSELL-NOV-T06-0884"
RETURNED = f"""\
From: Fundsy <offers@{DOMAIN}>
To: asha@example.in
Subject: Asha, a lumpsum idea
Message-ID: <{CAMPAIGN_ID}@{DOMAIN}>
X-Xsell-Campaign-Id: {CAMPAIGN_ID}
"""


def bounce(report_id: str, returned: str = RETURNED, status: str = "5.1.1") -> bytes:
    return f"""\
Message-ID: <{report_id}@mx.example.in>
From: MAILER-DAEMON@mx.example.in
To: bounces@{DOMAIN}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Your message could not be delivered.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.in

Final-Recipient: rfc822; asha@example.in
Action: failed
Status: {status}
Diagnostic-Code: smtp; 550 {status} <asha@example.in>: User unknown

--b1
Content-Type: text/rfc822-headers

{returned}
--b1--
""".encode()


def complaint() -> bytes:
    return f"""\
Message-ID: <arf-1@mailbox.example.in>
From: abuse@mailbox.example.in
To: bounces@{DOMAIN}
Subject: Abuse report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b2"

--b2
Content-Type: text/plain

An abuse report.

--b2
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Feedback/1.0
Version: 1

--b2
Content-Type: message/rfc822

{RETURNED}
Hi Asha, ...
--b2--
""".encode()


async def deliver(gateway: RunningGateway, raw: bytes) -> tuple[int, str]:
    """As a reporting server sends it: from the null sender (MAIL FROM:<>), so that a report is never reported on."""
    port = gateway.process.mailbox.port  # type: ignore[attr-defined]
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
    await client.connect()
    try:
        await client.mail("")
        await client.rcpt(f"bounces@{DOMAIN}")
        try:
            answer = await client.data(raw)
        except aiosmtplib.SMTPDataError as refused:
            return refused.code, refused.message
        return answer.code, answer.message
    finally:
        await client.quit()


async def _gateway(start_gateway: GatewayFactory, **overrides: object) -> RunningGateway:
    return await start_gateway(bounce_mailbox_port=0, message_id_domain=DOMAIN, **overrides)


async def test_a_bounce_and_a_complaint_become_engagements_with_their_status_and_nothing_else_does(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await _gateway(start_gateway)
    auto_reply = EmailMessage()
    auto_reply["From"], auto_reply["Subject"] = "asha@example.in", "Out of office"
    auto_reply.set_content("Away until Monday.")
    assert await deliver(gateway, auto_reply.as_bytes()) == (250, "2.0.0 accepted, not a report about an xsell message")
    delayed = bounce("dsn-0").replace(b"Action: failed", b"Action: delayed")
    assert (await deliver(gateway, delayed))[0] == 250
    assert downstream.services.calls == []

    assert await deliver(gateway, bounce("dsn-1")) == (250, "2.0.0 recorded")
    assert await deliver(gateway, complaint()) == (250, "2.0.0 recorded")
    bounced, complained = engagements(downstream)
    assert (bounced.campaign_id, bounced.kind, bounced.detail) == (
        CAMPAIGN_ID,
        channels_resources.ENGAGEMENT_KIND_BOUNCED,
        "5.1.1 permanent",
    )
    # The report's own Message-ID is the idempotency key: the same report delivered twice is recorded once.
    assert bounced.request_id == "mailbox:<dsn-1@mx.example.in>"
    assert (complained.kind, complained.detail) == (channels_resources.ENGAGEMENT_KIND_COMPLAINED, "abuse")
    assert all("asha" not in request.detail for request in (bounced, complained))
    # Neither carries the envelope id channels signed: no proof the relay had the message, so no receipt.
    assert receipts(downstream) == []


async def test_a_report_of_delivery_asked_for_by_channels_becomes_the_message_receipt(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await _gateway(start_gateway)
    report = delivery_report(
        reporting_mta="mx.example.in",
        return_path=f"bounces@{DOMAIN}",
        recipient="asha@example.in",
        envelope_id=xtext(signed_envelope_id(CAMPAIGN_ID, "test-tracking-secret")),
        returned=RETURNED.replace("\n", "\r\n").encode(),
    )
    with structlog.testing.capture_logs() as logs:
        assert await deliver(gateway, report) == (250, "2.0.0 recorded")
    # campaign.id, as on every other service's lines about an outreach (it was campaign_id here alone).
    (recorded,) = [line for line in logs if line["event"] == "mailbox_report_recorded"]
    assert recorded["campaign.id"] == CAMPAIGN_ID and "campaign_id" not in recorded
    [receipt] = receipts(downstream)
    assert (receipt.campaign_id, receipt.state, receipt.reason) == (
        CAMPAIGN_ID,
        channels_resources.DELIVERY_STATE_DELIVERED,
        "delivered 2.0.0",
    )
    assert receipt.request_id.startswith("mailbox:<dsn-") and engagements(downstream) == []
    # In the outreach's trace, as the e-mail's hand-over is: the report was a trace of its own that no look-up of the
    # campaign ID showed.
    (received,) = downstream.services.to(RECEIPT)
    assert received.metadata["traceparent"].split("-")[1] == outreach_trace_id(CAMPAIGN_ID)
    (span,) = [span for span in gateway.spans.get_finished_spans() if span.name == "gateway mailbox receipt"]
    assert span.attributes is not None and span.attributes["campaign.id"] == CAMPAIGN_ID

    # A signed bounce proves the relay had the message: first the SENT receipt it implies, then the engagement.
    envelope_id = xtext(signed_envelope_id(CAMPAIGN_ID, "test-tracking-secret"))
    reporter = b"Reporting-MTA: dns; mx.example.in\n"
    signed = bounce("dsn-5").replace(reporter, reporter + f"Original-Envelope-Id: {envelope_id}\n".encode())
    assert await deliver(gateway, signed) == (250, "2.0.0 recorded")
    assert [(r.request_id, r.state) for r in receipts(downstream)][1:] == [
        ("mailbox:<dsn-5@mx.example.in>:sent", channels_resources.DELIVERY_STATE_SENT)
    ]
    assert [e.kind for e in engagements(downstream)] == [channels_resources.ENGAGEMENT_KIND_BOUNCED]


async def test_a_report_of_delivery_we_did_not_sign_is_dropped(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    """The mailbox is on the public edge: a forged report naming a guessed campaign ID settles nothing."""
    gateway = await _gateway(start_gateway)
    forged = delivery_report(
        reporting_mta="mx.example.in",
        return_path=f"bounces@{DOMAIN}",
        recipient="asha@example.in",
        envelope_id=xtext(signed_envelope_id(CAMPAIGN_ID, "a-guessed-secret")),
        returned=RETURNED.replace("\n", "\r\n").encode(),
    )
    assert await deliver(gateway, forged) == (250, "2.0.0 accepted, not a report about an xsell message")
    assert downstream.services.calls == []


async def test_a_report_channels_cannot_record_now_is_deferred_and_one_about_an_unknown_message_dropped(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    down = await _gateway(start_gateway, channels_target=unused_target(), downstream_timeout_seconds=1.0)
    code, _ = await deliver(down, bounce("dsn-2"))
    assert code == 451  # the reporting server keeps the report and tries again

    async def unknown(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "channels has no record of campaign ID X yet")
        raise AssertionError  # abort raises

    downstream.services.responders[ENGAGEMENT] = unknown
    up = await _gateway(start_gateway)
    assert await deliver(up, bounce("dsn-3")) == (250, "2.0.0 accepted, no such message")


async def test_a_mail_too_large_to_be_a_report_is_refused(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await _gateway(start_gateway)
    # 11 MiB in lines of 1,000 bytes, over the mailbox's 10 MiB (RFC 1870 SIZE).
    code, _ = await deliver(gateway, bounce("dsn-4") + (b"x" * 998 + b"\r\n") * 11 * 1049)
    assert code == 552
    assert downstream.services.calls == []
