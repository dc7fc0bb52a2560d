"""The HTTP transport of every adapter: one aiohttp session; failures classified by what the provider may hold."""

import functools

import aiohttp
from yarl import URL

from services.channels.delivery import ProviderOutcomeUnknown, ProviderUnavailable
from services.channels.providers.base import ProviderAnswer, ProviderRequest


class HttpTransport:
    """Sends provider requests and says, on failure, whether the provider may have received the request.

    - the connection was never made (refused, DNS, connect timeout): the provider certainly has
      nothing, so ProviderUnavailable (retry later);
    - anything that breaks after the connection is made (read timeout, reset, the server closing
      without an answer): the request may have been read and acted on, so ProviderOutcomeUnknown.
      That includes a pooled keep-alive connection the server had already closed: indistinguishable
      from a reset after sending, so it is treated as one (safe, if occasionally over-cautious).
    """

    def __init__(self, *, timeout_seconds: float, connect_timeout_seconds: float, max_connections: int = 100) -> None:
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_seconds, sock_read=timeout_seconds
        )
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop: nothing is created at import or build time.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                # Provider answers are small JSON documents; nothing is read from the environment.
                trust_env=False,
                auto_decompress=True,
                # Providers set no cookies worth keeping; the default jar parses and filters them on every call.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def send(self, request: ProviderRequest) -> ProviderAnswer:
        try:
            async with self._client().request(
                request.method, _url(request.url), data=request.body, headers=request.headers, allow_redirects=False
            ) as response:
                body = await response.read()
                return ProviderAnswer(response.status, response.headers, body)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            raise ProviderUnavailable(f"connection to {_host(request.url)} failed: {type(error).__name__}") from error
        except (TimeoutError, aiohttp.ClientError) as error:
            raise ProviderOutcomeUnknown(
                f"{_host(request.url)} did not answer after the request was sent ({type(error).__name__}); "
                "it may have the message"
            ) from error

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


@functools.lru_cache(maxsize=256)
def _url(url: str) -> URL | str:
    """The request URL parsed once: SMS, WhatsApp and push send every message to one URL each, which aiohttp parsed
    again on every call; past 256 distinct ones (webhooks) the least recently used are parsed again. A URL yarl
    refuses is handed over as it is, for aiohttp to refuse the same way."""
    try:
        return URL(url)
    except ValueError:
        return url


def _host(url: str) -> str:
    try:
        parsed = URL(url)
    except ValueError:
        return "the provider"
    return f"{parsed.host}:{parsed.port}" if parsed.port else str(parsed.host)
