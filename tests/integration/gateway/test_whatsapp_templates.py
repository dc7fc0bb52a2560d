"""Meta's template status webhook: a template Meta stops pauses the campaigns that send it, once."""

import hashlib
import hmac
import json
from typing import Any

import grpc
import pytest

from tests.integration.gateway.conftest import Downstream, GatewayFactory, RunningGateway
from xsell.campaigns.v1 import resources_pb2 as r
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.type.v1 import channel_pb2

APP_SECRET = "test-app-secret"
LIST = "/xsell.campaigns.v1.CampaignsService/ListCampaigns"
PAUSE = "/xsell.campaigns.v1.CampaignsService/PauseCampaign"


def _campaign(key: str, state: int, channel: int, template: str, language: str = "en") -> r.Campaign:
    campaign = r.Campaign(campaign_key=key, state=state, channel=channel)  # type: ignore[arg-type]
    campaign.content.whatsapp.template_name = template
    campaign.content.whatsapp.language_code = language
    return campaign


CAMPAIGNS = [
    _campaign("cmp_running", r.CAMPAIGN_STATE_RUNNING, channel_pb2.CHANNEL_WHATSAPP, "lumpsum_offer_v2"),
    _campaign("cmp_scheduled", r.CAMPAIGN_STATE_SCHEDULED, channel_pb2.CHANNEL_WHATSAPP, "lumpsum_offer_v2"),
    # Not sending it: another template, another language, already paused, done, or WhatsApp only as a fallback.
    _campaign("cmp_other", r.CAMPAIGN_STATE_RUNNING, channel_pb2.CHANNEL_WHATSAPP, "fund_ideas_v1"),
    _campaign("cmp_hindi", r.CAMPAIGN_STATE_RUNNING, channel_pb2.CHANNEL_WHATSAPP, "lumpsum_offer_v2", "hi"),
    _campaign("cmp_paused", r.CAMPAIGN_STATE_PAUSED, channel_pb2.CHANNEL_WHATSAPP, "lumpsum_offer_v2"),
    _campaign("cmp_done", r.CAMPAIGN_STATE_COMPLETED, channel_pb2.CHANNEL_WHATSAPP, "lumpsum_offer_v2"),
    _campaign("cmp_sms_first", r.CAMPAIGN_STATE_RUNNING, channel_pb2.CHANNEL_SMS, "lumpsum_offer_v2"),
]


def _pages(downstream: Downstream) -> None:
    """ListCampaigns answers in pages of two, as campaigns pages them."""

    async def listed(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        token = campaigns_pb2.ListCampaignsRequest.FromString(request).page_token
        start = int(token or 0)
        page = campaigns_pb2.ListCampaignsResponse(campaigns=CAMPAIGNS[start : start + 2])
        if start + 2 < len(CAMPAIGNS):
            page.next_page_token = str(start + 2)
        return page.SerializeToString()

    downstream.services.responders[LIST] = listed


def _template_status(event: str, **extra: Any) -> bytes:
    value = {
        "event": event,
        "message_template_id": 594425479261596,
        "message_template_name": "lumpsum_offer_v2",
        "message_template_language": "en",
        "reason": "NONE",
        **extra,
    }
    document = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "time": 1764400000,
                "changes": [{"field": "message_template_status_update", "value": value}],
            }
        ],
    }
    return json.dumps(document).encode()


async def _post(http: Any, gateway: RunningGateway, body: bytes) -> int:
    digest = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}
    async with http.post(f"{gateway.http}/webhooks/whatsapp", data=body, headers=headers) as response:
        return response.status


def _paused(downstream: Downstream) -> list[tuple[str, str, str, str]]:
    calls = downstream.services.to(PAUSE)
    requests = [campaigns_pb2.PauseCampaignRequest.FromString(call.request) for call in calls]
    return [
        (p.campaign_key, p.reason, p.request_id.rpartition(":")[2], call.metadata.get("x-xsell-client", ""))
        for p, call in zip(requests, calls, strict=True)
    ]


async def test_a_template_meta_pauses_pauses_the_campaigns_sending_it_once(
    start_gateway: GatewayFactory, downstream: Downstream, http: Any
) -> None:
    _pages(downstream)
    gateway = await start_gateway(whatsapp_app_secret=APP_SECRET)
    body = _template_status("PAUSED", reason="LOW_QUALITY")
    assert await _post(http, gateway, body) == 200
    reason = "WhatsApp template lumpsum_offer_v2 (en) PAUSED by Meta: LOW_QUALITY"
    assert _paused(downstream) == [
        ("cmp_running", reason, "cmp_running", "whatsapp-template-status"),
        ("cmp_scheduled", reason, "cmp_scheduled", "whatsapp-template-status"),
    ]
    # Meta's retry of the same event is a replay: nothing is paused again.
    assert await _post(http, gateway, body) == 200
    assert len(_paused(downstream)) == 2


@pytest.mark.parametrize("event", ["APPROVED", "REINSTATED", "FLAGGED", "PENDING"])
async def test_a_template_meta_approves_or_only_flags_pauses_nothing(
    start_gateway: GatewayFactory, downstream: Downstream, http: Any, event: str
) -> None:
    _pages(downstream)
    gateway = await start_gateway(whatsapp_app_secret=APP_SECRET)
    assert await _post(http, gateway, _template_status(event)) == 200
    assert downstream.services.to(PAUSE) == [] and downstream.services.to(LIST) == []


async def test_when_campaigns_cannot_pause_meta_is_asked_to_send_again_and_a_changed_campaign_is_skipped(
    start_gateway: GatewayFactory, downstream: Downstream, http: Any
) -> None:
    _pages(downstream)
    answers = iter([grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE])

    async def refuse(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(next(answers), "no")
        raise AssertionError  # abort raises

    downstream.services.responders[PAUSE] = refuse
    gateway = await start_gateway(whatsapp_app_secret=APP_SECRET)
    # The first campaign changed meanwhile (skipped); the second cannot be paused now: 503, Meta sends it again.
    assert await _post(http, gateway, _template_status("DISABLED")) == 503
    assert [c for c, *_ in _paused(downstream)] == ["cmp_running", "cmp_scheduled"]
