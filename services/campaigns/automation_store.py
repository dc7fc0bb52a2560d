"""Queries of triggered campaigns and resends over the campaigns database (tables in store.py)."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, exists, func, or_, select, union, update
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import in_values, run_on_driver, sqlite_driver, upsert_insert
from plumbing.ids import new_id
from plumbing.sqlite_async import sqlite_datetime
from services.campaigns.store import campaign_runs, campaigns, inbox, outreaches, run_exclusions

TRIGGER, RESEND, FALLBACK = "trigger", "resend", "fallback"
# States in which a campaign's resends go on: a paused or cancelled campaign sends none.
RESENDING_STATES = ("SCHEDULED", "RUNNING")


# The statements a trigger batch runs, built once with their parameters (expanding ones for the IN lists): building
# a statement's expression each time cost ~0.2 ms of CPU, as much as running it (a batch runs a dozen).
_WITH_AUTOMATION = select(campaigns).where(
    campaigns.c.state.in_(bindparam("states", expanding=True)), campaigns.c.automation.is_not(None)
)
_ON_SEGMENTS = select(campaigns).where(
    campaigns.c.segment_id.in_(bindparam("segment_ids", expanding=True)),
    campaigns.c.state == bindparam("state"),
    campaigns.c.automation.is_not(None),
)
_o = outreaches.c
_LAST_TRIGGER_OUTREACHES = (
    select(_o.profile_id, func.max(_o.created_at))
    .where(
        _o.campaign_key == bindparam("campaign_key"),
        _o.profile_id.in_(bindparam("profile_ids", expanding=True)),
        _o.withdrawn_at.is_(None),
        _o.test.is_(False),
        # Not `resend_of IS NULL`: SQLite (no ANALYZE statistics) took that for a look-up in the unique index on
        # resend_of and walked every original outreach of every campaign, instead of (campaign_key, profile_id).
        # Since 0011 that index holds resends only and cannot answer it; the form stays, for databases before it.
        func.coalesce(_o.resend_of, "") == "",
    )
    .group_by(_o.profile_id)
)
_RUN_OF_OCCURRENCE = select(campaign_runs).where(
    campaign_runs.c.campaign_key == bindparam("campaign_key"),
    campaign_runs.c.occurrence_at == bindparam("occurrence"),
)
_JUDGED_IN_RUN = union(
    select(_o.profile_id).where(
        _o.run_id == bindparam("run_id"), _o.profile_id.in_(bindparam("people", expanding=True))
    ),
    select(run_exclusions.c.profile_id).where(
        run_exclusions.c.run_id == bindparam("run_id"),
        run_exclusions.c.profile_id.in_(bindparam("people", expanding=True)),
    ),
)
_ADD_TO_RUN = (
    update(campaign_runs)
    .where(campaign_runs.c.run_id == bindparam("p_run_id"))
    .values(
        outreach_count=campaign_runs.c.outreach_count + bindparam("p_created"),
        released_through=campaign_runs.c.released_through + bindparam("p_created"),
        skipped_render=campaign_runs.c.skipped_render + bindparam("p_render_failed"),
    )
)


async def campaigns_on_segments(session: AsyncSession, segment_ids: Sequence[str], state: str) -> Sequence[Row[Any]]:
    """The campaigns with automation on these segments in a state; the caller keeps those with a trigger."""
    if not segment_ids:
        return []
    return (await session.execute(_ON_SEGMENTS, {"segment_ids": list(segment_ids), "state": state})).all()


_SQLITE_CLAIM = (
    "INSERT INTO inbox (consumer, message_id, applied_at) VALUES {} "
    "ON CONFLICT (consumer, message_id) DO NOTHING RETURNING message_id"
)


async def claim_messages(session: AsyncSession, consumer: str, message_ids: Sequence[str], at: datetime) -> set[str]:
    """Records the messages as applied by `consumer` in one statement; returns those it had not applied before."""
    if not message_ids:
        return set()
    driver = sqlite_driver(session)
    if driver is not None:
        # A trigger batch's claim on the inline session: the driver's own INSERT ... RETURNING (~140 against ~270 µs
        # through SQLAlchemy's insertmanyvalues for five messages). The ids are padded (in_values): a copy of the last
        # row conflicts with it and is skipped, and the statement text is one of a few.
        ids = in_values(list(dict.fromkeys(message_ids)))
        applied = sqlite_datetime(at)
        claimed = run_on_driver(
            driver,
            _SQLITE_CLAIM.format(", ".join(["(?, ?, ?)"] * len(ids))),
            tuple(value for message_id in ids for value in (consumer, message_id, applied)),
        )
        return {row[0] for row in claimed}
    statement = upsert_insert(session, inbox).on_conflict_do_nothing().returning(inbox.c.message_id)
    # Executed with a list of rows, not .values(rows): SQLAlchemy batches these into multi-row INSERTs from one
    # cached compilation, where a statement with its rows built in was compiled anew for every batch size.
    rows = [{"consumer": consumer, "message_id": m, "applied_at": at} for m in dict.fromkeys(message_ids)]
    return set((await session.execute(statement, rows)).scalars())


async def campaigns_with_automation(session: AsyncSession, states: Sequence[str]) -> Sequence[Row[Any]]:
    return (await session.execute(_WITH_AUTOMATION, {"states": list(states)})).all()


async def last_trigger_outreaches(
    session: AsyncSession, campaign_key: str, profile_ids: Sequence[str]
) -> dict[str, datetime]:
    """When the campaign last gave each of these people an outreach (not a resend, not a test, not withdrawn)."""
    if not profile_ids:
        return {}
    values = {"campaign_key": campaign_key, "profile_ids": list(profile_ids)}
    return {row[0]: row[1] for row in await session.execute(_LAST_TRIGGER_OUTREACHES, values)}


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
    query: Any
    if run_id is not None:
        query, keys = select(campaign_runs).where(campaign_runs.c.run_id == run_id), {}
    else:
        query, keys = _RUN_OF_OCCURRENCE, {"campaign_key": campaign.campaign_key, "occurrence": occurrence}
    # Read first: every trigger batch of the day finds its run, so the insert (and building it: ~0.3 ms of CPU, as
    # much as the read) is the day's first batch's only.
    existing = (await session.execute(query, keys)).first()
    if existing is not None:
        return existing
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
    conflict = ["run_id"] if run_id is not None else ["campaign_key", "occurrence_at"]
    await session.execute(statement.on_conflict_do_nothing(index_elements=conflict))
    return (await session.execute(query, keys)).one()


async def judged_in_run(session: AsyncSession, run_id: str, profile_ids: Sequence[str]) -> set[str]:
    """Those of the people with an outreach or an exclusion in the run already (one decision per person per run)."""
    if not profile_ids:
        return set()
    return set((await session.execute(_JUDGED_IN_RUN, {"run_id": run_id, "people": list(profile_ids)})).scalars())


async def exclusion_of(session: AsyncSession, run_id: str, profile_id: str) -> str | None:
    """ "kind:reason" of the person's exclusion from the run, e.g. "suppressed:opt_out"."""
    x = run_exclusions.c
    row = (
        await session.execute(select(x.kind, x.reason).where(x.run_id == run_id, x.profile_id == profile_id))
    ).first()
    return f"{row.kind}:{row.reason}" if row else None


async def add_to_run(session: AsyncSession, run_id: str, *, created: int, render_failed: int) -> None:
    await session.execute(_ADD_TO_RUN, {"p_run_id": run_id, "p_created": created, "p_render_failed": render_failed})


def _past_trigger_runs_done(campaign_key: Any, before: Any) -> Any:
    """The campaign's open trigger runs of days that began before `before` with no outreach waiting for dispatch."""
    r, o = campaign_runs.c, outreaches.c
    waiting = exists().where(
        o.run_id == r.run_id, o.dispatched_at.is_(None), o.withdrawn_at.is_(None), o.test.is_(False)
    )
    return and_(
        r.campaign_key == campaign_key, r.kind == TRIGGER, r.completed_at.is_(None), r.occurrence_at < before, ~waiting
    )


async def any_past_trigger_run_done(session: AsyncSession, campaign_key: str, before: datetime) -> bool:
    """A read first, so the follow-up loop takes the write lock only on the rare poll that closes a day."""
    values = {"campaign_key": campaign_key, "before": before}
    return bool((await session.execute(_ANY_PAST_TRIGGER_RUN_DONE, values)).scalar_one())


# The resend runner's poll asks this for every triggered campaign, several times a second: built once.
_ANY_PAST_TRIGGER_RUN_DONE = select(
    exists().where(_past_trigger_runs_done(bindparam("campaign_key"), bindparam("before")))
)


async def complete_past_trigger_runs(session: AsyncSession, campaign_key: str, before: datetime, at: datetime) -> int:
    """Closes the campaign's trigger runs of days that began before `before` once none of their outreaches still
    waits for its dispatch (quiet hours); returns how many."""
    result = await session.execute(
        update(campaign_runs).where(_past_trigger_runs_done(campaign_key, before)).values(completed_at=at)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def due_follow_up_dispatches(session: AsyncSession, now: datetime, limit: int) -> Sequence[Any]:
    """Trigger and resend outreaches whose quiet hours ended, of open runs of campaigns that may send.

    A trigger's outreach waits while its campaign is paused (it is RUNNING again on resume); a resend's
    goes in SCHEDULED or RUNNING; a cancelled campaign's runs are closed, so theirs never go.
    """
    return (await session.execute(_DUE_FOLLOW_UPS, {"now": now, "limit": limit})).all()


def _due_follow_ups() -> Any:
    """due_follow_up_dispatches' query, built once (the resend runner polls it several times a second)."""
    o, r, c = outreaches.c, campaign_runs.c, campaigns.c
    may_send = (
        select(r.run_id)
        .join(campaigns, c.campaign_key == r.campaign_key)
        .where(
            r.run_id == o.run_id,
            r.completed_at.is_(None),
            or_(
                and_(r.kind == TRIGGER, c.state == "RUNNING"),
                and_(r.kind.in_((RESEND, FALLBACK)), c.state.in_(RESENDING_STATES)),
            ),
        )
        .exists()
    )
    # The waiting outreaches first, through their partial index (ix_outreaches_dispatch_after: a few rows), and
    # their run and campaign checked per row: joined, the planner started from the open runs and walked all their
    # undispatched outreaches, the whole of a release being materialised, at every poll.
    return (
        select(o.campaign_id, o.dispatch_payload, o.dispatch_after, o.recipient_time_zone)
        .where(
            o.dispatch_after.is_not(None),
            o.dispatched_at.is_(None),
            o.withdrawn_at.is_(None),
            o.dispatch_after <= bindparam("now"),
            may_send,
        )
        .order_by(o.dispatch_after)
        .limit(bindparam("limit"))
    )


_DUE_FOLLOW_UPS = _due_follow_ups()


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
            # A fallback is itself the second try: it gets no resend.
            func.coalesce(o.fallback_of, "") == "",
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


# The column holding an outreach's decision about each kind of follow-up.
DECISION_COLUMNS = {RESEND: "resend_state", FALLBACK: "fallback_state"}


async def decide_follow_up(session: AsyncSession, kind: str, campaign_id: str, state: str) -> bool:
    """Records the one decision about an outreach's resend or fallback (`kind`); False when it was decided already
    (by another runner)."""
    column = outreaches.c[DECISION_COLUMNS[kind]]
    result = await session.execute(
        update(outreaches).where(outreaches.c.campaign_id == campaign_id, column.is_(None)).values({column: state})
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_follow_up_state(session: AsyncSession, kind: str, campaign_id: str, state: str) -> None:
    """Replaces the decision claimed by decide_follow_up (the gate or the render left the person out)."""
    column = DECISION_COLUMNS[kind]
    await session.execute(update(outreaches).where(outreaches.c.campaign_id == campaign_id).values({column: state}))


async def get_outreach(session: AsyncSession, campaign_id: str) -> Row[Any] | None:
    return (await session.execute(select(outreaches).where(outreaches.c.campaign_id == campaign_id))).first()


async def resends_pending(session: AsyncSession, campaign_key: str) -> bool:
    """Whether any original still awaits its resend decision, or any resend its dispatch."""
    o = outreaches.c
    undecided = exists().where(
        o.campaign_key == campaign_key,
        o.resend_state.is_(None),
        # Not `resend_of IS NULL`: SQLite answered that through the unique index on resend_of, every original of
        # every campaign, inside the write transaction of each completion check (as the cool-down read did; before
        # 0011, whose index holds resends only).
        func.coalesce(o.resend_of, "") == "",
        func.coalesce(o.fallback_of, "") == "",
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


async def outreach_campaign(session: AsyncSession, campaign_id: str) -> Row[Any] | None:
    """The outreach's fallback facts and its campaign's automation, for the signal consumer."""
    o, c = outreaches.c, campaigns.c
    query: Any = (
        select(c.automation, o.fallback_due_at, o.fallback_state, o.test, o.withdrawn_at)
        .join(campaigns, c.campaign_key == o.campaign_key)
        .where(o.campaign_id == campaign_id)
    )
    row: Row[Any] | None = (await session.execute(query)).first()
    return row


async def stamp_fallback_due(session: AsyncSession, campaign_id: str, at: datetime) -> None:
    """The outreach failed or bounced, on a campaign that falls back: its fallback is due (once)."""
    o = outreaches.c
    await session.execute(
        update(outreaches)
        .where(o.campaign_id == campaign_id, o.fallback_due_at.is_(None), o.fallback_state.is_(None))
        .values(fallback_due_at=at)
    )


async def fallback_candidates(session: AsyncSession, campaign_key: str, limit: int) -> Sequence[Row[Any]]:
    """Failed or bounced outreaches whose fallback is due and undecided, oldest failure first (a few: the partial
    index ix_outreaches_fallback_pending holds only them)."""
    o = outreaches.c
    query = (
        select(outreaches)
        .where(o.campaign_key == campaign_key, o.fallback_due_at.is_not(None), o.fallback_state.is_(None))
        .order_by(o.fallback_due_at, o.campaign_id)
        .limit(limit)
    )
    return (await session.execute(query)).all()


async def fallbacks_pending(session: AsyncSession, campaign_key: str, window_before: datetime) -> bool:
    """Whether a fallback is still to decide or to dispatch, or the campaign's release ended within the fallback
    window (after `window_before`): a failure may still be reported."""
    o, r = outreaches.c, campaign_runs.c
    undecided = exists().where(
        o.campaign_key == campaign_key, o.fallback_due_at.is_not(None), o.fallback_state.is_(None)
    )
    undispatched = exists().where(
        o.campaign_key == campaign_key,
        o.fallback_of.is_not(None),
        o.dispatched_at.is_(None),
        o.withdrawn_at.is_(None),
    )
    recent = exists().where(r.campaign_key == campaign_key, r.kind == "release", r.completed_at > window_before)
    return bool((await session.execute(select(or_(undecided, undispatched, recent)))).scalar_one())


async def open_release_runs(session: AsyncSession, campaign_key: str) -> bool:
    r = campaign_runs.c
    query = select(exists().where(r.campaign_key == campaign_key, r.kind == "release", r.completed_at.is_(None)))
    return bool((await session.execute(query)).scalar_one())
