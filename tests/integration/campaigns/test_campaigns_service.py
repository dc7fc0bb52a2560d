"""CampaignsService against real parts: a real server on port 0, real NATS, SQLite and PostgreSQL."""

import re
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER, Bus
from plumbing.telemetry import outreach_trace_id
from services import streams
from services.campaigns.campaign_ids import month_code
from tests.integration.campaigns.harness import (
    DRAFT,
    PUBLISHED,
    RELEASED_PROFILES,
    Harness,
    all_outreaches,
    approve,
    campaign_message,
    collect,
    create,
    programme_code,
    state_of,
)
from tests.waiting import eventually
from xsell.campaigns.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc
from xsell.type.v1 import channel_pb2


async def test_launch_creates_one_outreach_per_reachable_member_with_unique_ids_and_events(
    harness: Harness, stub: service_pb2_grpc.CampaignsServiceStub, nats_bus: Bus
) -> None:
    programme = programme_code()
    created = await create(stub, campaign_message(programme), "req-create-1")
    assert created.state == resources_pb2.CAMPAIGN_STATE_DRAFT
    assert created.segment_version == 3
    assert created.schedule.time_zone == "Asia/Kolkata"
    await approve(stub, created.campaign_key)

    launched = (
        await stub.LaunchCampaign(
            service_pb2.LaunchCampaignRequest(request_id="req-launch-1", campaign_key=created.campaign_key)
        )
    ).campaign
    assert launched.state == resources_pb2.CAMPAIGN_STATE_RUNNING
    month = month_code(launched.launch_time.ToDatetime(tzinfo=UTC), "Asia/Kolkata")

    async def completed() -> resources_pb2.Campaign | None:
        campaign = await state_of(stub, created.campaign_key)
        return campaign if campaign.state == resources_pb2.CAMPAIGN_STATE_COMPLETED else None

    done = await eventually(completed)
    assert done.outreach_count == len(RELEASED_PROFILES)

    outreaches = await all_outreaches(stub, created.campaign_key)
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
    assert f"campaign ID '{programme}-{month}-T06-9999' does not exist" in (missing.value.details() or "")

    # Segments streamed the pinned version once, on the campaign's channel, with suppressed people marked,
    # and the attributes the templates use plus email and first_name.
    assert {names for _, names in harness.segments.member_requests} == {("city", "email", "first_name", "time_zone")}
    [streamed] = harness.segments.stream_requests
    assert (streamed.segment_id, streamed.version, streamed.after_profile_id) == (PUBLISHED, 3, "")
    assert streamed.channel == channel_pb2.CHANNEL_EMAIL and streamed.include_suppressed

    created_events = await collect(nats_bus, streams.OUTREACH_CREATED, programme, len(RELEASED_PROFILES))
    dispatches = await collect(nats_bus, streams.DISPATCH_REQUESTED, programme, len(RELEASED_PROFILES))
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
        # Set at dispatch, after the stored payload: the stored message with its event id and request time.
        assert dispatch.request_time.seconds > 0 and dispatch.email.to_address
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
    programme = programme_code()
    harness.segments.unavailable_tokens.add("p03")
    created = await create(stub, campaign_message(programme), "req-create-resume")
    await approve(stub, created.campaign_key)
    await stub.LaunchCampaign(
        service_pb2.LaunchCampaignRequest(request_id="req-launch", campaign_key=created.campaign_key)
    )

    async def first_page_released_and_second_refused() -> bool:
        campaign = await state_of(stub, created.campaign_key)
        return (
            campaign.outreach_count == 3
            and ("p03", ("city", "email", "first_name", "time_zone")) in harness.segments.member_requests
        )

    await eventually(first_page_released_and_second_refused)
    assert (await state_of(stub, created.campaign_key)).state == resources_pb2.CAMPAIGN_STATE_RUNNING
    await harness.stop()

    harness.segments.unavailable_tokens.clear()
    stub = await harness.start()

    async def completed() -> bool:
        return (await state_of(stub, created.campaign_key)).state == resources_pb2.CAMPAIGN_STATE_COMPLETED

    await eventually(completed)
    outreaches = await all_outreaches(stub, created.campaign_key)
    assert sorted(o.profile_id for o in outreaches) == sorted(RELEASED_PROFILES)
    assert len({o.campaign_id for o in outreaches}) == len(RELEASED_PROFILES)
    # The first page was fetched once: the restarted runner continued from the stored cursor.
    assert [token for token, _ in harness.segments.member_requests].count("") == 1


async def test_unknown_segment_is_not_found(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(stub, campaign_message(programme_code(), segment_id="seg_nope"), "req-unknown")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "campaign.segment_id 'seg_nope' does not exist; pick one from ListSegments" in (error.value.details() or "")
    assert not (await stub.ListCampaigns(service_pb2.ListCampaignsRequest())).campaigns


async def test_draft_segment_is_a_failed_precondition(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(stub, campaign_message(programme_code(), segment_id=DRAFT), "req-draft")
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"segment {DRAFT} is DRAFT; publish it before targeting it" in (error.value.details() or "")
    assert not (await stub.ListCampaigns(service_pb2.ListCampaignsRequest())).campaigns


async def test_invalid_content_is_rejected_and_nothing_is_written(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    no_unsubscribe = campaign_message(programme_code())
    no_unsubscribe.content.email.html_template = "<p>Invest now, {{ first_name }}</p>"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(stub, no_unsubscribe, "req-no-unsub")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details() or ""
    assert "campaign.content.email.html_template" in details and "unsubscribe link" in details

    broken = campaign_message(programme_code())
    broken.content.email.html_template = "<p>\n{{ unsubscribe_url }}\n{% if city %}</p>"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(stub, broken, "req-broken")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 3" in (error.value.details() or "")

    sms = campaign_message(programme_code(), channel=channel_pb2.CHANNEL_SMS)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(stub, sms, "req-sms")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "campaign.content.sms: sms content is required" in (error.value.details() or "")
    assert not (await stub.ListCampaigns(service_pb2.ListCampaignsRequest())).campaigns


@pytest.mark.parametrize(
    ("field", "value", "refused"),
    [
        ("product_code", "P" * 101, "campaign.offer.product_code"),
        ("labels", ["x" * 201], "campaign.labels[0]"),
        ("labels", ["Cross-Sell\x1fRetail"], "campaign.labels[0]"),
        ("labels", [f"{i}" * 199 for i in range(5)], "campaign.labels"),
        ("labels", [f"L{i:03}" for i in range(200)], "campaign.labels"),
    ],
)
async def test_an_offer_or_labels_that_cannot_be_stored_downstream_are_refused_by_field(
    stub: service_pb2_grpc.CampaignsServiceStub, field: str, value: object, refused: str
) -> None:
    """A 101-character product code was INTERNAL on PostgreSQL; labels over 1,000 characters together (attribution's
    searchable value) were accepted, and each outreach's OutreachCreated was dead-lettered by attribution there."""
    campaign = campaign_message(programme_code())
    if field == "product_code":
        campaign.offer.product_code = str(value)
    else:
        campaign.labels[:] = list(value)  # type: ignore[call-overload]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(stub, campaign, "req-too-long")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith(f"{refused}: ")
    assert not (await stub.ListCampaigns(service_pb2.ListCampaignsRequest())).campaigns


async def test_a_look_up_without_its_key_says_the_key_is_required_not_that_nothing_has_it(
    stub: service_pb2_grpc.CampaignsServiceStub,
) -> None:
    """An empty key answered NOT_FOUND "campaign '' does not exist": a caller's bug read as missing data."""
    for call in (
        stub.GetCampaign(service_pb2.GetCampaignRequest()),
        stub.ListCampaignAudit(service_pb2.ListCampaignAuditRequest()),
        stub.PreviewCampaign(service_pb2.PreviewCampaignRequest()),
        stub.GetOutreach(service_pb2.GetOutreachRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is required: " in (error.value.details() or "")


async def test_a_nul_in_a_request_is_refused_by_field_where_the_database_cannot_compare_it(
    stub: service_pb2_grpc.CampaignsServiceStub, database_url: str
) -> None:
    """PostgreSQL refuses a NUL in text even in a WHERE: these look-ups answered INTERNAL there. SQLite compares it and
    finds nothing."""
    for call, field in (
        (stub.GetOutreach(service_pb2.GetOutreachRequest(campaign_id="CSELL-NOV-T06-0884\x00")), "campaign_id"),
        (stub.GetCampaign(service_pb2.GetCampaignRequest(campaign_key="cmp_\x00")), "campaign_key"),
        (stub.ListOutreaches(service_pb2.ListOutreachesRequest(campaign_key="cmp_\x00")), "campaign_key"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        if database_url.startswith("sqlite"):
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            continue
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.value.details() or "").startswith(f"{field}: {field} holds a NUL character")


async def test_retried_create_returns_the_samecampaign_message(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    campaign = campaign_message(programme_code())
    first = await create(stub, campaign, "req-same")
    again = await create(stub, campaign, "req-same")
    assert again == first
    listed = (await stub.ListCampaigns(service_pb2.ListCampaignsRequest())).campaigns
    assert [c.campaign_key for c in listed] == [first.campaign_key]

    changed = campaign_message(programme_code())
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(stub, changed, "req-same")
    assert error.value.code() == grpc.StatusCode.ABORTED


async def test_list_campaigns_newest_first_in_pages(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    keys = [(await create(stub, campaign_message(programme_code()), f"req-list-{i}")).campaign_key for i in range(5)]
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


async def test_only_approved_campaigns_launch_and_future_send_times_schedule(
    stub: service_pb2_grpc.CampaignsServiceStub,
) -> None:
    send_time = datetime.now(UTC) + timedelta(days=40)
    stamp = Timestamp()
    stamp.FromDatetime(send_time)
    later = campaign_message(programme_code(), schedule=resources_pb2.Schedule(send_time=stamp, time_zone="Asia/Dubai"))
    created = await create(stub, later, "req-later")
    await approve(stub, created.campaign_key)
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
    assert "is SCHEDULED; it must be APPROVED before launch" in (error.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.LaunchCampaign(service_pb2.LaunchCampaignRequest(request_id="l-3", campaign_key="cmp_missing"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
