"""Staggered release, quiet hours, automatic pause and recurring runs on a real server, NATS and both databases.

Time is moved forward by editing a run's step or due time in the database, never by sleeping.
"""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import select, update

from devstack.trace import render
from plumbing.bus import Bus
from plumbing.db import Database
from plumbing.telemetry import (
    CAMPAIGN_ID,
    HELD,
    HOLD_REASON,
    HOLD_UNTIL,
    RELEASED,
    outreach_ids,
    spans_for_campaign_id,
)
from services import streams
from services.campaigns import store
from tests.integration.campaigns.harness import (
    Harness,
    approve,
    campaign_message,
    collect,
    create,
    programme_code,
    state_of,
)
from tests.waiting import eventually
from xsell.campaigns.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources

S = resources_pb2


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def _launch(stub: service_pb2_grpc.CampaignsServiceStub, campaign: resources_pb2.Campaign, name: str) -> str:
    created = await create(stub, campaign, f"{name}-create")
    await approve(stub, created.campaign_key)
    await stub.LaunchCampaign(
        service_pb2.LaunchCampaignRequest(request_id=f"{name}-l", campaign_key=created.campaign_key)
    )
    return created.campaign_key


async def _outreach_rows(db: Database, key: str) -> list:  # type: ignore[type-arg]
    async with db.transaction() as session:
        query = (
            select(store.outreaches).where(store.outreaches.c.campaign_key == key).order_by(store.outreaches.c.ordinal)
        )
        return list((await session.execute(query)).all())


def _bounce(campaign_id: str) -> tuple[str, bytes]:
    event = channel_events.EngagementRecorded(
        event_id=f"bounce-{campaign_id}", campaign_id=campaign_id, kind=channel_resources.ENGAGEMENT_KIND_BOUNCED
    )
    return streams.ENGAGEMENT_RECORDED, event.SerializeToString()


def _failure(campaign_id: str) -> tuple[str, bytes]:
    event = channel_events.DeliveryUpdated(
        event_id=f"failed-{campaign_id}", campaign_id=campaign_id, state=channel_resources.DELIVERY_STATE_FAILED
    )
    return streams.DELIVERY_UPDATED, event.SerializeToString()


@pytest.mark.parametrize(
    ("rule", "signal", "column", "pause_reason"),
    [
        (S.AutoPause(max_bounce_rate=0.5, min_released=2), _bounce, "bounced_at", "bounce rate 1.000 >= 0.500"),
        # Every message failing: a template the provider no longer approves, a lapsed DLT registration.
        (S.AutoPause(max_failure_rate=0.5, min_released=2), _failure, "failed_at", "failure rate 1.000 >= 0.500"),
    ],
    ids=["bounces", "failures"],
)
async def test_ten_percent_an_hour_releases_in_steps_and_bounces_or_failures_pause_it(
    stub: service_pb2_grpc.CampaignsServiceStub,
    db: Database,
    nats_bus: Bus,
    rule: resources_pb2.AutoPause,
    signal: Any,
    column: str,
    pause_reason: str,
) -> None:
    programme = programme_code()
    campaign = campaign_message(programme)
    campaign.distribution.CopyFrom(S.Distribution(percent_per_step=40, interval=Duration(seconds=3600)))
    campaign.auto_pause.CopyFrom(rule)
    key = await _launch(stub, campaign, f"dist-{column}")

    # Five outreaches materialised in order; the first step (40% of 5 = 2) is dispatched, the rest wait an hour.
    first = await collect(nats_bus, streams.DISPATCH_REQUESTED, programme, 2)
    assert len(first) == 2

    async def first_step_dispatched() -> list | None:  # type: ignore[type-arg]
        rows = await _outreach_rows(db, key)
        return rows if len(rows) == 5 and sum(row.dispatched_at is not None for row in rows) == 2 else None

    rows = await eventually(first_step_dispatched)
    assert [row.ordinal for row in rows] == [0, 1, 2, 3, 4]
    assert [row.dispatched_at is not None for row in rows] == [True, True, False, False, False]
    dispatched_ids = {events_pb2.DispatchRequested.FromString(data).campaign_id for _, data in first}
    assert dispatched_ids == {rows[0].campaign_id, rows[1].campaign_id}
    assert (await state_of(stub, key)).state == S.CAMPAIGN_STATE_RUNNING

    # Channels report both released e-mails bounced (failed); when the next step falls due the campaign pauses itself.
    for row in rows[:2]:
        await nats_bus.js.publish(*signal(row.campaign_id))

    async def bounces_recorded() -> bool:
        return all(getattr(row, column) is not None for row in (await _outreach_rows(db, key))[:2])

    await eventually(bounces_recorded)
    async with db.transaction() as session:
        await session.execute(
            update(store.campaign_runs)
            .where(store.campaign_runs.c.campaign_key == key)
            .values(next_step_at=datetime.now(UTC) - timedelta(seconds=1))
        )

    async def paused() -> resources_pb2.Campaign | None:
        current = await state_of(stub, key)
        return current if current.state == S.CAMPAIGN_STATE_PAUSED else None

    stopped = await eventually(paused)
    assert stopped.pause_reason == f"{pause_reason} over 2 released outreaches"
    assert sum(row.dispatched_at is not None for row in await _outreach_rows(db, key)) == 2
    audit = (await stub.ListCampaignAudit(service_pb2.ListCampaignAuditRequest(campaign_key=key))).entries
    assert (audit[-1].action, audit[-1].actor) == ("paused", "system")


async def test_a_number_not_on_whatsapp_is_a_failure_not_a_bounce_towards_the_pause(
    stub: service_pb2_grpc.CampaignsServiceStub, db: Database, nats_bus: Bus
) -> None:
    programme = programme_code()
    key = await _launch(stub, campaign_message(programme), "unreachable")
    await collect(nats_bus, streams.DISPATCH_REQUESTED, programme, 5)
    rows = await eventually(lambda: _when_all_dispatched(db, key))
    first, second = rows[0].campaign_id, rows[1].campaign_id
    engagement = [
        (first, channel_resources.ENGAGEMENT_KIND_BOUNCED, "UNREACHABLE whatsapp 131026"),
        (second, channel_resources.ENGAGEMENT_KIND_BOUNCED, "5.1.1 permanent"),
        (first, channel_resources.ENGAGEMENT_KIND_OPENED, ""),  # after the first's, in the stream: a witness
    ]
    for campaign_id, kind, detail in engagement:
        await nats_bus.js.publish(
            streams.ENGAGEMENT_RECORDED,
            channel_events.EngagementRecorded(
                event_id=f"{kind}-{campaign_id}",
                campaign_id=campaign_id,
                kind=kind,
                detail=detail,  # type: ignore[arg-type]
            ).SerializeToString(),
        )

    async def witnessed() -> list | None:  # type: ignore[type-arg]
        rows = await _outreach_rows(db, key)
        return rows if rows[0].opened_at is not None and rows[1].bounced_at is not None else None

    first_row, second_row = (await eventually(witnessed))[:2]
    assert first_row.bounced_at is None and second_row.bounced_at is not None


async def _when_all_dispatched(db: Database, key: str) -> list | None:  # type: ignore[type-arg]
    rows = await _outreach_rows(db, key)
    return rows if len(rows) == 5 and all(row.dispatched_at is not None for row in rows) else None


async def test_quiet_hours_defer_dispatch_in_the_recipients_local_time(
    harness: Harness, stub: service_pb2_grpc.CampaignsServiceStub, db: Database, nats_bus: Bus
) -> None:
    programme = programme_code()
    campaign = campaign_message(programme)
    # Quiet from an hour ago to an hour from now in Kolkata; p02 lives in Los Angeles, where it is not quiet.
    local = datetime.now(ZoneInfo("Asia/Kolkata"))
    start, end = local - timedelta(hours=1), local + timedelta(hours=1)
    campaign.quiet_hours.CopyFrom(S.QuietHours(start=start.strftime("%H:%M"), end=end.strftime("%H:%M")))
    key = await _launch(stub, campaign, "quiet")

    (only,) = await collect(nats_bus, streams.DISPATCH_REQUESTED, programme, 1)
    assert events_pb2.DispatchRequested.FromString(only[1]).profile_id == "p02"

    async def deferred() -> list | None:  # type: ignore[type-arg]
        rows = await _outreach_rows(db, key)
        waiting = [row for row in rows if row.dispatch_after is not None]
        return rows if len(rows) == 5 and len(waiting) == 4 else None

    rows = await eventually(deferred)
    for row in rows:
        if row.profile_id == "p02":
            assert row.dispatched_at is not None and row.recipient_time_zone == "America/Los_Angeles"
        else:
            assert row.dispatched_at is None and row.recipient_time_zone == "Asia/Kolkata"
            wait_until = row.dispatch_after.astimezone(ZoneInfo("Asia/Kolkata"))
            assert wait_until.strftime("%H:%M") == end.strftime("%H:%M")
    assert (await state_of(stub, key)).state == S.CAMPAIGN_STATE_RUNNING

    # Each outreach's trace starts at its root, outreach.create, linked to what started it: the release page, under
    # the run's span, and the LaunchCampaign call.
    held = next(row for row in rows if row.profile_id != "p02")
    spans = await eventually(lambda: _trace_with(harness, held.campaign_id, HELD))
    root = spans[0]
    assert (root["name"], root["parent_span_id"]) == ("outreach.create", None)
    assert root["span_id"] == format(outreach_ids(held.campaign_id)[1], "016x")
    assert root["attributes"] == {CAMPAIGN_ID: held.campaign_id, "campaign.key": key, "campaign.run_id": held.run_id}
    causes = {span["name"]: span for span in spans if span.get("cause")}
    assert causes["campaign.release"]["attributes"]["campaign.run_id"] == held.run_id
    assert causes["campaign.release_page"]["parent_span_id"] == causes["campaign.release"]["span_id"]
    launch = causes["/xsell.campaigns.v1.CampaignsService/LaunchCampaign"]
    assert {link["span_id"] for link in root["links"]} == {
        causes["campaign.release_page"]["span_id"],
        launch["span_id"],
    }
    # Why it waits, on a span of its own in its trace: the quiet hours, until their end.
    (hold,) = [event for span in spans for event in span.get("events", ()) if event["name"] == HELD]
    assert hold["attributes"][HOLD_REASON] == (f"the campaign's quiet hours {start:%H:%M}-{end:%H:%M} in Asia/Kolkata")
    assert datetime.fromisoformat(hold["attributes"][HOLD_UNTIL]) == held.dispatch_after.replace(microsecond=0)
    lines = render(spans)
    assert "[campaigns] outreach.create" in lines[0]
    assert any(f"· {HELD}: the campaign's quiet hours" in line for line in lines)
    started = lines[lines.index("what started it (linked from the outreach's root):") :]
    assert any(f"campaign.release  run {held.run_id}" in line for line in started)

    # The quiet hours end (here the campaign's window is moved to have ended a minute ago, and the outreach's wait
    # with it): a later dispatch page releases it, and its trace says so.
    async with db.transaction() as session:
        (options,) = (
            await session.execute(select(store.campaigns.c.options).where(store.campaigns.c.campaign_key == key))
        ).one()
        now = datetime.now(ZoneInfo("Asia/Kolkata"))
        ended = {
            "start_minute": (now.hour * 60 + now.minute - 120) % 1440,
            "end_minute": (now.hour * 60 + now.minute - 1) % 1440,
        }
        await session.execute(
            update(store.campaigns)
            .where(store.campaigns.c.campaign_key == key)
            .values(options={**options, "quiet_hours": ended})
        )
        await session.execute(
            update(store.outreaches)
            .where(store.outreaches.c.campaign_id == held.campaign_id)
            .values(dispatch_after=datetime.now(UTC) - timedelta(seconds=1))
        )
    spans = await eventually(lambda: _trace_with(harness, held.campaign_id, RELEASED))
    (released,) = [event for span in spans for event in span.get("events", ()) if event["name"] == RELEASED]
    assert "quiet hours" in released["attributes"][HOLD_REASON]


async def _trace_with(harness: Harness, campaign_id: str, event_name: str) -> list[dict[str, Any]] | None:
    """The campaign ID's trace as `make trace` reads it from the local span store, once it has an `event_name`."""
    harness.provider.force_flush()
    spans = spans_for_campaign_id(harness.settings.var_dir, campaign_id)
    return spans if any(e["name"] == event_name for span in spans for e in span.get("events", ())) else None


async def test_a_recurring_campaign_runs_once_per_occurrence_and_waits_for_the_next(
    harness: Harness, stub: service_pb2_grpc.CampaignsServiceStub, db: Database
) -> None:
    campaign = campaign_message(programme_code())
    campaign.schedule.recurrence.CopyFrom(S.Recurrence(frequency=S.RECURRENCE_FREQUENCY_DAILY, time_of_day="09:00"))
    key = await _launch(stub, campaign, "daily")
    scheduled = await state_of(stub, key)
    assert scheduled.state == S.CAMPAIGN_STATE_SCHEDULED
    assert scheduled.schedule.recurrence.cron == "0 9 * * *"
    async with db.transaction() as session:
        (run,) = (
            await session.execute(select(store.campaign_runs).where(store.campaign_runs.c.campaign_key == key))
        ).all()
    first_occurrence = run.occurrence_at
    assert first_occurrence.astimezone(ZoneInfo("Asia/Kolkata")).strftime("%H:%M") == "09:00"
    # The occurrence comes: its run takes the segment as it is and the campaign waits for tomorrow's.
    async with db.transaction() as session:
        await session.execute(
            update(store.campaign_runs)
            .where(store.campaign_runs.c.run_id == run.run_id)
            .values(due_at=datetime.now(UTC) - timedelta(seconds=1))
        )

    async def next_run_scheduled() -> list | None:  # type: ignore[type-arg]
        async with db.transaction() as session:
            runs = (
                await session.execute(
                    select(store.campaign_runs)
                    .where(store.campaign_runs.c.campaign_key == key)
                    .order_by(store.campaign_runs.c.occurrence_at)
                )
            ).all()
        return runs if len(runs) == 2 and runs[0].completed_at is not None else None

    runs = await eventually(next_run_scheduled)
    assert runs[0].outreach_count == 5
    assert runs[1].occurrence_at == first_occurrence + timedelta(days=1)
    assert runs[1].completed_at is None
    assert (await state_of(stub, key)).state == S.CAMPAIGN_STATE_SCHEDULED
    # Scheduling the same occurrence again changes nothing.
    async with db.transaction() as session:
        row = await store.get_campaign(session, key)
        await store.schedule_run(session, row, runs[1].occurrence_at, runs[1].month, datetime.now(UTC))
    async with db.transaction() as session:
        count = len(
            (await session.execute(select(store.campaign_runs).where(store.campaign_runs.c.campaign_key == key))).all()
        )
    assert count == 2
    audit = (await stub.ListCampaignAudit(service_pb2.ListCampaignAuditRequest(campaign_key=key))).entries
    assert [entry.action for entry in audit][-2:] == ["started", "run_completed"]
