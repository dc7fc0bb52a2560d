"""A client_channel spreads its calls over every address its dns:/// target resolves to, and a server's max connection
age brings it to servers added since (a scale-up): real gRPC servers on loopback addresses and a real DNS server that
answers for the name, as a headless Service's does in the cluster."""

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import pytest

from plumbing.grpc_client import client_channel
from plumbing.grpc_server import GrpcServer
from tests.waiting import eventually
from xsell.gateway.v1 import resources_pb2, service_pb2, service_pb2_grpc

SERVICE = "xsell.gateway.v1.GatewayService"
NAME = "segments-grpc.xsell.svc.cluster.local"
# The client resolves its name again when a connection ends, at most this often: 30 s by default, which a test need
# not wait out.
RESOLVE_AGAIN = ("grpc.dns_min_time_between_resolutions_ms", 100)
A, AAAA, IN = 1, 28, 1


class DnsServer(asyncio.DatagramProtocol):
    """Answers an A question for a name of `records` with its addresses (what cluster DNS answers for a headless
    Service: each ready pod's address), any other question about it with no record, and a question about any other
    name with NXDOMAIN. Records the names asked."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.asked: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        ident = struct.unpack("!H", data[:2])[0]
        end, labels = 12, []
        while data[end]:
            labels.append(data[end + 1 : end + 1 + data[end]].decode())
            end += data[end] + 1
        name = ".".join(labels)
        self.asked.append(name)
        question = data[12 : end + 5]
        qtype = struct.unpack("!H", data[end + 1 : end + 3])[0]
        answers = self.records.get(name, []) if qtype == A else []
        # A response (QR) with recursion desired and available; no error, or NXDOMAIN (3) for an unknown name. The
        # question, then an A record per address, its name a pointer to the question's.
        flags = 0x8180 if name in self.records else 0x8183
        reply = struct.pack("!HHHHHH", ident, flags, 1, len(answers), 0, 0) + question
        for address in answers:
            reply += b"\xc0\x0c" + struct.pack("!HHIH", A, IN, 0, 4) + socket.inet_aton(address)
        assert self.transport is not None
        self.transport.sendto(reply, addr)


class Pod(service_pb2_grpc.GatewayServiceServicer):
    """A server that says which pod it is and records the client connections (peers) its calls came on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peers: list[str] = []

    async def GetCaller(self, request, context):  # type: ignore[no-untyped-def]
        self.peers.append(context.peer())
        return service_pb2.GetCallerResponse(caller=resources_pb2.Caller(client_name=self.name))


@pytest.fixture
async def dns() -> AsyncIterator[tuple[DnsServer, int]]:
    server = DnsServer()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0)
    )
    yield server, transport.get_extra_info("sockname")[1]
    transport.close()


@pytest.fixture
async def start_pod() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """Starts a GrpcServer for a Pod on one loopback address; every pod of a test on the same port, as a Service's
    pods are (the first picks a free one)."""
    servers: list[GrpcServer] = []
    port = 0

    async def start(address: str, pod: Pod, **connection_age: float) -> int:
        nonlocal port
        server = GrpcServer(address, port, None, **connection_age)
        server.add(SERVICE, lambda s: service_pb2_grpc.add_GatewayServiceServicer_to_server(pod, s))
        servers.append(server)
        port = await server.start()
        return port

    yield start
    for server in servers:
        await server.stop(0)


async def _who(stub: service_pb2_grpc.GatewayServiceStub) -> str:
    return (await stub.GetCaller(service_pb2.GetCallerRequest(), timeout=10)).caller.client_name


async def test_calls_spread_over_every_address_the_name_resolves_to(dns, start_pod) -> None:  # type: ignore[no-untyped-def]
    """Before the headless Services, the name was a ClusterIP Service's one address: one connection, and every call
    of a replica went to one pod of the service however many the autoscaler added."""
    server, dns_port = dns
    pods = [Pod("a"), Pod("b"), Pod("c")]
    server.records[NAME] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    for index, pod in enumerate(pods):
        port = await start_pod(f"127.0.0.{index + 1}", pod)
    async with client_channel(f"dns://127.0.0.1:{dns_port}/{NAME}:{port}", None) as channel:
        stub = service_pb2_grpc.GatewayServiceStub(channel)
        seen: set[str] = set()

        async def every_pod_answered() -> bool:
            seen.add(await _who(stub))
            return seen == {"a", "b", "c"}

        await eventually(every_pod_answered)
        # Once connected to all three, round_robin takes them in turn.
        answered = Counter([await _who(stub) for _ in range(30)])
    assert set(answered) == {"a", "b", "c"} and min(answered.values()) >= 5, answered


async def test_a_servers_max_connection_age_brings_its_clients_to_the_pods_a_scale_up_added(dns, start_pod) -> None:  # type: ignore[no-untyped-def]
    """A client resolves its target when a connection ends, not otherwise: without the servers' max connection age it
    would keep the pods it found first for as long as they live."""
    server, dns_port = dns
    first, added = Pod("first"), Pod("added")
    server.records[NAME] = ["127.0.0.1"]
    port = await start_pod("127.0.0.1", first, max_connection_age_seconds=0.5, max_connection_age_grace_seconds=1)
    target = f"dns://127.0.0.1:{dns_port}/{NAME}:{port}"
    async with client_channel(target, None, options=[RESOLVE_AGAIN]) as channel:
        stub = service_pb2_grpc.GatewayServiceStub(channel)
        assert {await _who(stub) for _ in range(5)} == {"first"}
        questions = len(server.asked)
        # The scale-up: a second pod, ready, and in the name's answer.
        await start_pod("127.0.0.2", added, max_connection_age_seconds=0.5, max_connection_age_grace_seconds=1)
        server.records[NAME] = ["127.0.0.1", "127.0.0.2"]

        async def both_pods_answered_on_new_connections() -> bool:
            # The first pod's connection ended (its age) and the client opened another (a second client port in its
            # peers), having resolved the name again and found the added pod.
            await _who(stub)
            return bool(added.peers) and len(set(first.peers)) >= 2

        await eventually(both_pods_answered_on_new_connections)
    assert len(server.asked) > questions


async def test_without_a_max_connection_age_a_client_keeps_its_first_connection(dns, start_pod) -> None:  # type: ignore[no-untyped-def]
    """The counterpart: a server that sets no age (0) never asks its clients to reconnect, so a hundred calls later
    the client still talks to it on the one connection and has not asked the name again."""
    server, dns_port = dns
    only = Pod("only")
    server.records[NAME] = ["127.0.0.1"]
    port = await start_pod("127.0.0.1", only, max_connection_age_seconds=0)
    async with client_channel(f"dns://127.0.0.1:{dns_port}/{NAME}:{port}", None, options=[RESOLVE_AGAIN]) as channel:
        stub = service_pb2_grpc.GatewayServiceStub(channel)
        await _who(stub)
        questions = len(server.asked)
        for _ in range(100):
            await _who(stub)
    assert len(set(only.peers)) == 1 and len(server.asked) == questions


async def test_the_short_name_the_manifests_give_resolves_through_the_pods_search_domains(  # type: ignore[no-untyped-def]
    dns, start_pod, monkeypatch
) -> None:
    """The manifests name a target `dns:///segments-grpc:50061`, in no namespace: gRPC's resolver completes it with
    the search domains of the pod's resolv.conf (`search <namespace>.svc.cluster.local svc.cluster.local
    cluster.local`; LOCALDOMAIN here), so one name serves every overlay's namespace and any cluster domain."""
    server, dns_port = dns
    server.records[NAME] = ["127.0.0.1"]
    port = await start_pod("127.0.0.1", Pod("a"))
    monkeypatch.setenv("LOCALDOMAIN", "xsell.svc.cluster.local svc.cluster.local cluster.local")
    async with client_channel(f"dns://127.0.0.1:{dns_port}/segments-grpc:{port}", None) as channel:
        assert await _who(service_pb2_grpc.GatewayServiceStub(channel)) == "a"
    assert NAME in server.asked


class Quiet(Pod):
    """A pod whose answer takes `hold` seconds, in which it sends nothing: a long call, or a member stream waiting on
    a client busy releasing a page."""

    def __init__(self, name: str, hold: float) -> None:
        super().__init__(name)
        self.hold = hold

    async def GetCaller(self, request, context):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.hold)
        return await super().GetCaller(request, context)


async def test_the_servers_accept_the_pings_the_clients_send(start_pod, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A server that counted xsell's keepalive pings as abuse would end the connection (GOAWAY too_many_pings) at the
    third ping of a call in which it sent nothing, the call with it (UNAVAILABLE "Too many pings"). The clients' and
    servers' cadence (30 s, accepted from 15 s) scaled down to 1 s and 0.5 s; the call outlasts eight pings."""
    from plumbing import grpc_client, grpc_server

    monkeypatch.setattr(grpc_client, "KEEPALIVE_SECONDS", 1)
    monkeypatch.setattr(grpc_server, "MIN_PING_INTERVAL_SECONDS", 0.5)
    pod = Quiet("quiet", hold=8)
    port = await start_pod("127.0.0.1", pod, max_connection_age_seconds=300, max_connection_age_grace_seconds=3600)
    async with client_channel(f"127.0.0.1:{port}", None) as channel:
        stub = service_pb2_grpc.GatewayServiceStub(channel)
        answer = await stub.GetCaller(service_pb2.GetCallerRequest(), timeout=60)
    assert answer.caller.client_name == "quiet"


def test_the_server_options_are_the_ones_grpc_reads() -> None:
    """gRPC ignores an option it does not know, silently: the ping policy was once set under a name of none."""
    from plumbing.grpc_client import KEEPALIVE_SECONDS
    from plumbing.grpc_server import connection_options

    options = dict(connection_options(300, 3600))
    assert options["grpc.http2.min_ping_interval_without_data_ms"] < KEEPALIVE_SECONDS * 1000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 3_600_000
    assert "grpc.max_connection_age_ms" not in dict(connection_options(0, 3600))
