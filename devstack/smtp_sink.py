"""A development SMTP relay that keeps every message under var/mail/ instead of delivering it, and, as a relay that
offers DSN (RFC 3461) does, reports each delivery to the message's return path when the sender asked it to.

The parts are shared with the tests' relay: `DsnServer` (aiosmtpd taking the DSN parameters), `dsn_requested`,
`delivery_report` (an RFC 3464 delivery status notification) and `ReportReturner` (sends reports as an MTA does).
"""

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from plumbing.ids import new_id

log = structlog.get_logger(__name__)

_MAIL_PARAMETERS = ("RET", "ENVID")
_RCPT_PARAMETERS = ("NOTIFY", "ORCPT")
DSN_KEYWORD = "250-DSN"


def offering_dsn(responses: list[str]) -> list[str]:
    """EHLO's responses with DSN among the extensions (before the last line, which ends the reply)."""
    return [*responses[:-1], DSN_KEYWORD, responses[-1]]


class DsnServer(SMTP):
    """aiosmtpd's server taking RFC 3461's parameters, which it would refuse with 555: RET and ENVID on MAIL, NOTIFY
    and ORCPT on RCPT. They are kept, as written, in the envelope's mail_options and rcpt_options for the handler."""

    async def smtp_MAIL(self, arg: str | None) -> None:
        rest, taken = _take(arg, _MAIL_PARAMETERS)
        await super().smtp_MAIL(rest)
        if self.envelope is not None and self.envelope.mail_from is not None:
            self.envelope.mail_options.extend(taken)

    async def smtp_RCPT(self, arg: str | None) -> None:
        rest, taken = _take(arg, _RCPT_PARAMETERS)
        await super().smtp_RCPT(rest)
        if self.envelope is not None:
            self.envelope.rcpt_options.extend(taken)


def _take(arg: str | None, names: Sequence[str]) -> tuple[str | None, list[str]]:
    """The command's argument without the named ESMTP parameters, and those parameters."""
    if not arg:
        return arg, []
    kept: list[str] = []
    taken: list[str] = []
    for word in arg.split(" "):
        (taken if word.partition("=")[0].upper() in names else kept).append(word)
    return " ".join(kept), taken


def dsn_requested(envelope: Envelope) -> tuple[bool, str]:
    """Whether the sender asked for a report of success (NOTIFY=...SUCCESS...), and its ENVID (xtext, as sent)."""
    notify = [
        option.partition("=")[2].upper() for option in envelope.rcpt_options if option.upper().startswith("NOTIFY=")
    ]
    envid = next((o.partition("=")[2] for o in envelope.mail_options if o.upper().startswith("ENVID=")), "")
    return any("SUCCESS" in value.split(",") for value in notify), envid


def delivery_report(
    *,
    reporting_mta: str,
    return_path: str,
    recipient: str,
    envelope_id: str,
    returned: bytes,
    action: str = "delivered",
    status: str = "2.0.0",
    arrival: datetime | None = None,
) -> bytes:
    """An RFC 3464 delivery status notification about one recipient, returning the message's headers (RET=HDRS)."""
    headers = returned.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace").replace("\r\n", "\n")
    now = format_datetime(arrival or datetime.now(UTC))
    # Unique across runs, as an MTA's queue ids are: the mailbox records a report once per Message-ID (its request_id),
    # and a counter that started again at 1 with each `make run` gave the second run's reports the first run's ids,
    # which channels refused as already used (every e-mail of that run stayed SENT, never DELIVERED).
    boundary = f"{new_id('dsn-')}-{reporting_mta}"
    envid_line = f"Original-Envelope-Id: {envelope_id}\n" if envelope_id else ""
    text = f"""\
From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>
To: {return_path}
Subject: Successful Mail Delivery Report
Date: {now}
Message-ID: <{boundary}@{reporting_mta}>
MIME-Version: 1.0
Auto-Submitted: auto-replied
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

This is the mail system at host {reporting_mta}. Your message was {action}.

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; {reporting_mta}
{envid_line}Arrival-Date: {now}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}

--{boundary}
Content-Type: text/rfc822-headers

{headers}
--{boundary}--
"""
    return text.replace("\n", "\r\n").encode("utf-8")


class ReportReturner:
    """Sends reports to the return path's mailbox as an MTA does: from the null sender, and again after a delay while
    the mailbox defers (4xx) or cannot be reached; a permanent refusal (5xx) drops the report."""

    def __init__(self, host: str, port: int, *, retry_delays: Sequence[float] = (0.2, 0.5, 1.0, 2.0, *[4.0] * 14)):
        self.host, self.port = host, port
        self.retry_delays = tuple(retry_delays)
        self.delivered = 0
        self.failed: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def send(self, report: bytes, recipient: str) -> None:
        """Queues `report` to `recipient` (the return path) on the running loop."""
        task = asyncio.get_running_loop().create_task(self._deliver(report, recipient))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, report: bytes, recipient: str) -> None:
        for delay in (*self.retry_delays, None):
            try:
                await self._send_once(report, recipient)
                self.delivered += 1
                return
            except aiosmtplib.SMTPResponseException as error:
                if error.code >= 500:
                    self.failed.append(f"{error.code} {error.message}")
                    return
                reason = f"{error.code} {error.message}"
            except (aiosmtplib.SMTPException, OSError) as error:
                reason = type(error).__name__
            if delay is None:
                self.failed.append(reason)
                return
            await asyncio.sleep(delay)

    async def _send_once(self, report: bytes, recipient: str) -> None:
        # From the null sender (MAIL FROM:<>), which aiosmtplib.send does not take.
        client = aiosmtplib.SMTP(hostname=self.host, port=self.port, timeout=10)
        await client.connect()
        try:
            await client.mail("")
            await client.rcpt(recipient)
            await client.data(report)
        finally:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()


def report_delivery(reports: ReportReturner | None, envelope: Envelope, reporting_mta: str) -> None:
    """Reports the accepted message of `envelope` to its return path, for each recipient, when it asked for it."""
    success, envelope_id = dsn_requested(envelope)
    if reports is None or not success or not envelope.mail_from:
        return  # not asked, or from the null sender: a report is never reported on
    content = envelope.original_content or envelope.content or b""
    returned = content.encode() if isinstance(content, str) else content
    for recipient in envelope.rcpt_tos:
        report = delivery_report(
            reporting_mta=reporting_mta,
            return_path=envelope.mail_from,
            recipient=recipient,
            envelope_id=envelope_id,
            returned=returned,
        )
        reports.send(report, envelope.mail_from)


class MailboxHandler:
    """Stores each accepted message as an .eml file named after its campaign ID; with `reports`, offers DSN and
    reports each delivery that asked for it."""

    def __init__(self, directory: Path, reports: ReportReturner | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.messages: list[Message] = []
        self.reports = reports

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when the handler has no EHLO hook
        return offering_dsn(responses) if self.reports is not None else responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or envelope.content
        message = message_from_bytes(content)
        self.messages.append(message)
        name = message.get("X-Xsell-Campaign-Id") or f"message-{len(self.messages)}"
        (self.directory / f"{name}.eml").write_bytes(content)
        report_delivery(self.reports, envelope, "sink.xsell.local")
        return "250 Message accepted for delivery"


class DsnController(Controller):
    """aiosmtpd's Controller serving `DsnServer`, able to listen on port 0."""

    def factory(self) -> SMTP:
        return DsnServer(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        if self.port == 0:
            assert isinstance(self.server, asyncio.Server)
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def start_sink(
    directory: Path, port: int, host: str = "127.0.0.1", *, reports_to: tuple[str, int] | None = None
) -> tuple[Controller, MailboxHandler]:
    """The relay on `port`; with `reports_to` (the return-path mailbox's host and port), it offers DSN and reports."""
    returner = ReportReturner(*reports_to) if reports_to is not None else None
    handler = MailboxHandler(directory, returner)
    controller = DsnController(handler, hostname=host, port=port)
    controller.start()
    return controller, handler
