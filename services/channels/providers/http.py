"""The HTTP transport of every adapter: HTTP/1.1 over kept-alive connections; failures classified by what the
provider may hold."""

import asyncio
import base64
import functools
import ipaddress
import socket
import ssl
import time
import urllib.request
import zlib
from collections.abc import Mapping
from typing import NamedTuple

from yarl import URL

from services.channels.delivery import ProviderOutcomeUnknown, ProviderRejected, ProviderUnavailable
from services.channels.providers.base import ProviderAnswer, ProviderRequest

KEEP_ALIVE_SECONDS = 15.0
"""An idle connection older than this is closed rather than reused (aiohttp's default): servers close idle
connections after 5-75 s, and one that closes it just as a request goes out makes that request's outcome unknown."""

MAX_HEAD_BYTES = 64 * 1024
"""The most an answer's status line and headers may take; a provider's are a few hundred bytes."""

USER_AGENT = "xsell-channels"

PROXY_AUTHENTICATION_REQUIRED = 407

PROXY_CREDENTIALS_HINT = " (put the credentials in the proxy URL: http://user:password@host:port)"


class ConnectionLost(Exception):
    """The server closed the connection, or it broke, before the whole answer came."""


class MalformedAnswer(Exception):
    """What came back is not an HTTP/1.1 answer this client reads."""


class ProxyRefused(Exception):
    """The forward proxy answered CONNECT with something other than 200: nothing reached the provider."""


class Proxy(NamedTuple):
    """A forward proxy (http:// only: the tunnel to an https provider is TLS end to end through it)."""

    host: str
    port: int
    authorization: str | None
    """The Proxy-Authorization header's value, from the proxy URL's user and password (Basic)."""
    peer: str
    """host:port, for messages: never the credentials."""

    @classmethod
    def parse(cls, url: str, variable: str) -> "Proxy":
        """The proxy an HTTP(S)_PROXY value names; ValueError naming `variable` for one this client cannot use."""
        try:
            parsed = URL(url if "://" in url else f"http://{url}")
        except ValueError as error:
            raise ValueError(f"{variable}: {error}; write http://host:port or http://user:password@host:port") from None
        if parsed.scheme != "http" or not parsed.host:
            raise ValueError(
                f"{variable}: {parsed.scheme}:// proxies are not supported; write http://host:port (the connection to "
                "an https provider is TLS end to end through the proxy's CONNECT tunnel)"
            )
        port = parsed.port or 80
        authorization = None
        if parsed.user is not None:
            credentials = f"{parsed.user}:{parsed.password or ''}".encode()
            authorization = "Basic " + base64.b64encode(credentials).decode()
        return cls(parsed.raw_host or parsed.host, port, authorization, f"{parsed.host}:{port}")


def proxies_from_environment() -> dict[str, str]:
    """HTTPS_PROXY, HTTP_PROXY and NO_PROXY (either case) as urllib reads them: what HttpTransport's `proxies` takes."""
    return urllib.request.getproxies_environment()


class HttpTransport:
    """Sends provider requests and says, on failure, whether the provider may have received the request.

    - the connection was never made (refused, DNS, TLS handshake, connect timeout): the provider certainly has
      nothing, so ProviderUnavailable (retry later);
    - anything that breaks after the request was written (read timeout, reset, the server closing without an
      answer, an answer that cannot be read): the request may have been read and acted on, so
      ProviderOutcomeUnknown. That includes a kept-alive connection the server closed just as the request went out:
      indistinguishable from a reset after sending, so it is treated as one (safe, if occasionally over-cautious).
      A connection the server closed while it was idle is seen closed and never used.

    Behind a forward proxy (`proxies`, e.g. proxies_from_environment(): the HTTPS_PROXY / HTTP_PROXY / NO_PROXY that a
    cluster whose egress goes through a proxy sets), an https provider is reached through a CONNECT tunnel and TLS to
    the provider inside it (the proxy sees the host name, never the message), an http one by its absolute URL. A host
    NO_PROXY names, `localhost` and a loopback address (which a proxy elsewhere would read as its own) are reached
    directly. The
    proxy refusing the tunnel, or an http request for want of credentials (407), or not answering is
    ProviderUnavailable: nothing reached the provider.

    A client of its own rather than aiohttp's: a provider call is one POST with a small body and a small JSON answer,
    and aiohttp's request and response machinery (its request and response objects, streams, header multidicts,
    timers, tracing hooks) cost ~125 µs of CPU per call against ~55 µs for this. It writes each request in one
    `write` on a connection kept open per origin and reads the answer in an asyncio.Protocol: Content-Length,
    chunked, or read-until-close bodies; gzip and deflate answers decoded.
    """

    def __init__(
        self,
        *,
        timeout_seconds: float,
        connect_timeout_seconds: float,
        max_connections: int = 100,
        tls: ssl.SSLContext | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> None:
        """`proxies`: urllib's mapping (scheme -> proxy URL, "no" -> NO_PROXY), as proxies_from_environment gives it;
        ValueError for a proxy URL this client cannot use (named by its variable), so a process stops at start."""
        self.timeout_seconds = timeout_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.max_connections = max_connections
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._idle_count = 0
        # https: the system's trusted CAs and hostname checks (ssl.create_default_context) unless given another.
        self._tls = tls
        self._closed = False
        self._proxies = {key: value for key, value in (proxies or {}).items() if value}
        self._proxy_of_scheme: dict[str, Proxy] = {
            scheme: Proxy.parse(self._proxies[scheme], f"{scheme.upper()}_PROXY")
            for scheme in ("https", "http")
            if scheme in self._proxies
        }
        # Per origin: the proxy its connections go through, or None (decided once: NO_PROXY and loopback).
        self._routes: dict[tuple[str, str, int], Proxy | None] = {}

    @property
    def proxies(self) -> dict[str, str]:
        """Each scheme's proxy as host:port (no credentials), for the log at start."""
        return {scheme: proxy.peer for scheme, proxy in self._proxy_of_scheme.items()}

    async def send(self, request: ProviderRequest) -> ProviderAnswer:
        target = _target(request.url)
        if target is None:
            raise ProviderUnavailable(f"connection to {_host(request.url)} failed: the URL cannot be requested")
        proxy = self._route(target) if self._proxy_of_scheme else None
        forwarded_by = proxy if proxy is not None and not target.tls else None
        data = _encode(request, target, forwarded_by)
        if self._slots is None:
            # Made on first use, inside the running loop: nothing is created at import or build time.
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            connection = self._idle_connection(target.origin) or await self._connect(target, proxy)
            try:
                answer = await connection.exchange(data, self.timeout_seconds)
            except (TimeoutError, ConnectionLost, MalformedAnswer, OSError) as error:
                connection.abort()
                raise ProviderOutcomeUnknown(
                    f"{target.peer} did not answer after the request was sent ({type(error).__name__}); "
                    "it may have the message"
                ) from error
            except BaseException:
                connection.abort()  # cancelled mid-exchange: what is left on the connection cannot be read
                raise
            self._release(target.origin, connection)
            if forwarded_by is not None and answer.status == PROXY_AUTHENTICATION_REQUIRED:
                # Only a proxy answers 407: this one kept the request, and the provider has nothing. An adapter would
                # read it as the provider's 4xx, a refusal of the message for good.
                raise ProviderUnavailable(
                    f"connection to {target.peer} through proxy {forwarded_by.peer} failed: the proxy answered "
                    f"{answer.status}{PROXY_CREDENTIALS_HINT}"
                )
            return answer

    def _idle_connection(self, origin: tuple[str, str, int]) -> "_Connection | None":
        """The most recently used open connection to `origin` (the others age out first), if one is fresh."""
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if connection.reusable and now - connection.idle_since < KEEP_ALIVE_SECONDS:
                return connection
            connection.abort()
        return None

    def _release(self, origin: tuple[str, str, int], connection: "_Connection") -> None:
        if not connection.reusable or self._closed or self._idle_count >= self.max_connections:
            connection.abort()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(origin, []).append(connection)
        self._idle_count += 1

    def _route(self, target: "_Target") -> Proxy | None:
        """The proxy `target`'s connections go through: its scheme's, unless NO_PROXY names the host or it is a
        loopback address."""
        origin = target.origin
        if origin in self._routes:
            return self._routes[origin]
        proxy = self._proxy_of_scheme.get(origin[0])
        if proxy is not None and (_loopback(target.host) or _bypassed(target, self._proxies)):
            proxy = None
        if len(self._routes) >= 1024:  # webhooks may name many hosts: decided again past a thousand
            self._routes.clear()
        self._routes[origin] = proxy
        return proxy

    async def _connect(self, target: "_Target", proxy: Proxy | None = None) -> "_Connection":
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if target.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        server_hostname = target.host if tls else None
        try:
            async with asyncio.timeout(self.connect_timeout_seconds):
                if proxy is None:
                    _, connection = await loop.create_connection(
                        _Connection, target.host, target.port, ssl=tls, server_hostname=server_hostname
                    )
                elif tls is None:  # http: requests in absolute form to the proxy, which forwards them
                    _, connection = await loop.create_connection(_Connection, proxy.host, proxy.port)
                else:
                    tunnel = await _tunnel(proxy, target)
                    try:
                        _, connection = await loop.create_connection(
                            _Connection, sock=tunnel, ssl=tls, server_hostname=server_hostname
                        )
                    except BaseException:
                        tunnel.close()
                        raise
        except (OSError, TimeoutError, ProxyRefused, MalformedAnswer) as error:
            # Refused, DNS, TLS handshake (ssl.SSLError), connect timeout, or the proxy's: nothing was sent.
            through = f" through proxy {proxy.peer}" if proxy is not None else ""
            said = f" ({error})" if isinstance(error, ProxyRefused | MalformedAnswer) else ""
            raise ProviderUnavailable(
                f"connection to {target.peer}{through} failed: {type(error).__name__}{said}"
            ) from error
        return connection

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.abort()
        self._idle.clear()
        self._idle_count = 0


class _Target(NamedTuple):
    """Where a request URL goes and how its request line and Host header read."""

    origin: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    peer: str
    request_target: str
    host_header: str


@functools.lru_cache(maxsize=256)
def _target(url: str) -> _Target | None:
    """The URL parsed once: SMS, WhatsApp and push send every message to one URL each; past 256 distinct ones
    (webhooks) the least recently used are parsed again. None for a URL that is not http(s) with a host."""
    try:
        parsed = URL(url)
    except ValueError:
        return None
    if parsed.scheme not in {"http", "https"} or not parsed.raw_host or parsed.port is None:
        return None
    host = parsed.raw_host
    port = parsed.port
    peer = f"{parsed.host}:{parsed.explicit_port}" if parsed.explicit_port else str(parsed.host)
    return _Target(
        (parsed.scheme, host, port),
        host,
        port,
        parsed.scheme == "https",
        peer,
        parsed.raw_path_qs or "/",
        parsed.host_port_subcomponent or host,
    )


def _encode(request: ProviderRequest, target: _Target, proxy: Proxy | None = None) -> bytes:
    """The request as it goes on the wire, its head in UTF-8 as aiohttp wrote it (the request line and Host are ASCII:
    yarl percent-encodes the path and IDNA-encodes the host). A name or value with a line break would add a header or
    end the head early (header injection), so it is refused, as aiohttp refused it. `proxy`: an http request sent to
    that proxy, in absolute form with its Proxy-Authorization."""
    request_target = target.request_target
    if proxy is not None:
        request_target = f"http://{target.host_header}{request_target}"
    lines = [
        f"{request.method} {request_target} HTTP/1.1\r\nHost: {target.host_header}\r\n"
        f"User-Agent: {USER_AGENT}\r\nContent-Length: {len(request.body)}\r\n"
    ]
    if proxy is not None and proxy.authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy.authorization}\r\n")
    for name, value in request.headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
            # Refused before anything is written: the provider certainly has nothing, and asking again cannot help.
            raise ProviderRejected(f"HTTP header {name!r} has a line break or a colon in its name or value")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode() + request.body


def _loopback(host: str) -> bool:
    """A loopback address, or `localhost` and the names under it (RFC 6761: always this machine), as Go's
    ProxyFromEnvironment has it: a proxy elsewhere would read them as its own."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bypassed(target: _Target, proxies: Mapping[str, str]) -> bool:
    """Whether NO_PROXY names the target's host (urllib's reading: suffixes, a leading dot, `*`)."""
    # Not in typeshed's stubs, but in the module since Python 3.3 (urllib.request.proxy_bypass on POSIX calls it).
    return bool(urllib.request.proxy_bypass_environment(target.host_header, proxies))  # type: ignore[attr-defined]


async def _tunnel(proxy: Proxy, target: _Target) -> socket.socket:
    """A connected socket through which the proxy relays bytes to `target` (CONNECT); ProxyRefused for an answer
    other than 200 (e.g. 407: the proxy wants credentials, 403: the host is not allowed)."""
    loop = asyncio.get_running_loop()
    error: OSError | None = None
    for family, kind, protocol, _, address in await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, protocol)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            break
        except OSError as failed:
            sock.close()
            error = failed
    else:
        raise error or OSError(f"{proxy.peer} has no address")
    try:
        authority = f"{target.host}:{target.port}" if ":" not in target.host else f"[{target.host}]:{target.port}"
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
        if proxy.authorization is not None:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        await loop.sock_sendall(sock, (head + "\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise ConnectionResetError("the proxy closed the connection before answering CONNECT")
            answer += chunk
            if len(answer) > MAX_HEAD_BYTES:
                raise MalformedAnswer(f"no end of the proxy's answer to CONNECT in {len(answer)} bytes")
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise MalformedAnswer(f"the proxy's answer to CONNECT is not HTTP: {status_line[:100]!r}")
        if rest[:3] != "200":
            hint = PROXY_CREDENTIALS_HINT if rest[:3] == str(PROXY_AUTHENTICATION_REQUIRED) else ""
            raise ProxyRefused(f"the proxy answered CONNECT {authority} with {rest[:100]}{hint}")
        if not answer.endswith(b"\r\n\r\n"):
            raise MalformedAnswer("the proxy sent bytes after its answer to CONNECT, before TLS began")
    except BaseException:
        sock.close()
        raise
    return sock


class _Connection(asyncio.Protocol):
    """One kept-alive connection: writes a request, reads its answer; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._open = False
        self._keep_alive = True
        self._buffer = bytearray()
        self._waiter: asyncio.Future[ProviderAnswer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: dict[str, str] = {}
        self._length = -1  # bytes of body still expected; -1 before the head, or chunked, or until close
        self._chunked = False
        self._until_close = False
        self._chunks: list[bytes] = []

    @property
    def reusable(self) -> bool:
        return self._open and self._keep_alive and self._waiter is None and not self._buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._open = True

    def exchange(self, data: bytes, timeout: float) -> "asyncio.Future[ProviderAnswer]":
        """Writes the request; the future is its answer, or TimeoutError, ConnectionLost or MalformedAnswer."""
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[ProviderAnswer] = loop.create_future()
        if not self._open:
            waiter.set_exception(ConnectionLost("the connection closed before the request was written"))
            return waiter
        self._waiter = waiter
        self._timer = loop.call_later(timeout, self._timed_out)
        self.transport.write(data)
        return waiter

    def abort(self) -> None:
        self._open = False
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for: the connection's state is unknown, so it is not used again.
            self._keep_alive = False
            return
        self._buffer += data
        try:
            self._read()
        except MalformedAnswer as error:
            self._fail(error)

    def eof_received(self) -> bool:
        self._end_of_answer_at_close()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        self._end_of_answer_at_close()
        self._fail(ConnectionLost(f"the connection closed before the whole answer came ({exc!r})"))

    def _end_of_answer_at_close(self) -> None:
        self._open = False
        if self._waiter is not None and self._until_close:
            self._chunks.append(bytes(self._buffer))
            self._buffer.clear()
            self._keep_alive = False
            self._done()

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError("no answer within the read timeout"))

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._keep_alive = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def _done(self) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        status, headers = self._status, self._headers
        self._reset()
        if waiter is None or waiter.done():
            return
        try:
            waiter.set_result(ProviderAnswer(status, headers, _decoded(body, headers.get("content-encoding"))))
        except MalformedAnswer as error:
            self._keep_alive = False
            waiter.set_exception(error)

    def _read(self) -> None:
        buffer = self._buffer
        if self._status == 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise MalformedAnswer(f"no end of the answer's head in {len(buffer)} bytes")
                return
            head = bytes(buffer[:end]).decode("latin-1")
            del buffer[: end + 4]
            self._read_head(head)
            if self._status == 0:  # an interim answer (100 Continue) was skipped: the real one follows
                self._read()
                return
        if self._until_close:
            return
        if self._chunked:
            self._read_chunks()
            return
        if len(buffer) >= self._length:
            self._chunks.append(bytes(buffer[: self._length]))
            del buffer[: self._length]
            self._done()

    def _read_head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise MalformedAnswer(f"not an HTTP/1.x status line: {status_line[:100]!r}")
        status = int(code)
        if 100 <= status < 200:
            return
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise MalformedAnswer(f"an answer header without a name: {line[:100]!r}")
            name = name.lower()
            value = value.strip()
            # Repeated headers are one list (RFC 9110, 5.3); none that these providers send is read that way.
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._status = status
        self._headers = headers
        connection = headers.get("connection", "").lower()
        self._keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        if status in {204, 304}:
            self._length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise MalformedAnswer(f"Content-Length {length[:40]!r} is not a number")
            self._length = int(length)
        else:
            self._until_close = True

    def _read_chunks(self) -> None:
        buffer = self._buffer
        while True:
            if self._length > 0:  # inside a chunk: its data and the CRLF after it
                if len(buffer) < self._length + 2:
                    return
                if buffer[self._length : self._length + 2] != b"\r\n":
                    raise MalformedAnswer("a chunk does not end with CRLF")
                self._chunks.append(bytes(buffer[: self._length]))
                del buffer[: self._length + 2]
                self._length = -1
            if self._length == 0:  # after the last chunk: trailers, if any, then an empty line
                end = 0 if buffer[:2] == b"\r\n" else buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                del buffer[: end + (2 if end == 0 else 4)]
                self._done()
                return
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise MalformedAnswer("a chunk size line without its end")
                return
            size = bytes(buffer[:line_end]).split(b";", 1)[0].strip()
            try:
                self._length = int(size, 16)
            except ValueError:
                raise MalformedAnswer(f"chunk size {size[:20]!r} is not hexadecimal") from None
            if self._length < 0:
                raise MalformedAnswer("a negative chunk size")
            del buffer[: line_end + 2]


def _decoded(body: bytes, encoding: str | None) -> bytes:
    """The answer's body without its content coding: none is asked for, but a server may still gzip."""
    if not encoding or encoding == "identity" or not body:
        return body
    try:
        if encoding == "gzip":
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send it
    except zlib.error as error:
        raise MalformedAnswer(f"a {encoding} body that does not decode: {error}") from error
    raise MalformedAnswer(f"an answer in content coding {encoding!r}, which this client does not read")


def _host(url: str) -> str:
    try:
        parsed = URL(url)
    except ValueError:
        return "the provider"
    return f"{parsed.host}:{parsed.port}" if parsed.explicit_port else str(parsed.host)
