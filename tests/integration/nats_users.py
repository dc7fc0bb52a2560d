"""Connections to a real NATS server with the accounts of services/nats_access.py, as xsell's processes make them."""

from devstack.nats_server import NatsServer
from plumbing.bus import Bus
from services import nats_access


async def service_bus(server: NatsServer, passwords: dict[str, str], service: str) -> Bus:
    """A service's connection as the service makes it: its user, JetStream's API as its account imports it, over TLS
    where the server has it."""
    return await Bus.connect(
        server.url,
        f"test-{service}",
        user=service,
        password=passwords[service],
        api_prefix=nats_access.IMPORTED_API,
        tls_ca=server.tls.ca if server.tls is not None else None,
    )
