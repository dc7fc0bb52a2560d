"""The dispatch ledger written in batches: the intents and outcomes of many messages in one transaction."""

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import structlog
from opentelemetry import trace
from sqlalchemy.orm import Session

from plumbing.db import Database, transient_failure
from plumbing.group_commit import ALONE, Alone, GroupCommit, Submitted
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

T = TypeVar("T")

MAX_BATCH = 500
"""Rows per ledger transaction; a fetch of dispatch requests is 100, so a batch rarely reaches it."""
WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class Intent:
    """A message about to be handed over: the ledger must say SENDING before the provider sees it."""

    campaign_id: str
    channel: str
    profile_id: str
    deduplicates: bool
    queued_at: datetime
    request: tuple[str, int] = ("", 0)
    """Where the dispatch request is stored (stream, sequence): remembered if this claim makes the message AMBIGUOUS,
    so it can be handed over again once when its provider sends no receipt."""
    recipient_key: str | None = None
    """SMS and WhatsApp: the keyed hash of the recipient's number, written when the message is created."""


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
    """The messages table as the dispatch path writes it: intents and outcomes of the messages in flight, together.

    One stream of transactions carries both: each holds the outcomes of the hand-overs that ended and the intents
    of the messages that were cleared to go while the one before it was written (e-mails finish a few at a time
    over the SMTP sessions, and each frees a slot for the next intent, so the two interleave). On SQLite each
    transaction is one synchronous function run by Database.run_inline, on the loop's thread in the writer order; on
    PostgreSQL the outcomes and the new messages are one statement (_write_postgresql).
    """

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        tracer: trace.Tracer,
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.tracer = tracer
        # PostgreSQL: the one connection the outcomes and new messages are written on, one statement at a time.
        self._statements = None if db.is_sqlite else db.keep_connection()
        self._writes: GroupCommit[Intent | Outcome, Claim | bool] = GroupCommit(
            "channels-ledger", self._write, max_batch=max_batch, alone=self._write_alone, tracer=tracer
        )

    async def claim(self, intent: Intent) -> Claim:
        """Creates the message if new and, when it may be sent, commits SENDING; the caller sends only on SEND."""
        claim = await self._writes.submit(intent)
        assert isinstance(claim, Claim)
        return claim

    async def settle(self, outcome: Outcome) -> bool:
        """Commits the hand-over's outcome; False when a delivery receipt settled the message meanwhile."""
        applied = await self._writes.submit(outcome)
        assert isinstance(applied, bool)
        return applied

    async def _write(self, batch: Sequence[Submitted[Intent | Outcome]]) -> list[Claim | bool | Alone]:
        intents = [Submitted(s.item, s.context) for s in batch if isinstance(s.item, Intent)]
        outcomes = [s.item for s in batch if isinstance(s.item, Outcome)]
        attributes = {"xsell.batch.intents": len(intents), "xsell.batch.outcomes": len(outcomes)}
        with self.tracer.start_as_current_span("channels.ledger.write", attributes=attributes):
            if not self.db.is_sqlite:
                return await self._write_postgresql(batch, outcomes)
            claims, applied = await _retried(functools.partial(self._write_once, intents, outcomes))
        next_claim, next_applied = iter(claims), iter(applied)
        return [next(next_claim) if isinstance(s.item, Intent) else next(next_applied) for s in batch]

    async def _write_alone(self, item: Intent | Outcome) -> Claim | bool:
        """One item in a transaction of its own, after its batch failed: one bad item does not fail the others."""
        [answer] = await self._write([Submitted(item, contextvars.copy_context())])
        assert not isinstance(answer, Alone)
        return answer

    async def _write_once(
        self, intents: Sequence[Submitted[Intent]], outcomes: Sequence[Outcome]
    ) -> tuple[list[Claim], list[bool]]:
        """SQLite: outcomes, then intents, in one transaction: their claims and which outcomes applied.
        A message settling is never among the intents: this replica handles a campaign ID once at a time."""
        if outcomes:
            try:
                return await self.db.run_inline(
                    functools.partial(self._write_all, intents, outcomes, self._settle_all_sending)
                )
            except _SettledMeanwhile:
                pass  # rolled back; written again below, after reading which are still SENDING
        return await self.db.run_inline(functools.partial(self._write_all, intents, outcomes, self._settle_all))

    async def _write_postgresql(
        self, batch: Sequence[Submitted[Intent | Outcome]], outcomes: Sequence[Outcome]
    ) -> list[Claim | bool | Alone]:
        """PostgreSQL: the outcomes and the messages new to the ledger in one statement (one round trip, a transaction
        of its own); then, only if some intents are of messages that exist already (a redelivery, a retry), those in a
        transaction that locks their rows and decides from their states. A message created by the statement is
        claimed (SEND, as dispatch_action decides for a message not in the ledger); a second copy of it in the batch
        is skipped.

        Each of the two is retried on its own: once the first has committed, writing it again would find its
        messages SENDING (and make them AMBIGUOUS) and its outcomes applied already. For the same reason, when the
        second still fails, only its intents are answered ALONE (written one by one), and the first's answers stand.
        """
        firsts: dict[str, Intent] = {}
        for submitted in batch:
            if isinstance(submitted.item, Intent):
                firsts.setdefault(submitted.item.campaign_id, submitted.item)
        settled, created = await _retried(functools.partial(self._settle_and_create, list(firsts.values()), outcomes))
        if any(o.event is not None and o.campaign_id in settled for o in outcomes):
            self.outbox.committed()
        answers: list[Claim | bool | Alone] = []
        existing: dict[int, Submitted[Intent]] = {}
        claimed: set[str] = set()
        for submitted in batch:
            item = submitted.item
            if isinstance(item, Outcome):
                answers.append(item.campaign_id in settled)
            elif item.campaign_id not in created:
                existing[len(answers)] = Submitted(item, submitted.context)
                answers.append(ALONE)  # answered below
            elif item.campaign_id in claimed:
                # The same campaign ID twice in one batch (two copies of the request): the first one sends.
                answers.append(Claim(DispatchAction.SKIP, DeliveryState.SENDING, 0))
            else:
                claimed.add(item.campaign_id)
                answers.append(Claim(DispatchAction.SEND, DeliveryState.QUEUED, 0))
        if existing:
            decide = functools.partial(self._write_all, list(existing.values()), [], self._settle_all)
            try:
                claims, _ = await _retried(functools.partial(self.db.run_inline, decide))
            except Exception:
                if len(batch) == 1:
                    raise
                log.warning("ledger_intents_written_alone", intents=len(existing))
                return answers
            for index, claim in zip(existing, claims, strict=True):
                answers[index] = claim
        return answers

    async def _settle_and_create(self, new: Sequence[Intent], outcomes: Sequence[Outcome]) -> tuple[set[str], set[str]]:
        now = utcnow()
        # A new message is written SENDING at once: what dispatch_action decides for one not in the ledger.
        assert dispatch_action(None) is DispatchAction.SEND
        changes = [
            (change, TimelineStep(state_step(o.state), o.at, o.detail or o.reason), o.event)
            for change, o in zip(_state_changes(outcomes), outcomes, strict=True)
        ]
        assert self._statements is not None
        async with self._statements.use() as connection:
            return await store.settle_and_create(
                connection,
                changes,
                [_new_row(i) for i in new],
                state=DeliveryState.SENDING,
                steps=[
                    TimelineStep(state_step(DeliveryState.QUEUED), now),
                    TimelineStep(state_step(DeliveryState.SENDING), now, "attempt 1"),
                ],
                now=now,
            )

    def _write_all(
        self,
        intents: Sequence[Submitted[Intent]],
        outcomes: Sequence[Outcome],
        settle: Callable[[Sequence[Outcome], Session], tuple[list[bool], list[Outcome]]],
        session: Session,
    ) -> tuple[list[Claim], list[bool]]:
        applied, settled = settle(outcomes, session) if outcomes else ([], [])
        claims, steps, events = self._claim_all(intents, session) if intents else ([], [], [])
        # One INSERT for the timeline steps of both, one for their DeliveryUpdated events (which wake the relay when
        # the transaction commits).
        steps += [(o.campaign_id, TimelineStep(state_step(o.state), o.at, o.detail or o.reason)) for o in settled]
        store.add_timeline_steps(session, steps)
        events += [o.event for o in settled if o.event is not None]
        self.outbox.add_rows_sync(session, events)
        return claims, applied

    def _claim_all(
        self, batch: Sequence[Submitted[Intent]], session: Session
    ) -> tuple[list[Claim], list[tuple[str, TimelineStep]], list[dict[str, Any]]]:
        """The batch's intents in the caller's transaction: each one's claim, and the timeline steps and events for
        the caller to write."""
        now = utcnow()
        firsts: dict[str, Intent] = {}
        for submitted in batch:
            firsts.setdefault(submitted.item.campaign_id, submitted.item)
        locked, created = store.claim_rows(
            session,
            [_new_row(i) for i in firsts.values()],
            now=now,
        )
        claims: list[Claim] = []
        claimed: set[str] = set()
        sending: list[tuple[str, TimelineStep]] = []
        ambiguous: list[dict[str, Any]] = []
        requests: list[tuple[str, str, int]] = []
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
                requests.append((intent.campaign_id, *intent.request))
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
        store.remember_requests(session, requests)
        # One INSERT for the batch's steps; a new message's QUEUED step first, so it reads first on its timeline.
        queued = TimelineStep(state_step(DeliveryState.QUEUED), now)
        steps = [(campaign_id, queued) for campaign_id in created] + sending
        steps += [
            (change["campaign_id"], TimelineStep(state_step(DeliveryState.AMBIGUOUS), now, AMBIGUOUS_AFTER_CRASH))
            for change in ambiguous
        ]
        return claims, steps, events

    def _settle_all_sending(self, outcomes: Sequence[Outcome], session: Session) -> tuple[list[bool], list[Outcome]]:
        """SQLite: the batch's states in one conditional UPDATE, with no read before it, when every message is still
        SENDING (BEGIN IMMEDIATE holds the database's write lock, so no one can change a row between the UPDATE
        and the commit); _SettledMeanwhile, rolling the transaction back, when a receipt settled one meanwhile."""
        changed = store.set_states(session, _state_changes(outcomes), only_if_sending=True)
        if changed != len(outcomes):
            raise _SettledMeanwhile
        return [True] * len(outcomes), list(outcomes)

    def _settle_all(self, outcomes: Sequence[Outcome], session: Session) -> tuple[list[bool], list[Outcome]]:
        """Each outcome applied only if its message is still SENDING: which applied, and those outcomes."""
        locked = store.lock_states(session, {o.campaign_id for o in outcomes})
        # Only a row still SENDING is this attempt's; a provider's receipt may have settled it during the hand-over.
        applied = [o.campaign_id in locked and locked[o.campaign_id][0] is DeliveryState.SENDING for o in outcomes]
        settled = [o for o, ok in zip(outcomes, applied, strict=True) if ok]
        store.set_states(session, _state_changes(settled))
        return applied, settled


async def _retried(write: Callable[[], Awaitable[T]]) -> T:
    """`write()`, written again after a transient failure (a lock timeout, a deadlock, a lost connection).

    Outcomes are known; losing them to a transient failure would leave the messages SENDING and make their
    redeliveries AMBIGUOUS. Writing a transaction again is safe: nothing is handed over on the strength of a
    transaction that rolled back.
    """
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            return await write()
        except Exception as error:
            reason = transient_failure(error)
            if reason is None or attempt == WRITE_ATTEMPTS:
                raise
            log.warning("ledger_write_retried", reason=reason, attempt=attempt)
            await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


class _SettledMeanwhile(Exception):
    """A message of an outcome batch is no longer SENDING: the batch is written again after reading each state."""


def _new_row(intent: Intent) -> dict[str, str | None]:
    return {
        "campaign_id": intent.campaign_id,
        "channel": intent.channel,
        "profile_id": intent.profile_id,
        "recipient_key": intent.recipient_key,
    }


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
