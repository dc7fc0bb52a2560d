"""Reports at the return-path mailbox: which outreach a delivery status notification (RFC 3464) or a complaint
feedback report (RFC 5965) is about, and what it says: a bounce, a complaint, or (asked for with RFC 3461's
NOTIFY=SUCCESS) that the message was delivered or passed on."""

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage, Message

from plumbing.signing import envelope_campaign_id
from xsell.channels.v1 import resources_pb2 as channels_resources

# What composition writes into X-Xsell-Campaign-Id and the Message-ID's left-hand side: visible ASCII, no "@" or ">".
_CAMPAIGN_ID = re.compile(r"^[!-?A-~]{1,200}$")
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_HEADERS_PARTS = ("text/rfc822-headers", "message/rfc822", "message/rfc822-headers")
CAMPAIGN_ID_HEADER = "X-Xsell-Campaign-Id"


class NotAReport(ValueError):
    """The mail is not a report about one of our messages (an auto-reply, a delay notice, spam...)."""


@dataclass(frozen=True)
class Report:
    """What a report says about one outreach: bounced (with the status code) or complained (with the feedback type).

    `detail` never quotes the diagnostic text, which names the recipient's address."""

    campaign_id: str
    kind: int  # xsell.channels.v1.EngagementKind: BOUNCED or COMPLAINED
    detail: str
    report_id: str
    signed: bool = False
    """Whether the report carries the envelope id channels signed (a DSN): only then does it prove the relay had the
    message, since anyone can write a report naming a guessed campaign ID."""


@dataclass(frozen=True)
class Receipt:
    """A delivery status notification that reports no failure: the receiving server took the message (`delivered`,
    `expanded`: DELIVERED), or the relay passed it on to a server that does not report (`relayed`: SENT)."""

    campaign_id: str
    state: int  # xsell.channels.v1.DeliveryState: DELIVERED or SENT
    detail: str
    report_id: str


_RECEIPT_ACTIONS = {
    "delivered": channels_resources.DELIVERY_STATE_DELIVERED,
    "expanded": channels_resources.DELIVERY_STATE_DELIVERED,
    "relayed": channels_resources.DELIVERY_STATE_SENT,
}


def _fields(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part (per-message, per-recipient)."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the parser reads delivery-status blocks as messages
        return [block for block in payload if isinstance(block, Message)]
    text = payload if isinstance(payload, str) else _bytes(part).decode("ascii", "replace")
    return [message_from_bytes(block.strip().encode(), policy=policy.default) for block in re.split(r"\n\s*\n", text)]


def _bytes(part: Message) -> bytes:
    decoded = part.get_payload(decode=True)
    return decoded if isinstance(decoded, bytes) else b""


def _original_campaign_id(report: Message, message_id_domain: str) -> str:
    """The campaign ID of the message the report returns: its X-Xsell-Campaign-Id, or its Message-ID
    (<campaign ID@message_id_domain>; any domain when message_id_domain is empty, channels then tells ours)."""
    for part in report.walk():
        if part.get_content_type() not in _HEADERS_PARTS:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            original = payload[0]
        else:
            raw = payload.encode() if isinstance(payload, str) else _bytes(part)
            original = message_from_bytes(raw, policy=policy.default)
        stated = str(original.get(CAMPAIGN_ID_HEADER, "")).strip()
        if _CAMPAIGN_ID.match(stated):
            return stated
        message_id = str(original.get("Message-ID", "")).strip().strip("<>")
        local, _, domain = message_id.rpartition("@")
        if (not message_id_domain or domain.lower() == message_id_domain.lower()) and _CAMPAIGN_ID.match(local):
            return local
    raise NotAReport("it does not return the headers of one of our messages")


def _envelope_campaign_id(blocks: list[Message], envelope_secret: str) -> str:
    """The campaign ID of the envelope id channels signed and sent as the DSN request's ENVID (RFC 3461), from
    Original-Envelope-Id; "" when there is none or it is not signed with `envelope_secret`."""
    stated = str(blocks[0].get("Original-Envelope-Id", "")).strip() if blocks else ""
    envelope_id = _XTEXT.sub(lambda hex_pair: chr(int(hex_pair.group(1), 16)), stated)
    campaign_id = envelope_campaign_id(envelope_id, envelope_secret) if envelope_secret else None
    return campaign_id if campaign_id is not None and _CAMPAIGN_ID.match(campaign_id) else ""


_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")


def read_report(raw: bytes, message_id_domain: str, envelope_secret: str = "") -> Report | Receipt:
    """The report in a mail delivered to the return-path mailbox; NotAReport says why there is none.

    A report of delivery counts only with the envelope id channels signed with `envelope_secret` (the tracking
    secret both share); a bounce or complaint without it still names its outreach by the returned headers."""
    mail = message_from_bytes(raw, policy=policy.default)
    assert isinstance(mail, EmailMessage)
    if mail.get_content_type() != "multipart/report":
        raise NotAReport(f"a {mail.get_content_type()} mail, not a multipart/report")
    report_type = str(mail.get_param("report-type", "")).lower()
    report_id = str(mail.get("Message-ID", "")).strip()
    if report_type == "delivery-status":
        status = next((p for p in mail.walk() if p.get_content_type() == "message/delivery-status"), None)
        if status is None:
            raise NotAReport("a delivery-status report without its message/delivery-status part")
        blocks = _fields(status)
        actions = [(str(block.get("Action", "")).strip().lower(), block) for block in blocks]
        failed = [block for action, block in actions if action == "failed"]
        taken = [(action, block) for action, block in actions if action in _RECEIPT_ACTIONS]
        if not failed and not taken:
            raise NotAReport("a delivery status notification that reports no failure and no delivery (delayed)")
        signed_campaign_id = _envelope_campaign_id(blocks, envelope_secret)
        if not failed:
            if not signed_campaign_id:
                raise NotAReport("a report of delivery without an envelope id we signed")
            campaign_id = signed_campaign_id
            action, block = taken[0]
            code = str(block.get("Status", "")).strip().split(" ")[0]
            detail = f"{action} {code if _STATUS.match(code) else '2.0.0'}"
            return Receipt(campaign_id, _RECEIPT_ACTIONS[action], detail, report_id)
        code = str(failed[0].get("Status", "")).strip().split(" ")[0]
        if not _STATUS.match(code):
            code = "5.0.0"
        detail = f"{code} {'permanent' if code.startswith('5') else 'transient, given up'}"
        campaign_id = signed_campaign_id or _original_campaign_id(mail, message_id_domain)
        return Report(
            campaign_id, channels_resources.ENGAGEMENT_KIND_BOUNCED, detail, report_id, signed=bool(signed_campaign_id)
        )
    if report_type == "feedback-report":
        feedback = next((p for p in mail.walk() if p.get_content_type() == "message/feedback-report"), None)
        if feedback is None:
            raise NotAReport("a feedback report without its message/feedback-report part")
        blocks = _fields(feedback)
        kind = str(blocks[0].get("Feedback-Type", "")).strip().lower() if blocks else ""
        if kind not in ("abuse", "fraud", "virus", "other", "not-spam"):
            raise NotAReport(f"a feedback report of unknown type {kind[:20]!r}")
        if kind == "not-spam":
            raise NotAReport("a not-spam feedback report is no complaint")
        campaign_id = _original_campaign_id(mail, message_id_domain)
        return Report(campaign_id, channels_resources.ENGAGEMENT_KIND_COMPLAINED, kind, report_id)
    raise NotAReport(f"a multipart/report of type {report_type[:30]!r}")
