"""A WhatsApp offer to a number that is not on WhatsApp reaches the person by SMS, driven only through the gateway:
Meta's failed status (131026) through the signed webhook, channels' bounce, segments' suppression and campaigns'
fallback to the next channel, against the provider servers as `make run` starts them."""

import re

import grpc
import pytest

from devstack.provider_sinks import NOT_ON_WHATSAPP
from tests.e2e.conftest import AUTH, RunningStack, approver_auth, launched, ok, xsell
from tests.waiting import eventually
from xsell.campaigns.v1 import resources_pb2 as campaign_resources
from xsell.campaigns.v1 import service_pb2 as campaigns
from xsell.campaigns.v1 import service_pb2_grpc as campaigns_grpc
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.channels.v1 import service_pb2 as channels
from xsell.channels.v1 import service_pb2_grpc as channels_grpc
from xsell.segments.v1 import resources_pb2 as seg
from xsell.segments.v1 import service_pb2 as segments
from xsell.segments.v1 import service_pb2_grpc as segments_grpc
from xsell.type.v1 import channel_pb2, money_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("stack")]

NUMBER = f"+{next(iter(NOT_ON_WHATSAPP))}"  # the sinks' number that is not on WhatsApp
SMS_BODY = (
    "Dear {{ first_name }}, markets offer attractive entry points. A lumpsum of {{ offer_amount }} can "
    "complement your SIPs: {{ campaign_id }} -Fundsy"
)


async def test_a_whatsapp_offer_to_a_number_not_on_whatsapp_falls_back_to_sms(running_stack: RunningStack) -> None:
    providers = running_stack.providers
    async with grpc.aio.insecure_channel(running_stack.stack.gateway_target) as channel:
        segments_api = segments_grpc.SegmentsServiceStub(channel)
        campaigns_api = campaigns_grpc.CampaignsServiceStub(channel)
        channels_api = channels_grpc.ChannelsServiceStub(channel)
        approver = approver_auth(running_stack)

        # A person who opted in to WhatsApp (whatsapp_opt_in: the default catalog's), whose number is not on WhatsApp.
        upserted = await segments_api.UpsertProfiles(
            segments.UpsertProfilesRequest(
                request_id="e2e-fallback-profiles",
                profiles=[
                    seg.Profile(
                        profile_id="wa-0001",
                        attributes={
                            "first_name": seg.Value(string_value="Ravi"),
                            "phone": seg.Value(string_value=NUMBER),
                            "whatsapp_opt_in": seg.Value(bool_value=True),
                            "customer_tier": seg.Value(string_value="Platinum"),
                        },
                    )
                ],
            ),
            metadata=AUTH,
        )
        assert upserted.accepted_count == 1 and not upserted.errors
        tier = seg.AttributeCondition(attribute="customer_tier", operator=seg.OPERATOR_EQUALS)
        tier.values.add(string_value="Platinum")
        created = await segments_api.CreateSegment(
            segments.CreateSegmentRequest(
                request_id="e2e-fallback-segment",
                segment=seg.Segment(display_name="Platinum", rule=seg.Rule(attribute=tier)),
            ),
            metadata=AUTH,
        )
        segment_id = created.segment.segment_id
        await segments_api.SubmitSegment(
            segments.SubmitSegmentRequest(request_id="e2e-fallback-submit", segment_id=segment_id, version=1),
            metadata=AUTH,
        )
        await segments_api.ApproveSegment(
            segments.ApproveSegmentRequest(request_id="e2e-fallback-approve", segment_id=segment_id, version=1),
            metadata=approver,
        )
        await segments_api.PublishSegment(
            segments.PublishSegmentRequest(request_id="e2e-fallback-publish", segment_id=segment_id), metadata=AUTH
        )

        # WhatsApp first, SMS when it fails.
        campaign = campaign_resources.Campaign(
            display_name="Lumpsum on WhatsApp, else SMS",
            programme="CSELL",
            trigger_code="T06",
            segment_id=segment_id,
            channel=channel_pb2.CHANNEL_WHATSAPP,
            fallback_channels=[channel_pb2.CHANNEL_SMS],
            fallback_on_failure=True,
            offer=campaign_resources.Offer(
                product_code="LUMPSUM", amount=money_pb2.Money(minor_units=50_000_00, currency_code="INR")
            ),
            content=campaign_resources.Content(
                whatsapp=campaign_resources.WhatsAppContent(
                    template_name="lumpsum_offer_v2",
                    parameter_templates=["{{ first_name }}", "{{ offer_amount }}", "{{ campaign_id }}"],
                ),
                sms=campaign_resources.SmsContent(
                    dlt_template_id="1107161234567890123", sender_id="FUNDSY", body_template=SMS_BODY
                ),
            ),
        )
        key = (await launched(campaigns_api, campaign, approver, "e2e-fallback-campaign")).campaign_key

        async def two_outreaches() -> list[campaign_resources.Outreach] | None:
            reply = await campaigns_api.ListOutreaches(campaigns.ListOutreachesRequest(campaign_key=key), metadata=AUTH)
            return list(reply.outreaches) if len(reply.outreaches) == 2 else None

        outreaches = await eventually(two_outreaches, timeout=60)
        (whatsapp,) = [o for o in outreaches if not o.fallback_of]
        (sms,) = [o for o in outreaches if o.fallback_of]
        assert (whatsapp.channel, sms.channel, sms.fallback_of) == (
            channel_pb2.CHANNEL_WHATSAPP,
            channel_pb2.CHANNEL_SMS,
            whatsapp.campaign_id,
        )

        # Meta took the WhatsApp message and reported it undeliverable; the SMS went, once, to the same number.
        taken = [r for r in providers.whatsapp.received if r.campaign_id == whatsapp.campaign_id]
        assert len(taken) == 1

        async def sms_sent() -> list[object]:
            return [r for r in providers.sms.received if r.campaign_id == sms.campaign_id]

        (sent,) = await eventually(sms_sent, timeout=30)
        assert sent.body["To"] == NUMBER and sms.campaign_id in sent.body["Body"]  # type: ignore[attr-defined]
        failed = (
            await channels_api.GetMessage(channels.GetMessageRequest(campaign_id=whatsapp.campaign_id), metadata=AUTH)
        ).message
        assert failed.state == channel_resources.DELIVERY_STATE_FAILED
        (failure,) = [s for s in failed.timeline if s.delivery_state == channel_resources.DELIVERY_STATE_FAILED]
        assert failure.detail == "receipt: whatsapp 131026 Message undeliverable"
        assert [
            s.detail for s in failed.timeline if s.engagement_kind == channel_resources.ENGAGEMENT_KIND_BOUNCED
        ] == ["UNREACHABLE whatsapp 131026"]

        # Segments suppresses WhatsApp for a while: the next campaign reaches them by SMS at release.
        async def unreachable() -> list[seg.Suppression]:
            reply = await segments_api.CheckSuppression(
                segments.CheckSuppressionRequest(profile_id="wa-0001", channel=channel_pb2.CHANNEL_WHATSAPP),
                metadata=AUTH,
            )
            return list(reply.suppressions)

        (suppression,) = await eventually(unreachable, timeout=30)
        assert suppression.reason == seg.SUPPRESSION_REASON_UNREACHABLE and suppression.HasField("expire_time")
        report = (
            await campaigns_api.GetCampaignReport(campaigns.GetCampaignReportRequest(campaign_key=key), metadata=AUTH)
        ).counts
        assert (report.released, report.fell_back, report.failed) == (2, 1, 1)
    # The operator's report says the same.
    printed = ok(xsell(running_stack, "report", key))
    assert re.search(r"^fell_back\s+1\s*$", printed, re.M), printed
