"""The whole stack, started the way `make run` starts it, with a real SMTP server owned by the test."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.nats_server import free_port
from devstack.smtp_sink import MailboxHandler, start_sink
from devstack.stack import Ports, Stack

E2E_API_KEY = "xsk_e2e_4f7a9c2d1e8b6a5f3c0d"


@dataclass
class RunningStack:
    stack: Stack
    mailbox: MailboxHandler
    var_dir: Path


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    var_dir = tmp_path_factory.mktemp("stack")
    smtp_port = free_port()
    controller, mailbox = start_sink(var_dir / "mail", smtp_port)
    stack = Stack(var_dir=var_dir, ports=Ports.free(smtp=smtp_port), api_key=E2E_API_KEY)
    try:
        stack.start(timeout=90)
        yield RunningStack(stack, mailbox, var_dir)
    finally:
        stack.stop()
        controller.stop()
