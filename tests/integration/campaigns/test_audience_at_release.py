"""Who gets an outreach, decided at release against the real segments service: suppressions, holdout, caps.

Campaigns and segments both serve over gRPC on port 0 with the session's NATS; campaigns runs on each
backend of the `database_url` fixture (SQLite and PostgreSQL), segments on its own SQLite file.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select, update

from plumbing.bus import Bus
from plumbing.db import Database
from plumbing.ids import new_id
from services import streams
from services.campaigns import store
from services.campaigns.app import build
from services.campaigns.audience import held_out
from services.campaigns.settings import CampaignsSettings
from services.segments.app import build as build_segments
from services.segments.settings import SegmentsSettings
from tests.integration.segments.approval import publish
from tests.waiting import eventually
from xsell.campaigns.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.segments.v1 import resources_pb2 as seg
from xsell.segments.v1 import service_pb2 as seg_service
from xsell.segments.v1 import service_pb2_grpc as seg_grpc
from xsell.type.v1 import channel_pb2, money_pb2

S = resources_pb2
HTML = '<p>Dear {{ first_name }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
LABEL = "Cross-Sell – Lumpsum"
PEOPLE = [f"cust-{i:02d}" for i in range(30)]
NO_EMAIL = "cust-29"
NO_CITY = {"cust-10", "cust-11"}


@dataclass
class Stack:
    campaigns: service_pb2_grpc.CampaignsServiceStub
    segments: seg_grpc.SegmentsServiceStub
    db: Database
    spans: InMemorySpanExporter


@asynccontextmanager
async def stack_of(
    database_url: str, nats_url: str, tmp_path: Path, *, one_offer_per_day: bool = False
) -> AsyncIterator[Stack]:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    segments_process = await build_segments(
        SegmentsSettings(  # type: ignore[call-arg]
            grpc_port=0,
            var_dir=tmp_path / "segments",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'segments.db'}",
            nats_url=nats_url,
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
            # Pages of four over a 30-person audience: many page transactions, each with its own decisions.
            release_page_size=4,
            release_poll_seconds=0.1,
            one_offer_per_day=one_offer_per_day,
        ),
        provider,
    )
    campaigns_port = await campaigns_process.start()
    db = Database(database_url)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{campaigns_port}") as campaigns_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{segments_port}") as segments_channel,
        ):
            stack = Stack(
                service_pb2_grpc.CampaignsServiceStub(campaigns_channel),
                seg_grpc.SegmentsServiceStub(segments_channel),
                db,
                spans,
            )
            await _audience(stack)
            yield stack
    finally:
        await db.dispose()
        await campaigns_process.stop(1)
        await segments_process.stop(1)


def _profile(profile_id: str) -> seg.Profile:
    profile = seg.Profile(profile_id=profile_id)
    profile.attributes["plan"].string_value = "SIP"
    profile.attributes["first_name"].string_value = profile_id.title()
    if profile_id != NO_EMAIL:
        profile.attributes["email"].string_value = f"{profile_id}@example.in"
    if profile_id not in NO_CITY:
        profile.attributes["city"].string_value = "Pune"
    return profile


async def _audience(stack: Stack) -> None:
    await stack.segments.DefineAttributes(
        seg_service.DefineAttributesRequest(
            request_id=new_id("req_"),
            attributes=[
                seg.AttributeDefinition(name=name, type=seg.ATTRIBUTE_TYPE_STRING, pii=name == "email")
                for name in ("email", "first_name", "plan", "city")
            ],
        )
    )
    await stack.segments.UpsertProfiles(
        seg_service.UpsertProfilesRequest(request_id=new_id("req_"), profiles=[_profile(p) for p in PEOPLE])
    )


async def _segment(stack: Stack) -> str:
    condition = seg.AttributeCondition(attribute="plan", operator=seg.OPERATOR_EQUALS)
    condition.values.add(string_value="SIP")
    created = await stack.segments.CreateSegment(
        seg_service.CreateSegmentRequest(
            request_id=new_id("req_"), segment=seg.Segment(display_name="SIP", rule=seg.Rule(attribute=condition))
        )
    )
    await publish(stack.segments, created.segment.segment_id)
    return created.segment.segment_id


def _campaign(segment_id: str, **fields: object) -> resources_pb2.Campaign:
    campaign = resources_pb2.Campaign(
        display_name="SIP investors",
        labels=[LABEL],
        category=S.CAMPAIGN_CATEGORY_CROSS_SELL_NEW_CATEGORY,
        programme="AUD",
        segment_id=segment_id,
        channel=channel_pb2.CHANNEL_EMAIL,
        offer=resources_pb2.Offer(product_code="LUMPSUM"),
        content=resources_pb2.Content(
            email=resources_pb2.EmailContent(subject_template="Hello {{ first_name }}", html_template=HTML)
        ),
    )
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(campaign, name).extend(value)
        elif isinstance(value, str | int):
            setattr(campaign, name, value)
        else:
            getattr(campaign, name).CopyFrom(value)
    return campaign


async def _launch(stack: Stack, campaign: resources_pb2.Campaign) -> str:
    created = (
        await stack.campaigns.CreateCampaign(
            service_pb2.CreateCampaignRequest(request_id=new_id("req_"), campaign=campaign)
        )
    ).campaign
    key = created.campaign_key
    await stack.campaigns.SubmitCampaign(service_pb2.SubmitCampaignRequest(request_id=new_id("req_"), campaign_key=key))
    await stack.campaigns.ApproveCampaign(
        service_pb2.ApproveCampaignRequest(request_id=new_id("req_"), campaign_key=key),
        metadata=(("x-xsell-client", "checker"),),
    )
    await stack.campaigns.LaunchCampaign(service_pb2.LaunchCampaignRequest(request_id=new_id("req_"), campaign_key=key))
    return key


async def _state(stack: Stack, key: str) -> int:
    return (await stack.campaigns.GetCampaign(service_pb2.GetCampaignRequest(campaign_key=key))).campaign.state


async def _completed(stack: Stack, key: str) -> None:
    async def done() -> bool:
        return await _state(stack, key) == S.CAMPAIGN_STATE_COMPLETED

    await eventually(done)


async def _materialized(stack: Stack, key: str) -> None:
    async def done() -> bool:
        async with stack.db.transaction() as session:
            run = (
                await session.execute(select(store.campaign_runs).where(store.campaign_runs.c.campaign_key == key))
            ).first()
        return run is not None and run.materialized_at is not None

    await eventually(done)


async def _outreaches(stack: Stack, key: str) -> list:  # type: ignore[type-arg]
    async with stack.db.transaction() as session:
        query = select(store.outreaches).where(store.outreaches.c.campaign_key == key)
        return list((await session.execute(query)).all())


async def _report(stack: Stack, key: str) -> resources_pb2.ReportCounts:
    return (await stack.campaigns.GetCampaignReport(service_pb2.GetCampaignReportRequest(campaign_key=key))).counts


def _reasons(counts: list[resources_pb2.ReasonCount]) -> dict[str, int]:
    return {item.reason: item.count for item in counts}


async def _suppress(stack: Stack, *suppressions: seg.Suppression) -> None:
    response = await stack.segments.AddSuppressions(
        seg_service.AddSuppressionsRequest(request_id=new_id("req_"), suppressions=list(suppressions))
    )
    assert not response.errors


async def _holdout_events(bus: Bus, key: str, expected: int) -> list[events_pb2.HoldoutAssigned]:
    durable = f"test-holdout-{key[-8:].lower()}"
    subscription = await bus.js.pull_subscribe(
        streams.HOLDOUT_ASSIGNED, durable=durable, stream=streams.CAMPAIGNS_STREAM.name
    )
    found: list[events_pb2.HoldoutAssigned] = []

    async def enough() -> bool:
        try:
            batch = await subscription.fetch(100, timeout=0.5)
        except TimeoutError:
            batch = []
        for message in batch:
            await message.ack()
            event = events_pb2.HoldoutAssigned.FromString(message.data)
            if event.campaign_key == key:
                found.append(event)
        return len(found) >= expected

    try:
        await eventually(enough)
    finally:
        await subscription.unsubscribe()
        await bus.js.delete_consumer(streams.CAMPAIGNS_STREAM.name, durable)
    return found


async def test_suppressed_and_held_out_people_get_no_outreach_and_every_count_is_reported(
    database_url: str, nats_url: str, tmp_path: Path, nats_bus: Bus
) -> None:
    async with stack_of(database_url, nats_url, tmp_path) as stack:
        segment_id = await _segment(stack)
        await _suppress(
            stack,
            seg.Suppression(profile_id="cust-02", reason=seg.SUPPRESSION_REASON_OPT_OUT),
            seg.Suppression(
                profile_id="cust-03", channel=channel_pb2.CHANNEL_EMAIL, reason=seg.SUPPRESSION_REASON_COMPLAINT
            ),
            # An SMS suppression does not stop an e-mail.
            seg.Suppression(
                profile_id="cust-04", channel=channel_pb2.CHANNEL_SMS, reason=seg.SUPPRESSION_REASON_DND_REGISTRY
            ),
            # Two reasons: counted once, under the first in the contract's order.
            seg.Suppression(profile_id="cust-05", reason=seg.SUPPRESSION_REASON_COMPLAINT),
            seg.Suppression(profile_id="cust-05", reason=seg.SUPPRESSION_REASON_OPT_OUT),
        )
        key = await _launch(stack, _campaign(segment_id, holdout_basis_points=3000))
        await _completed(stack, key)

        suppressed = {"cust-02", "cust-03", "cust-05", NO_EMAIL}
        reachable = [p for p in PEOPLE if p not in suppressed]
        held = {p for p in reachable if held_out(key, p, 3000)}
        # 30% of 26 people: a campaign key holding out nobody (or everybody) would make this test vacuous.
        assert 0 < len(held) < len(reachable)
        outreaches = await _outreaches(stack, key)
        assert {o.profile_id for o in outreaches} == set(reachable) - held

        events = await _holdout_events(nats_bus, key, len(held))
        assert {e.profile_id for e in events} == held
        first = events[0]
        assert (first.labels, first.offer.product_code, first.trigger_code) == ([LABEL], "LUMPSUM", "T00")
        assert first.category == S.CAMPAIGN_CATEGORY_CROSS_SELL_NEW_CATEGORY and first.run_id

        # Channels report delivery and engagement; the report counts them from the outreaches.
        ids = sorted(o.campaign_id for o in outreaches)
        signals = [
            (
                streams.DELIVERY_UPDATED,
                channel_events.DeliveryUpdated,
                {"state": channel_resources.DELIVERY_STATE_SENT},
                ids[:3],
            ),
            (
                streams.DELIVERY_UPDATED,
                channel_events.DeliveryUpdated,
                {"state": channel_resources.DELIVERY_STATE_DELIVERED},
                ids[:2],
            ),
            (
                streams.ENGAGEMENT_RECORDED,
                channel_events.EngagementRecorded,
                {"kind": channel_resources.ENGAGEMENT_KIND_OPENED},
                ids[:2],
            ),
            # Opened twice: counted once.
            (
                streams.ENGAGEMENT_RECORDED,
                channel_events.EngagementRecorded,
                {"kind": channel_resources.ENGAGEMENT_KIND_OPENED},
                ids[:1],
            ),
            (
                streams.ENGAGEMENT_RECORDED,
                channel_events.EngagementRecorded,
                {"kind": channel_resources.ENGAGEMENT_KIND_CLICKED},
                ids[:1],
            ),
            (
                streams.ENGAGEMENT_RECORDED,
                channel_events.EngagementRecorded,
                {"kind": channel_resources.ENGAGEMENT_KIND_BOUNCED},
                ids[2:3],
            ),
            (
                streams.ENGAGEMENT_RECORDED,
                channel_events.EngagementRecorded,
                {"kind": channel_resources.ENGAGEMENT_KIND_UNSUBSCRIBED},
                ids[1:2],
            ),
        ]
        for subject, message_type, fields, campaign_ids in signals:
            for campaign_id in campaign_ids:
                message = message_type(event_id=new_id("evt_"), campaign_id=campaign_id, **fields)  # type: ignore[operator]
                await nats_bus.js.publish(subject, message.SerializeToString())

        async def engagement_counted() -> resources_pb2.ReportCounts | None:
            # Delivery updates and engagement come through different durables, so either may be the last in.
            counts = await _report(stack, key)
            delivery = (counts.sent, counts.delivered, counts.opened, counts.clicked)
            return counts if (counts.bounced, counts.opted_out) == (1, 1) and delivery == (3, 2, 2, 1) else None

        counts = await eventually(engagement_counted)
        released = len(reachable) - len(held)
        assert (counts.audience, counts.held_out, counts.suppressed, counts.capped) == (30, len(held), 4, 0)
        assert _reasons(counts.suppressed_by_reason) == {"opt_out": 2, "complaint": 1, "no_contact": 1}
        assert (counts.released, counts.dispatched, counts.render_failed) == (released, released, 0)
        assert (counts.sent, counts.delivered, counts.opened, counts.clicked) == (3, 2, 2, 1)
        assert (counts.failed, counts.replied, counts.complained) == (0, 0, 0)

        # Each release page's span says how many it left out and why (counts only, no person).
        pages = [
            span.attributes or {}
            for span in stack.spans.get_finished_spans()
            if span.name == "campaign.release_page" and (span.attributes or {}).get("campaign.key") == key
        ]
        assert len(pages) == 8  # 30 members, pages of four
        assert sum(int(page["campaign.page.audience"]) for page in pages) == 30
        assert sum(int(page["campaign.page.suppressed"]) for page in pages) == 4
        assert sum(int(page["campaign.page.held_out"]) for page in pages) == len(held)

        runs = (await stack.campaigns.ListCampaignRuns(service_pb2.ListCampaignRunsRequest(campaign_key=key))).runs
        assert len(runs) == 1 and runs[0].counts == counts
        assert runs[0].HasField("materialize_time") and runs[0].HasField("complete_time")

        # A second campaign with the label, without a holdout: the label report sums both from their runs.
        other = await _launch(stack, _campaign(segment_id))
        await _completed(stack, other)
        label = await stack.campaigns.GetLabelReport(service_pb2.GetLabelReportRequest(label=LABEL))
        assert label.campaign_count == 2
        assert (label.counts.audience, label.counts.held_out) == (60, len(held))
        assert label.counts.released == released + len(reachable)
        assert _reasons(label.counts.suppressed_by_reason) == {"opt_out": 4, "complaint": 2, "no_contact": 2}
        assert [(c.channel, c.campaign_count, c.counts) for c in label.channels] == [
            (channel_pb2.CHANNEL_EMAIL, 2, label.counts)
        ]
        nobody = await stack.campaigns.GetLabelReport(service_pb2.GetLabelReportRequest(label="No such label"))
        assert nobody.campaign_count == 0 and nobody.counts == resources_pb2.ReportCounts()


async def test_reports_refuse_unknown_campaigns_and_bad_tokens(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    async with stack_of(database_url, nats_url, tmp_path) as stack:
        for call in (
            stack.campaigns.GetCampaignReport(service_pb2.GetCampaignReportRequest(campaign_key="cmp_nope")),
            stack.campaigns.ListCampaignRuns(service_pb2.ListCampaignRunsRequest(campaign_key="cmp_nope")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stack.campaigns.GetLabelReport(service_pb2.GetLabelReportRequest(label=" "))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        key = await _launch(stack, _campaign(await _segment(stack)))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stack.campaigns.ListCampaignRuns(
                service_pb2.ListCampaignRunsRequest(campaign_key=key, page_token="not-a-token")
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_better_campaign_takes_undispatched_places_under_its_cap_and_is_capped_where_one_was_sent(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    async with stack_of(database_url, nats_url, tmp_path) as stack:
        segment_id = await _segment(stack)
        # Low: one step of 10% now (3 of 29 reachable dispatched), the rest an hour later.
        low = await _launch(
            stack,
            _campaign(segment_id, distribution=S.Distribution(percent_per_step=10, interval=Duration(seconds=3600))),
        )
        await _materialized(stack, low)

        async def first_step_dispatched() -> list | None:  # type: ignore[type-arg]
            rows = await _outreaches(stack, low)
            return rows if sum(r.dispatched_at is not None for r in rows) == 3 else None

        low_rows = await eventually(first_step_dispatched)
        sent_by_low = {r.profile_id for r in low_rows if r.dispatched_at is not None}
        reachable = {p for p in PEOPLE if p != NO_EMAIL}

        # High priority with one outreach a day: it takes every undispatched place and is capped where low sent.
        # Its content needs a city: where it cannot render, the person keeps low's outreach.
        cap = S.FrequencyCap(scope=S.CAP_SCOPE_ALL, period=S.CAP_PERIOD_DAY, max_outreaches=1)
        high_campaign = _campaign(segment_id, priority=5, frequency_caps=[cap])
        high_campaign.content.email.html_template = "<p>{{ first_name }} of {{ city }}</p>" + HTML
        high = await _launch(stack, high_campaign)
        await _completed(stack, high)
        assert {o.profile_id for o in await _outreaches(stack, high)} == reachable - sent_by_low - NO_CITY
        low_rows = await _outreaches(stack, low)
        withdrawn = {r.profile_id for r in low_rows if r.withdrawn_at is not None}
        assert withdrawn == reachable - sent_by_low - NO_CITY
        assert all(r.dispatched_at is None for r in low_rows if r.withdrawn_at is not None)
        # Each withdrawal is announced (attribution takes back its send), in the withdrawn outreach's trace.
        async with stack.db.snapshot() as session:
            rows = (
                await session.execute(
                    select(store.outbox.c.payload).where(store.outbox.c.subject == streams.OUTREACH_WITHDRAWN)
                )
            ).all()
        announced = [events_pb2.OutreachWithdrawn.FromString(row.payload) for row in rows]
        announced = [event for event in announced if event.campaign_key == low]
        by_outreach = {r.campaign_id: r for r in low_rows if r.withdrawn_at is not None}
        assert sorted(event.campaign_id for event in announced) == sorted(by_outreach)
        for event in announced:
            assert (event.profile_id, event.reason) == (by_outreach[event.campaign_id].profile_id, "outranked")
            assert event.withdraw_time.ToDatetime(tzinfo=UTC) == by_outreach[event.campaign_id].withdrawn_at
        withdraw_spans = {
            (span.attributes or {}).get("campaign.id")
            for span in stack.spans.get_finished_spans()
            if span.name == "outreach.withdraw"
        }
        assert set(by_outreach) <= withdraw_spans

        high_counts, low_counts = await _report(stack, high), await _report(stack, low)
        assert (high_counts.released, high_counts.capped, high_counts.render_failed) == (24, 3, 2)
        # Each of them can be told why: the render failure is recorded with the person, not only counted.
        for person in sorted(NO_CITY - sent_by_low):
            (decision,) = (
                await stack.campaigns.ExplainOutreach(
                    service_pb2.ExplainOutreachRequest(campaign_key=high, profile_id=person)
                )
            ).decisions
            assert decision.outcome == service_pb2.OUTREACH_OUTCOME_RENDER_FAILED, person
            assert "city" in decision.reason
        assert _reasons(high_counts.capped_by_reason) == {"cap_all_day": 3}
        assert (low_counts.audience, low_counts.released, low_counts.capped) == (30, 5, 24)
        assert _reasons(low_counts.capped_by_reason) == {"outranked": 24}

        # A lower-priority campaign with the same cap finds everyone contacted today and yields.
        lower = await _launch(stack, _campaign(segment_id, frequency_caps=[cap]))
        await _completed(stack, lower)
        assert not await _outreaches(stack, lower)
        assert _reasons((await _report(stack, lower)).capped_by_reason) == {"cap_all_day": 29}
        # A campaign without caps of its own is not stopped by others' caps.
        free = await _launch(stack, _campaign(segment_id))
        await _completed(stack, free)
        assert len(await _outreaches(stack, free)) == 29


async def test_one_offer_per_day_across_runs_launched_together(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    async with stack_of(database_url, nats_url, tmp_path, one_offer_per_day=True) as stack:
        segment_id = await _segment(stack)
        offers = [
            _campaign(
                segment_id,
                offer=S.Offer(product_code=f"P{i}", amount=money_pb2.Money(minor_units=amount, currency_code="INR")),
            )
            for i, amount in enumerate((100_00, 500_00, 300_00))
        ]
        # Launched together; which run releases first decides nothing but who is outranked later.
        keys = await asyncio.gather(*(_launch(stack, offer) for offer in offers))
        await asyncio.gather(*(_completed(stack, key) for key in keys))
        kept = [r.profile_id for key in keys for r in await _outreaches(stack, key) if r.withdrawn_at is None]
        # Nobody got two offers today, whichever run released them first; everyone reachable got one.
        assert sorted(kept) == sorted({p for p in PEOPLE if p != NO_EMAIL})
        counts = [await _report(stack, key) for key in keys]
        assert sum(c.released for c in counts) == 29
        assert all(c.capped + c.released + c.suppressed == 30 for c in counts)


async def test_a_channel_suppression_closes_that_channel_and_the_fallback_is_tried(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    async with stack_of(database_url, nats_url, tmp_path) as stack:
        await stack.segments.DefineAttributes(
            seg_service.DefineAttributesRequest(
                request_id=new_id("req_"),
                attributes=[seg.AttributeDefinition(name="push_token", type=seg.ATTRIBUTE_TYPE_STRING, pii=True)],
            )
        )
        with_token = ["cust-00", "cust-01", "cust-02", NO_EMAIL]
        profiles = [seg.Profile(profile_id=p) for p in with_token]
        for profile in profiles:
            profile.attributes["push_token"].string_value = f"token-{profile.profile_id}"
        await stack.segments.UpsertProfiles(
            seg_service.UpsertProfilesRequest(request_id=new_id("req_"), profiles=profiles)
        )
        segment_id = await _segment(stack)
        email, push = channel_pb2.CHANNEL_EMAIL, channel_pb2.CHANNEL_PUSH
        await _suppress(
            stack,
            seg.Suppression(profile_id="cust-00", channel=email, reason=seg.SUPPRESSION_REASON_COMPLAINT),
            seg.Suppression(profile_id="cust-01", channel=push, reason=seg.SUPPRESSION_REASON_OPT_OUT),
            seg.Suppression(profile_id="cust-02", channel=email, reason=seg.SUPPRESSION_REASON_COMPLAINT),
            seg.Suppression(profile_id="cust-02", channel=push, reason=seg.SUPPRESSION_REASON_OPT_OUT),
            seg.Suppression(profile_id=NO_EMAIL, channel=push, reason=seg.SUPPRESSION_REASON_OPT_OUT),
            seg.Suppression(profile_id="cust-03", reason=seg.SUPPRESSION_REASON_OPT_OUT),
        )
        campaign = _campaign(segment_id, fallback_channels=[push])
        campaign.content.push.CopyFrom(
            resources_pb2.PushContent(title_template="Hi {{ first_name }}", body_template="A lumpsum idea")
        )
        key = await _launch(stack, campaign)
        await _completed(stack, key)

        channels = {o.profile_id: o.channel for o in await _outreaches(stack, key)}
        # Complained about e-mail: reached by push. Opted out of push: e-mail as usual.
        assert (channels["cust-00"], channels["cust-01"]) == ("PUSH", "EMAIL")
        assert not {"cust-02", "cust-03", NO_EMAIL} & set(channels)
        assert set(channels) == set(PEOPLE) - {"cust-02", "cust-03", NO_EMAIL}
        assert {p for p, channel in channels.items() if channel == "PUSH"} == {"cust-00"}
        counts = await _report(stack, key)
        # cust-02 is counted under the first channel that closed (e-mail: complaint); cust-29 had only push.
        assert (counts.suppressed, counts.released) == (3, 27)
        assert _reasons(counts.suppressed_by_reason) == {"opt_out": 2, "complaint": 1}


async def _runs(stack: Stack, key: str) -> list:  # type: ignore[type-arg]
    async with stack.db.transaction() as session:
        query = (
            select(store.campaign_runs)
            .where(store.campaign_runs.c.campaign_key == key)
            .order_by(store.campaign_runs.c.occurrence_at)
        )
        return list((await session.execute(query)).all())


async def _make_due(stack: Stack, run_id: str) -> None:
    async with stack.db.transaction() as session:
        await session.execute(
            update(store.campaign_runs)
            .where(store.campaign_runs.c.run_id == run_id)
            .values(due_at=datetime.now(UTC) - timedelta(seconds=1))
        )


async def test_a_recurring_campaign_holds_out_the_same_people_every_run_and_reports_each_run(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    async with stack_of(database_url, nats_url, tmp_path) as stack:
        campaign = _campaign(await _segment(stack), holdout_basis_points=2500)
        campaign.schedule.recurrence.CopyFrom(S.Recurrence(frequency=S.RECURRENCE_FREQUENCY_DAILY))
        key = await _launch(stack, campaign)
        for expected_runs in (2, 3):
            # Today's occurrence comes (made due now); its run completes and the next one is scheduled.
            await _make_due(stack, (await _runs(stack, key))[-1].run_id)

            async def next_scheduled(expected: int = expected_runs) -> bool:
                runs = await _runs(stack, key)
                return len(runs) == expected and all(run.completed_at is not None for run in runs[:-1])

            await eventually(next_scheduled)

        runs = await _runs(stack, key)
        held_per_run = []
        async with stack.db.transaction() as session:
            for run in runs[:2]:
                query = select(store.run_exclusions.c.profile_id).where(
                    store.run_exclusions.c.run_id == run.run_id, store.run_exclusions.c.kind == "held_out"
                )
                held_per_run.append(set((await session.execute(query)).scalars()))
        assert held_per_run[0] == held_per_run[1] == {p for p in PEOPLE if p != NO_EMAIL and held_out(key, p, 2500)}
        assert held_per_run[0]

        # Newest first, one per page; the scheduled third run has no counts yet.
        listed, token = [], ""
        while True:
            page = await stack.campaigns.ListCampaignRuns(
                service_pb2.ListCampaignRunsRequest(campaign_key=key, page_size=1, page_token=token)
            )
            assert len(page.runs) == 1
            listed.extend(page.runs)
            token = page.next_page_token
            if not token:
                break
        assert [run.run_id for run in listed] == [run.run_id for run in reversed(runs)]
        assert listed[0].counts == resources_pb2.ReportCounts() and not listed[0].HasField("complete_time")
        per_run = [run.counts for run in listed[1:]]
        assert all((c.audience, c.held_out, c.suppressed) == (30, len(held_per_run[0]), 1) for c in per_run)
        total = await _report(stack, key)
        assert (total.audience, total.held_out, total.released) == (
            60,
            2 * len(held_per_run[0]),
            2 * per_run[0].released,
        )
