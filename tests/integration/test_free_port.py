"""devstack.nats_server.free_port: a port a server can bind next, outside the range the kernel gives outgoing
connections their local ports from."""

import socket
from pathlib import Path

from devstack.nats_server import LOWEST_PORT, free_port


def test_ports_are_free_and_below_the_ephemeral_range() -> None:
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port()
        assert LOWEST_PORT <= port < ephemeral_start
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_a_port_in_use_is_not_handed_out() -> None:
    held = []
    try:
        for _ in range(30):
            port = free_port()
            server = socket.socket()
            server.bind(("127.0.0.1", port))
            held.append(server)
        assert len({s.getsockname()[1] for s in held}) == len(held)
    finally:
        for server in held:
            server.close()
