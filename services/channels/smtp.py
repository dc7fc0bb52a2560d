"""The e-mail provider adapter: mail transactions over kept-open aiosmtplib sessions, with classified failures."""

import asyncio
import re
import ssl
from collections import deque
from typing import NamedTuple

import aiosmtplib
import structlog
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import normalize_message_line_endings

from services.channels.delivery import (
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderUnavailable,
    failure_for_reply,
    scrub,
)

log = structlog.get_logger(__name__)


class SmtpSender:
    """Hands messages to an SMTP relay over a few kept-open sessions, and says, on failure, whether the relay may
    have taken the message.

    A session carries many mail transactions (MAIL, RCPT, DATA, then the next MAIL), so a message costs no
    connect, EHLO, STARTTLS, AUTH or QUIT. A session that failed in any way is closed, never reused: what the
    relay thinks of it is unknown.

    When the relay offers PIPELINING (RFC 2920; Postfix, SES, SendGrid and Mailgun do), MAIL, RCPT and DATA go in
    one write and their three replies come back together: two round trips and two writes per message instead of
    four each, which halves the time a session is busy with one message and a good part of its CPU.

    With `delivery_reports`, every message asks the relay for a delivery status notification whether it is
    delivered or not (RFC 3461: `NOTIFY=SUCCESS,FAILURE`, `RET=HDRS`, the campaign ID as `ENVID`), sent to the
    envelope sender, where the gateway's mailbox turns it into the message's receipt. A relay that does not offer
    DSN is refused as a session (its messages wait, retried, for the settings to be fixed): an e-mail sent without
    the request would never report, and could be handed over again after a crash.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        start_tls: bool = False,
        implicit_tls: bool = False,
        tls_ca_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout_seconds: float = 10.0,
        connections: int = 4,
        messages_per_session: int = 1000,
        delivery_reports: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.start_tls = start_tls
        self.implicit_tls = implicit_tls
        # The relay's certificate is always verified: against the system's CAs, or a private CA's bundle.
        self.tls_context = ssl.create_default_context(cafile=tls_ca_file) if start_tls or implicit_tls else None
        self.username = username
        self.password = password
        self.timeout_seconds = timeout_seconds
        self.messages_per_session = messages_per_session
        self.delivery_reports = delivery_reports
        self._sessions = asyncio.Semaphore(connections)
        self._idle: list[tuple[aiosmtplib.SMTP | _Pipeline, int]] = []
        """Open sessions no message is using, each with the transactions it has carried."""

    async def send(self, payload: bytes, *, sender: str, recipient: str, envelope_id: str = "") -> str:
        """Sends the message `payload` (its wire form, CRLF); returns the relay's reply to the data. `envelope_id`
        (the campaign ID) comes back in the message's delivery status notifications, when they are asked for.

        Raises ProviderUnavailable when the relay certainly did not accept it (refused, timed out or
        answered 4xx before the message was transferred), ProviderRejected on a 5xx answer to the
        mail transaction, and ProviderOutcomeUnknown when the connection was lost while the message
        was being transferred, since the relay may have queued it.
        """
        envelope = self._envelope(sender, recipient, envelope_id)
        async with self._sessions:
            client, carried = self._idle.pop() if self._idle else (None, 0)
            if client is not None and not client.is_connected:
                await _close(client)
                client = None
            try:
                if client is None:
                    client, carried = await self._connect(), 0
                    reply = await self._transaction(client, payload, envelope)
                else:
                    try:
                        reply = await self._transaction(client, payload, envelope)
                    except _SessionLost:
                        # The relay closed the idle session (its timeout) before DATA's reply: it holds nothing, so
                        # the same transaction goes over a new session.
                        await _close(client)
                        client, carried = await self._connect(), 0
                        reply = await self._transaction(client, payload, envelope)
            except _SessionLost as lost:
                if client is not None:
                    await _close(client)
                raise ProviderUnavailable(lost.reason) from lost.__cause__
            except BaseException:
                if client is not None:
                    await _close(client)
                raise
            carried += 1
            if carried >= self.messages_per_session:
                # Ended before the relay's own cap (SendGrid 5,000 a connection, SocketLabs 50) refuses the next MAIL
                # with a 4xx, which would send that message back to wait for a retry.
                await _close(client)
            else:
                self._idle.append((client, carried))
            return reply

    async def _connect(self) -> "aiosmtplib.SMTP | _Pipeline":
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout_seconds,
            # False, not None: None would upgrade whenever the relay offers STARTTLS, silently.
            start_tls=self.start_tls,
            # TLS from the first byte (port 465, "SMTPS"), for relays that take no STARTTLS.
            use_tls=self.implicit_tls,
            tls_context=self.tls_context,
            username=self.username,
            password=self.password,
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                # Without STARTTLS or AUTH, aiosmtplib would say EHLO before the first MAIL; said here, its answer
                # tells whether the relay takes pipelined commands.
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except aiosmtplib.SMTPResponseException as error:
            await _close(client)
            # A refused greeting, EHLO or AUTH is about this relay or our credentials, not this message.
            raise ProviderUnavailable(f"SMTP {error.code} on connect: {scrub(error.message)}") from error
        except (aiosmtplib.SMTPException, OSError) as error:
            await _close(client)
            raise ProviderUnavailable(f"SMTP connection to {self.host}:{self.port} failed: {error}") from error
        if self.delivery_reports and not client.supports_extension("dsn"):
            await _close(client)
            raise ProviderUnavailable(
                f"the SMTP relay {self.host}:{self.port} offers no DSN (RFC 3461), which "
                "XSELL_CHANNELS_SMTP_DELIVERY_REPORTS asks for: use a relay that offers it, or turn the setting off"
            )
        if client.supports_extension("pipelining") and client.transport is not None:
            # aiosmtplib sends one command and waits for its reply; the transactions of a pipelining relay's
            # session run on a protocol of their own from here on (connect, EHLO, STARTTLS and AUTH were its).
            return _Pipeline.take_over(client.transport, self.timeout_seconds)
        return client

    def _envelope(self, sender: str, recipient: str, envelope_id: str) -> "_Envelope":
        if not self.delivery_reports:
            return _Envelope(sender, recipient)
        # RFC 3461: ENVID is at most 100 characters; the returned headers (RET=HDRS) still carry the campaign ID.
        envid = xtext(envelope_id)
        mail_options = ["RET=HDRS", f"ENVID={envid}"] if envelope_id and len(envid) <= 100 else ["RET=HDRS"]
        rcpt_options = ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{xtext(recipient)}"]
        return _Envelope(sender, recipient, tuple(mail_options), tuple(rcpt_options))

    async def _transaction(self, client: "aiosmtplib.SMTP | _Pipeline", payload: bytes, envelope: "_Envelope") -> str:
        if isinstance(client, _Pipeline):
            return await _pipelined_transaction(client, payload, envelope)
        return await _transaction(client, payload, envelope)

    async def close(self) -> None:
        """Ends the kept-open sessions with QUIT."""
        idle, self._idle = self._idle, []
        for client, _ in idle:
            await _close(client)


class _Envelope(NamedTuple):
    """MAIL FROM and RCPT TO, each with its ESMTP parameters (the DSN request, RFC 3461)."""

    sender: str
    recipient: str
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[str, ...] = ()


def xtext(value: str) -> str:
    """RFC 3461's xtext: "+" and "=", controls, spaces and what is not ASCII as "+" and two hex digits."""
    return "".join(
        chr(byte) if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D) else f"+{byte:02X}"
        for byte in value.encode("utf-8")
    )


class _SessionLost(Exception):
    """The session broke before DATA: the relay holds nothing of this message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _transaction(client: aiosmtplib.SMTP, payload: bytes, envelope: _Envelope) -> str:
    """One mail transaction on an open session; the relay's reply to DATA."""
    try:
        await client.mail(envelope.sender, options=envelope.mail_options)
        await client.rcpt(envelope.recipient, options=envelope.rcpt_options)
    except aiosmtplib.SMTPSenderRefused as error:
        raise failure_for_reply(error.code, "MAIL", error.message) from error
    except aiosmtplib.SMTPRecipientRefused as error:
        raise failure_for_reply(error.code, "RCPT", error.message) from error
    except aiosmtplib.SMTPResponseException as error:
        raise failure_for_reply(error.code, "MAIL/RCPT", error.message) from error
    except (aiosmtplib.SMTPException, OSError) as error:
        raise _SessionLost(f"SMTP connection lost before DATA: {type(error).__name__}") from error
    try:
        reply = await client.data(payload)
    except aiosmtplib.SMTPResponseException as error:
        # The relay answered: it refused (4xx: later; 5xx: never) and does not hold the message.
        raise failure_for_reply(error.code, "DATA", error.message) from error
    except (aiosmtplib.SMTPException, OSError) as error:
        raise ProviderOutcomeUnknown(
            f"SMTP connection lost during DATA ({type(error).__name__}); the relay may have queued it"
        ) from error
    return scrub(reply.message)


async def _pipelined_transaction(session: "_Pipeline", payload: bytes, envelope: _Envelope) -> str:
    """One mail transaction with MAIL, RCPT and DATA in one write (RFC 2920); the relay's reply to the data.

    Each reply is read in order and the first refusal is the outcome, as without pipelining: after a refused MAIL
    or RCPT the relay answers DATA with 503 (no valid recipients) and holds nothing; one that answered 354 anyway
    gets no data, the session is closed mid-DATA, which aborts the transaction.
    """
    commands = b"MAIL FROM:%s%s\r\nRCPT TO:%s%s\r\nDATA\r\n" % (
        _command_address(envelope.sender),
        _parameters(envelope.mail_options),
        _command_address(envelope.recipient),
        _parameters(envelope.rcpt_options),
    )
    if session.replies_waiting:
        # A reply to nothing: the relay said something while the session was idle (421, closing).
        raise _SessionLost("SMTP relay spoke while the session was idle")
    try:
        session.write(commands)
        mail, rcpt, data = await session.replies(3)
    except (_ConnectionEnded, TimeoutError) as error:
        session.abort()
        raise _SessionLost(f"SMTP connection lost before DATA: {type(error).__name__}") from error
    for reply, command, expected in ((mail, "MAIL", (250,)), (rcpt, "RCPT", (250, 251)), (data, "DATA", (354,))):
        if reply.code not in expected:
            if data.code == 354:
                session.abort()  # waiting for data it will not get: closing aborts the transaction
            raise failure_for_reply(reply.code, command, reply.message)
    try:
        session.write(_PERIOD.sub(b"..", normalize_message_line_endings(payload)) + b".\r\n")
        [reply] = await session.replies(1)
    except (_ConnectionEnded, TimeoutError) as error:
        session.abort()
        raise ProviderOutcomeUnknown(
            f"SMTP connection lost during DATA ({type(error).__name__}); the relay may have queued it"
        ) from error
    if reply.code != 250:
        raise failure_for_reply(reply.code, "DATA", reply.message)
    return scrub(reply.message)


_PERIOD = re.compile(rb"(?m)^\.")
"""A line that starts with a dot gets another (RFC 5321 4.5.2), so that no line of the message ends the data."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _command_address(address: str) -> bytes:
    """`<address>` for MAIL or RCPT, as aiosmtplib writes it; ProviderRejected before anything is sent when it cannot
    be (the relay certainly has nothing, and asking again cannot help)."""
    quoted = quote_address(address)
    if _CONTROL.search(quoted):
        raise ProviderRejected("an e-mail address contains a control character")
    return quoted.encode("ascii")


def _parameters(options: tuple[str, ...]) -> bytes:
    """ESMTP parameters after an address (" NOTIFY=SUCCESS,FAILURE ..."); they are xtext, so ASCII."""
    return b"".join(b" " + option.encode("ascii") for option in options)


class _Reply(NamedTuple):
    code: int
    message: str


class _ConnectionEnded(Exception):
    """The relay closed the session, or sent what is not an SMTP reply."""


MAX_REPLY_BYTES = 32 * 1024


class _Pipeline(asyncio.Protocol):
    """The transaction phase of a session with a relay that offers PIPELINING: every reply that arrives is kept, in
    order, until read (aiosmtplib's protocol keeps one reply and drops what comes while it is not waiting)."""

    def __init__(self, transport: asyncio.Transport, timeout_seconds: float) -> None:
        self._transport = transport
        self._timeout = timeout_seconds
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._replies: deque[_Reply] = deque()
        self._wanted = 0
        self._waiter: asyncio.Future[None] | None = None
        self._ended: _ConnectionEnded | None = None

    @classmethod
    def take_over(cls, transport: asyncio.BaseTransport, timeout_seconds: float) -> "_Pipeline":
        assert isinstance(transport, asyncio.Transport)
        pipeline = cls(transport, timeout_seconds)
        transport.set_protocol(pipeline)
        return pipeline

    @property
    def is_connected(self) -> bool:
        return self._ended is None and not self._transport.is_closing()

    @property
    def replies_waiting(self) -> bool:
        return bool(self._replies or self._buffer)

    def write(self, data: bytes) -> None:
        if not self.is_connected:
            raise self._ended or _ConnectionEnded("the session is closed")
        self._transport.write(data)

    async def replies(self, count: int) -> list[_Reply]:
        """The next `count` replies; TimeoutError when they do not all come within the timeout."""
        if len(self._replies) < count:
            if self._ended is not None:
                raise self._ended
            self._wanted = count
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._timeout):
                    await self._waiter
            finally:
                self._waiter = None
        return [self._replies.popleft() for _ in range(count)]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            code = line[:3]
            if not code.isdigit():
                self._end(_ConnectionEnded(f"not an SMTP reply: {line[:40]!r}"))
                return
            self._lines.append(line[4:].decode("utf-8", "replace").strip())
            if line[3:4] != b"-":
                self._replies.append(_Reply(int(code), "\n".join(self._lines)))
                self._lines = []
        if len(self._buffer) > MAX_REPLY_BYTES:
            self._end(_ConnectionEnded("an SMTP reply line too long"))
            return
        if self._waiter is not None and not self._waiter.done() and len(self._replies) >= self._wanted:
            self._waiter.set_result(None)

    def eof_received(self) -> bool:
        self._end(_ConnectionEnded("the relay closed the session"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(_ConnectionEnded(f"the session was lost: {type(exc).__name__ if exc else 'closed'}"))

    def abort(self) -> None:
        """Closes the connection without QUIT: the relay is mid-transaction or silent."""
        self._end(_ConnectionEnded("the session was aborted"))

    def _end(self, ended: _ConnectionEnded) -> None:
        if self._ended is None:
            self._ended = ended
        if not self._transport.is_closing():
            self._transport.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._ended)

    async def quit(self) -> None:
        """QUIT, its reply, and the connection closed, whatever the relay answers."""
        try:
            if self.is_connected and not self.replies_waiting:
                self.write(b"QUIT\r\n")
                await self.replies(1)
        except (_ConnectionEnded, TimeoutError) as error:
            log.debug("smtp_quit_failed", error=type(error).__name__)
        finally:
            self._end(_ConnectionEnded("the session was closed"))


async def _close(client: "aiosmtplib.SMTP | _Pipeline") -> None:
    if isinstance(client, _Pipeline):
        await client.quit()
        return
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError) as error:
        # The outcome is already known; a failed QUIT only leaves a socket for the relay to time out.
        log.debug("smtp_quit_failed", error=type(error).__name__)
        client.close()
