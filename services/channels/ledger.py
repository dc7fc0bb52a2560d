"""The dispatch ledger written in batches: many messages' intents in one transaction, their outcomes in another."""

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from opentelemetry import trace
from sqlalchemy import insert
from sqlalchemy.orm import Session

from plumbing.db import Database, transient_failure
from plumbing.group_commit import GroupCommit, Submitted
from plumbing.outbox import Outbox, utcnow
from services import streams
from services.channels import convert, store
from services.channels.delivery import (
    AMBIGUOUS_AFTER_CRASH,
    DeliveryState,
    DispatchAction,
    TimelineStep,
    dispatch_action,
    state_step,
)

log = structlog.get_logger(__name__)

MAX_BATCH = 500
"""Rows per ledger transaction; a fetch of dispatch requests is 100, so a batch rarely reaches it."""
SETTLE_ATTEMPTS = 3


@dataclass(frozen=True)
class Intent:
    """A message about to be handed over: the ledger must say SENDING before the provider sees it."""

    campaign_id: str
    channel: str
    profile_id: str
    deduplicates: bool
    queued_at: datetime


@dataclass(frozen=True)
class Claim:
    """What the intent's transaction decided: send (attempts so far), or not (a redelivery, or now AMBIGUOUS)."""

    action: DispatchAction
    state: DeliveryState
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What the hand-over ended in; `event` is the DeliveryUpdated outbox row, built in the message's own span."""

    campaign_id: str
    state: DeliveryState
    at: datetime
    reason: str
    detail: str = ""
    provider_message_id: str | None = None
    event: dict[str, Any] | None = None


class Ledger:
    """The messages table as the dispatch path writes it, one transaction per batch of intents or outcomes.

    Each transaction is one synchronous function run by Database.run_in_transaction: on SQLite one call to the
    database's writer thread instead of several thread crossings per statement.
    """

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        tracer: trace.Tracer,
        *,
        max_batch: int = MAX_BATCH,
        wake_relay: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.tracer = tracer
        # The outbox's own wake-up runs only for rows it adds through an async session; these are added directly.
        self._wake_relay = wake_relay or (lambda: None)
        self._intents: GroupCommit[Intent, Claim] = GroupCommit(
            "channels-intents", self._write_intents, max_batch=max_batch, tracer=tracer
        )
        self._outcomes: GroupCommit[Outcome, bool] = GroupCommit(
            "channels-outcomes", self._write_outcomes, max_batch=max_batch, tracer=tracer
        )

    async def claim(self, intent: Intent) -> Claim:
        """Creates the message if new and, when it may be sent, commits SENDING; the caller sends only on SEND."""
        return await self._intents.submit(intent)

    async def settle(self, outcome: Outcome) -> bool:
        """Commits the hand-over's outcome; False when a delivery receipt settled the message meanwhile."""
        return await self._outcomes.submit(outcome)

    async def _write_intents(self, batch: Sequence[Submitted[Intent]]) -> list[Claim]:
        with self.tracer.start_as_current_span("channels.ledger.intents", attributes={"xsell.batch.size": len(batch)}):
            claims, events = await self.db.run_in_transaction(functools.partial(self._claim_all, batch))
        if events:
            self._wake_relay()
        return claims

    def _claim_all(self, batch: Sequence[Submitted[Intent]], session: Session) -> tuple[list[Claim], int]:
        """The batch's intents in the caller's transaction; returns each one's claim and how many events it wrote."""
        now = utcnow()
        firsts: dict[str, Intent] = {}
        for submitted in batch:
            firsts.setdefault(submitted.item.campaign_id, submitted.item)
        locked, created = store.claim_rows(
            session,
            [{"campaign_id": i.campaign_id, "channel": i.channel, "profile_id": i.profile_id} for i in firsts.values()],
            now=now,
        )
        claims: list[Claim] = []
        claimed: set[str] = set()
        sending: list[tuple[str, TimelineStep]] = []
        ambiguous: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for submitted in batch:
            intent = submitted.item
            state, attempts = locked[intent.campaign_id]
            if intent.campaign_id in claimed:
                # The same campaign ID twice in one batch (two copies of the request): the first one sends.
                claims.append(Claim(DispatchAction.SKIP, DeliveryState.SENDING, attempts))
                continue
            claimed.add(intent.campaign_id)
            action = dispatch_action(state, provider_deduplicates=intent.deduplicates)
            claims.append(Claim(action, state, attempts))
            if action is DispatchAction.SEND:
                sending.append(
                    (
                        intent.campaign_id,
                        TimelineStep(state_step(DeliveryState.SENDING), now, f"attempt {attempts + 1}"),
                    )
                )
            elif action is DispatchAction.MARK_AMBIGUOUS:
                # Resending here could reach the person twice; the provider's receipt (or an operator) settles it.
                ambiguous.append(
                    {
                        "campaign_id": intent.campaign_id,
                        "state": DeliveryState.AMBIGUOUS,
                        "at": now,
                        "reason": AMBIGUOUS_AFTER_CRASH,
                        "provider_message_id": None,
                        "count_attempt": False,
                    }
                )
                update = convert.delivery_updated(
                    intent.campaign_id, intent.channel, DeliveryState.AMBIGUOUS, now, AMBIGUOUS_AFTER_CRASH
                )
                # Built in the message's own context, so the event carries its outreach's trace.
                events.append(
                    submitted.context.run(
                        self.outbox.event, streams.DELIVERY_UPDATED, update, campaign_id=intent.campaign_id
                    )
                )
        store.mark_sending(session, [campaign_id for campaign_id, _ in sending], now=now)
        store.set_states(session, ambiguous)
        # One INSERT for the batch's steps; a new message's QUEUED step first, so it reads first on its timeline.
        queued = TimelineStep(state_step(DeliveryState.QUEUED), now)
        steps = [(campaign_id, queued) for campaign_id in created] + sending
        steps += [
            (change["campaign_id"], TimelineStep(state_step(DeliveryState.AMBIGUOUS), now, AMBIGUOUS_AFTER_CRASH))
            for change in ambiguous
        ]
        store.add_timeline_steps(session, steps)
        self._add_events(session, events)
        return claims, len(events)

    async def _write_outcomes(self, batch: Sequence[Submitted[Outcome]]) -> list[bool]:
        outcomes = [submitted.item for submitted in batch]
        with self.tracer.start_as_current_span(
            "channels.ledger.outcomes", attributes={"xsell.batch.size": len(outcomes)}
        ):
            for attempt in range(1, SETTLE_ATTEMPTS + 1):
                try:
                    applied = await self._settle_batch(outcomes)
                except Exception as error:
                    # The outcomes are known; losing them to a lock timeout or a deadlock would leave the
                    # messages SENDING and make their redeliveries AMBIGUOUS. Writing them again is safe.
                    reason = transient_failure(error)
                    if reason is None or attempt == SETTLE_ATTEMPTS:
                        raise
                    log.warning("ledger_outcomes_retried", reason=reason, attempt=attempt)
                    await asyncio.sleep(0.05 * attempt)
                    continue
                if any(o.event is not None for o, ok in zip(outcomes, applied, strict=True) if ok):
                    self._wake_relay()
                return applied
            raise AssertionError("unreachable")

    async def _settle_batch(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if self.db.is_sqlite:
            try:
                return await self.db.run_in_transaction(functools.partial(self._settle_all_sending, outcomes))
            except _SettledMeanwhile:
                pass  # rolled back; written again below, after reading which are still SENDING
        return await self.db.run_in_transaction(functools.partial(self._settle_all, outcomes))

    def _settle_all_sending(self, outcomes: Sequence[Outcome], session: Session) -> list[bool]:
        """SQLite: the batch's states in one conditional UPDATE, with no read before it, when every message is still
        SENDING (BEGIN IMMEDIATE holds the database's write lock, so no one can change a row between the UPDATE
        and the commit); _SettledMeanwhile, rolling the transaction back, when a receipt settled one meanwhile."""
        changed = store.set_states(session, _state_changes(outcomes), only_if_sending=True)
        if changed != len(outcomes):
            raise _SettledMeanwhile
        self._record_settled(session, outcomes)
        return [True] * len(outcomes)

    def _settle_all(self, outcomes: Sequence[Outcome], session: Session) -> list[bool]:
        locked = store.lock_states(session, {o.campaign_id for o in outcomes})
        # Only a row still SENDING is this attempt's; a provider's receipt may have settled it during the hand-over.
        applied = [o.campaign_id in locked and locked[o.campaign_id][0] is DeliveryState.SENDING for o in outcomes]
        settled = [o for o, ok in zip(outcomes, applied, strict=True) if ok]
        store.set_states(session, _state_changes(settled))
        self._record_settled(session, settled)
        return applied

    def _record_settled(self, session: Session, settled: Sequence[Outcome]) -> None:
        """The timeline steps and DeliveryUpdated events of the outcomes that were applied."""
        store.add_timeline_steps(
            session, [(o.campaign_id, TimelineStep(state_step(o.state), o.at, o.detail or o.reason)) for o in settled]
        )
        self._add_events(session, [o.event for o in settled if o.event is not None])

    def _add_events(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        """Outbox rows (built like Outbox.event builds them) in one INSERT of the caller's transaction."""
        if rows:
            session.execute(insert(self.outbox.table), list(rows))


class _SettledMeanwhile(Exception):
    """A message of an outcome batch is no longer SENDING: the batch is written again after reading each state."""


def _state_changes(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    return [
        {
            "campaign_id": o.campaign_id,
            "state": o.state,
            "at": o.at,
            "reason": o.reason,
            "provider_message_id": o.provider_message_id,
            "count_attempt": True,
        }
        for o in outcomes
    ]
