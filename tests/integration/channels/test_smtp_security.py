"""E-mail over STARTTLS and SMTP AUTH, and over implicit TLS, against a real aiosmtpd relay with a private CA."""

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from devstack.smtp_sink import DsnController
from services.channels.delivery import ProviderUnavailable
from services.channels.smtp import SmtpSender
from tests.integration.channels.conftest import Mailbox
from tests.pki import make_ca

USER, PASSWORD = "xsell-relay", "relay-secret"
MESSAGE = b"From: offers@mail.test.in\r\nTo: priya@example.in\r\nSubject: Hello\r\n\r\nHi Priya\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("smtp-pki"))


def _server_tls(pki: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    return context


def _authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok)


def _relay(**tls: object) -> Iterator[tuple[Mailbox, int]]:
    """An aiosmtpd relay that takes mail only from an authenticated client, with the TLS arrangement given."""
    mailbox = Mailbox()
    controller = DsnController(
        mailbox, hostname="127.0.0.1", port=0, auth_required=True, authenticator=_authenticator, **tls
    )
    controller.start()
    yield mailbox, controller.port
    controller.stop()


@pytest.fixture
def starttls_relay(pki: Path) -> Iterator[tuple[Mailbox, int]]:
    """A relay that takes mail only after STARTTLS and AUTH, as SES, SendGrid or an institution's Postfix does."""
    yield from _relay(tls_context=_server_tls(pki), require_starttls=True)


@pytest.fixture
def implicit_tls_relay(pki: Path) -> Iterator[tuple[Mailbox, int]]:
    """A relay on "port 465": TLS from the first byte."""
    # aiosmtpd counts only a STARTTLS upgrade as TLS when it offers AUTH; this connection is TLS from the start.
    yield from _relay(ssl_context=_server_tls(pki), auth_require_tls=False)


async def _send(sender: SmtpSender) -> str:
    try:
        return await sender.send(MESSAGE, sender="bounces@mail.test.in", recipient="priya@example.in")
    finally:
        await sender.close()


async def test_starttls_and_auth_deliver_and_every_missing_piece_is_refused(
    starttls_relay: tuple[Mailbox, int], pki: Path
) -> None:
    mailbox, port = starttls_relay
    ca = str(pki / "ca.pem")
    reply = await _send(SmtpSender("127.0.0.1", port, start_tls=True, tls_ca_file=ca, username=USER, password=PASSWORD))
    assert "queued" in reply and len(mailbox.messages) == 1
    refusals = {
        "wrong password": SmtpSender("127.0.0.1", port, start_tls=True, tls_ca_file=ca, username=USER, password="no"),
        "no STARTTLS": SmtpSender("127.0.0.1", port, username=USER, password=PASSWORD),
        "no AUTH": SmtpSender("127.0.0.1", port, start_tls=True, tls_ca_file=ca),
        # The private CA's certificate is not trusted without its bundle: never sent in the clear or unverified.
        "untrusted certificate": SmtpSender("127.0.0.1", port, start_tls=True, username=USER, password=PASSWORD),
    }
    for case, sender in refusals.items():
        with pytest.raises(ProviderUnavailable):
            await _send(sender)
        assert len(mailbox.messages) == 1, case


async def test_implicit_tls_delivers(implicit_tls_relay: tuple[Mailbox, int], pki: Path) -> None:
    mailbox, port = implicit_tls_relay
    sender = SmtpSender(
        "127.0.0.1", port, implicit_tls=True, tls_ca_file=str(pki / "ca.pem"), username=USER, password=PASSWORD
    )
    assert "queued" in await _send(sender)
    assert mailbox.senders == ["bounces@mail.test.in"]


def test_starttls_and_implicit_tls_together_are_refused_at_start() -> None:
    from pydantic import ValidationError

    from services.channels.settings import ChannelsSettings

    with pytest.raises(ValidationError, match="not both"):
        ChannelsSettings(smtp_starttls=True, smtp_implicit_tls=True)
