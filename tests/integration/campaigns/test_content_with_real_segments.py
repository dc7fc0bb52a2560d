"""Content against the real segments service: its attribute catalog, its profiles' typed values, its members."""

import grpc
import pytest

from plumbing.bus import Bus
from services import streams
from tests.integration.campaigns.harness import approve, collect, programme_code
from tests.integration.campaigns.test_with_real_segments import Stack, _segment, stack  # noqa: F401
from tests.waiting import eventually
from xsell.campaigns.v1 import events_pb2, resources_pb2, service_pb2
from xsell.segments.v1 import resources_pb2 as seg
from xsell.segments.v1 import service_pb2 as seg_service
from xsell.type.v1 import channel_pb2, money_pb2

HTML = '<p>Dear {{ first_name }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
CATEGORIES = "{{ recommendations | map(attribute='category') | join(', ') }}"


def _profile(profile_id: str, *, opted_in: bool, phone: str = "", email: str = "") -> seg.Profile:
    profile = seg.Profile(profile_id=profile_id)
    values = profile.attributes
    values["first_name"].string_value = profile_id.title()
    values["plan"].string_value = "SIP"
    values["customer_tier"].string_value = "HNI"
    values["total_aum"].money_value.CopyFrom(money_pb2.Money(minor_units=1_24_00_000_00, currency_code="INR"))
    values["fund_categories"].string_set_value.values.extend(["Equity", "Debt"])
    values["whatsapp_opt_in"].bool_value = opted_in
    if phone:
        values["phone"].string_value = phone
    if email:
        values["email"].string_value = email
    return profile


async def test_whatsapp_with_email_fallback_against_real_segments(
    stack: Stack,  # noqa: F811
    nats_bus: Bus,
) -> None:
    # email, phone, first_name, total_aum, fund_categories, customer_tier come from segments' default catalog.
    defined = await stack.segments.DefineAttributes(
        seg_service.DefineAttributesRequest(
            request_id="content-attributes",
            attributes=[
                seg.AttributeDefinition(name="whatsapp_opt_in", type=seg.ATTRIBUTE_TYPE_BOOLEAN),
                seg.AttributeDefinition(name="plan", type=seg.ATTRIBUTE_TYPE_STRING),
            ],
        )
    )
    assert not defined.errors
    profiles = [
        _profile("asha", opted_in=True, phone="+919812345601", email="asha@example.in"),
        _profile("ravi", opted_in=False, phone="+919812345602", email="ravi@example.in"),
        _profile("kiran", opted_in=False),
    ]
    upserted = await stack.segments.UpsertProfiles(
        seg_service.UpsertProfilesRequest(request_id="content-profiles", profiles=profiles)
    )
    assert upserted.accepted_count == len(profiles), upserted.errors
    segment_id = await _segment(stack, "sip-content", publish=True)

    programme = programme_code()
    campaign = resources_pb2.Campaign(
        display_name="Diversify",
        programme=programme,
        segment_id=segment_id,
        channel=channel_pb2.CHANNEL_WHATSAPP,
        fallback_channels=[channel_pb2.CHANNEL_EMAIL],
        offer=resources_pb2.Offer(product_code="FUND_IDEAS"),
        content=resources_pb2.Content(
            email=resources_pb2.EmailContent(subject_template="{{ first_name }}, three ideas", html_template=HTML),
            whatsapp=resources_pb2.WhatsAppContent(
                template_name="lumpsum_offer_v2",
                parameter_templates=["{{ first_name }}", "{{ total_aum | inr }}", CATEGORIES],
            ),
        ),
    )
    misspelt = resources_pb2.Campaign()
    misspelt.CopyFrom(campaign)
    misspelt.content.whatsapp.parameter_templates[1] = "{{ total_aum_inr }}"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.campaigns.CreateCampaign(service_pb2.CreateCampaignRequest(request_id="bad", campaign=misspelt))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "did you mean total_aum" in (error.value.details() or "")

    created = (
        await stack.campaigns.CreateCampaign(service_pb2.CreateCampaignRequest(request_id="good", campaign=campaign))
    ).campaign
    preview = await stack.campaigns.PreviewCampaign(
        service_pb2.PreviewCampaignRequest(
            campaign_key=created.campaign_key, profile_id="asha", channel=channel_pb2.CHANNEL_WHATSAPP
        )
    )
    # An HNI holding Equity and Debt: Hybrid, ELSS, then International (open to Premium and HNI).
    assert list(preview.previews[0].parameters) == ["Asha", "₹1.24 crore", "Hybrid, ELSS, International"]

    await approve(stack.campaigns, created.campaign_key)
    await stack.campaigns.LaunchCampaign(
        service_pb2.LaunchCampaignRequest(request_id="launch", campaign_key=created.campaign_key)
    )

    async def completed() -> bool:
        got = await stack.campaigns.GetCampaign(service_pb2.GetCampaignRequest(campaign_key=created.campaign_key))
        return got.campaign.state == resources_pb2.CAMPAIGN_STATE_COMPLETED

    await eventually(completed)
    dispatches = {
        message.profile_id: message
        for message in (
            events_pb2.DispatchRequested.FromString(payload)
            for _, payload in await collect(nats_bus, streams.DISPATCH_REQUESTED, programme, 2)
        )
    }
    assert set(dispatches) == {"asha", "ravi"}  # kiran has neither a phone nor an e-mail
    assert dispatches["asha"].whatsapp.to_number == "+919812345601"
    assert list(dispatches["asha"].whatsapp.parameters) == ["Asha", "₹1.24 crore", "Hybrid, ELSS, International"]
    assert dispatches["ravi"].WhichOneof("message") == "email"
    assert dispatches["ravi"].email.subject == "Ravi, three ideas"
