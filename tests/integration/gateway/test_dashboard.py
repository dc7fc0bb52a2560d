"""The revenue dashboard in headless Chromium against a real gateway and a real attribution service holding the
seed's worked example: what a person sees, in rupees written the Indian way, with nothing fetched from elsewhere."""

import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway import scopes
from plumbing.bus import Bus
from services import streams
from services.attribution.app import build as build_attribution
from services.attribution.settings import AttributionSettings
from tests.integration.attribution.seeding import MSME, RETAIL, activate_worked_example, seed_worked_example
from tests.integration.gateway.conftest import GatewayFactory, RunningGateway
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it when absent)")
    return CHROMIUM


@pytest.fixture
async def seeded_attribution(nats_url: str, nats_bus: Bus, tmp_path: Path) -> AsyncIterator[str]:
    await nats_bus.ensure_streams(streams.ALL_STREAMS)
    settings = AttributionSettings(  # type: ignore[call-arg]
        grpc_port=0, nats_url=nats_url, var_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'attr.db'}"
    )
    process = await build_attribution(settings, TracerProvider())
    await process.start()
    target = f"127.0.0.1:{process.server.port}"
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = attribution_grpc.AttributionServiceStub(channel)
            await seed_worked_example(nats_bus, stub)
            await activate_worked_example(stub)
        yield target
    finally:
        await process.stop(0)


async def _report_status(gateway: RunningGateway, key: str | None) -> tuple[int, dict[str, object]]:
    headers = {"X-Api-Key": key} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.http}/dashboard/api/report", headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_the_data_endpoint_needs_a_reports_read_key(
    start_gateway: GatewayFactory, seeded_attribution: str
) -> None:
    gateway = await start_gateway(attribution_target=seeded_attribution)
    status, body = await _report_status(gateway, None)
    assert status == 401 and "API key" in str(body["error"])
    los_only = await gateway.add_key(scopes.LOS_EVENTS)
    status, body = await _report_status(gateway, los_only)
    assert status == 403 and "reports.read" in str(body["error"])
    reader = await gateway.add_key(scopes.REPORTS_READ)
    status, body = await _report_status(gateway, reader)
    assert status == 200
    assert body["total"]["disbursed_paise"] == 174_000_000  # type: ignore[index]


async def test_a_person_sees_the_worked_example_on_the_dashboard(
    start_gateway: GatewayFactory, seeded_attribution: str, tmp_path: Path, chromium: str
) -> None:
    from playwright.async_api import Request, Route, async_playwright, expect

    gateway = await start_gateway(attribution_target=seeded_attribution)
    key = await gateway.add_key(scopes.REPORTS_READ, client="marketing-analyst")
    gateway_host = urlsplit(gateway.http).netloc
    elsewhere: list[str] = []

    async def only_the_gateway(route: Route, request: Request) -> None:
        # Offline by construction: anything the page asks of another origin fails the test.
        if urlsplit(request.url).netloc != gateway_host:
            elsewhere.append(request.url)
            await route.abort()
        else:
            await route.continue_()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1100}, locale="en-IN")
            await page.route("**/*", only_the_gateway)
            console_errors: list[str] = []
            page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
            await page.goto(f"{gateway.http}/dashboard")

            # Asked for a key once; a wrong one is refused with a reason.
            await page.get_by_label("API key with the reports.read scope").fill("xsk_nope_notarealsecret0000")
            await page.get_by_role("button", name="Open the dashboard").click()
            await page.wait_for_selector("#key-error:not(:empty)")
            assert "not valid" in await page.inner_text("#key-error")
            await page.get_by_label("API key with the reports.read scope").fill(key)
            await page.get_by_role("button", name="Open the dashboard").click()
            await page.wait_for_selector("body[data-loaded=true]")
            await expect(page.locator("#key-form")).to_be_hidden()

            # November 2025, all labels.
            await page.fill("#start", "2025-11-01")
            await page.fill("#end", "2025-11-30")
            await page.get_by_role("button", name="Apply").click()
            await expect(page.locator("#tile-disbursed")).to_have_text("₹17,40,000")

            tiles = {
                name: await page.inner_text(f"#tile-{name}")
                for name in ("sent", "conversions", "disbursed", "disbursed-short", "revenue", "year1", "cost", "romi")
            }
            assert tiles == {
                "sent": "2",
                "conversions": "1 (50.0%)",
                "disbursed": "₹17,40,000",
                "disbursed-short": "₹17.4 lakh",
                "revenue": "₹4,52,400",
                "year1": "year 1: ₹45,240",
                "cost": "₹98.25",  # the example's ₹98 and the T01 SMS's 25 paise
                "romi": "4,605×",
            }
            t06 = await page.locator("tr[data-trigger=T06] td").all_inner_texts()
            assert t06 == ["T06", "1", "1", "100.0%", "₹17,40,000", "₹4,52,400", "₹45,240", "₹98", "4,616×"]
            funnel = {
                step: await page.inner_text(f"#funnel li[data-step={step}] .num")
                for step in (
                    "sent",
                    "delivered",
                    "opened",
                    "clicked",
                    "responded",
                    "applied",
                    "sanctioned",
                    "disbursed",
                    "activated",
                )
            }
            assert funnel == {
                "sent": "2",
                "delivered": "1",
                "opened": "1",
                "clicked": "1",
                "responded": "1",
                "applied": "1",
                "sanctioned": "1",
                "disbursed": "1",
                "activated": "1",
            }
            assert (await page.inner_text("#lift")).startswith("No one was held out")
            assert await page.locator("#trend svg rect[data-date='2025-11-22']").count() == 1
            assert await page.locator("#trend svg rect").count() == 30  # every day of November
            subtitle = await page.inner_text("#subtitle")
            assert "₹17.4 lakh disbursed" in subtitle and "₹4.52 lakh NIM contribution" in subtitle

            screenshot = os.environ.get("XSELL_DASHBOARD_SCREENSHOT")
            await page.screenshot(path=screenshot or str(tmp_path / "dashboard.png"), full_page=True)

            # The label filter offers both labels; the retail one holds only the T01 outreach.
            options = await page.locator("#label option").all_inner_texts()
            assert options == ["All labels", MSME, RETAIL]
            await page.select_option("#label", RETAIL)
            await page.get_by_role("button", name="Apply").click()
            await expect(page.locator("#tile-disbursed")).to_have_text("₹0")
            assert await page.inner_text("#tile-sent") == "1"
            assert await page.locator("#triggers tbody tr").all_inner_texts() == [
                "T01\t1\t0\t0.0%\t₹0\t₹0\t₹0\t₹0.25\t–"
            ]

            # A period with nothing in it says so.
            await page.select_option("#label", "")
            await page.fill("#start", "2025-12-01")
            await page.fill("#end", "2025-12-31")
            await page.get_by_role("button", name="Apply").click()
            await expect(page.locator("#tile-sent")).to_have_text("0")
            assert await page.inner_text("#triggers tbody") == "Nothing in this period."
        finally:
            await browser.close()
    assert elsewhere == []
    # The one refused key above is the only failed load; no script error, no CSP violation.
    assert [text for text in console_errors if "status of 401" not in text] == []
