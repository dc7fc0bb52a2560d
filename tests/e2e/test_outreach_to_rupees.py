"""One outreach carried from a profile to attributed rupees, driven only through the gateway."""

import re
from datetime import UTC, datetime, timedelta
from email.message import Message
from urllib.parse import urlparse

import aiohttp
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.signing import verify
from plumbing.telemetry import spans_for_campaign_id
from tests.deploy.test_alerts import alert_metrics, metric_family
from tests.e2e.conftest import AUTH, RunningStack, approver_auth, launched
from tests.waiting import eventually
from xsell.attribution.v1 import service_pb2 as attribution
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc
from xsell.campaigns.v1 import resources_pb2 as campaign_resources
from xsell.campaigns.v1 import service_pb2 as campaigns
from xsell.campaigns.v1 import service_pb2_grpc as campaigns_grpc
from xsell.segments.v1 import resources_pb2 as seg
from xsell.segments.v1 import service_pb2 as segments
from xsell.segments.v1 import service_pb2_grpc as segments_grpc
from xsell.type.v1 import channel_pb2, money_pb2

# One worker runs every e2e test, so `make test` starts the whole stack once, not once per worker.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("stack")]

CAMPAIGN_ID = re.compile(r"^CSELL-(JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)-T06-\d{4,}$")
LANDING_PAGE = "https://invest.example.com/lumpsum?utm_source=xsell"


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _inr(rupees: int) -> money_pb2.Money:
    return money_pb2.Money(minor_units=rupees * 100, currency_code="INR")


def _sip_only_rule() -> seg.Rule:
    last_year = Duration(seconds=365 * 24 * 3600)
    return seg.Rule(
        all=seg.RuleGroup(
            rules=[
                seg.Rule(
                    event=seg.EventCondition(
                        event_name="sip_registered",
                        performance=seg.PERFORMANCE_PERFORMED,
                        window=seg.TimeWindow(last=last_year),
                    )
                ),
                seg.Rule(
                    event=seg.EventCondition(
                        event_name="lumpsum_invested",
                        performance=seg.PERFORMANCE_NOT_PERFORMED,
                        window=seg.TimeWindow(last=last_year),
                    )
                ),
            ]
        )
    )


def _links(message: Message) -> list[str]:
    html = next(part for part in message.walk() if part.get_content_type() == "text/html")
    body = html.get_payload(decode=True).decode()
    return re.findall(r'href="([^"]+)"', body)


async def test_one_outreach_from_profile_to_attributed_rupees(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    async with grpc.aio.insecure_channel(stack.gateway_target) as channel:
        segments_api = segments_grpc.SegmentsServiceStub(channel)
        campaigns_api = campaigns_grpc.CampaignsServiceStub(channel)
        attribution_api = attribution_grpc.AttributionServiceStub(channel)
        now = datetime.now(UTC)

        # 1. The CRM feeds a profile and an event.
        upserted = await segments_api.UpsertProfiles(
            segments.UpsertProfilesRequest(
                request_id="e2e-profiles-1",
                profiles=[
                    seg.Profile(
                        profile_id="inv-0001",
                        attributes={
                            "investment_type": seg.Value(string_value="SIP"),
                            "email": seg.Value(string_value="asha.investor@example.com"),
                            "first_name": seg.Value(string_value="Asha"),
                        },
                    )
                ],
            ),
            metadata=AUTH,
        )
        assert upserted.accepted_count == 1 and not upserted.errors
        ingested = await segments_api.IngestEvents(
            segments.IngestEventsRequest(
                request_id="e2e-events-1",
                events=[
                    seg.Event(
                        event_id="evt-sip-1",
                        profile_id="inv-0001",
                        name="sip_registered",
                        occur_time=_ts(now - timedelta(days=30)),
                    )
                ],
            ),
            metadata=AUTH,
        )
        assert ingested.accepted_count == 1 and not ingested.errors

        # 2. An operator creates "SIP-only investors"; a second person (the approve-scoped key) approves
        # it through the gateway, and only then can it be published.
        created = await segments_api.CreateSegment(
            segments.CreateSegmentRequest(
                request_id="e2e-segment-1",
                segment=seg.Segment(display_name="SIP-only investors", rule=_sip_only_rule()),
            ),
            metadata=AUTH,
        )
        assert created.segment.author == "bootstrap"
        await segments_api.SubmitSegment(
            segments.SubmitSegmentRequest(
                request_id="e2e-segment-submit-1", segment_id=created.segment.segment_id, version=1
            ),
            metadata=AUTH,
        )
        with pytest.raises(grpc.aio.AioRpcError) as own_approval:
            await segments_api.ApproveSegment(
                segments.ApproveSegmentRequest(
                    request_id="e2e-segment-self-approve-1", segment_id=created.segment.segment_id, version=1
                ),
                metadata=AUTH,
            )
        assert own_approval.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        approved = await segments_api.ApproveSegment(
            segments.ApproveSegmentRequest(
                request_id="e2e-segment-approve-1", segment_id=created.segment.segment_id, version=1
            ),
            metadata=approver_auth(running_stack),
        )
        assert approved.segment.approver not in ("", "bootstrap")
        published = await segments_api.PublishSegment(
            segments.PublishSegmentRequest(request_id="e2e-publish-1", segment_id=created.segment.segment_id),
            metadata=AUTH,
        )
        assert published.segment.member_count == 1

        # 3. A one-time e-mail campaign on it, launched now; maker-checker: the author submits, someone else approves.
        campaign = await launched(
            campaigns_api,
            campaign_resources.Campaign(
                display_name="Lumpsum Opportunity for SIP Investors",
                labels=["Cross-Sell – Lumpsum"],
                category=campaign_resources.CAMPAIGN_CATEGORY_CROSS_SELL_NEW_CATEGORY,
                programme="CSELL",
                trigger_code="T06",
                segment_id=created.segment.segment_id,
                channel=channel_pb2.CHANNEL_EMAIL,
                offer=campaign_resources.Offer(product_code="MSME_WC_TOPUP", amount=_inr(17_40_000)),
                content=campaign_resources.Content(
                    email=campaign_resources.EmailContent(
                        from_name="xsell Funds",
                        subject_template="{{ first_name }}, your SIPs are working hard",
                        html_template=(
                            "<p>Hi {{ first_name }},</p><p>Up to {{ offer_amount }} for you.</p>"
                            f'<p><a href="{LANDING_PAGE}">Invest now</a></p>'
                            '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
                        ),
                        text_template="Hi {{ first_name }}, invest now: " + LANDING_PAGE,
                    )
                ),
            ),
            approver_auth(running_stack),
            "e2e-campaign-1",
        )

        # 4. One outreach with a campaign ID; exactly one e-mail arrives over SMTP; its links carry the ID.
        async def outreaches() -> list[campaign_resources.Outreach]:
            reply = await campaigns_api.ListOutreaches(
                campaigns.ListOutreachesRequest(campaign_key=campaign.campaign_key), metadata=AUTH
            )
            return list(reply.outreaches)

        (outreach,) = await eventually(outreaches, timeout=30)
        campaign_id = outreach.campaign_id
        assert CAMPAIGN_ID.match(campaign_id), campaign_id

        async def mails() -> list[Message]:
            # The stack is shared with the other e2e tests, whose campaigns (tests/e2e/test_cli.py's) may still be
            # delivering to the same mailbox: this outreach's own e-mails are those that carry its campaign ID.
            return [m for m in running_stack.mailbox.messages if m["X-Xsell-Campaign-Id"] == campaign_id]

        (mail,) = await eventually(mails, timeout=30)
        assert campaign_id in mail["Message-ID"]
        links = _links(mail)
        tracked = [link for link in links if urlparse(link).path.startswith("/c/")]
        assert tracked, links
        payloads = [verify(urlparse(link).path.removeprefix("/c/"), stack.tracking_secret) for link in tracked]
        assert {payload["c"] for payload in payloads} == {campaign_id}
        assert LANDING_PAGE in {payload["u"] for payload in payloads}

        # 5. The person clicks: the gateway redirects, and the click reaches attribution.
        click = next(link for link, p in zip(tracked, payloads, strict=True) if p["u"] == LANDING_PAGE)
        async with aiohttp.ClientSession() as http, http.get(click, allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"] == LANDING_PAGE

        async def clicked() -> bool:
            try:
                reply = await attribution_api.GetCampaignAttribution(
                    attribution.GetCampaignAttributionRequest(campaign_id=campaign_id), metadata=AUTH
                )
            except grpc.aio.AioRpcError as error:
                # Attribution learns of the outreach from its event, which may still be on its way.
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            # The click, and the e-mail's ₹0.50 booked when channels' SENT reached attribution.
            return reply.attribution.funnel.clicked == 1 and reply.attribution.cost.minor_units == 50

        await eventually(clicked, timeout=30)

        # 6. The CRM creates a lead; the LOS reports application, sanction and disbursement.
        await attribution_api.CreateLead(
            attribution.CreateLeadRequest(request_id="e2e-lead-1", campaign_id=campaign_id, crm_lead_id="CRM-77"),
            metadata=AUTH,
        )
        await attribution_api.RecordApplication(
            attribution.RecordApplicationRequest(
                request_id="e2e-app-1", loan_number="LA-2025-0001", campaign_id=campaign_id
            ),
            metadata=AUTH,
        )
        await attribution_api.RecordSanction(
            attribution.RecordSanctionRequest(
                request_id="e2e-sanction-1",
                loan_number="LA-2025-0001",
                campaign_id=campaign_id,
                amount=_inr(17_40_000),
            ),
            metadata=AUTH,
        )
        disbursed = await attribution_api.RecordDisbursement(
            attribution.RecordDisbursementRequest(
                request_id="e2e-disbursement-1",
                disbursement_id="DISB-0001",
                loan_number="LA-2025-0001",
                campaign_id=campaign_id,
                amount=_inr(17_40_000),
            ),
            metadata=AUTH,
        )
        assert disbursed.attribution.disbursed_amount.minor_units == 17_40_000_00

        # 7. Attribution for the campaign ID, to the rupee.
        report = (
            await attribution_api.GetCampaignAttribution(
                attribution.GetCampaignAttributionRequest(campaign_id=campaign_id), metadata=AUTH
            )
        ).attribution
        assert report.lifetime_revenue.minor_units == 4_52_400_00
        assert report.year1_revenue.minor_units == 45_240_00
        assert report.cost.minor_units == 98_00
        assert report.romi == pytest.approx(4616.3, abs=0.05)
        assert report.funnel.disbursed == 1

    # 8. One trace for the campaign ID, with spans from all five processes.
    async def services_in_trace() -> set[str]:
        spans = spans_for_campaign_id(running_stack.var_dir, campaign_id)
        found = {span["service"] for span in spans}
        return found if found >= {"gateway", "segments", "campaigns", "channels", "attribution"} else set()

    found = await eventually(services_in_trace, timeout=30)
    assert found >= {"gateway", "segments", "campaigns", "channels", "attribution"}

    # Every process exposes the numbers an operator watches.
    async with aiohttp.ClientSession() as http:
        scraped = {}
        for name, port in stack.ports.metrics.items():
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                scraped[name] = await response.text()
    for name in ("segments", "campaigns", "channels", "attribution", "gateway"):
        assert "xsell_rpc_server_duration" in scraped[name], name
        assert "xsell_event_loop_lag_milliseconds_bucket" in scraped[name], name
    for name in ("segments", "campaigns", "channels", "attribution"):
        assert "xsell_outbox_published" in scraped[name] or "xsell_outbox_backlog" in scraped[name], name
    handled = re.findall(r"xsell_messages_handled_total\{([^}]*)\}", scraped["channels"])
    assert any('durable="channels-dispatch"' in labels and 'outcome="ack"' in labels for labels in handled)
    assert 'durable="attribution-outreach"' in scraped["attribution"]
    # Domain figures: ingest by transport, the funnel, how far behind the ledger runs, the rupees attributed.
    assert re.search(r'xsell_segments_events_total\{[^}]*outcome="accepted"[^}]*transport="grpc"', scraped["segments"])
    assert re.search(r'xsell_attribution_funnel_steps_total\{[^}]*step="disbursed"[^}]*\} 1\.0', scraped["attribution"])
    assert re.search(
        r'xsell_attribution_lag_since_outreach_seconds_count\{[^}]*step="disbursed"[^}]*\} 1\.0', scraped["attribution"]
    )
    assert re.search(r'xsell_attribution_disbursed_total\{currency="INR"[^}]*\} 1\.74e\+08', scraped["attribution"])
    # Every metric the shipped alerting rules watch is one these processes really expose.
    exposed = {
        metric_family(m) for text in scraped.values() for m in re.findall(r"^(xsell_[a-z_]+)", text, re.MULTILINE)
    }
    assert alert_metrics() - exposed == set()

    # The person's e-mail address went through every service, yet no log line or span holds it.
    for path in [*(running_stack.var_dir / "logs").glob("*.log"), *(running_stack.var_dir / "traces").glob("*.jsonl")]:
        assert "asha.investor@example.com" not in path.read_text(), path.name
