"""The HTTP edge people reach from their messages: click redirects, the open pixel, unsubscribe, and /healthz."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import grpc
import structlog
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from gateway.esp_events import MAX_BODY
from plumbing.ids import new_id
from plumbing.signing import CLICK, OPEN, UNSUBSCRIBE, BadSignature, serves, verify
from plumbing.telemetry import outreach_span
from xsell.channels.v1 import resources_pb2 as channels_resources
from xsell.channels.v1 import service_pb2 as channels_pb2
from xsell.channels.v1 import service_pb2_grpc as channels_grpc

log = structlog.get_logger(__name__)

TRANSPARENT_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>'
    "<body><h1>{title}</h1><p>{text}</p></body></html>"
)


_CONFIRM = (
    '<form method="post"><input type="hidden" name="confirm" value="yes">'
    '<button type="submit">Unsubscribe</button></form>'
)


_PURPOSES = {"click": CLICK, "open": OPEN, "unsubscribe": UNSUBSCRIBE}


def _page(status: int, title: str, text: str) -> web.Response:
    return web.Response(
        status=status, text=_PAGE.format(title=title, text=text), content_type="text/html", headers=NO_CACHE
    )


def _bad_link() -> web.Response:
    return web.Response(status=400, text="This link is not valid.\n", headers=NO_CACHE)


def is_web_url(url: Any) -> TypeGuard[str]:
    """Only absolute http(s) targets: a signed javascript: or data: URL must never become a redirect."""
    if not isinstance(url, str) or any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class TrackingEdge:
    """An aiohttp server in the gateway process, run as a background task of the service."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: str,
        channels: channels_grpc.ChannelsServiceStub,
        tracer: trace.Tracer,
        serving: Callable[[], Awaitable[bool]],
        record_timeout: float,
        extra_routes: Sequence[Callable[[web.Application], None]] = (),
    ) -> None:
        self._extra_routes = extra_routes
        self._host = host
        self._requested_port = port
        self._secret = secret
        self._channels = channels
        self._tracer = tracer
        self._serving = serving
        self._record_timeout = record_timeout
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None
        self.port = 0

    def application(self) -> web.Application:
        # aiohttp reads at most 1 MiB of a body by default; SendGrid's signed batches may be up to esp_events.MAX_BODY,
        # and each route refuses what is too large for it (413) before reading.
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/c/{token}", self._click)
        app.router.add_get("/o/{token}.gif", self._open)
        app.router.add_get("/u/{token}", self._unsubscribe_page)
        app.router.add_post("/u/{token}", self._unsubscribe)
        app.router.add_get("/healthz", self._healthz)
        for add_routes in self._extra_routes:
            add_routes(app)
        return app

    async def run(self) -> None:
        # No access log: the path carries the token, and the token carries the target URL.
        runner = web.AppRunner(self.application(), access_log=None, handle_signals=False, shutdown_timeout=5.0)
        try:
            await runner.setup()
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
        except BaseException as error:
            self._failure = error
            self._ready.set()
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        self._ready.set()
        log.info("http_started", http_port=self.port)
        try:
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    async def stop(self) -> None:
        self._stopping.set()

    async def wait_ready(self) -> int:
        """The bound port once the server listens; raises if it could not start."""
        await self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(f"HTTP edge could not listen on {self._host}:{self._requested_port}") from self._failure
        return self.port

    def _payload(self, request: web.Request, kind: str) -> dict[str, Any] | None:
        try:
            payload = verify(request.match_info["token"], self._secret)
        except BadSignature:
            log.info("tracking_token_rejected", kind=kind)
            return None
        if not serves(payload, _PURPOSES[kind]):
            # A click link's token on the unsubscribe route (a forwarded offer) must not opt its recipient out.
            log.info("tracking_token_rejected", kind=kind, reason="another_links_token")
            return None
        campaign_id = payload.get("c")
        if not isinstance(campaign_id, str) or not campaign_id:
            log.info("tracking_token_rejected", kind=kind, reason="no_campaign_id")
            return None
        return payload

    async def _record(self, campaign_id: str, kind: channels_resources.EngagementKind.ValueType, url: str = "") -> bool:
        """Tells channels what the person did; False (and a log line) when it could not."""
        request = channels_pb2.RecordEngagementRequest(
            request_id=new_id("eng_"),
            campaign_id=campaign_id,
            kind=kind,
            url=url,
        )
        try:
            await self._channels.RecordEngagement(request, timeout=self._record_timeout)
        except grpc.aio.AioRpcError as error:
            log.warning(
                "engagement_not_recorded",
                kind=channels_resources.EngagementKind.Name(kind),
                code=error.code().name,
                detail=error.details(),
            )
            return False
        return True

    async def _click(self, request: web.Request) -> web.StreamResponse:
        payload = self._payload(request, "click")
        if payload is None:
            return _bad_link()
        campaign_id, url = payload["c"], payload.get("u")
        if not is_web_url(url):
            log.info("tracking_token_rejected", kind="click", reason="not_a_web_url")
            return _bad_link()
        with outreach_span(self._tracer, "gateway click", campaign_id, kind=SpanKind.SERVER):
            # Even when channels is down the person goes where they clicked; the miss is logged.
            await self._record(campaign_id, channels_resources.ENGAGEMENT_KIND_CLICKED, url=url)
        return web.Response(status=302, headers={"Location": url, "Referrer-Policy": "no-referrer", **NO_CACHE})

    async def _open(self, request: web.Request) -> web.StreamResponse:
        payload = self._payload(request, "open")
        if payload is not None:
            with outreach_span(self._tracer, "gateway open", payload["c"], kind=SpanKind.SERVER):
                await self._record(payload["c"], channels_resources.ENGAGEMENT_KIND_OPENED)
        # A pixel always answers with the image: a broken image in someone's inbox helps nobody.
        return web.Response(body=TRANSPARENT_GIF, content_type="image/gif", headers=NO_CACHE)

    async def _unsubscribe_page(self, request: web.Request) -> web.StreamResponse:
        """The link only asks: mail scanners and link previews fetch every link in a message, and a GET that
        unsubscribed would opt people out who never clicked (RFC 8058 keeps the one-click opt-out a POST)."""
        if self._payload(request, "unsubscribe") is None:
            return _bad_link()
        return _page(200, "Unsubscribe?", f"You will not receive these messages any more. {_CONFIRM}")

    async def _unsubscribe(self, request: web.Request) -> web.StreamResponse:
        """The confirmation form's POST, or a mail client's one-click POST (List-Unsubscribe=One-Click)."""
        payload = self._payload(request, "unsubscribe")
        if payload is None:
            return _bad_link()
        with outreach_span(self._tracer, "gateway unsubscribe", payload["c"], kind=SpanKind.SERVER):
            recorded = await self._record(payload["c"], channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED)
        if not recorded:
            # Unlike a click, an opt-out must not be lost silently: the person is asked to try again.
            return _page(
                503, "Please try again", "We could not record your request just now. Please use the link again later."
            )
        return _page(200, "You are unsubscribed", "You will not receive these messages any more.")

    async def _healthz(self, _request: web.Request) -> web.StreamResponse:
        if await self._serving():
            return web.Response(text="serving\n")
        return web.Response(status=503, text="not serving\n")
