"""The e-mail provider adapter: one SMTP mail transaction per message over aiosmtplib, with classified failures."""

import email.policy
from email.message import EmailMessage

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
    """Hands messages to an SMTP relay and says, on failure, whether the relay may have taken the message."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        start_tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.start_tls = start_tls
        self.username = username
        self.password = password
        self.timeout_seconds = timeout_seconds

    async def send(self, message: EmailMessage, *, sender: str, recipient: str) -> str:
        """Sends `message`; returns the relay's reply to the data.

        Raises ProviderUnavailable when the relay certainly did not accept it (refused, timed out or
        answered 4xx before the message was transferred), ProviderRejected on a 5xx answer to the
        mail transaction, and ProviderOutcomeUnknown when the connection was lost while the message
        was being transferred, since the relay may have queued it.
        """
        payload = message.as_bytes(policy=email.policy.SMTP)
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
            try:
                await client.connect()
            except aiosmtplib.SMTPResponseException as error:
                # A refused greeting, EHLO or AUTH is about this relay or our credentials, not this message.
                raise ProviderUnavailable(f"SMTP {error.code} on connect: {redact(error.message)}") from error
            except (aiosmtplib.SMTPException, OSError) as error:
                raise ProviderUnavailable(f"SMTP connection to {self.host}:{self.port} failed: {error}") from error
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
                raise ProviderUnavailable(f"SMTP connection lost before DATA: {type(error).__name__}") from error
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
        finally:
            await _close(client)


async def _close(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError) as error:
        # The outcome is already known; a failed QUIT only leaves a socket for the relay to time out.
        log.debug("smtp_quit_failed", error=type(error).__name__)
        client.close()
