"""The HTTP transport of every adapter: one aiohttp session; failures classified by what the provider may hold."""

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
        host = _host(request.url)
        try:
            async with self._client().request(
                request.method, request.url, data=request.body, headers=request.headers, allow_redirects=False
            ) as response:
                body = await response.read()
                return ProviderAnswer(response.status, response.headers, body)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            raise ProviderUnavailable(f"connection to {host} failed: {type(error).__name__}") from error
        except (TimeoutError, aiohttp.ClientError) as error:
            raise ProviderOutcomeUnknown(
                f"{host} did not answer after the request was sent ({type(error).__name__}); it may have the message"
            ) from error

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _host(url: str) -> str:
    try:
        parsed = URL(url)
    except ValueError:
        return "the provider"
    return f"{parsed.host}:{parsed.port}" if parsed.port else str(parsed.host)
