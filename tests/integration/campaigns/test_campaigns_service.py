"""CampaignsService against real parts: a real server on port 0, real NATS, SQLite and PostgreSQL.

The segments service had not landed when this was written (`git log -- services/segments` was
empty), so a minimal SegmentsService servicer below serves a fixed published segment, a draft
segment and their members over real gRPC; it also lets a test refuse a page (UNAVAILABLE) and
records every request. test_with_real_segments.py runs the same flow against the real service.
"""

import random
import re
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace import TracerProvider

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER, Bus
from plumbing.db import Database
from plumbing.runtime import ServiceProcess
from plumbing.telemetry import outreach_trace_id, setup_tracing
from services import streams
from services.campaigns import store
from services.campaigns.app import MIGRATIONS, build
from services.campaigns.campaign_ids import month_code
from services.campaigns.settings import CampaignsSettings
from tests.waiting import eventually
from xsell.campaigns.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc
from xsell.segments.v1 import resources_pb2 as seg_resources
from xsell.segments.v1 import service_pb2 as seg_service
from xsell.segments.v1 import service_pb2_grpc as seg_grpc
from xsell.type.v1 import channel_pb2, money_pb2

PUBLISHED, DRAFT = "seg_sip_investors", "seg_draft"
HTML = (
    "<p>Hi {{ first_name }}, invest {{ offer_amount }} from {{ city }}. Ref {{ campaign_id }}</p>"
    '<a href="https://fundsy.example/lumpsum">Invest</a> <a href="{{ unsubscribe_url }}">Unsubscribe</a>'
)


def _member(profile_id: str, **attributes: str) -> seg_resources.Member:
    member = seg_resources.Member(profile_id=profile_id)
    for name, value in attributes.items():
        member.attributes[name].string_value = value
    return member


# Seven members: p04 has no e-mail (skipped), p06 has no city, which the templates need (render skipped).
MEMBERS = [
    _member("p01", email="p01@example.in", first_name="Asha", city="Pune"),
    _member("p02", email="p02@example.in", first_name="Ravi", city="Indore"),
    _member("p03", email="p03@example.in", first_name="Meera", city="Kochi"),
    _member("p04", first_name="Kiran", city="Surat"),
    _member("p05", email="p05@example.in", first_name="Arjun", city="Nagpur"),
    _member("p06", email="p06@example.in", first_name="Divya"),
    _member("p07", email="p07@example.in", city="Mysuru"),
]
RELEASED_PROFILES = {"p01", "p02", "p03", "p05", "p07"}


@dataclass
class FakeSegments(seg_grpc.SegmentsServiceServicer):
    """GetSegment and ListSegmentMembers (keyset by profile id, only the attributes asked for)."""

    unavailable_tokens: set[str] = field(default_factory=set)
    member_requests: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

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


@pytest.fixture
async def harness(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    segments = FakeSegments()
    server = grpc.aio.server()
    seg_grpc.add_SegmentsServiceServicer_to_server(segments, server)
    segments_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = CampaignsSettings(
        grpc_port=0,
        var_dir=tmp_path,
        database_url=database_url,
        nats_url=nats_url,
        segments_target=f"127.0.0.1:{segments_port}",
        # Small pages so one run spans several transactions and cursor advances.
        release_page_size=3,
        release_poll_seconds=0.1,
    )
    provider = setup_tracing("campaigns", tmp_path)
    harness = Harness(settings, provider, segments)
    yield harness
    await harness.stop()
    provider.shutdown()
    await server.stop(0)


@pytest.fixture
async def stub(harness: Harness) -> service_pb2_grpc.CampaignsServiceStub:
    return await harness.start()


def _programme() -> str:
    # Unique per test: the session's NATS stream is shared, and events are told apart by campaign ID.
    return "T" + "".join(random.choices(string.ascii_uppercase, k=7))


def _campaign(programme: str, segment_id: str = PUBLISHED, **overrides: object) -> resources_pb2.Campaign:
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


async def _create(stub: service_pb2_grpc.CampaignsServiceStub, campaign: resources_pb2.Campaign, request_id: str):  # type: ignore[no-untyped-def]
    response = await stub.CreateCampaign(service_pb2.CreateCampaignRequest(request_id=request_id, campaign=campaign))
    return response.campaign


async def _collect(bus: Bus, subject: str, programme: str, expected: int) -> list[tuple[dict[str, str], bytes]]:
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


async def _state(stub: service_pb2_grpc.CampaignsServiceStub, key: str) -> resources_pb2.Campaign:
    return (await stub.GetCampaign(service_pb2.GetCampaignRequest(campaign_key=key))).campaign


async def _all_outreaches(stub: service_pb2_grpc.CampaignsServiceStub, key: str) -> list[resources_pb2.Outreach]:
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


async def test_launch_creates_one_outreach_per_reachable_member_with_unique_ids_and_events(
    harness: Harness, stub: service_pb2_grpc.CampaignsServiceStub, nats_bus: Bus
) -> None:
    programme = _programme()
    created = await _create(stub, _campaign(programme), "req-create-1")
    assert created.state == resources_pb2.CAMPAIGN_STATE_DRAFT
    assert created.segment_version == 3
    assert created.schedule.time_zone == "Asia/Kolkata"

    launched = (
        await stub.LaunchCampaign(
            service_pb2.LaunchCampaignRequest(request_id="req-launch-1", campaign_key=created.campaign_key)
        )
    ).campaign
    assert launched.state == resources_pb2.CAMPAIGN_STATE_RUNNING
    month = month_code(launched.launch_time.ToDatetime(tzinfo=UTC), "Asia/Kolkata")

    async def completed() -> resources_pb2.Campaign | None:
        campaign = await _state(stub, created.campaign_key)
        return campaign if campaign.state == resources_pb2.CAMPAIGN_STATE_COMPLETED else None

    done = await eventually(completed)
    assert done.outreach_count == len(RELEASED_PROFILES)

    outreaches = await _all_outreaches(stub, created.campaign_key)
    ids = [o.campaign_id for o in outreaches]
    pattern = re.compile(rf"^{programme}-{month}-T06-(\d{{4,}})$")
    assert all(pattern.match(campaign_id) for campaign_id in ids), ids
    assert len(set(ids)) == len(ids) == len(RELEASED_PROFILES)
    assert ids == sorted(ids)
    assert {o.profile_id for o in outreaches} == RELEASED_PROFILES
    # Pages of three: 1-3, then p04 has no e-mail and p06's render fails (its number 5 stays unused), then 6.
    by_profile = {o.profile_id: int(pattern.match(o.campaign_id).group(1)) for o in outreaches}  # type: ignore[union-attr]
    assert by_profile == {"p01": 1, "p02": 2, "p03": 3, "p05": 4, "p07": 6}
    first = outreaches[0]
    assert first.offer.product_code == "LUMPSUM" and first.offer.amount.minor_units == 17_40_000_00
    assert list(first.labels) == ["Cross-Sell – Lumpsum"]
    assert first.channel == channel_pb2.CHANNEL_EMAIL and first.trigger_code == "T06"

    looked_up = (await stub.GetOutreach(service_pb2.GetOutreachRequest(campaign_id=first.campaign_id))).outreach
    assert looked_up == first
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetOutreach(service_pb2.GetOutreachRequest(campaign_id=f"{programme}-{month}-T06-9999"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"campaign ID {programme}-{month}-T06-9999 does not exist" in (missing.value.details() or "")

    # Segments was asked for the attributes the templates use plus email and first_name, page after page.
    assert {names for _, names in harness.segments.member_requests} == {("city", "email", "first_name")}
    assert [token for token, _ in harness.segments.member_requests] == ["", "p03", "p06"]

    created_events = await _collect(nats_bus, streams.OUTREACH_CREATED, programme, len(RELEASED_PROFILES))
    dispatches = await _collect(nats_bus, streams.DISPATCH_REQUESTED, programme, len(RELEASED_PROFILES))
    assert len(created_events) == len(dispatches) == len(RELEASED_PROFILES)
    for headers, data in created_events:
        event = events_pb2.OutreachCreated.FromString(data)
        assert headers[MSG_ID_HEADER] == event.event_id
        assert headers[CAMPAIGN_ID_HEADER] == event.outreach.campaign_id
        assert event.outreach.campaign_key == created.campaign_key
    emails = {}
    for headers, data in dispatches:
        dispatch = events_pb2.DispatchRequested.FromString(data)
        assert headers[MSG_ID_HEADER] == dispatch.event_id
        assert headers[CAMPAIGN_ID_HEADER] == dispatch.campaign_id
        # The dispatch continues the trace that starts where the outreach was created.
        assert headers["traceparent"].split("-")[1] == outreach_trace_id(dispatch.campaign_id)
        emails[dispatch.profile_id] = dispatch
    assert set(emails) == RELEASED_PROFILES
    asha = emails["p01"].email
    assert asha.to_address == "p01@example.in"
    assert asha.from_name == "Fundsy"
    assert asha.subject == "Asha, a lumpsum idea"
    assert "Hi Asha, invest ₹17.4 lakh from Pune" in asha.html_body
    assert f"Ref {emails['p01'].campaign_id}" in asha.html_body
    assert 'href="xsell:unsubscribe"' in asha.html_body
    assert asha.text_body == "Hi Asha in Pune: ₹17,40,000"
    # p07 has no first name: the template's fallback applies.
    assert emails["p07"].email.subject == "Investor, a lumpsum idea"


async def test_unfinished_run_resumes_from_its_cursor_after_a_restart(harness: Harness) -> None:
    stub = await harness.start()
    programme = _programme()
    harness.segments.unavailable_tokens.add("p03")
    created = await _create(stub, _campaign(programme), "req-create-resume")
    await stub.LaunchCampaign(
        service_pb2.LaunchCampaignRequest(request_id="req-launch", campaign_key=created.campaign_key)
    )

    async def first_page_released_and_second_refused() -> bool:
        campaign = await _state(stub, created.campaign_key)
        return (
            campaign.outreach_count == 3
            and ("p03", ("city", "email", "first_name")) in harness.segments.member_requests
        )

    await eventually(first_page_released_and_second_refused)
    assert (await _state(stub, created.campaign_key)).state == resources_pb2.CAMPAIGN_STATE_RUNNING
    await harness.stop()

    harness.segments.unavailable_tokens.clear()
    stub = await harness.start()

    async def completed() -> bool:
        return (await _state(stub, created.campaign_key)).state == resources_pb2.CAMPAIGN_STATE_COMPLETED

    await eventually(completed)
    outreaches = await _all_outreaches(stub, created.campaign_key)
    assert sorted(o.profile_id for o in outreaches) == sorted(RELEASED_PROFILES)
    assert len({o.campaign_id for o in outreaches}) == len(RELEASED_PROFILES)
    # The first page was fetched once: the restarted runner continued from the stored cursor.
    assert [token for token, _ in harness.segments.member_requests].count("") == 1


async def test_unknown_segment_is_not_found(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _create(stub, _campaign(_programme(), segment_id="seg_nope"), "req-unknown")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "campaign.segment_id 'seg_nope' does not exist; pick one from ListSegments" in (error.value.details() or "")
    assert not (await stub.ListCampaigns(service_pb2.ListCampaignsRequest())).campaigns


async def test_draft_segment_is_a_failed_precondition(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _create(stub, _campaign(_programme(), segment_id=DRAFT), "req-draft")
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"segment {DRAFT} is DRAFT; publish it before targeting it" in (error.value.details() or "")
    assert not (await stub.ListCampaigns(service_pb2.ListCampaignsRequest())).campaigns


async def test_invalid_content_is_rejected_and_nothing_is_written(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    no_unsubscribe = _campaign(_programme())
    no_unsubscribe.content.email.html_template = "<p>Invest now, {{ first_name }}</p>"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _create(stub, no_unsubscribe, "req-no-unsub")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details() or ""
    assert "campaign.content.email.html_template" in details and "unsubscribe link" in details

    broken = _campaign(_programme())
    broken.content.email.html_template = "<p>\n{{ unsubscribe_url }}\n{% if city %}</p>"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _create(stub, broken, "req-broken")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 3" in (error.value.details() or "")

    sms = _campaign(_programme(), channel=channel_pb2.CHANNEL_SMS)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _create(stub, sms, "req-sms")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only CHANNEL_EMAIL" in (error.value.details() or "")
    assert not (await stub.ListCampaigns(service_pb2.ListCampaignsRequest())).campaigns


async def test_retried_create_returns_the_same_campaign(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    campaign = _campaign(_programme())
    first = await _create(stub, campaign, "req-same")
    again = await _create(stub, campaign, "req-same")
    assert again == first
    listed = (await stub.ListCampaigns(service_pb2.ListCampaignsRequest())).campaigns
    assert [c.campaign_key for c in listed] == [first.campaign_key]

    changed = _campaign(_programme())
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _create(stub, changed, "req-same")
    assert error.value.code() == grpc.StatusCode.ABORTED


async def test_list_campaigns_newest_first_in_pages(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    keys = [(await _create(stub, _campaign(_programme()), f"req-list-{i}")).campaign_key for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListCampaigns(service_pb2.ListCampaignsRequest(page_size=2, page_token=token))
        seen.extend(c.campaign_key for c in page.campaigns)
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert seen == list(reversed(keys))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ListCampaigns(service_pb2.ListCampaignsRequest(page_token="not-a-token"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_only_drafts_launch_and_future_send_times_schedule(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    send_time = datetime.now(UTC) + timedelta(days=40)
    stamp = Timestamp()
    stamp.FromDatetime(send_time)
    later = _campaign(_programme(), schedule=resources_pb2.Schedule(send_time=stamp, time_zone="Asia/Dubai"))
    created = await _create(stub, later, "req-later")
    launched = (
        await stub.LaunchCampaign(
            service_pb2.LaunchCampaignRequest(request_id="l-1", campaign_key=created.campaign_key)
        )
    ).campaign
    assert launched.state == resources_pb2.CAMPAIGN_STATE_SCHEDULED
    retried = (
        await stub.LaunchCampaign(
            service_pb2.LaunchCampaignRequest(request_id="l-1", campaign_key=created.campaign_key)
        )
    ).campaign
    assert retried == launched
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.LaunchCampaign(
            service_pb2.LaunchCampaignRequest(request_id="l-2", campaign_key=created.campaign_key)
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is SCHEDULED; only DRAFT campaigns can be launched" in (error.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.LaunchCampaign(service_pb2.LaunchCampaignRequest(request_id="l-3", campaign_key="cmp_missing"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_migration_creates_exactly_the_store_tables(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.migrate(MIGRATIONS)
        async with db.engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), store.metadata)
            )
    finally:
        await db.dispose()
    assert diff == []
