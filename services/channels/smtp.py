"""The e-mail provider adapter: mail transactions over kept-open aiosmtplib sessions, with classified failures."""

import asyncio

import aiosmtplib
import structlog

from services.channels.delivery import (
    ProviderOutcomeUnknown,
    ProviderUnavailable,
    failure_for_reply,
    redact,
)

log = structlog.get_logger(__name__)


class SmtpSender:
    """Hands messages to an SMTP relay over a few kept-open sessions, and says, on failure, whether the relay may
    have taken the message.

    A session carries many mail transactions (MAIL, RCPT, DATA, then the next MAIL), so a message costs no
    connect, EHLO, STARTTLS, AUTH or QUIT. A session that failed in any way is closed, never reused: what the
    relay thinks of it is unknown.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        start_tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout_seconds: float = 10.0,
        connections: int = 4,
    ) -> None:
        self.host = host
        self.port = port
        self.start_tls = start_tls
        self.username = username
        self.password = password
        self.timeout_seconds = timeout_seconds
        self._sessions = asyncio.Semaphore(connections)
        self._idle: list[aiosmtplib.SMTP] = []

    async def send(self, payload: bytes, *, sender: str, recipient: str) -> str:
        """Sends the message `payload` (its wire form, CRLF); returns the relay's reply to the data.

        Raises ProviderUnavailable when the relay certainly did not accept it (refused, timed out or
        answered 4xx before the message was transferred), ProviderRejected on a 5xx answer to the
        mail transaction, and ProviderOutcomeUnknown when the connection was lost while the message
        was being transferred, since the relay may have queued it.
        """
        async with self._sessions:
            client = self._idle.pop() if self._idle else None
            if client is not None and not client.is_connected:
                client = None
            try:
                if client is None:
                    client = await self._connect()
                    reply = await _transaction(client, payload, sender, recipient)
                else:
                    try:
                        reply = await _transaction(client, payload, sender, recipient)
                    except _SessionLost:
                        # The relay closed the idle session (its timeout) before MAIL: it holds nothing, so the
                        # same transaction goes over a new session.
                        await _close(client)
                        client = await self._connect()
                        reply = await _transaction(client, payload, sender, recipient)
            except _SessionLost as lost:
                if client is not None:
                    await _close(client)
                raise ProviderUnavailable(lost.reason) from lost.__cause__
            except BaseException:
                if client is not None:
                    await _close(client)
                raise
            self._idle.append(client)
            return reply

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout_seconds,
            # False, not None: None would upgrade whenever the relay offers STARTTLS, silently.
            start_tls=self.start_tls,
            username=self.username,
            password=self.password,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException as error:
            await _close(client)
            # A refused greeting, EHLO or AUTH is about this relay or our credentials, not this message.
            raise ProviderUnavailable(f"SMTP {error.code} on connect: {redact(error.message)}") from error
        except (aiosmtplib.SMTPException, OSError) as error:
            await _close(client)
            raise ProviderUnavailable(f"SMTP connection to {self.host}:{self.port} failed: {error}") from error
        return client

    async def close(self) -> None:
        """Ends the kept-open sessions with QUIT."""
        idle, self._idle = self._idle, []
        for client in idle:
            await _close(client)


class _SessionLost(Exception):
    """The session broke before DATA: the relay holds nothing of this message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _transaction(client: aiosmtplib.SMTP, payload: bytes, sender: str, recipient: str) -> str:
    """One mail transaction on an open session; the relay's reply to DATA."""
    try:
        await client.mail(sender)
        await client.rcpt(recipient)
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
    return redact(reply.message)


async def _close(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError) as error:
        # The outcome is already known; a failed QUIT only leaves a socket for the relay to time out.
        log.debug("smtp_quit_failed", error=type(error).__name__)
        client.close()
