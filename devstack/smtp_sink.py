"""A development SMTP server that keeps every message under var/mail/ instead of delivering it."""

from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class MailboxHandler:
    """Stores each accepted message as an .eml file named after its campaign ID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.messages: list[Message] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or envelope.content
        message = message_from_bytes(content)
        self.messages.append(message)
        name = message.get("X-Xsell-Campaign-Id") or f"message-{len(self.messages)}"
        (self.directory / f"{name}.eml").write_bytes(content)
        return "250 Message accepted for delivery"


def start_sink(directory: Path, port: int, host: str = "127.0.0.1") -> tuple[Controller, MailboxHandler]:
    handler = MailboxHandler(directory)
    controller = Controller(handler, hostname=host, port=port)
    controller.start()
    return controller, handler
