"""A minimal SegmentsService over real gRPC and helpers for the campaigns integration tests.

The segments service had not landed when these were first written, so FakeSegments serves a fixed
published segment, a draft segment and their members; it also lets a test refuse a page
(UNAVAILABLE) and records every request. test_with_real_segments.py runs against the real service.
"""

import random
import string
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import grpc
from opentelemetry.sdk.trace import TracerProvider

from plumbing.bus import CAMPAIGN_ID_HEADER, Bus
from plumbing.runtime import ServiceProcess
from services import streams
from services.campaigns.app import build
from services.campaigns.settings import CampaignsSettings
from tests.waiting import eventually
from xsell.campaigns.v1 import resources_pb2, service_pb2, service_pb2_grpc
from xsell.segments.v1 import resources_pb2 as seg_resources
from xsell.segments.v1 import service_pb2 as seg_service
from xsell.segments.v1 import service_pb2_grpc as seg_grpc
from xsell.type.v1 import channel_pb2, money_pb2

PUBLISHED, DRAFT = "seg_sip_investors", "seg_draft"
HTML = (
    "<p>Hi {{ first_name }}, invest {{ offer_amount }} from {{ city }}. Ref {{ campaign_id }}</p>"
    '<a href="https://fundsy.example/lumpsum">Invest</a> <a href="{{ unsubscribe_url }}">Unsubscribe</a>'
)


def member(profile_id: str, **attributes: str) -> seg_resources.Member:
    result = seg_resources.Member(profile_id=profile_id)
    for name, value in attributes.items():
        result.attributes[name].string_value = value
    return result


# Seven members: p04 has no e-mail (skipped), p06 has no city, which the templates need (render skipped).
MEMBERS = [
    member("p01", email="p01@example.in", first_name="Asha", city="Pune"),
    member("p02", email="p02@example.in", first_name="Ravi", city="Indore", time_zone="America/Los_Angeles"),
    member("p03", email="p03@example.in", first_name="Meera", city="Kochi"),
    member("p04", first_name="Kiran", city="Surat"),
    member("p05", email="p05@example.in", first_name="Arjun", city="Nagpur"),
    member("p06", email="p06@example.in", first_name="Divya"),
    member("p07", email="p07@example.in", city="Mysuru"),
]
RELEASED_PROFILES = {"p01", "p02", "p03", "p05", "p07"}
# Profiles that are in no segment, for previews and test sends: a phone and WhatsApp opt-in, money and sets.
EXTRA_PROFILES = [member("t01", first_name="Tara", city="Thane", email="t01@example.in", phone="+919812345678")]
EXTRA_PROFILES[0].attributes["whatsapp_opt_in"].bool_value = True
EXTRA_PROFILES[0].attributes["total_aum"].money_value.CopyFrom(
    money_pb2.Money(minor_units=4_52_400_00, currency_code="INR")
)
EXTRA_PROFILES[0].attributes["fund_categories"].string_set_value.values.extend(["Equity", "Hybrid"])


@dataclass
class FakeSegments(seg_grpc.SegmentsServiceServicer):
    """GetSegment, ListSegmentMembers and StreamSegmentMembers (keyset by profile id, the attributes asked for).

    A stream stops with UNAVAILABLE right after the member named in `unavailable_tokens` (so a run
    releases its first page and then cannot continue); `suppressed` marks people with reasons.
    """

    unavailable_tokens: set[str] = field(default_factory=set)
    member_requests: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    suppressed: dict[str, list[int]] = field(default_factory=dict)
    stream_requests: list[seg_service.StreamSegmentMembersRequest] = field(default_factory=list)

    async def StreamSegmentMembers(self, request, context):  # type: ignore[no-untyped-def]
        self.stream_requests.append(request)
        self.member_requests.append((request.after_profile_id, tuple(request.attribute_names)))
        after = [m for m in MEMBERS if m.profile_id > request.after_profile_id]
        for start in range(0, len(after), 2):
            if any(
                token < after[start].profile_id
                for token in self.unavailable_tokens
                if token >= request.after_profile_id
            ):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "segments is restarting")
            response = seg_service.StreamSegmentMembersResponse()
            for member in after[start : start + 2]:
                reasons = self.suppressed.get(member.profile_id, [])
                if reasons and not request.include_suppressed:
                    continue
                out = response.members.add(
                    profile_id=member.profile_id,
                    suppression_reasons=reasons,
                    # Global suppressions: they apply on every channel.
                    suppressions=[seg_resources.Suppression(reason=reason) for reason in reasons],  # type: ignore[misc]
                )
                for name in request.attribute_names:
                    if name in member.attributes:
                        out.attributes[name].CopyFrom(member.attributes[name])
            yield response

    async def GetSegment(self, request, context):  # type: ignore[no-untyped-def]
        states = {PUBLISHED: seg_resources.SEGMENT_STATE_PUBLISHED, DRAFT: seg_resources.SEGMENT_STATE_DRAFT}
        if request.segment_id not in states:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"segment {request.segment_id} does not exist")
        segment = seg_resources.Segment(segment_id=request.segment_id, state=states[request.segment_id], version=3)
        return seg_service.GetSegmentResponse(segment=segment)

    async def ListSegmentMembers(self, request, context):  # type: ignore[no-untyped-def]
        self.member_requests.append((request.page_token, tuple(request.attribute_names)))
        if request.page_token in self.unavailable_tokens:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "segments is restarting")
        after = [m for m in MEMBERS if m.profile_id > request.page_token]
        page = after[: request.page_size]
        response = seg_service.ListSegmentMembersResponse()
        for member in page:
            out = response.members.add(profile_id=member.profile_id)
            for name in request.attribute_names:
                if name in member.attributes:
                    out.attributes[name].CopyFrom(member.attributes[name])
        if len(after) > len(page):
            response.next_page_token = page[-1].profile_id
        return response

    # The attribute catalog content checks read (ListAttributes), with the types offer rules are checked against,
    # and profiles previews render for (GetProfile).
    ATTRIBUTES: ClassVar[dict[str, int]] = {
        "email": seg_resources.ATTRIBUTE_TYPE_STRING,
        "first_name": seg_resources.ATTRIBUTE_TYPE_STRING,
        "city": seg_resources.ATTRIBUTE_TYPE_STRING,
        "time_zone": seg_resources.ATTRIBUTE_TYPE_STRING,
        "phone": seg_resources.ATTRIBUTE_TYPE_STRING,
        "whatsapp_opt_in": seg_resources.ATTRIBUTE_TYPE_BOOLEAN,
        "push_token": seg_resources.ATTRIBUTE_TYPE_STRING,
        "total_aum": seg_resources.ATTRIBUTE_TYPE_MONEY,
        "fund_categories": seg_resources.ATTRIBUTE_TYPE_STRING_SET,
        "customer_tier": seg_resources.ATTRIBUTE_TYPE_STRING,
    }

    async def ListAttributes(self, request, context):  # type: ignore[no-untyped-def]
        response = seg_service.ListAttributesResponse()
        for name in sorted(self.ATTRIBUTES):
            response.attributes.add(name=name, type=self.ATTRIBUTES[name])
        return response

    async def GetProfile(self, request, context):  # type: ignore[no-untyped-def]
        for member in [*MEMBERS, *EXTRA_PROFILES]:
            if member.profile_id == request.profile_id:
                profile = seg_resources.Profile(profile_id=member.profile_id)
                for name, value in member.attributes.items():
                    profile.attributes[name].CopyFrom(value)
                return seg_service.GetProfileResponse(profile=profile)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"profile {request.profile_id} does not exist")


@dataclass
class Harness:
    settings: CampaignsSettings
    provider: TracerProvider
    segments: FakeSegments
    process: ServiceProcess | None = None
    channel: grpc.aio.Channel | None = None

    async def start(self) -> service_pb2_grpc.CampaignsServiceStub:
        self.process = await build(self.settings, self.provider)
        port = await self.process.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return service_pb2_grpc.CampaignsServiceStub(self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.process is not None:
            await self.process.stop(1)
            self.process = None


def programme_code() -> str:
    # Unique per test: the session's NATS stream is shared, and events are told apart by campaign ID.
    return "T" + "".join(random.choices(string.ascii_uppercase, k=7))


def campaign_message(programme: str, segment_id: str = PUBLISHED, **overrides: object) -> resources_pb2.Campaign:
    campaign = resources_pb2.Campaign(
        display_name="Lumpsum for SIP investors",
        labels=["Cross-Sell – Lumpsum"],
        category=resources_pb2.CAMPAIGN_CATEGORY_CROSS_SELL_NEW_CATEGORY,
        programme=programme,
        trigger_code="T06",
        segment_id=segment_id,
        channel=channel_pb2.CHANNEL_EMAIL,
        offer=resources_pb2.Offer(
            product_code="LUMPSUM", amount=money_pb2.Money(minor_units=17_40_000_00, currency_code="INR")
        ),
        content=resources_pb2.Content(
            email=resources_pb2.EmailContent(
                subject_template="{{ first_name or 'Investor' }}, a lumpsum idea",
                html_template=HTML,
                text_template="Hi {{ first_name }} in {{ city }}: {{ offer_amount_full }}",
                from_name="Fundsy",
            )
        ),
    )
    for name, value in overrides.items():
        if isinstance(value, str | int):
            setattr(campaign, name, value)
        else:
            getattr(campaign, name).CopyFrom(value)
    return campaign


async def create(stub: service_pb2_grpc.CampaignsServiceStub, campaign: resources_pb2.Campaign, request_id: str):  # type: ignore[no-untyped-def]
    response = await stub.CreateCampaign(service_pb2.CreateCampaignRequest(request_id=request_id, campaign=campaign))
    return response.campaign


async def collect(bus: Bus, subject: str, programme: str, expected: int) -> list[tuple[dict[str, str], bytes]]:
    """Every message on `subject` whose campaign ID header has this test's programme."""
    durable = f"test-{programme.lower()}-{subject.rsplit('.', 1)[1]}"
    subscription = await bus.js.pull_subscribe(subject, durable=durable, stream=streams.CAMPAIGNS_STREAM.name)
    found: list[tuple[dict[str, str], bytes]] = []

    async def fetched_enough() -> bool:
        try:
            batch = await subscription.fetch(100, timeout=0.5)
        except TimeoutError:
            batch = []
        for msg in batch:
            await msg.ack()
            headers = dict(msg.headers or {})
            if headers.get(CAMPAIGN_ID_HEADER, "").startswith(f"{programme}-"):
                found.append((headers, msg.data))
        return len(found) >= expected

    try:
        await eventually(fetched_enough)
    finally:
        await subscription.unsubscribe()
        await bus.js.delete_consumer(streams.CAMPAIGNS_STREAM.name, durable)
    return found


async def state_of(stub: service_pb2_grpc.CampaignsServiceStub, key: str) -> resources_pb2.Campaign:
    return (await stub.GetCampaign(service_pb2.GetCampaignRequest(campaign_key=key))).campaign


async def all_outreaches(stub: service_pb2_grpc.CampaignsServiceStub, key: str) -> list[resources_pb2.Outreach]:
    outreaches: list[resources_pb2.Outreach] = []
    token = ""
    while True:
        page = await stub.ListOutreaches(
            service_pb2.ListOutreachesRequest(campaign_key=key, page_size=2, page_token=token)
        )
        assert len(page.outreaches) <= 2
        outreaches.extend(page.outreaches)
        if not page.next_page_token:
            return outreaches
        token = page.next_page_token


MAKER = (("x-xsell-client", "maker"),)
CHECKER = (("x-xsell-client", "checker"),)


async def approve(stub: service_pb2_grpc.CampaignsServiceStub, key: str) -> resources_pb2.Campaign:
    """Submits the campaign as its maker and approves it as someone else (maker-checker)."""
    await stub.SubmitCampaign(service_pb2.SubmitCampaignRequest(request_id=f"submit-{key}", campaign_key=key))
    approved = await stub.ApproveCampaign(
        service_pb2.ApproveCampaignRequest(request_id=f"approve-{key}", campaign_key=key), metadata=CHECKER
    )
    return approved.campaign


def campaign_row(campaign_key: str, programme: str, created_at: datetime) -> dict[str, Any]:
    """A RUNNING e-mail campaign's row as store.insert_campaign takes it, with nothing a test of the tables needs."""
    return {
        "campaign_key": campaign_key,
        "display_name": campaign_key,
        "labels": [],
        "category": 1,
        "programme": programme,
        "trigger_code": "T00",
        "segment_id": "seg",
        "segment_version": 1,
        "channel": "EMAIL",
        "offer_product_code": "P",
        "subject_template": "",
        "html_template": "",
        "text_template": "",
        "from_name": "",
        "time_zone": "Asia/Kolkata",
        "state": "RUNNING",
        "outreach_count": 0,
        "created_at": created_at,
    }


def outreach_row(
    campaign_id: str, campaign_key: str, profile_id: str, created_at: datetime, **columns: Any
) -> dict[str, Any]:
    """An e-mail outreach's row of run_1 as store.insert_outreaches takes it; `columns` adds or overrides columns."""
    return {
        "campaign_id": campaign_id,
        "campaign_key": campaign_key,
        "run_id": "run_1",
        "profile_id": profile_id,
        "channel": "EMAIL",
        "trigger_code": "T00",
        "offer_product_code": "P",
        "labels": [],
        "category": 1,
        "created_at": created_at,
        "ordinal": int(campaign_id[-4:]),
        **columns,
    }
