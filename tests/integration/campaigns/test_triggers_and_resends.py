"""Triggered campaigns and resends against the real segments service, real NATS, SQLite and PostgreSQL.

Segments publishes MembershipChanged when a profile update moves a person into the segment; the
campaigns service consumes it, creates the outreach through its outbox and requests its dispatch.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
import structlog
from google.protobuf.duration_pb2 import Duration
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select, update

from plumbing.bus import MSG_ID_HEADER, REPLAY_OF_HEADER, Bus, Delivery
from plumbing.db import Database
from plumbing.ids import new_id
from plumbing.metrics import tally
from plumbing.runtime import ServiceProcess
from plumbing.telemetry import (
    CAMPAIGN_ID,
    HELD,
    HOLD_REASON,
    HOLD_UNTIL,
    RELEASED,
    headers_span_context,
    outreach_ids,
    setup_tracing,
)
from services import streams
from services.campaigns import store
from services.campaigns.app import build
from services.campaigns.campaign_ids import parse_campaign_id
from services.campaigns.settings import CampaignsSettings
from services.segments.app import build as build_segments
from services.segments.settings import SegmentsSettings
from tests.integration.segments.approval import publish as approve_and_publish
from tests.waiting import eventually
from xsell.campaigns.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.segments.v1 import events_pb2 as segment_events
from xsell.segments.v1 import resources_pb2 as seg
from xsell.segments.v1 import service_pb2 as seg_service
from xsell.segments.v1 import service_pb2_grpc as seg_grpc
from xsell.type.v1 import channel_pb2, money_pb2

HTML = '<p>Dear {{ first_name }}, a top-up awaits</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
ZONE = "Asia/Kolkata"


@dataclass
class Stack:
    campaigns: service_pb2_grpc.CampaignsServiceStub
    segments: seg_grpc.SegmentsServiceStub
    bus: Bus
    db: Database
    dispatched: list[events_pb2.DispatchRequested]
    spans: InMemorySpanExporter
    process: ServiceProcess


@pytest.fixture
async def stack(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    # In stream order, so a later entry's outreach shows that the entries before it were applied.
    async with _running_stack(database_url, nats_url, tmp_path, trigger_concurrency=1) as running:
        yield running


@pytest.fixture
async def batching_stack(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """The trigger consumer as deployed: the entries of a fetch applied together."""
    async with _running_stack(database_url, nats_url, tmp_path, trigger_concurrency=100) as running:
        yield running


@asynccontextmanager
async def _running_stack(
    database_url: str, nats_url: str, tmp_path: Path, *, trigger_concurrency: int
) -> AsyncIterator[Stack]:
    # As the services set it up (the outreach root span's ids derive from its campaign ID), finished spans kept.
    provider = setup_tracing("campaigns", tmp_path)
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
            release_page_size=2,
            release_poll_seconds=0.1,
            require_approval=False,
            trigger_concurrency=trigger_concurrency,
        ),
        provider,
    )
    campaigns_port = await campaigns_process.start()
    bus = await Bus.connect(nats_url, name="test")
    dispatched: list[events_pb2.DispatchRequested] = []

    async def collect(msg: Any) -> None:
        dispatched.append(events_pb2.DispatchRequested.FromString(msg.data))

    subscription = await bus.nc.subscribe(streams.DISPATCH_REQUESTED, cb=collect)
    db = Database(database_url)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{campaigns_port}") as campaigns_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{segments_port}") as segments_channel,
    ):
        yield Stack(
            service_pb2_grpc.CampaignsServiceStub(campaigns_channel),
            seg_grpc.SegmentsServiceStub(segments_channel),
            bus,
            db,
            dispatched,
            spans,
            campaigns_process,
        )
    await subscription.unsubscribe()
    await bus.drain()
    await db.dispose()
    await campaigns_process.stop(1)
    await segments_process.stop(1)


def _number(value: float) -> seg.Value:
    return seg.Value(number_value=value)


def _profile(profile_id: str, **attributes: str | float) -> seg.Profile:
    profile = seg.Profile(profile_id=profile_id)
    for name, value in attributes.items():
        if isinstance(value, str):
            profile.attributes[name].string_value = value
        else:
            profile.attributes[name].number_value = value
    return profile


async def _upsert(stack: Stack, *profiles: seg.Profile) -> None:
    response = await stack.segments.UpsertProfiles(
        seg_service.UpsertProfilesRequest(request_id=new_id("req_"), profiles=list(profiles))
    )
    assert not response.errors


async def _define(stack: Stack, *more: seg.AttributeDefinition) -> None:
    """The attributes the tests' campaigns read, and `more`."""
    defined = await stack.segments.DefineAttributes(
        seg_service.DefineAttributesRequest(
            request_id=new_id("req_"),
            attributes=[
                seg.AttributeDefinition(name="email", type=seg.ATTRIBUTE_TYPE_STRING, pii=True),
                seg.AttributeDefinition(name="first_name", type=seg.ATTRIBUTE_TYPE_STRING),
                seg.AttributeDefinition(name="plan", type=seg.ATTRIBUTE_TYPE_STRING),
                seg.AttributeDefinition(name="outstanding_ratio", type=seg.ATTRIBUTE_TYPE_NUMBER),
                *more,
            ],
        )
    )
    assert not defined.errors


async def _segment(stack: Stack, rule: seg.Rule) -> str:
    created = await stack.segments.CreateSegment(
        seg_service.CreateSegmentRequest(request_id=new_id("req_"), segment=seg.Segment(display_name="s", rule=rule))
    )
    await approve_and_publish(stack.segments, created.segment.segment_id)
    return created.segment.segment_id


def _campaign(segment_id: str, **fields: Any) -> resources_pb2.Campaign:
    defaults: dict[str, Any] = {
        "display_name": "Top-up when outstanding falls below 60%",
        "programme": "CSELL",
        "segment_id": segment_id,
        "channel": channel_pb2.CHANNEL_EMAIL,
        "offer": resources_pb2.Offer(product_code="PL_TOPUP"),
        "content": resources_pb2.Content(
            email=resources_pb2.EmailContent(subject_template="Hello {{ first_name }}", html_template=HTML)
        ),
        "schedule": resources_pb2.Schedule(time_zone=ZONE),
    }
    return resources_pb2.Campaign(**{**defaults, **fields})


async def _launch(stack: Stack, campaign: resources_pb2.Campaign) -> str:
    created = await stack.campaigns.CreateCampaign(
        service_pb2.CreateCampaignRequest(request_id=new_id("req_"), campaign=campaign)
    )
    key = created.campaign.campaign_key
    await stack.campaigns.LaunchCampaign(service_pb2.LaunchCampaignRequest(request_id=new_id("req_"), campaign_key=key))
    return key


async def _outreaches(stack: Stack, key: str) -> list[resources_pb2.Outreach]:
    response = await stack.campaigns.ListOutreaches(service_pb2.ListOutreachesRequest(campaign_key=key, page_size=100))
    return list(response.outreaches)


def _entered(segment_id: str, version: int, profile_id: str) -> segment_events.MembershipChanged:
    """The person entering the segment's version now, as segments announces it."""
    change = segment_events.MembershipChanged(
        event_id=new_id("evt_"),
        segment_id=segment_id,
        segment_version=version,
        profile_id=profile_id,
        change=segment_events.MEMBERSHIP_CHANGE_ENTERED,
    )
    change.change_time.FromDatetime(datetime.now(UTC))
    return change


def _below_60_percent() -> seg.Rule:
    condition = seg.AttributeCondition(attribute="outstanding_ratio", operator=seg.OPERATOR_LESS_THAN)
    condition.values.add(number_value=0.6)
    return seg.Rule(attribute=condition)


async def test_a_segment_entry_fires_one_outreach_per_cool_down_and_a_redelivery_fires_none(stack: Stack) -> None:
    await _define(stack)
    await _upsert(
        stack,
        _profile("b-01", email="b01@example.in", first_name="Kaveri", outstanding_ratio=0.9),
        _profile("b-02", email="b02@example.in", first_name="Ravi", outstanding_ratio=0.9),
        _profile("b-03", email="b03@example.in", first_name="Meera", outstanding_ratio=0.9),
    )
    segment_id = await _segment(stack, _below_60_percent())
    trigger = resources_pb2.Trigger(
        source=resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY, cool_down=Duration(seconds=30 * 86400)
    )
    # Not a catalog trigger, and a triggered campaign with a send time: refused, naming the field.
    for bad, field in (
        (_campaign(segment_id, trigger_code="T42", trigger=trigger), "trigger_code"),
        (
            _campaign(
                segment_id,
                trigger_code="T04",
                trigger=trigger,
                schedule=resources_pb2.Schedule(time_zone=ZONE, send_time={"seconds": 4_000_000_000}),
            ),
            "schedule",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.campaigns.CreateCampaign(
                service_pb2.CreateCampaignRequest(request_id=new_id("r"), campaign=bad)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (refused.value.details() or "")

    key = await _launch(stack, _campaign(segment_id, trigger_code="T04", trigger=trigger))
    # A second triggered campaign on the segment sees every entry in the same transaction: it shows when an
    # entry has been applied, so what the first campaign did not do can be asserted.
    witness = await _launch(stack, _campaign(segment_id, trigger_code="T01", trigger=trigger))
    got = (await stack.campaigns.GetCampaign(service_pb2.GetCampaignRequest(campaign_key=key))).campaign
    assert got.state == resources_pb2.CAMPAIGN_STATE_RUNNING
    assert got.trigger.cool_down.seconds == 30 * 86400

    entries: list[tuple[segment_events.MembershipChanged, dict[str, str]]] = []

    async def collect(msg: Any) -> None:
        change = segment_events.MembershipChanged.FromString(msg.data)
        if change.segment_id == segment_id:
            entries.append((change, dict(msg.headers or {})))

    subscription = await stack.bus.nc.subscribe(streams.MEMBERSHIP_CHANGED, cb=collect)
    # What operators read per outcome (xsell_campaigns_trigger_entries_total): the process's counts, from here on.
    outcomes = tally("xsell.campaigns", "xsell.campaigns.trigger.entries", labels=("outcome",))
    counted_before = {outcome: outcomes.value((outcome,)) for outcome in ("created", "redelivery_skipped", "cool_down")}

    def counted(outcome: str) -> int:
        return outcomes.value((outcome,)) - counted_before[outcome]

    # b-01's outstanding falls to 55%: they enter the segment, and that is the trigger.
    await _upsert(stack, _profile("b-01", outstanding_ratio=0.55))
    first = await eventually(lambda: _outreaches(stack, key))
    assert len(first) == 1 and first[0].profile_id == "b-01" and first[0].trigger_code == "T04"
    parts = parse_campaign_id(first[0].campaign_id)
    assert parts is not None and (parts.programme, parts.trigger_code) == ("CSELL", "T04")
    assert parts.month == datetime.now(ZoneInfo(ZONE)).strftime("%b").upper()
    # Created and dispatch-requested in the consumer's transaction: the DispatchRequested is on NATS.
    sent = await eventually(
        lambda: asyncio.sleep(0, result=[d for d in stack.dispatched if d.campaign_id == first[0].campaign_id])
    )
    assert sent[0].email.to_address == "b01@example.in" and "Kaveri" in sent[0].email.subject
    # The outreach's trace starts at the entry that fired it: its root span, linked to the entry's message span.
    entered, headers = await eventually(lambda: asyncio.sleep(0, result=entries and entries[0]))
    trace_id, root_id = outreach_ids(first[0].campaign_id)
    (root,) = [
        span
        for span in stack.spans.get_finished_spans()
        if span.name == "outreach.create" and span.context is not None and span.context.trace_id == trace_id
    ]
    assert root.context is not None and root.context.span_id == root_id and root.parent is None
    assert (root.attributes or {})["campaign.trigger.segment_id"] == segment_id
    cause = headers_span_context(headers)
    assert cause is not None and cause.span_id in {link.context.span_id for link in root.links}

    # A redelivery of the same message (same message id, as after a crash before the ack) changes nothing,
    # even when the cool-down and the day's run would no longer stop it: the inbox does.
    await _age(stack, first[0].campaign_id, timedelta(days=31))
    js = stack.bus.nc.jetstream()
    await js.publish(
        streams.MEMBERSHIP_CHANGED,
        entered.SerializeToString(),
        headers={MSG_ID_HEADER: new_id("evt_"), REPLAY_OF_HEADER: headers[MSG_ID_HEADER]},
    )
    # Entries are applied in stream order: once b-02's (published after) has its outreach, the replay is done.
    await _upsert(stack, _profile("b-02", outstanding_ratio=0.4))
    after = await eventually(lambda: _when(_outreaches(stack, key), lambda rows: len(rows) >= 2))
    assert sorted(o.profile_id for o in after) == ["b-01", "b-02"]
    async with stack.db.transaction() as session:
        applied = (
            await session.execute(
                select(store.inbox.c.message_id).where(store.inbox.c.consumer == streams.CAMPAIGNS_TRIGGERS.durable)
            )
        ).all()
    assert headers[MSG_ID_HEADER] in {row.message_id for row in applied}
    # b-01 and b-02, by both campaigns; the replay skipped, not counted again.
    assert counted("created") == 4 and counted("redelivery_skipped") == 1

    # b-01's outreach was two days ago (another day's run); they leave and come back within the 30-day
    # cool-down: a new entry, but no new outreach.
    await _age(stack, first[0].campaign_id, timedelta(days=2))
    await _upsert(stack, _profile("b-01", outstanding_ratio=0.8))
    await _upsert(stack, _profile("b-01", outstanding_ratio=0.5))
    await _upsert(stack, _profile("b-04", email="b04@example.in", first_name="Arjun", outstanding_ratio=0.2))
    after = await eventually(lambda: _when(_outreaches(stack, key), lambda rows: len(rows) >= 3))
    assert sorted(o.profile_id for o in after) == ["b-01", "b-02", "b-04"]
    assert counted("cool_down") >= 1
    # A day that is over closes its run once nothing in it waits for dispatch; today's run stays open.
    run_of = {o.profile_id: o.run_id for o in after}

    async def closed_runs() -> set[str]:
        runs = await stack.campaigns.ListCampaignRuns(service_pb2.ListCampaignRunsRequest(campaign_key=key))
        return {run.run_id for run in runs.runs if run.HasField("complete_time")}

    assert await eventually(closed_runs) == {run_of["b-01"]}
    assert run_of["b-02"] == run_of["b-04"] != run_of["b-01"]

    # A paused campaign fires nothing; entries while paused are not kept for later.
    await stack.campaigns.PauseCampaign(service_pb2.PauseCampaignRequest(request_id=new_id("r"), campaign_key=key))
    await _upsert(stack, _profile("b-03", outstanding_ratio=0.3))
    await eventually(lambda: _when(_outreaches(stack, witness), lambda rows: {o.profile_id for o in rows} >= {"b-03"}))
    await subscription.unsubscribe()
    assert sorted(o.profile_id for o in await _outreaches(stack, key)) == ["b-01", "b-02", "b-04"]
    witnessed = await _outreaches(stack, witness)
    assert sorted(o.profile_id for o in witnessed) == ["b-01", "b-02", "b-03", "b-04"]
    # Each campaign numbers its IDs under its own trigger code.
    assert {parse_campaign_id(o.campaign_id).trigger_code for o in witnessed} == {"T01"}  # type: ignore[union-attr]
    report = (await stack.campaigns.GetCampaignReport(service_pb2.GetCampaignReportRequest(campaign_key=key))).counts
    assert (report.released, report.dispatched) == (3, 3)


async def test_entries_applied_together_give_each_person_one_outreach_and_a_replay_none(
    batching_stack: Stack,
) -> None:
    stack = batching_stack
    await _define(stack)
    people = [f"g-{n:02d}" for n in range(1, 13)]
    # g-13 has opted out: looked up with the others, in the same segments call, and left out as suppressed.
    await _upsert(
        stack,
        *(_profile(p, email=f"{p}@example.in", first_name="Asha", outstanding_ratio=0.9) for p in [*people, "g-13"]),
    )
    suppressed = await stack.segments.AddSuppressions(
        seg_service.AddSuppressionsRequest(
            request_id=new_id("req_"),
            suppressions=[seg.Suppression(profile_id="g-13", reason=seg.SUPPRESSION_REASON_OPT_OUT)],
        )
    )
    assert suppressed.accepted_count == 1
    segment_id = await _segment(stack, _below_60_percent())
    version = (
        await stack.segments.GetSegment(seg_service.GetSegmentRequest(segment_id=segment_id))
    ).segment.published_version
    trigger = resources_pb2.Trigger(source=resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY)
    key = await _launch(stack, _campaign(segment_id, trigger_code="T04", trigger=trigger))
    witness = await _launch(stack, _campaign(segment_id, trigger_code="T01", trigger=trigger))

    def entered(profile_id: str) -> segment_events.MembershipChanged:
        return _entered(segment_id, version, profile_id)

    # Published back to back, so the consumer fetches them together: every person once, g-01 twice (two
    # entries, two message ids) and a replay of g-02's message (the same message id: applied once). A person
    # segments has no profile for is acknowledged without holding up the others.
    burst = [entered(p) for p in [*people, "g-13"]] + [entered("g-01")]
    ghost = entered("ghost")
    js = stack.bus.nc.jetstream()
    for change in burst:
        await js.publish(
            streams.MEMBERSHIP_CHANGED, change.SerializeToString(), headers={MSG_ID_HEADER: change.event_id}
        )
    await js.publish(
        streams.MEMBERSHIP_CHANGED,
        burst[1].SerializeToString(),
        headers={MSG_ID_HEADER: new_id("evt_"), REPLAY_OF_HEADER: burst[1].event_id},
    )
    await js.publish(streams.MEMBERSHIP_CHANGED, ghost.SerializeToString(), headers={MSG_ID_HEADER: ghost.event_id})

    async def all_applied() -> bool:
        info = await js.consumer_info(streams.CAMPAIGNS_TRIGGERS.stream, streams.CAMPAIGNS_TRIGGERS.durable)
        async with stack.db.snapshot() as session:
            inbox = store.inbox.c
            applied = set(
                (
                    await session.execute(
                        select(inbox.message_id).where(inbox.consumer == streams.CAMPAIGNS_TRIGGERS.durable)
                    )
                ).scalars()
            )
        return info.num_pending == 0 and info.num_ack_pending == 0 and applied >= {c.event_id for c in burst}

    await eventually(all_applied)
    for campaign_key in (key, witness):
        made = await _outreaches(stack, campaign_key)
        assert sorted(o.profile_id for o in made) == people
        assert len({o.campaign_id for o in made}) == 12
    async with stack.db.snapshot() as session:
        runs = (
            await session.execute(select(store.campaign_runs).where(store.campaign_runs.c.campaign_key == key))
        ).all()
    assert [(run.kind, run.outreach_count) for run in runs] == [("trigger", 12)]
    counts = await _report(stack, key)
    assert (counts.audience, counts.released, counts.suppressed) == (13, 12, 1)
    assert [(r.reason, r.count) for r in counts.suppressed_by_reason] == [("opt_out", 1)]
    dispatched = await eventually(lambda: asyncio.sleep(0, result=len(stack.dispatched) >= 24 and stack.dispatched))
    assert sorted(d.profile_id for d in dispatched if "-T04-" in d.campaign_id) == people


async def test_a_campaign_newly_firing_on_a_segment_gets_its_entries_beside_one_that_fired_before(
    batching_stack: Stack,
) -> None:
    # The handler looks up at once the people of segments where a campaign fired before; an entry of a segment
    # whose campaign is firing for the first time is looked up and applied after them, in the same batch.
    stack = batching_stack
    await _define(stack)
    await _upsert(
        stack,
        *(_profile(p, email=f"{p}@example.in", first_name="Asha", outstanding_ratio=0.3) for p in ("m-01", "m-02")),
        *(_profile(p, email=f"{p}@example.in", first_name="Ravi", plan="SIP") for p in ("n-01", "n-02")),
    )
    topups, sips = await _segment(stack, _below_60_percent()), await _segment(stack, _sip_rule())
    trigger = resources_pb2.Trigger(source=resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY)
    js = stack.bus.nc.jetstream()

    async def enter(segment_id: str, *profile_ids: str) -> None:
        version = (
            await stack.segments.GetSegment(seg_service.GetSegmentRequest(segment_id=segment_id))
        ).segment.published_version
        for profile_id in profile_ids:
            change = _entered(segment_id, version, profile_id)
            await js.publish(
                streams.MEMBERSHIP_CHANGED, change.SerializeToString(), headers={MSG_ID_HEADER: change.event_id}
            )

    topup = await _launch(stack, _campaign(topups, trigger_code="T04", trigger=trigger))
    await enter(topups, "m-01")
    await eventually(lambda: _when(_outreaches(stack, topup), lambda rows: len(rows) == 1))
    sip = await _launch(stack, _campaign(sips, trigger_code="T01", trigger=trigger))
    await enter(topups, "m-02")
    await enter(sips, "n-01", "n-02")
    made = await eventually(lambda: _when(_outreaches(stack, sip), lambda rows: len(rows) == 2))
    assert sorted(o.profile_id for o in made) == ["n-01", "n-02"]
    made = await eventually(lambda: _when(_outreaches(stack, topup), lambda rows: len(rows) == 2))
    assert sorted(o.profile_id for o in made) == ["m-01", "m-02"]


async def _age(stack: Stack, campaign_id: str, age: timedelta) -> None:
    """Moves an outreach (and its day's run) into the past, as if the trigger had fired `age` ago."""
    then = datetime.now(UTC) - age
    async with stack.db.transaction() as session:
        run_id = (
            await session.execute(
                select(store.outreaches.c.run_id).where(store.outreaches.c.campaign_id == campaign_id)
            )
        ).scalar_one()
        await session.execute(
            update(store.outreaches).where(store.outreaches.c.campaign_id == campaign_id).values(created_at=then)
        )
        await session.execute(
            update(store.campaign_runs).where(store.campaign_runs.c.run_id == run_id).values(occurrence_at=then)
        )


async def _when(rows_coroutine: Any, condition: Any) -> Any:
    rows = await rows_coroutine
    return rows if condition(rows) else None


def _sip_rule() -> seg.Rule:
    condition = seg.AttributeCondition(attribute="plan", operator=seg.OPERATOR_EQUALS)
    condition.values.add(string_value="SIP")
    return seg.Rule(attribute=condition)


def _resend_now() -> resources_pb2.Resend:
    """Not opened, an hour later, at a local time of day half an hour ago (see _dispatched_two_hours_ago)."""
    local = datetime.now(ZoneInfo(ZONE)) - timedelta(minutes=30)
    return resources_pb2.Resend(
        condition=resources_pb2.RESEND_CONDITION_NOT_OPENED,
        delay=Duration(seconds=3600),
        time_of_day=f"{local.hour:02d}:{local.minute:02d}",
    )


async def _dispatched_two_hours_ago(stack: Stack, *keys: str) -> None:
    """Dispatch + delay is then an hour ago, so the resend's local time (half an hour ago) has come."""
    async with stack.db.transaction() as session:
        await session.execute(
            update(store.outreaches)
            .where(store.outreaches.c.campaign_key.in_(keys), store.outreaches.c.resend_of.is_(None))
            .values(dispatched_at=datetime.now(UTC) - timedelta(hours=2))
        )


async def _report(stack: Stack, key: str) -> resources_pb2.ReportCounts:
    return (await stack.campaigns.GetCampaignReport(service_pb2.GetCampaignReportRequest(campaign_key=key))).counts


async def _state(stack: Stack, key: str) -> int:
    return (await stack.campaigns.GetCampaign(service_pb2.GetCampaignRequest(campaign_key=key))).campaign.state


async def test_a_resend_goes_once_to_who_did_not_open_and_not_to_who_opted_out_meanwhile(stack: Stack) -> None:
    await _define(stack)
    await _upsert(
        stack,
        *(_profile(f"r-0{i}", email=f"r0{i}@example.in", first_name=f"P{i}", plan="SIP") for i in (1, 2, 3)),
    )
    segment_id = await _segment(stack, _sip_rule())
    key = await _launch(stack, _campaign(segment_id, resend=_resend_now()))
    await eventually(lambda: _when(_report(stack, key), lambda counts: counts.dispatched == 3))
    originals = {o.profile_id: o.campaign_id for o in await _outreaches(stack, key)}
    # The run is done, but the campaign waits for its resends (so it can still be paused or cancelled).
    await eventually(
        lambda: _when(
            stack.campaigns.ListCampaignAudit(service_pb2.ListCampaignAuditRequest(campaign_key=key)),
            lambda page: any(e.note == "waiting for resends" for e in page.entries),
        )
    )
    assert await _state(stack, key) == resources_pb2.CAMPAIGN_STATE_RUNNING

    # r-01 opens it; r-02 unsubscribes (a suppression in segments) after it was sent.
    opened = channel_events.EngagementRecorded(
        event_id=new_id("evt_"),
        campaign_id=originals["r-01"],
        channel=channel_pb2.CHANNEL_EMAIL,
        kind=channel_resources.ENGAGEMENT_KIND_OPENED,
        profile_id="r-01",
    )
    await stack.bus.nc.jetstream().publish(
        streams.ENGAGEMENT_RECORDED, opened.SerializeToString(), headers={MSG_ID_HEADER: opened.event_id}
    )
    suppressed = await stack.segments.AddSuppressions(
        seg_service.AddSuppressionsRequest(
            request_id=new_id("req_"),
            suppressions=[seg.Suppression(profile_id="r-02", reason=seg.SUPPRESSION_REASON_OPT_OUT)],
        )
    )
    assert suppressed.accepted_count == 1
    await eventually(lambda: _when(_report(stack, key), lambda counts: counts.opened == 1))

    await _dispatched_two_hours_ago(stack, key)
    await eventually(lambda: _when(_state(stack, key), lambda state: state == resources_pb2.CAMPAIGN_STATE_COMPLETED))
    rows = await _outreaches(stack, key)
    resends = [o for o in rows if o.resend_of]
    assert len(rows) == 4 and len(resends) == 1
    resend = resends[0]
    assert (resend.profile_id, resend.resend_of) == ("r-03", originals["r-03"])
    assert resend.campaign_id not in originals.values() and parse_campaign_id(resend.campaign_id) is not None
    sent = await eventually(
        lambda: asyncio.sleep(0, result=[d for d in stack.dispatched if d.campaign_id == resend.campaign_id])
    )
    assert sent[0].email.to_address == "r03@example.in"
    async with stack.db.transaction() as session:
        decided = dict(
            (
                await session.execute(
                    select(store.outreaches.c.profile_id, store.outreaches.c.resend_state).where(
                        store.outreaches.c.campaign_key == key, store.outreaches.c.resend_of.is_(None)
                    )
                )
            ).all()
        )
    assert decided == {"r-01": "opened", "r-02": "suppressed:opt_out", "r-03": "resent"}
    # The report says the same: one resend (released under the resend run) and why the others got none.
    report = await _report(stack, key)
    assert (report.released, report.resent) == (4, 1)
    assert {r.reason: r.count for r in report.resends_skipped_by_reason} == {"opened": 1, "suppressed:opt_out": 1}
    runs = (await stack.campaigns.ListCampaignRuns(service_pb2.ListCampaignRunsRequest(campaign_key=key))).runs
    assert sorted((run.counts.released, run.counts.resent) for run in runs) == [(1, 1), (3, 0)]


async def test_a_paused_campaign_resends_nothing_while_another_one_resends(stack: Stack) -> None:
    await _define(stack)
    await _upsert(stack, *(_profile(f"q-0{i}", email=f"q0{i}@example.in", first_name="Q", plan="SIP") for i in (1, 2)))
    segment_id = await _segment(stack, _sip_rule())
    paused = await _launch(stack, _campaign(segment_id, resend=_resend_now()))
    witness = await _launch(stack, _campaign(segment_id, resend=_resend_now(), display_name="witness"))
    for key in (paused, witness):
        await eventually(lambda key=key: _when(_report(stack, key), lambda counts: counts.dispatched == 2))
    await stack.campaigns.PauseCampaign(service_pb2.PauseCampaignRequest(request_id=new_id("r"), campaign_key=paused))
    # Both campaigns' originals are due in the same update, so the runner sees them in the same pass.
    await _dispatched_two_hours_ago(stack, paused, witness)
    await eventually(lambda: _when(_outreaches(stack, witness), lambda rows: len(rows) == 4))
    assert len(await _outreaches(stack, paused)) == 2
    await stack.campaigns.CancelCampaign(service_pb2.CancelCampaignRequest(request_id=new_id("r"), campaign_key=paused))
    assert await _state(stack, paused) == resources_pb2.CAMPAIGN_STATE_CANCELLED
    running_or_done = (resources_pb2.CAMPAIGN_STATE_RUNNING, resources_pb2.CAMPAIGN_STATE_COMPLETED)
    assert await _state(stack, witness) in running_or_done


async def test_a_trigger_inside_quiet_hours_is_created_at_once_and_dispatched_when_they_end(stack: Stack) -> None:
    await _define(stack)
    await _upsert(stack, _profile("n-01", email="n01@example.in", first_name="Nila", outstanding_ratio=0.9))
    segment_id = await _segment(stack, _below_60_percent())
    local = datetime.now(ZoneInfo(ZONE))
    start, end = local - timedelta(hours=1), local + timedelta(hours=1)
    quiet = resources_pb2.QuietHours(start=f"{start:%H:%M}", end=f"{end:%H:%M}")
    trigger = resources_pb2.Trigger(source=resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY)
    key = await _launch(stack, _campaign(segment_id, trigger_code="T04", trigger=trigger, quiet_hours=quiet))
    await _upsert(stack, _profile("n-01", outstanding_ratio=0.5))
    created = await eventually(lambda: _outreaches(stack, key))
    campaign_id = created[0].campaign_id
    async with stack.db.transaction() as session:
        row = (
            await session.execute(select(store.outreaches).where(store.outreaches.c.campaign_id == campaign_id))
        ).one()
    # Waits for the end of the quiet hours (to the minute), undispatched.
    assert row.dispatched_at is None and row.dispatch_after is not None
    assert abs(row.dispatch_after - end.replace(second=0, microsecond=0)) < timedelta(seconds=1)
    assert not [d for d in stack.dispatched if d.campaign_id == campaign_id]
    # Its trace says so: its root carries an outreach.held event, with why and until when.
    (held,) = await eventually(lambda: _events(stack, campaign_id, "outreach.create", HELD))
    assert held[HOLD_REASON] == f"the campaign's quiet hours {start:%H:%M}-{end:%H:%M} in {ZONE}"
    assert datetime.fromisoformat(held[HOLD_UNTIL]) == row.dispatch_after.replace(microsecond=0)
    # The quiet hours end (moved forward here): the follow-up loop requests the dispatch.
    async with stack.db.transaction() as session:
        await session.execute(
            update(store.outreaches)
            .where(store.outreaches.c.campaign_id == campaign_id)
            .values(dispatch_after=datetime.now(UTC) - timedelta(seconds=1))
        )
    sent = await eventually(
        lambda: asyncio.sleep(0, result=[d for d in stack.dispatched if d.campaign_id == campaign_id])
    )
    assert len(sent) == 1 and sent[0].email.to_address == "n01@example.in"
    await eventually(lambda: _when(_report(stack, key), lambda counts: counts.dispatched == 1))
    # And when it goes: the dispatch span in its trace carries outreach.released, saying what it waited for.
    (released,) = await eventually(lambda: _events(stack, campaign_id, "outreach.dispatch", RELEASED))
    assert released[CAMPAIGN_ID] == campaign_id and "quiet hours" in released[HOLD_REASON]


async def _events(stack: Stack, campaign_id: str, span_name: str, event_name: str) -> list[dict[str, Any]]:
    """The attributes of the `event_name` events on the finished `span_name` spans of the campaign ID's trace."""
    trace_id = outreach_ids(campaign_id)[0]
    return [
        dict(event.attributes or {})
        for span in stack.spans.get_finished_spans()
        if span.name == span_name and span.context is not None and span.context.trace_id == trace_id
        for event in span.events
        if event.name == event_name
    ]


async def test_a_trigger_offers_each_person_their_own_amount_and_nothing_to_who_is_not_eligible(stack: Stack) -> None:
    await _define(stack)
    defined = await stack.segments.DefineAttributes(
        seg_service.DefineAttributesRequest(
            request_id=new_id("req_"),
            attributes=[
                seg.AttributeDefinition(name="bureau_score", type=seg.ATTRIBUTE_TYPE_NUMBER),
                seg.AttributeDefinition(name="topup_limit", type=seg.ATTRIBUTE_TYPE_MONEY),
            ],
        )
    )
    assert not defined.errors
    people = {"e-01": (780.0, 9_12_345_00), "e-02": (640.0, 9_12_345_00), "e-03": (810.0, None)}
    for person, (score, limit) in people.items():
        profile = _profile(person, email=f"{person}@example.in", first_name="Kaveri", outstanding_ratio=0.9)
        profile.attributes["bureau_score"].number_value = score
        if limit is not None:
            profile.attributes["topup_limit"].money_value.CopyFrom(
                money_pb2.Money(minor_units=limit, currency_code="INR")
            )
        await _upsert(stack, profile)
    segment_id = await _segment(stack, _below_60_percent())
    score = seg.AttributeCondition(attribute="bureau_score", operator=seg.OPERATOR_GREATER_OR_EQUAL)
    score.values.add(number_value=750)
    offer = resources_pb2.Offer(
        product_code="MSME_WC_TOPUP",
        # Half the limit, in steps of ₹10,000: ₹9,12,345 -> ₹4,56,172.50 -> ₹4,50,000.
        amount_rule=resources_pb2.OfferAmountRule(
            attribute="topup_limit",
            share_basis_points=5000,
            round_down_to=money_pb2.Money(minor_units=10_000_00, currency_code="INR"),
        ),
        eligibility=[score],
    )
    html = (
        '<p>{{ first_name }}, up to {{ offer_amount_full }} awaits</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
    )
    content = resources_pb2.Content(email=resources_pb2.EmailContent(subject_template="A top-up", html_template=html))
    trigger = resources_pb2.Trigger(source=resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY)
    key = await _launch(stack, _campaign(segment_id, trigger_code="T06", trigger=trigger, offer=offer, content=content))

    # All three enter the segment; only e-01 is eligible, and gets half their limit.
    for person in people:
        await _upsert(stack, _profile(person, outstanding_ratio=0.5))

    async def everyone_judged() -> resources_pb2.ReportCounts | None:
        counts = await _report(stack, key)
        return counts if counts.released + counts.not_eligible == 3 else None

    counts = await eventually(everyone_judged)
    assert (counts.released, counts.not_eligible) == (1, 2)
    assert {item.reason: item.count for item in counts.not_eligible_by_reason} == {
        "bureau_score": 1,
        "offer_amount_missing": 1,
    }
    (created,) = await _outreaches(stack, key)
    assert created.profile_id == "e-01"
    assert (created.offer.product_code, created.offer.amount.minor_units) == ("MSME_WC_TOPUP", 4_50_000_00)
    sent = await eventually(
        lambda: asyncio.sleep(0, result=[d for d in stack.dispatched if d.campaign_id == created.campaign_id])
    )
    assert "₹4,50,000" in sent[0].email.html_body
    explained = await stack.campaigns.ExplainOutreach(
        service_pb2.ExplainOutreachRequest(campaign_key=key, profile_id="e-03")
    )
    assert explained.decisions[0].outcome == service_pb2.OUTREACH_OUTCOME_NOT_ELIGIBLE


async def _signal(stack: Stack, event: channel_events.DeliveryUpdated | channel_events.EngagementRecorded) -> None:
    """Channels' DeliveryUpdated or EngagementRecorded about an outreach, as its outbox relay publishes it."""
    subject = (
        streams.DELIVERY_UPDATED if isinstance(event, channel_events.DeliveryUpdated) else streams.ENGAGEMENT_RECORDED
    )
    await stack.bus.nc.jetstream().publish(subject, event.SerializeToString(), headers={MSG_ID_HEADER: event.event_id})


async def test_an_outreach_that_fails_or_bounces_falls_back_once_to_the_next_channel_the_person_can_be_reached_on(
    stack: Stack,
) -> None:
    await _define(stack, seg.AttributeDefinition(name="push_token", type=seg.ATTRIBUTE_TYPE_STRING, pii=True))
    people = {
        "f-01": {"push_token": "token-f01"},  # its e-mail bounces: reached by push
        "f-02": {"push_token": "token-f02"},  # its e-mail goes: nothing more
        "f-03": {},  # its e-mail fails, and it has no push token: no fallback
    }
    await _upsert(
        stack,
        *(
            _profile(pid, email=f"{pid}@example.in", first_name="F", plan="SIP", **extra)
            for pid, extra in people.items()
        ),
    )
    segment_id = await _segment(stack, _sip_rule())
    # One outreach a day per person: a message that never reached them does not count against its fallback.
    one_a_day = resources_pb2.FrequencyCap(
        scope=resources_pb2.CAP_SCOPE_ALL, period=resources_pb2.CAP_PERIOD_DAY, max_outreaches=1
    )
    campaign = _campaign(
        segment_id,
        fallback_channels=[channel_pb2.CHANNEL_PUSH],
        fallback_on_failure=True,
        frequency_caps=[one_a_day],
    )
    campaign.content.push.CopyFrom(resources_pb2.PushContent(title_template="Hi {{ first_name }}", body_template="SIP"))
    key = await _launch(stack, campaign)
    await eventually(lambda: _when(_report(stack, key), lambda counts: counts.dispatched == 3))
    originals = {o.profile_id: o.campaign_id for o in await _outreaches(stack, key)}
    # The release is over, but failures may still be reported: the campaign waits for them.
    await eventually(
        lambda: _when(
            stack.campaigns.ListCampaignAudit(service_pb2.ListCampaignAuditRequest(campaign_key=key)),
            lambda page: any(e.note == "waiting for fallbacks" for e in page.entries),
        )
    )
    assert await _state(stack, key) == resources_pb2.CAMPAIGN_STATE_RUNNING

    bounced = channel_events.EngagementRecorded(
        event_id=new_id("evt_"),
        campaign_id=originals["f-01"],
        channel=channel_pb2.CHANNEL_EMAIL,
        kind=channel_resources.ENGAGEMENT_KIND_BOUNCED,
        profile_id="f-01",
        detail="5.1.1 permanent",
    )
    failed = channel_events.DeliveryUpdated(
        event_id=new_id("evt_"), campaign_id=originals["f-03"], state=channel_resources.DELIVERY_STATE_FAILED
    )
    delivered = channel_events.DeliveryUpdated(
        event_id=new_id("evt_"), campaign_id=originals["f-02"], state=channel_resources.DELIVERY_STATE_DELIVERED
    )
    with structlog.testing.capture_logs() as logs:
        for event in (bounced, failed, delivered, bounced):  # the bounce redelivered: still one fallback
            await _signal(stack, event)
        rows = await eventually(lambda: _when(_outreaches(stack, key), lambda rows: len(rows) == 4))
        await eventually(
            lambda: asyncio.sleep(0, result=len([line for line in logs if line["event"] == "fallback_decided"]) == 2)
        )
    (fallback,) = [o for o in rows if o.fallback_of]
    assert (fallback.profile_id, fallback.fallback_of, fallback.channel) == (
        "f-01",
        originals["f-01"],
        channel_pb2.CHANNEL_PUSH,
    )
    assert fallback.campaign_id not in originals.values() and parse_campaign_id(fallback.campaign_id) is not None
    # Each decision is a line about the failed outreach, found by its campaign.id as every other line about it is (it
    # was under "outreach", and a decision against one was not logged at all).
    decisions = {line["campaign.id"]: line["outcome"] for line in logs if line["event"] == "fallback_decided"}
    assert decisions == {originals["f-01"]: fallback.campaign_id, originals["f-03"]: "suppressed:no_contact"}
    assert {line["campaign.id"] for line in logs if line["event"] == "fallback_due"} == {
        originals["f-01"],
        originals["f-03"],
    }
    sent = await eventually(
        lambda: asyncio.sleep(0, result=[d for d in stack.dispatched if d.campaign_id == fallback.campaign_id])
    )
    assert sent[0].push.device_token == "token-f01"
    counts = await eventually(
        lambda: _when(_report(stack, key), lambda counts: sum(r.count for r in counts.fallbacks_skipped_by_reason))
    )
    assert (counts.released, counts.fell_back) == (4, 1)
    assert {r.reason: r.count for r in counts.fallbacks_skipped_by_reason} == {"suppressed:no_contact": 1}

    # The push fails too: it is on the last channel, so nothing follows it.
    with structlog.testing.capture_logs() as logs:
        await _signal(
            stack,
            channel_events.DeliveryUpdated(
                event_id=new_id("evt_"), campaign_id=fallback.campaign_id, state=channel_resources.DELIVERY_STATE_FAILED
            ),
        )
        counts = await eventually(
            lambda: _when(_report(stack, key), lambda counts: len(counts.fallbacks_skipped_by_reason) == 2)
        )
    assert [(line["campaign.id"], line["outcome"]) for line in logs if line["event"] == "fallback_decided"] == [
        (fallback.campaign_id, "last_channel")
    ]
    assert {r.reason: r.count for r in counts.fallbacks_skipped_by_reason} == {
        "suppressed:no_contact": 1,
        "last_channel": 1,
    }
    assert counts.fell_back == 1 and len(await _outreaches(stack, key)) == 4

    # The fallback window passes: every fallback decided, the campaign completes.
    async with stack.db.transaction() as session:
        await session.execute(
            update(store.campaign_runs)
            .where(store.campaign_runs.c.campaign_key == key, store.campaign_runs.c.kind == "release")
            .values(completed_at=datetime.now(UTC) - timedelta(hours=25))
        )
    await eventually(lambda: _when(_state(stack, key), lambda state: state == resources_pb2.CAMPAIGN_STATE_COMPLETED))


async def test_a_message_refused_for_a_replaced_address_falls_back_to_the_same_channel_at_the_new_one(
    stack: Stack,
) -> None:
    await _define(stack, seg.AttributeDefinition(name="push_token", type=seg.ATTRIBUTE_TYPE_STRING, pii=True))
    await _upsert(
        stack,
        *(
            _profile(pid, email=f"{pid}.old@example.in", first_name="G", plan="SIP", push_token=f"token-{pid}")
            for pid in ("g-01", "g-02")
        ),
    )
    segment_id = await _segment(stack, _sip_rule())
    campaign = _campaign(segment_id, fallback_channels=[channel_pb2.CHANNEL_PUSH], fallback_on_failure=True)
    campaign.content.push.CopyFrom(resources_pb2.PushContent(title_template="Hi {{ first_name }}", body_template="SIP"))
    key = await _launch(stack, campaign)
    await eventually(lambda: _when(_report(stack, key), lambda counts: counts.dispatched == 2))
    originals = {o.profile_id: o.campaign_id for o in await _outreaches(stack, key)}

    # g-01's e-mail is replaced after the release made the message (in " Case" the CRM's own way), so channels
    # refused to send to the old one; g-02's failed at the same address it still has.
    await _upsert(stack, _profile("g-01", email=" G-01.New@Example.in"))
    for pid in ("g-01", "g-02"):
        await _signal(
            stack,
            channel_events.DeliveryUpdated(
                event_id=new_id("evt_"),
                campaign_id=originals[pid],
                state=channel_resources.DELIVERY_STATE_FAILED,
                reason="address replaced at send time" if pid == "g-01" else "550 refused",
            ),
        )

    rows = await eventually(lambda: _when(_outreaches(stack, key), lambda rows: len(rows) == 4))
    fallbacks = {o.profile_id: o for o in rows if o.fallback_of}
    assert (fallbacks["g-01"].channel, fallbacks["g-02"].channel) == (
        channel_pb2.CHANNEL_EMAIL,
        channel_pb2.CHANNEL_PUSH,
    )
    sent = await eventually(
        lambda: asyncio.sleep(
            0, result=[d for d in stack.dispatched if d.campaign_id == fallbacks["g-01"].campaign_id] or None
        )
    )
    assert sent[0].email.to_address == "G-01.New@Example.in"

    # The same-channel fallback fails too, at the address the person still has: it goes on to push.
    await _signal(
        stack,
        channel_events.DeliveryUpdated(
            event_id=new_id("evt_"),
            campaign_id=fallbacks["g-01"].campaign_id,
            state=channel_resources.DELIVERY_STATE_FAILED,
        ),
    )
    rows = await eventually(lambda: _when(_outreaches(stack, key), lambda rows: len(rows) == 5))
    (last,) = [o for o in rows if o.fallback_of == fallbacks["g-01"].campaign_id]
    assert last.channel == channel_pb2.CHANNEL_PUSH


async def test_fallback_on_failure_needs_fallback_channels(stack: Stack) -> None:
    await _define(stack)
    segment_id = await _segment(stack, _sip_rule())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.campaigns.CreateCampaign(
            service_pb2.CreateCampaignRequest(
                request_id=new_id("req_"), campaign=_campaign(segment_id, fallback_on_failure=True)
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fallback_on_failure needs fallback_channels" in (refused.value.details() or "")


async def test_an_outreach_root_span_names_the_entry_that_fired_it_among_its_person_s_entries(stack: Stack) -> None:
    # One profile update moves a person into several segments at once: their entries come in one fetch, and the
    # outreach's root span is linked to the entry of the segment its campaign fires on, not the person's first.
    await _define(stack)
    await _upsert(stack, _profile("r-01", email="r01@example.in", first_name="Asha", outstanding_ratio=0.9))
    quiet, segment_id = await _segment(stack, _below_60_percent()), await _segment(stack, _below_60_percent())
    versions = [
        (await stack.segments.GetSegment(seg_service.GetSegmentRequest(segment_id=s))).segment.published_version
        for s in (quiet, segment_id)
    ]
    trigger = resources_pb2.Trigger(source=resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY)
    key = await _launch(stack, _campaign(segment_id, trigger_code="T04", trigger=trigger))
    (consumer,) = [task.run.__self__ for task in stack.process.tasks if task.name == "trigger-consumer"]  # type: ignore[attr-defined]
    entries = [
        (_entered(s, version, "r-01"), f"00-{n:032x}-{n:016x}-01")
        for n, (s, version) in enumerate(zip((quiet, segment_id), versions, strict=True), 1)
    ]
    fetch = [
        (change, Delivery(new_id("msg_"), streams.MEMBERSHIP_CHANGED, 1, {"traceparent": parent}))
        for change, parent in entries
    ]
    assert await consumer.batch_handler(fetch) == [None, None]
    (made,) = await _outreaches(stack, key)
    trace_id, _ = outreach_ids(made.campaign_id)
    (root,) = [
        span
        for span in stack.spans.get_finished_spans()
        if span.name == "outreach.create" and span.context is not None and span.context.trace_id == trace_id
    ]
    assert (root.attributes or {})["campaign.trigger.segment_id"] == segment_id
    linked = {link.context.span_id for link in root.links}
    assert 2 in linked and 1 not in linked
