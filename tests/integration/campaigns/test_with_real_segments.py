"""Campaigns against the real segments service (both over gRPC on port 0), real NATS, SQLite and PostgreSQL.

Campaigns runs on each backend of the `database_url` fixture; segments, whose storage is not
under test here, keeps its own SQLite file.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.campaigns.app import build
from services.campaigns.settings import CampaignsSettings
from services.segments.app import build as build_segments
from services.segments.settings import SegmentsSettings
from tests.integration.segments.approval import publish as approve_and_publish
from tests.waiting import eventually
from xsell.campaigns.v1 import resources_pb2, service_pb2, service_pb2_grpc
from xsell.segments.v1 import resources_pb2 as seg
from xsell.segments.v1 import service_pb2 as seg_service
from xsell.segments.v1 import service_pb2_grpc as seg_grpc
from xsell.type.v1 import channel_pb2

HTML = '<p>Dear {{ first_name }} of {{ city }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'


def _profile(profile_id: str, **attributes: str) -> seg.Profile:
    profile = seg.Profile(profile_id=profile_id)
    for name, value in attributes.items():
        profile.attributes[name].string_value = value
    return profile


PROFILES = [
    _profile("cust-01", email="a@example.in", first_name="Asha", city="Pune", plan="SIP"),
    _profile("cust-02", email="b@example.in", first_name="Ravi", city="Indore", plan="SIP"),
    _profile("cust-03", first_name="Kiran", city="Surat", plan="SIP"),
    _profile("cust-04", email="d@example.in", first_name="Meera", city="Kochi", plan="SIP"),
    _profile("cust-05", email="e@example.in", first_name="Arjun", city="Nagpur", plan="SIP"),
    _profile("cust-06", email="f@example.in", first_name="Divya", city="Goa", plan="LUMPSUM"),
]
REACHABLE = {"cust-01", "cust-02", "cust-04", "cust-05"}


def _sip_rule() -> seg.Rule:
    condition = seg.AttributeCondition(attribute="plan", operator=seg.OPERATOR_EQUALS)
    condition.values.add(string_value="SIP")
    return seg.Rule(attribute=condition)


@dataclass
class Stack:
    campaigns: service_pb2_grpc.CampaignsServiceStub
    segments: seg_grpc.SegmentsServiceStub


@pytest.fixture
async def stack(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    provider = TracerProvider()
    segments_process = await build_segments(
        SegmentsSettings(  # type: ignore[call-arg]
            grpc_port=0,
            var_dir=tmp_path / "segments",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'segments.db'}",
            nats_url=nats_url,
            # Segment maker-checker is segments' own concern; these tests publish directly.
            require_approval=False,
        ),
        provider,
    )
    segments_port = await segments_process.start()
    campaigns_process = await build(
        CampaignsSettings(
            grpc_port=0,
            var_dir=tmp_path / "campaigns",
            database_url=database_url,
            nats_url=nats_url,
            segments_target=f"127.0.0.1:{segments_port}",
            release_page_size=2,
            release_poll_seconds=0.1,
        ),
        provider,
    )
    campaigns_port = await campaigns_process.start()
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{campaigns_port}") as campaigns_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{segments_port}") as segments_channel,
    ):
        yield Stack(
            service_pb2_grpc.CampaignsServiceStub(campaigns_channel), seg_grpc.SegmentsServiceStub(segments_channel)
        )
    await campaigns_process.stop(1)
    await segments_process.stop(1)


async def _segment(stack: Stack, name: str, *, publish: bool) -> str:
    created = await stack.segments.CreateSegment(
        seg_service.CreateSegmentRequest(
            request_id=f"seg-{name}", segment=seg.Segment(display_name=name, rule=_sip_rule())
        )
    )
    segment_id = created.segment.segment_id
    if publish:
        # Maker-checker: the draft is submitted and approved by a second client before it is published.
        await approve_and_publish(stack.segments, segment_id)
    return segment_id


def _campaign(segment_id: str) -> resources_pb2.Campaign:
    return resources_pb2.Campaign(
        display_name="SIP investors",
        programme="REALSEG",
        segment_id=segment_id,
        channel=channel_pb2.CHANNEL_EMAIL,
        offer=resources_pb2.Offer(product_code="LUMPSUM"),
        content=resources_pb2.Content(
            email=resources_pb2.EmailContent(subject_template="Hello {{ first_name }}", html_template=HTML)
        ),
    )


async def test_campaign_on_a_real_published_segment_reaches_every_member_with_an_email(stack: Stack) -> None:
    defined = await stack.segments.DefineAttributes(
        seg_service.DefineAttributesRequest(
            request_id="attributes-1",
            attributes=[
                seg.AttributeDefinition(name=name, type=seg.ATTRIBUTE_TYPE_STRING, pii=name == "email")
                for name in ("email", "first_name", "city", "plan")
            ],
        )
    )
    assert not defined.errors
    upserted = await stack.segments.UpsertProfiles(
        seg_service.UpsertProfilesRequest(request_id="profiles-1", profiles=PROFILES)
    )
    assert upserted.accepted_count == len(PROFILES)
    published = await _segment(stack, "sip", publish=True)
    draft = await _segment(stack, "sip-draft", publish=False)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.campaigns.CreateCampaign(
            service_pb2.CreateCampaignRequest(request_id="c-draft", campaign=_campaign(draft))
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.campaigns.CreateCampaign(
            service_pb2.CreateCampaignRequest(request_id="c-none", campaign=_campaign("seg_does_not_exist"))
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    # A new draft version under review does not stop campaigns from pinning the published one.
    await stack.segments.UpdateSegment(
        seg_service.UpdateSegmentRequest(request_id="seg-edit", segment_id=published, rule=_sip_rule())
    )
    campaign = (
        await stack.campaigns.CreateCampaign(
            service_pb2.CreateCampaignRequest(request_id="c-1", campaign=_campaign(published))
        )
    ).campaign
    assert campaign.segment_version == 1
    await stack.campaigns.SubmitCampaign(
        service_pb2.SubmitCampaignRequest(request_id="s-1", campaign_key=campaign.campaign_key)
    )
    await stack.campaigns.ApproveCampaign(
        service_pb2.ApproveCampaignRequest(request_id="a-1", campaign_key=campaign.campaign_key),
        metadata=(("x-xsell-client", "checker"),),
    )
    await stack.campaigns.LaunchCampaign(
        service_pb2.LaunchCampaignRequest(request_id="l-1", campaign_key=campaign.campaign_key)
    )

    async def completed() -> resources_pb2.Campaign | None:
        current = (
            await stack.campaigns.GetCampaign(service_pb2.GetCampaignRequest(campaign_key=campaign.campaign_key))
        ).campaign
        return current if current.state == resources_pb2.CAMPAIGN_STATE_COMPLETED else None

    done = await eventually(completed)
    assert done.outreach_count == len(REACHABLE)
    outreaches = (
        await stack.campaigns.ListOutreaches(
            service_pb2.ListOutreachesRequest(campaign_key=campaign.campaign_key, page_size=100)
        )
    ).outreaches
    assert {o.profile_id for o in outreaches} == REACHABLE
    assert len({o.campaign_id for o in outreaches}) == len(REACHABLE)
    assert all(o.campaign_id.startswith("REALSEG-") and o.trigger_code == "T00" for o in outreaches)
