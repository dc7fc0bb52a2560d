"""Queries of triggered campaigns and resends over the campaigns database (tables in store.py)."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import upsert_insert
from plumbing.ids import new_id
from services.campaigns.store import campaign_runs, campaigns, outreaches, run_exclusions

TRIGGER, RESEND = "trigger", "resend"
# States in which a campaign's resends go on: a paused or cancelled campaign sends none.
RESENDING_STATES = ("SCHEDULED", "RUNNING")


async def campaigns_on_segment(session: AsyncSession, segment_id: str, state: str) -> Sequence[Row[Any]]:
    """The campaigns on a segment in a state; the caller keeps those with a trigger (few per segment)."""
    query = select(campaigns).where(
        campaigns.c.segment_id == segment_id, campaigns.c.state == state, campaigns.c.automation.is_not(None)
    )
    return (await session.execute(query)).all()


async def campaigns_with_automation(session: AsyncSession, states: Sequence[str]) -> Sequence[Row[Any]]:
    query = select(campaigns).where(campaigns.c.state.in_(list(states)), campaigns.c.automation.is_not(None))
    return (await session.execute(query)).all()


async def last_trigger_outreach_at(session: AsyncSession, campaign_key: str, profile_id: str) -> datetime | None:
    """When the campaign last gave the person an outreach (not a resend, not a test, not withdrawn)."""
    o = outreaches.c
    query = select(func.max(o.created_at)).where(
        o.campaign_key == campaign_key,
        o.profile_id == profile_id,
        o.withdrawn_at.is_(None),
        o.test.is_(False),
        o.resend_of.is_(None),
    )
    value = (await session.execute(query)).scalar_one_or_none()
    return value  # type: ignore[no-any-return]


async def ensure_run(
    session: AsyncSession,
    campaign: Any,
    *,
    kind: str,
    month: str,
    now: datetime,
    occurrence: datetime | None = None,
    run_id: str | None = None,
) -> Row[Any]:
    """The trigger run of a local day (unique per campaign and occurrence) or the resend run of a run (by id)."""
    values = {
        "run_id": run_id or new_id("run_"),
        "campaign_key": campaign.campaign_key,
        "month": month,
        "cursor": "",
        "pages_released": 0,
        "outreach_count": 0,
        "skipped_no_email": 0,
        "skipped_render": 0,
        "due_at": occurrence or now,
        "occurrence_at": occurrence,
        "created_at": now,
        "materialized_at": occurrence or now,
        "kind": kind,
    }
    statement = upsert_insert(session, campaign_runs).values(**values)
    if run_id is not None:
        await session.execute(statement.on_conflict_do_nothing(index_elements=["run_id"]))
        query = select(campaign_runs).where(campaign_runs.c.run_id == run_id)
    else:
        await session.execute(statement.on_conflict_do_nothing(index_elements=["campaign_key", "occurrence_at"]))
        query = select(campaign_runs).where(
            campaign_runs.c.campaign_key == campaign.campaign_key, campaign_runs.c.occurrence_at == occurrence
        )
    return (await session.execute(query)).one()


async def judged_in_run(session: AsyncSession, run_id: str, profile_id: str) -> bool:
    """Whether the person already has an outreach or an exclusion in the run (one decision per person per run)."""
    has_outreach = exists().where(outreaches.c.run_id == run_id, outreaches.c.profile_id == profile_id)
    has_exclusion = exists().where(run_exclusions.c.run_id == run_id, run_exclusions.c.profile_id == profile_id)
    return bool((await session.execute(select(or_(has_outreach, has_exclusion)))).scalar_one())


async def exclusion_of(session: AsyncSession, run_id: str, profile_id: str) -> str | None:
    """ "kind:reason" of the person's exclusion from the run, e.g. "suppressed:opt_out"."""
    x = run_exclusions.c
    row = (
        await session.execute(select(x.kind, x.reason).where(x.run_id == run_id, x.profile_id == profile_id))
    ).first()
    return f"{row.kind}:{row.reason}" if row else None


async def add_to_run(session: AsyncSession, run_id: str, *, created: int, render_failed: int) -> None:
    run = campaign_runs.c
    await session.execute(
        update(campaign_runs)
        .where(run.run_id == run_id)
        .values(
            outreach_count=run.outreach_count + created,
            released_through=run.released_through + created,
            skipped_render=run.skipped_render + render_failed,
        )
    )


async def due_follow_up_dispatches(session: AsyncSession, now: datetime, limit: int) -> Sequence[Any]:
    """Trigger and resend outreaches whose quiet hours ended, of open runs of campaigns that may send.

    A trigger's outreach waits while its campaign is paused (it is RUNNING again on resume); a resend's
    goes in SCHEDULED or RUNNING; a cancelled campaign's runs are closed, so theirs never go.
    """
    o, r, c = outreaches.c, campaign_runs.c, campaigns.c
    query = (
        select(o.campaign_id, o.dispatch_payload)
        .join(campaign_runs, r.run_id == o.run_id)
        .join(campaigns, c.campaign_key == o.campaign_key)
        .where(
            o.dispatched_at.is_(None),
            o.withdrawn_at.is_(None),
            o.dispatch_after <= now,
            r.completed_at.is_(None),
            or_(
                and_(r.kind == TRIGGER, c.state == "RUNNING"),
                and_(r.kind == RESEND, c.state.in_(RESENDING_STATES)),
            ),
        )
        .order_by(o.dispatch_after)
        .limit(limit)
    )
    return (await session.execute(query)).all()


async def resend_candidates(
    session: AsyncSession, campaign_key: str, dispatched_before: datetime, now: datetime, limit: int
) -> Sequence[Row[Any]]:
    """Dispatched originals without a resend decision whose resend may be due (not stamped for later)."""
    o = outreaches.c
    query = (
        select(outreaches)
        .where(
            o.campaign_key == campaign_key,
            o.resend_state.is_(None),
            o.dispatched_at.is_not(None),
            o.dispatched_at <= dispatched_before,
            o.resend_of.is_(None),
            o.test.is_(False),
            o.withdrawn_at.is_(None),
            or_(o.resend_due_at.is_(None), o.resend_due_at <= now),
        )
        .order_by(o.dispatched_at, o.campaign_id)
        .limit(limit)
    )
    return (await session.execute(query)).all()


async def stamp_resend_due(session: AsyncSession, due: Sequence[Mapping[str, Any]]) -> None:
    """One executemany UPDATE: each original's resend waits for its local time of day."""
    if due:
        statement = (
            update(outreaches)
            .where(outreaches.c.campaign_id == bindparam("key"))
            .values(resend_due_at=bindparam("due"))
        )
        await session.execute(statement, list(due))


async def decide_resend(session: AsyncSession, campaign_id: str, state: str) -> bool:
    """Records the one resend decision of an original; False when it was decided already (by another runner)."""
    result = await session.execute(
        update(outreaches)
        .where(outreaches.c.campaign_id == campaign_id, outreaches.c.resend_state.is_(None))
        .values(resend_state=state)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_resend_state(session: AsyncSession, campaign_id: str, state: str) -> None:
    await session.execute(update(outreaches).where(outreaches.c.campaign_id == campaign_id).values(resend_state=state))


async def get_outreach(session: AsyncSession, campaign_id: str) -> Row[Any] | None:
    return (await session.execute(select(outreaches).where(outreaches.c.campaign_id == campaign_id))).first()


async def resends_pending(session: AsyncSession, campaign_key: str) -> bool:
    """Whether any original still awaits its resend decision, or any resend its dispatch."""
    o = outreaches.c
    undecided = exists().where(
        o.campaign_key == campaign_key,
        o.resend_state.is_(None),
        o.resend_of.is_(None),
        o.test.is_(False),
        o.withdrawn_at.is_(None),
    )
    undispatched_resend = exists().where(
        o.campaign_key == campaign_key,
        o.resend_of.is_not(None),
        o.dispatched_at.is_(None),
        o.withdrawn_at.is_(None),
    )
    return bool((await session.execute(select(or_(undecided, undispatched_resend)))).scalar_one())


async def open_release_runs(session: AsyncSession, campaign_key: str) -> bool:
    r = campaign_runs.c
    query = select(exists().where(r.campaign_key == campaign_key, r.kind == "release", r.completed_at.is_(None)))
    return bool((await session.execute(query)).scalar_one())
