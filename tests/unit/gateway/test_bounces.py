"""Bounce and complaint reports read from the return-path mailbox: DSNs (RFC 3464) and ARF reports (RFC 5965)."""

import pytest

from devstack.smtp_sink import delivery_report
from gateway.bounces import NotAReport, Receipt, Report, read_report
from plumbing.signing import signed_envelope_id
from services.channels.smtp import xtext
from xsell.channels.v1 import resources_pb2 as channels_resources

DOMAIN = "xsell.bank.example"
CAMPAIGN_ID = "CSELL-NOV-T06-0884"

# As Postfix sends it: the human part, the machine-readable status, the returned message's headers.
POSTFIX_BOUNCE = f"""\
Return-Path: <>
Message-ID: <20261128091502.4F1A3C0123@mx.example.in>
From: MAILER-DAEMON@mx.example.in (Mail Delivery System)
To: bounces@{DOMAIN}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="4F1A3C0123.1764321302/mx.example.in"

--4F1A3C0123.1764321302/mx.example.in
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<asha.k@example.in>: host mx.example.in[203.0.113.7] said: 550 5.1.1
    <asha.k@example.in>: Recipient address rejected: User unknown

--4F1A3C0123.1764321302/mx.example.in
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.in
X-Postfix-Queue-ID: 4F1A3C0123
Arrival-Date: Sat, 28 Nov 2026 09:15:01 +0530 (IST)

Final-Recipient: rfc822; asha.k@example.in
Original-Recipient: rfc822;asha.k@example.in
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.in
Diagnostic-Code: smtp; 550 5.1.1 <asha.k@example.in>: Recipient address
    rejected: User unknown

--4F1A3C0123.1764321302/mx.example.in
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: Fundsy <offers@{DOMAIN}>
To: asha.k@example.in
Subject: Asha, a lumpsum idea
Message-ID: <{CAMPAIGN_ID}@{DOMAIN}>
X-Xsell-Campaign-Id: {CAMPAIGN_ID}

--4F1A3C0123.1764321302/mx.example.in--
"""

# RFC 5965's example shape: the human part, the feedback report, the original message.
COMPLAINT = f"""\
From: <abusedesk@mailbox.example.in>
Date: Sat, 28 Nov 2026 10:01:02 +0530
Subject: FW: Asha, a lumpsum idea
To: <bounces@{DOMAIN}>
Message-ID: <arf-2026-0001@mailbox.example.in>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP 198.51.100.10.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

From: Fundsy <offers@{DOMAIN}>
To: asha.k@example.in
Subject: Asha, a lumpsum idea
Message-ID: <{CAMPAIGN_ID}@{DOMAIN}>

Hi Asha, ...
--part1_13d.2e68ed54_boundary--
"""


def test_a_hard_bounce_names_the_outreach_and_its_status_but_not_the_address() -> None:
    report = read_report(POSTFIX_BOUNCE.encode(), DOMAIN)
    assert (report.campaign_id, report.kind, report.detail) == (
        CAMPAIGN_ID,
        channels_resources.ENGAGEMENT_KIND_BOUNCED,
        "5.1.1 permanent",
    )
    assert report.report_id == "<20261128091502.4F1A3C0123@mx.example.in>"
    assert "asha" not in report.detail


def test_a_bounce_is_matched_by_the_message_id_when_the_campaign_header_is_missing() -> None:
    raw = POSTFIX_BOUNCE.replace(f"X-Xsell-Campaign-Id: {CAMPAIGN_ID}\n", "")
    assert read_report(raw.encode(), DOMAIN).campaign_id == CAMPAIGN_ID
    # Another system's Message-ID (another domain) is not ours; without a configured domain, channels tells.
    other = raw.replace(f"@{DOMAIN}>", "@other.example>").encode()
    with pytest.raises(NotAReport):
        read_report(other, DOMAIN)
    assert read_report(other, "").campaign_id == CAMPAIGN_ID


def test_a_transient_failure_given_up_is_a_bounce_and_a_delay_is_none() -> None:
    given_up = POSTFIX_BOUNCE.replace("Status: 5.1.1", "Status: 4.4.7")
    assert read_report(given_up.encode(), DOMAIN).detail == "4.4.7 transient, given up"
    delayed = POSTFIX_BOUNCE.replace("Action: failed", "Action: delayed")
    with pytest.raises(NotAReport, match="reports no failure"):
        read_report(delayed.encode(), DOMAIN)


def test_an_abuse_report_is_a_complaint_about_the_returned_message() -> None:
    report = read_report(COMPLAINT.encode(), DOMAIN)
    assert (report.campaign_id, report.kind, report.detail) == (
        CAMPAIGN_ID,
        channels_resources.ENGAGEMENT_KIND_COMPLAINED,
        "abuse",
    )
    with pytest.raises(NotAReport, match="not-spam"):
        read_report(COMPLAINT.replace("Feedback-Type: abuse", "Feedback-Type: not-spam").encode(), DOMAIN)


@pytest.mark.parametrize(
    "raw",
    [
        "From: someone@example.in\nSubject: Out of office\n\nI am away until Monday.\n",
        POSTFIX_BOUNCE.replace("report-type=delivery-status", "report-type=disposition-notification"),
        POSTFIX_BOUNCE.replace(f"Message-ID: <{CAMPAIGN_ID}@{DOMAIN}>\nX-Xsell-Campaign-Id: {CAMPAIGN_ID}\n", ""),
    ],
    ids=["auto-reply", "read-receipt", "no-original-headers"],
)
def test_what_is_not_a_report_about_our_message_says_so(raw: str) -> None:
    with pytest.raises(NotAReport):
        read_report(raw.encode(), DOMAIN)


SECRET = "test-tracking-secret"


def _success(action: str = "delivered", campaign_id: str = CAMPAIGN_ID, *, signed: bool = True) -> bytes:
    returned = f"From: Fundsy <offers@{DOMAIN}>\r\nMessage-ID: <{CAMPAIGN_ID}@{DOMAIN}>\r\n\r\nHi Asha\r\n".encode()
    envelope_id = signed_envelope_id(campaign_id, SECRET) if signed else campaign_id
    return delivery_report(
        reporting_mta="mx.example.in",
        return_path=f"bounces@{DOMAIN}",
        recipient="asha.k@example.in",
        envelope_id=xtext(envelope_id),
        returned=returned,
        action=action,
    )


def test_a_report_of_success_is_a_receipt_of_the_outreach_named_by_its_signed_envelope_id() -> None:
    receipt = read_report(_success(), DOMAIN, SECRET)
    assert isinstance(receipt, Receipt)
    assert (receipt.campaign_id, receipt.state, receipt.detail) == (
        CAMPAIGN_ID,
        channels_resources.DELIVERY_STATE_DELIVERED,
        "delivered 2.0.0",
    )
    # Relayed on to a server that does not report: the relay took it, no more is known.
    assert read_report(_success("relayed"), DOMAIN, SECRET).state == channels_resources.DELIVERY_STATE_SENT  # type: ignore[union-attr]
    # The envelope id is xtext on the wire.
    assert read_report(_success(campaign_id="CS+1=x.y"), DOMAIN, SECRET).campaign_id == "CS+1=x.y"


def test_a_report_of_success_that_we_did_not_sign_is_none() -> None:
    """The mailbox is public: anyone can write a report naming a guessed campaign ID, to settle a message unsent."""
    with pytest.raises(NotAReport, match="signed"):
        read_report(_success(signed=False), DOMAIN, SECRET)
    with pytest.raises(NotAReport, match="signed"):
        read_report(_success(), DOMAIN, "another-secret")
    forged = _success().replace(signed_envelope_id(CAMPAIGN_ID, SECRET)[-4:].encode(), b"0000")
    with pytest.raises(NotAReport, match="signed"):
        read_report(forged, DOMAIN, SECRET)


def test_a_bounce_says_whether_it_carries_our_signed_envelope_id() -> None:
    unsigned = read_report(POSTFIX_BOUNCE.encode(), DOMAIN, SECRET)
    assert isinstance(unsigned, Report) and not unsigned.signed
    envid = f"Original-Envelope-Id: {xtext(signed_envelope_id(CAMPAIGN_ID, SECRET))}\n"
    signed = read_report(
        POSTFIX_BOUNCE.replace("X-Postfix-Queue-ID", envid + "X-Postfix-Queue-ID").encode(), DOMAIN, SECRET
    )
    assert isinstance(signed, Report) and signed.signed and signed.campaign_id == CAMPAIGN_ID


def test_a_report_that_says_delivered_and_failed_is_a_bounce() -> None:
    both = POSTFIX_BOUNCE.replace(
        "Action: failed", "Action: delivered\nStatus: 2.0.0\n\nFinal-Recipient: rfc822; b@x.in\nAction: failed", 1
    )
    report = read_report(both.encode(), DOMAIN, SECRET)
    assert isinstance(report, Report) and report.kind == channels_resources.ENGAGEMENT_KIND_BOUNCED
