"""The HTTP edge: signed click, open and unsubscribe links record engagement on channels, and /healthz."""

import aiohttp
import grpc
import pytest

from plumbing.signing import CLICK, OPEN, UNSUBSCRIBE, link_token, sign
from plumbing.telemetry import CAMPAIGN_ID, outreach_trace_id
from tests.integration.gateway.conftest import Downstream, GatewayFactory, RunningGateway, unused_target
from xsell.channels.v1 import resources_pb2 as channels_resources
from xsell.channels.v1 import service_pb2 as channels_pb2

SECRET = "test-tracking-secret"
RECORD_ENGAGEMENT = "/xsell.channels.v1.ChannelsService/RecordEngagement"
LANDING = "https://invest.example.com/lumpsum?utm_source=xsell"
OUTREACH = "CSELL-NOV-T06-0884"


def engagements(downstream: Downstream) -> list[channels_pb2.RecordEngagementRequest]:
    return [
        channels_pb2.RecordEngagementRequest.FromString(received.request)
        for received in downstream.services.to(RECORD_ENGAGEMENT)
    ]


def tampered(token: str) -> str:
    body, _, mac = token.partition(".")
    other = sign({"c": OUTREACH, "u": "https://evil.example/"}, SECRET).partition(".")[0]
    return f"{other}.{mac}" if other != body else f"{body}.{mac[::-1]}"


async def test_a_valid_click_is_recorded_in_the_outreach_trace_and_redirected(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway()
    token = link_token(OUTREACH, CLICK, SECRET, LANDING)
    async with http.get(f"{gateway.http}/c/{token}", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == LANDING
    (click,) = engagements(downstream)
    assert (click.campaign_id, click.kind, click.url) == (OUTREACH, channels_resources.ENGAGEMENT_KIND_CLICKED, LANDING)
    assert click.request_id
    (received,) = downstream.services.to(RECORD_ENGAGEMENT)
    assert received.metadata["traceparent"].split("-")[1] == outreach_trace_id(OUTREACH)
    (span,) = [span for span in gateway.spans.get_finished_spans() if span.name == "gateway click"]
    assert span.attributes is not None and span.attributes[CAMPAIGN_ID] == OUTREACH


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda: tampered(sign({"c": OUTREACH, "u": LANDING}, SECRET)), id="tampered"),
        pytest.param(lambda: sign({"c": OUTREACH, "u": LANDING}, "another-secret"), id="other-secret"),
        pytest.param(lambda: sign({"c": OUTREACH, "u": LANDING}, SECRET)[:-3], id="truncated"),
        pytest.param(lambda: "garbage", id="garbage"),
        pytest.param(lambda: sign({"c": OUTREACH, "u": "javascript:alert(1)"}, SECRET), id="not-a-web-url"),
        pytest.param(lambda: sign({"u": LANDING}, SECRET), id="no-campaign-id"),
    ],
)
async def test_an_invalid_click_link_is_refused_without_a_redirect_or_a_record(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession, make_token
) -> None:  # type: ignore[no-untyped-def]
    gateway = await start_gateway()
    async with http.get(f"{gateway.http}/c/{make_token()}", allow_redirects=False) as response:
        assert response.status == 400
        assert "Location" not in response.headers
        assert "not valid" in await response.text()
    assert engagements(downstream) == []


async def test_a_click_still_redirects_when_channels_is_down(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(channels_target=unused_target())
    token = link_token(OUTREACH, CLICK, SECRET, LANDING)
    async with http.get(f"{gateway.http}/c/{token}", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == LANDING


async def test_a_click_and_an_open_channels_refuses_still_redirect_and_show_the_pixel(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    """Channels refuses engagement on a message no provider was given (FAILED_PRECONDITION) or does not know
    (NOT_FOUND): the person is still sent where they clicked, and shown the pixel."""
    answers = iter(
        [grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND]
    )

    async def refusing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(next(answers), "campaign ID was never handed to a provider")
        raise AssertionError  # abort raises

    downstream.services.responders[RECORD_ENGAGEMENT] = refusing
    gateway = await start_gateway()
    async with http.get(f"{gateway.http}/c/{link_token(OUTREACH, CLICK, SECRET, LANDING)}", allow_redirects=False) as r:
        assert (r.status, r.headers["Location"]) == (302, LANDING)
    for _ in range(2):
        async with http.get(f"{gateway.http}/o/{link_token(OUTREACH, OPEN, SECRET)}.gif") as response:
            assert (response.status, response.content_type) == (200, "image/gif")
            assert (await response.read()).startswith(b"GIF89a")
    assert [e.kind for e in engagements(downstream)] == [
        channels_resources.ENGAGEMENT_KIND_CLICKED,
        channels_resources.ENGAGEMENT_KIND_OPENED,
        channels_resources.ENGAGEMENT_KIND_OPENED,
    ]


async def test_the_open_pixel_is_a_fresh_transparent_gif_and_records_an_open(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway()
    token = link_token(OUTREACH, OPEN, SECRET)
    async with http.get(f"{gateway.http}/o/{token}.gif") as response:
        assert response.status == 200
        assert response.content_type == "image/gif"
        assert "no-store" in response.headers["Cache-Control"]
        body = await response.read()
    assert body.startswith(b"GIF89a\x01\x00\x01\x00")
    assert [(e.campaign_id, e.kind) for e in engagements(downstream)] == [
        (OUTREACH, channels_resources.ENGAGEMENT_KIND_OPENED)
    ]

    async with http.get(f"{gateway.http}/o/{tampered(token)}.gif") as response:
        assert response.status == 200
        assert await response.read() == body
    assert len(engagements(downstream)) == 1, "a forged open must not be recorded"


async def test_unsubscribe_by_link_and_by_one_click_post(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway()
    token = link_token(OUTREACH, UNSUBSCRIBE, SECRET)
    # Following the link (as a mail scanner or a link preview does) only asks; nothing is recorded.
    async with http.get(f"{gateway.http}/u/{token}") as response:
        assert response.status == 200
        page = await response.text()
        assert '<form method="post">' in page and "Unsubscribe" in page
    async with http.get(f"{gateway.http}/u/{tampered(token)}") as response:
        assert response.status == 400
    assert engagements(downstream) == []
    # The person confirms: the form posts back to the link.
    async with http.post(f"{gateway.http}/u/{token}", data={"confirm": "yes"}) as response:
        assert response.status == 200
        assert "unsubscribed" in await response.text()
    # RFC 8058: the mail client POSTs List-Unsubscribe=One-Click to the List-Unsubscribe URL.
    async with http.post(f"{gateway.http}/u/{token}", data={"List-Unsubscribe": "One-Click"}) as response:
        assert response.status == 200
    assert [(e.campaign_id, e.kind) for e in engagements(downstream)] == [
        (OUTREACH, channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED)
    ] * 2

    async with http.post(f"{gateway.http}/u/{tampered(token)}") as response:
        assert response.status == 400
    assert len(engagements(downstream)) == 2


async def test_a_token_opens_only_its_own_door_and_tokens_from_before_purposes_keep_working(
    start_gateway: GatewayFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway()
    click, pixel = link_token(OUTREACH, CLICK, SECRET, LANDING), link_token(OUTREACH, OPEN, SECRET)
    # A forwarded offer's click link, or the pixel an image proxy fetched, cannot opt the person out...
    for token in (click, pixel):
        async with http.get(f"{gateway.http}/u/{token}") as response:
            assert response.status == 400
        async with http.post(f"{gateway.http}/u/{token}", data={"List-Unsubscribe": "One-Click"}) as response:
            assert response.status == 400
    # ...nor fake opens or clicks with another link's token (the pixel still answers with its image).
    unsubscribe = link_token(OUTREACH, UNSUBSCRIBE, SECRET)
    for token in (click, unsubscribe):
        async with http.get(f"{gateway.http}/o/{token}.gif") as response:
            assert response.status == 200
    async with http.get(f"{gateway.http}/c/{link_token(OUTREACH, OPEN, SECRET, LANDING)}") as response:
        assert response.status == 400
    assert engagements(downstream) == []
    # Mail sent before purposes is still in inboxes: its links work where they did, and nowhere else.
    legacy_click, legacy_outreach = sign({"c": OUTREACH, "u": LANDING}, SECRET), sign({"c": OUTREACH}, SECRET)
    async with http.get(f"{gateway.http}/c/{legacy_click}", allow_redirects=False) as response:
        assert response.status == 302
    async with http.post(f"{gateway.http}/u/{legacy_click}") as response:
        assert response.status == 400
    async with http.get(f"{gateway.http}/o/{legacy_outreach}.gif") as response:
        assert response.status == 200
    async with http.post(f"{gateway.http}/u/{legacy_outreach}", data={"confirm": "yes"}) as response:
        assert response.status == 200
    assert [e.kind for e in engagements(downstream)] == [
        channels_resources.ENGAGEMENT_KIND_CLICKED,
        channels_resources.ENGAGEMENT_KIND_OPENED,
        channels_resources.ENGAGEMENT_KIND_UNSUBSCRIBED,
    ]


async def test_an_unsubscribe_that_cannot_be_recorded_asks_to_try_again(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(channels_target=unused_target())
    async with http.post(f"{gateway.http}/u/{link_token(OUTREACH, UNSUBSCRIBE, SECRET)}") as response:
        assert response.status == 503
        assert "try again" in (await response.text()).lower()


async def test_healthz_follows_the_grpc_serving_status(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway: RunningGateway = await start_gateway()
    async with http.get(f"{gateway.http}/healthz") as response:
        assert response.status == 200
    await gateway.process.server.health.enter_graceful_shutdown()
    async with http.get(f"{gateway.http}/healthz") as response:
        assert response.status == 503
