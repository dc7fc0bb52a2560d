"""The channels HTTP client against a scripted HTTP/1.1 server on port 0: keep-alive, bodies, what failures mean."""

import asyncio
import gzip
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devstack.nats_server import free_port
from services.channels.delivery import ProviderOutcomeUnknown, ProviderRejected, ProviderUnavailable
from services.channels.providers import http
from services.channels.providers.base import ProviderRequest
from services.channels.providers.http import HttpTransport
from tests.waiting import eventually

OK_JSON = b'{"id":"m-1"}'


def content_length(body: bytes = OK_JSON, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


@dataclass
class Received:
    """One request as the server read it."""

    connection: int
    head: bytes
    body: bytes


Answer = Callable[[Received], list[bytes] | None]
"""What the server writes for a request: pieces written one by one (with a pause between them), then it goes on
reading; an empty list closes the connection without an answer; None closes it after reading and never answers."""


@dataclass
class ScriptedServer:
    """An HTTP/1.1 server that reads each request (Content-Length bodies) and answers what the test says."""

    answer: Answer = lambda received: [content_length()]
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    close_after_answer: bool = False
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    origin: str = "http://127.0.0.1"

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"{self.origin}:{port}/v1/send?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                received = Received(number, head, await reader.readexactly(length))
                self.received.append(received)
                pieces = self.answer(received)
                if pieces is None:
                    await reader.read()  # holds the connection open, silent, until the client goes
                    return
                if not pieces:
                    return
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
                if self.close_after_answer:
                    return
        finally:
            writer.close()

    async def close_idle_connections(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()


@asynccontextmanager
async def serving(origin: str = "http://127.0.0.1", tls: ssl.SSLContext | None = None) -> AsyncIterator[ScriptedServer]:
    """A scripted server on loopback, its URLs naming `origin`, until the block ends."""
    scripted = ScriptedServer(origin=origin)
    scripted.server = await asyncio.start_server(scripted._serve, "127.0.0.1", 0, ssl=tls)
    try:
        yield scripted
    finally:
        scripted.server.close()
        await scripted.close_idle_connections()


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    async with serving() as scripted:
        yield scripted


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    http = HttpTransport(timeout_seconds=0.5, connect_timeout_seconds=2.0, max_connections=8)
    yield http
    await http.close()


def post(url: str, body: bytes = b"To=%2B919876543210", **headers: str) -> ProviderRequest:
    return ProviderRequest("POST", url, body, {"Content-Type": "application/x-www-form-urlencoded", **headers})


async def test_the_request_goes_out_whole_and_the_answer_comes_back(
    server: ScriptedServer, transport: HttpTransport
) -> None:
    answer = await transport.send(post(server.url, Authorization="Basic abc"))

    assert (answer.status, answer.body) == (200, OK_JSON)
    assert answer.headers["content-type"] == "application/json"
    [received] = server.received
    lines = received.head.decode().split("\r\n")
    assert lines[0] == "POST /v1/send?x=1 HTTP/1.1"
    port = server.url.split(":")[2].split("/")[0]
    assert f"Host: 127.0.0.1:{port}" in lines
    assert "Content-Length: 18" in lines
    assert "Authorization: Basic abc" in lines
    assert received.body == b"To=%2B919876543210"


async def test_a_header_value_beyond_ascii_goes_out_in_utf_8(server: ScriptedServer, transport: HttpTransport) -> None:
    await transport.send(post(server.url, **{"X-Note": "Priya ₹5,00,000"}))

    [received] = server.received
    assert "X-Note: Priya ₹5,00,000".encode() in received.head.split(b"\r\n")


async def test_one_connection_carries_many_requests(server: ScriptedServer, transport: HttpTransport) -> None:
    for _ in range(5):
        assert (await transport.send(post(server.url))).status == 200

    assert len(server.received) == 5
    assert server.connections == 1


async def test_concurrent_requests_get_connections_of_their_own_and_keep_them(
    server: ScriptedServer, transport: HttpTransport
) -> None:
    for _ in range(3):
        answers = await asyncio.gather(*(transport.send(post(server.url)) for _ in range(4)))
        assert [a.status for a in answers] == [200] * 4

    assert len(server.received) == 12
    assert server.connections == 4


async def test_connection_close_in_the_answer_means_a_new_connection_for_the_next_request(
    server: ScriptedServer, transport: HttpTransport
) -> None:
    server.answer = lambda received: [content_length(extra=b"Connection: close\r\n")]
    server.close_after_answer = True

    for _ in range(3):
        assert (await transport.send(post(server.url))).body == OK_JSON

    assert server.connections == 3


async def test_a_connection_the_server_closed_while_idle_is_not_used_again(
    server: ScriptedServer, transport: HttpTransport
) -> None:
    await transport.send(post(server.url))
    await server.close_idle_connections()

    async def seen_closed() -> bool:  # the server's FIN reached the client's idle connection
        return not any(connection.reusable for idle in transport._idle.values() for connection in idle)

    await eventually(seen_closed)

    answer = await transport.send(post(server.url))

    assert answer.status == 200
    assert server.connections == 2


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte by byte"])
async def test_chunked_and_content_length_bodies_are_read_whole_however_they_arrive(
    server: ScriptedServer, transport: HttpTransport, split: bool
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"id"\r\n'
        b'7\r\n:"m-1"}\r\n'
        b"0\r\nX-Trailer: 1\r\n\r\n"
    )
    answers = iter([chunked, content_length(b'{"id":"m-2"}')])

    def answer(received: Received) -> list[bytes]:
        whole = next(answers)
        return [whole[i : i + 1] for i in range(len(whole))] if split else [whole]

    server.answer = answer

    first = await transport.send(post(server.url))
    second = await transport.send(post(server.url))

    assert first.body == OK_JSON
    assert second.body == b'{"id":"m-2"}'
    assert server.connections == 1  # the chunked answer's end was found, so the connection was reused


async def test_an_answer_without_a_length_is_read_until_the_server_closes(
    server: ScriptedServer, transport: HttpTransport
) -> None:
    server.answer = lambda received: [b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n", OK_JSON]
    server.close_after_answer = True

    assert (await transport.send(post(server.url))).body == OK_JSON
    assert (await transport.send(post(server.url))).body == OK_JSON
    assert server.connections == 2


async def test_an_interim_100_continue_is_skipped_and_a_gzip_body_is_decoded(
    server: ScriptedServer, transport: HttpTransport
) -> None:
    packed = gzip.compress(OK_JSON)
    server.answer = lambda received: [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        content_length(packed, extra=b"Content-Encoding: gzip\r\n"),
    ]

    answer = await transport.send(post(server.url))

    assert (answer.status, answer.body) == (200, OK_JSON)


async def test_an_error_status_is_an_answer_with_its_headers(server: ScriptedServer, transport: HttpTransport) -> None:
    server.answer = lambda received: [content_length(b"{}", "429 Too Many Requests", b"Retry-After: 7\r\n")]

    answer = await transport.send(post(server.url))

    assert answer.status == 429
    assert answer.headers["retry-after"] == "7"


async def test_no_answer_within_the_read_timeout_is_an_unknown_outcome(
    server: ScriptedServer, transport: HttpTransport
) -> None:
    server.answer = lambda received: None

    with pytest.raises(ProviderOutcomeUnknown) as raised:
        await transport.send(post(server.url))

    assert "TimeoutError" in raised.value.reason
    assert len(server.received) == 1  # the provider had the request


@pytest.mark.parametrize(
    "pieces",
    [
        [],  # closed without a word
        [b'HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{"id"'],  # closed halfway through the body
        [b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"id"\r\n'],  # before the last chunk
    ],
    ids=["no answer", "half a body", "half the chunks"],
)
async def test_a_connection_closed_before_the_whole_answer_is_an_unknown_outcome(
    server: ScriptedServer, transport: HttpTransport, pieces: list[bytes]
) -> None:
    server.answer = lambda received: pieces
    server.close_after_answer = True

    with pytest.raises(ProviderOutcomeUnknown) as raised:
        await transport.send(post(server.url))

    assert "ConnectionLost" in raised.value.reason
    assert len(server.received) == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP/1.0 250 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    ],
    ids=["status line", "content length", "chunk size", "header"],
)
async def test_an_answer_that_cannot_be_read_is_an_unknown_outcome_and_its_connection_is_dropped(
    server: ScriptedServer, transport: HttpTransport, answer: bytes
) -> None:
    answers = iter([answer, content_length()])
    server.answer = lambda received: [next(answers)]

    with pytest.raises(ProviderOutcomeUnknown) as raised:
        await transport.send(post(server.url))
    assert "MalformedAnswer" in raised.value.reason

    assert (await transport.send(post(server.url))).status == 200
    assert server.connections == 2


async def test_a_cancelled_request_does_not_leave_its_connection_for_the_next(
    server: ScriptedServer, transport: HttpTransport
) -> None:
    answers = iter([None, [content_length()]])
    server.answer = lambda received: next(answers)
    sending = asyncio.create_task(transport.send(post(server.url)))

    async def sent() -> bool:
        return bool(server.received)

    await eventually(sent)

    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending

    assert (await transport.send(post(server.url))).status == 200
    assert server.connections == 2


async def test_a_server_that_is_not_listening_certainly_has_nothing(transport: HttpTransport) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()

    with pytest.raises(ProviderUnavailable) as raised:
        await transport.send(post(f"http://127.0.0.1:{port}/v1/send"))

    assert not isinstance(raised.value, ProviderOutcomeUnknown)
    assert raised.value.reason == f"connection to 127.0.0.1:{port} failed: ConnectionRefusedError"


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(
    server: ScriptedServer, transport: HttpTransport
) -> None:
    # A permanent refusal (the provider has nothing, and asking again cannot help), not a fault of the caller's.
    with pytest.raises(ProviderRejected, match="line break"):
        await transport.send(post(server.url, **{"X-Xsell-Campaign-Id": "C-1\r\nX-Evil: 1"}))

    assert server.connections == 0


async def test_an_idle_connection_older_than_the_keep_alive_is_replaced(
    server: ScriptedServer, transport: HttpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "KEEP_ALIVE_SECONDS", 0.0)

    for _ in range(3):
        assert (await transport.send(post(server.url))).status == 200

    assert server.connections == 3


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and a server certificate for localhost and provider.test (a name only the tests' proxy resolves)
    signed by it."""
    directory = tmp_path_factory.mktemp("pki")
    (directory / "server.ext").write_text("subjectAltName=DNS:localhost,DNS:provider.test\n")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=directory)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=xsell test CA", "-days", "1", "-out", "ca.pem",
        cwd=directory,
    )  # fmt: skip
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key", cwd=directory)
    _openssl("req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr", cwd=directory)
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "server.ext", "-out", "server.pem", cwd=directory,
    )  # fmt: skip
    return directory


def server_tls(certificates: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates / "server.pem", certificates / "server.key")
    return context


@pytest.fixture
async def tls_server(certificates: Path) -> AsyncIterator[ScriptedServer]:
    async with serving("https://localhost", server_tls(certificates)) as scripted:
        yield scripted


@pytest.fixture
async def provider_server(certificates: Path) -> AsyncIterator[ScriptedServer]:
    """A TLS server on loopback as `https://provider.test`, which only the tests' proxy resolves (proxy_dns)."""
    async with serving("https://provider.test", server_tls(certificates)) as scripted:
        yield scripted


async def test_https_goes_over_tls_checked_against_the_trusted_cas_and_keeps_its_connection(
    tls_server: ScriptedServer, certificates: Path
) -> None:
    trusting = HttpTransport(
        timeout_seconds=5.0,
        connect_timeout_seconds=5.0,
        tls=ssl.create_default_context(cafile=certificates / "ca.pem"),
    )
    try:
        for _ in range(3):
            assert (await trusting.send(post(tls_server.url))).body == OK_JSON
    finally:
        await trusting.close()

    assert len(tls_server.received) == 3
    assert tls_server.connections == 1


async def test_a_server_whose_certificate_is_not_trusted_certainly_has_nothing(
    tls_server: ScriptedServer, transport: HttpTransport
) -> None:
    with pytest.raises(ProviderUnavailable) as raised:
        await transport.send(post(tls_server.url))  # the system's CAs do not include the test CA

    assert not isinstance(raised.value, ProviderOutcomeUnknown)
    assert "SSLCertVerificationError" in raised.value.reason
    assert len(tls_server.received) == 0


@dataclass
class ForwardProxy:
    """proxy.py (a real forward proxy) on loopback, asking for Basic credentials and resolving `.test` names to
    127.0.0.1 (proxy_dns); its access log says what it relayed (a line per connection, once it closes)."""

    port: int
    log: Path

    def url(self, credentials: str = "xsell:proxy-secret") -> str:
        return f"http://{credentials}@127.0.0.1:{self.port}"

    async def relayed(self, line: str) -> bool:
        return line in self.log.read_text()


@pytest.fixture(scope="module")
def forward_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    directory = tmp_path_factory.mktemp("proxy")
    port_file, log = directory / "port", directory / "access.log"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
            "--num-workers", "1", "--num-acceptors", "1", "--basic-auth", "xsell:proxy-secret", "--log-file", str(log),
            "--plugins", "tests.integration.channels.proxy_dns.TestDomains",
        ],
        cwd=Path(__file__).resolve().parents[3],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "proxy.py did not start"
            time.sleep(0.05)
        yield ForwardProxy(int(port_file.read_text()), log)
    finally:
        process.terminate()
        process.wait(timeout=10)


def proxied(proxies: dict[str, str], certificates: Path) -> HttpTransport:
    return HttpTransport(
        timeout_seconds=5.0,
        connect_timeout_seconds=5.0,
        tls=ssl.create_default_context(cafile=certificates / "ca.pem"),
        proxies=proxies,
    )


async def test_https_behind_a_proxy_goes_through_its_tunnel_with_tls_to_the_provider_and_keeps_it(
    forward_proxy: ForwardProxy, provider_server: ScriptedServer, certificates: Path
) -> None:
    """A cluster whose egress is a forward proxy (HTTPS_PROXY): CONNECT to the provider's host, then TLS with the
    provider inside the tunnel (its certificate checked against the trusted CAs), kept for the next requests. The
    provider never sees the proxy's credentials."""
    transport = proxied({"https": forward_proxy.url()}, certificates)
    try:
        for _ in range(3):
            assert (await transport.send(post(provider_server.url))).body == OK_JSON
    finally:
        await transport.close()

    port = provider_server.url.split(":")[2].split("/")[0]
    await eventually(lambda: forward_proxy.relayed(f"CONNECT provider.test:{port}"))
    assert provider_server.connections == 1 and len(provider_server.received) == 3
    assert all(b"proxy-authorization" not in received.head.lower() for received in provider_server.received)
    assert transport.proxies == {"https": f"127.0.0.1:{forward_proxy.port}"}


async def test_plain_http_behind_a_proxy_goes_to_it_by_its_absolute_url(
    forward_proxy: ForwardProxy, certificates: Path
) -> None:
    transport = proxied({"http": forward_proxy.url()}, certificates)
    async with serving("http://provider.test") as scripted:
        url = scripted.url
        try:
            assert (await transport.send(post(url, b"To=1"))).body == OK_JSON
        finally:
            await transport.close()

    port = url.split(":")[2].split("/")[0]
    await eventually(lambda: forward_proxy.relayed(f"POST provider.test:{port}/v1/send?x=1"))
    [received] = scripted.received
    assert received.head.startswith(b"POST /v1/send?x=1 HTTP/1.1\r\n") and received.body == b"To=1"


async def test_no_proxy_hosts_localhost_and_loopback_addresses_are_reached_directly(
    tls_server: ScriptedServer, server: ScriptedServer, certificates: Path
) -> None:
    """localhost (RFC 6761) and 127.0.0.1 go directly: a proxy elsewhere would read them as its own. A name NO_PROXY
    matches goes directly too: here one nobody resolves, so the direct attempt fails on the name, not through the
    proxy. The proxy is a port nothing listens on: any request through it would fail there."""
    nothing = f"http://127.0.0.1:{free_port()}"
    transport = proxied({"https": nothing, "http": nothing, "no": "example.com,.test"}, certificates)
    try:
        assert (await transport.send(post(tls_server.url))).body == OK_JSON  # https://localhost
        assert (await transport.send(post(server.url))).body == OK_JSON  # http://127.0.0.1
        with pytest.raises(ProviderUnavailable) as unresolved:
            await transport.send(post("https://provider.test:8443/v1/send"))
    finally:
        await transport.close()

    # Failed on the name (or its look-up's timeout where DNS answers nothing), directly: never through the proxy.
    assert unresolved.value.reason.startswith("connection to provider.test:8443 failed: ")
    assert "through proxy" not in unresolved.value.reason


async def test_a_proxy_that_refuses_or_is_down_means_the_provider_certainly_has_nothing(
    forward_proxy: ForwardProxy, provider_server: ScriptedServer, certificates: Path
) -> None:
    wrong = proxied({"https": forward_proxy.url("xsell:guess")}, certificates)
    down = proxied({"https": f"http://127.0.0.1:{free_port()}"}, certificates)
    try:
        with pytest.raises(ProviderUnavailable) as refused:
            await wrong.send(post(provider_server.url))
        with pytest.raises(ProviderUnavailable) as unreachable:
            await down.send(post(provider_server.url))
    finally:
        await wrong.close()
        await down.close()

    for raised in (refused, unreachable):
        assert not isinstance(raised.value, ProviderOutcomeUnknown)
    assert "through proxy 127.0.0.1:" in refused.value.reason and " 407 " in refused.value.reason
    assert "http://user:password@host:port" in refused.value.reason and "guess" not in refused.value.reason
    assert "ConnectionRefusedError" in unreachable.value.reason
    assert provider_server.received == []


async def test_a_proxy_that_refuses_a_plain_http_request_means_the_provider_certainly_has_nothing(
    forward_proxy: ForwardProxy, certificates: Path
) -> None:
    """An http provider is reached by its absolute URL through the proxy, with no CONNECT: the proxy's 407 (it wants
    other credentials) is its answer to the request itself, and only a proxy sends 407. Handed to the adapter as the
    provider's answer, it was a 4xx, ProviderRejected (failure_for_status): the message FAILED for good, never
    retried, though nothing had left for the provider."""
    wrong = proxied({"http": forward_proxy.url("xsell:guess")}, certificates)
    async with serving("http://provider.test") as scripted:
        try:
            with pytest.raises(ProviderUnavailable) as refused:
                await wrong.send(post(scripted.url, b"To=1"))
        finally:
            await wrong.close()

    assert not isinstance(refused.value, ProviderOutcomeUnknown)
    assert "through proxy 127.0.0.1:" in refused.value.reason and " 407" in refused.value.reason
    assert "http://user:password@host:port" in refused.value.reason and "guess" not in refused.value.reason
    assert scripted.received == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("https://proxy.bank.internal:3128", "HTTPS_PROXY: https:// proxies are not supported"),
        ("socks5://proxy.bank.internal:1080", "HTTPS_PROXY: socks5:// proxies are not supported"),
    ],
)
def test_a_proxy_this_client_cannot_use_stops_it_at_start_naming_the_variable(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        HttpTransport(timeout_seconds=1.0, connect_timeout_seconds=1.0, proxies={"https": value})


def test_a_proxy_without_a_scheme_is_http_and_its_credentials_never_show() -> None:
    transport = HttpTransport(
        timeout_seconds=1.0, connect_timeout_seconds=1.0, proxies={"https": "ops:s3cret@proxy.bank.internal:3128"}
    )
    assert transport.proxies == {"https": "proxy.bank.internal:3128"}
