"""Keeps memberships right as time passes: people whose event windows lapsed since the last sweep are refreshed."""

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

import structlog
from opentelemetry import trace
from sqlalchemy.exc import SQLAlchemyError

from plumbing.db import Database
from plumbing.outbox import utcnow
from plumbing.polling import Poller
from services.segments import store
from services.segments.activity import Activity
from services.segments.rules import AllOf, AnyOf, EventCondition, LastWindow, Not, Rule, parse_rule
from xsell.segments.v1 import resources_pb2

log = structlog.get_logger(__name__)

SWEEP_NAME = "lapsed_windows"
PAGE_SIZE = 1000


def lapsing_windows(rules: Iterable[Rule]) -> set[tuple[str, float]]:
    """(event name, seconds) of every "in the last N" condition: the only windows whose edge moves with time.

    A fixed window (between two dates) never moves. A since-attribute window starts at the person's
    own timestamp and has no upper bound, so it changes only when that attribute does, and the
    upsert that changes it refreshes the person already.
    """
    return {
        (c.event_name, c.window.seconds) for rule in rules for c in _events(rule) if isinstance(c.window, LastWindow)
    }


def _events(rule: Rule) -> Iterator[EventCondition]:
    if isinstance(rule, EventCondition):
        yield rule
    elif isinstance(rule, AllOf | AnyOf):
        for child in rule.rules:
            yield from _events(child)
    elif isinstance(rule, Not):
        yield from _events(rule.rule)


class Sweeper:
    """Every `interval` seconds: finds the people an event window lapsed for, and refreshes just them.

    Each page of people is refreshed in its own transaction through Activity.refresh (which publishes
    MembershipChanged); the sweep's end time is stored last, so a crash repeats the sweep, and a
    repeated refresh changes nothing.
    """

    def __init__(self, db: Database, activity: Activity, tracer: trace.Tracer, interval: float) -> None:
        self.db = db
        self.activity = activity
        self.tracer = tracer
        self.interval = interval
        # A database hiccup must not end the loop: the next sweep covers the same span again.
        self._poller = Poller(self._sweep_now, interval, "sweep_failed", retried=(SQLAlchemyError,))

    async def sweep(self, now: datetime) -> int:
        """Refreshes everyone whose membership may have changed with time between the last sweep and `now`;
        returns how many people were refreshed."""
        with self.tracer.start_as_current_span("sweep lapsed windows") as span:
            async with self.db.transaction() as session:
                since = await store.swept_until(session, SWEEP_NAME) or await store.earliest_publish_time(session)
                rules = await store.live_rules(session, published_only=True)
                # Windowed computed attributes change with time alone too: recompute them first, so the
                # membership refresh below sees their new values.
                lapsed = await store.refresh_lapsed(session, since, now) if since is not None and since < now else []
            refreshed = 0
            if since is not None and since < now:
                refreshed += await self._refresh_pages(sorted(set(lapsed)), now)
                windows = lapsing_windows(parse_rule(resources_pb2.Rule.FromString(rule)) for rule in rules.values())
                spans = [(name, since - timedelta(seconds=s), now - timedelta(seconds=s)) for name, s in windows]
                if spans:
                    refreshed += await self._refresh_lapsed_events(spans, now)
            async with self.db.transaction() as session:
                await store.set_swept_until(session, SWEEP_NAME, max(now, since) if since else now)
            async with self.db.transaction() as session:
                span.set_attribute("segments.sweep.count_deltas_folded", await store.fold_member_counts(session))
            span.set_attribute("segments.sweep.refreshed", refreshed)
        if refreshed:
            log.info("windows_swept", refreshed=refreshed)
        return refreshed

    async def _refresh_pages(self, profile_ids: list[str], now: datetime) -> int:
        for start in range(0, len(profile_ids), PAGE_SIZE):
            async with self.db.transaction() as session:
                await self.activity.refresh(session, profile_ids[start : start + PAGE_SIZE], now)
        return len(profile_ids)

    async def _refresh_lapsed_events(self, spans: list[tuple[str, datetime, datetime]], now: datetime) -> int:
        refreshed, after = 0, None
        while True:
            async with self.db.transaction() as session:
                page = await store.people_with_events_between(session, spans, after, PAGE_SIZE)
                if page:
                    await self.activity.refresh(session, page, now)
            refreshed += len(page)
            if len(page) < PAGE_SIZE:
                return refreshed
            after = page[-1]

    async def run(self) -> None:
        await self._poller.run()

    async def stop(self) -> None:
        await self._poller.stop()

    async def _sweep_now(self) -> None:
        await self.sweep(utcnow())
