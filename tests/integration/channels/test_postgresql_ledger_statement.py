"""On PostgreSQL the ledger writes outcomes and new messages in one statement; it stores what the Core statements do,
and a batch that also holds known messages still decides each of them from its state."""

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, select, text

from plumbing.db import Database
from plumbing.outbox import Outbox
from services.channels import convert, store
from services.channels.app import MIGRATIONS
from services.channels.delivery import DeliveryState, DispatchAction, TimelineStep
from services.channels.ledger import Claim, Intent, Ledger, Outcome
from tests.integration.channels.support import new_campaign_id

QUEUED_AT = datetime(2026, 11, 27, 9, 5, 7, tzinfo=UTC)
SENT_AT = datetime(2026, 11, 27, 9, 5, 7, 120034, tzinfo=UTC)
STORED = text(
    "SELECT m.channel, m.profile_id, m.recipient_key, "
    "m.state, m.attempts, m.reason, m.provider_message_id, m.sent_at, t.step, t.detail "
    "FROM messages m JOIN message_timeline t USING (campaign_id) WHERE m.campaign_id = :id ORDER BY t.seq"
)


def _ledger(db: Database) -> Ledger:
    return Ledger(db, Outbox(store.outbox), TracerProvider().get_tracer("test"))


def _delivery_updated(outbox: Outbox, campaign_id: str, state: DeliveryState) -> dict[str, object]:
    update = convert.delivery_updated(campaign_id, "CHANNEL_SMS", state, SENT_AT, "")
    return outbox.event("xsell.channels.delivery_updated", update, campaign_id=campaign_id)


async def test_the_one_statement_stores_what_the_core_statements_store(postgres_url: str) -> None:
    db = Database(postgres_url)
    await db.migrate(MIGRATIONS)
    ledger = _ledger(db)
    outbox = Outbox(store.outbox)
    ledgered, core, settled_by_receipt = new_campaign_id(), new_campaign_id(), new_campaign_id()
    try:
        for campaign_id in (ledgered, settled_by_receipt):
            claim = await ledger.claim(
                Intent(campaign_id, "CHANNEL_SMS", "prf_1", False, QUEUED_AT, recipient_key="0f3a")
            )
            assert claim == Claim(DispatchAction.SEND, DeliveryState.QUEUED, 0)
        async with db.transaction() as session:
            await store.set_state(session, settled_by_receipt, DeliveryState.DELIVERED, now=SENT_AT, reason="receipt")
            await store.insert_queued_if_absent(
                session,
                campaign_id=core,
                channel="CHANNEL_SMS",
                profile_id="prf_1",
                now=QUEUED_AT,
                recipient_key="0f3a",
            )
        async with db.transaction() as session:
            await store.set_state(session, core, DeliveryState.SENDING, now=QUEUED_AT)
            await store.add_timeline(session, core, [TimelineStep("delivery:SENDING", QUEUED_AT, "attempt 1")])
            await store.set_state(
                session, core, DeliveryState.SENT, now=SENT_AT, reason="", provider_message_id="SM1", count_attempt=True
            )
            await store.add_timeline(session, core, [TimelineStep("delivery:SENT", SENT_AT, "queued")])

        applied = await asyncio.gather(
            *(
                ledger.settle(
                    Outcome(
                        campaign_id,
                        DeliveryState.SENT,
                        SENT_AT,
                        "",
                        "queued",
                        "SM1",
                        _delivery_updated(outbox, campaign_id, DeliveryState.SENT),
                    )
                )
                for campaign_id in (ledgered, settled_by_receipt)
            )
        )

        assert applied == [True, False]
        async with db.snapshot() as session:
            stored = {c: (await session.execute(STORED, {"id": c})).all() for c in (ledgered, core, settled_by_receipt)}
            events = (await session.execute(select(store.outbox.c.headers["Xsell-Campaign-Id"].as_string()))).scalars()
        assert stored[ledgered] == stored[core]
        assert [tuple(row) for row in stored[ledgered]] == [
            ("CHANNEL_SMS", "prf_1", "0f3a", "SENT", 1, "", "SM1", SENT_AT, "delivery:QUEUED", ""),
            ("CHANNEL_SMS", "prf_1", "0f3a", "SENT", 1, "", "SM1", SENT_AT, "delivery:SENDING", "attempt 1"),
            ("CHANNEL_SMS", "prf_1", "0f3a", "SENT", 1, "", "SM1", SENT_AT, "delivery:SENT", "queued"),
        ]
        # The receipt's state stands; the outcome wrote neither a step nor an event for it.
        assert [row.step for row in stored[settled_by_receipt]] == ["delivery:QUEUED", "delivery:SENDING"]
        assert {row.state for row in stored[settled_by_receipt]} == {"DELIVERED"}
        assert list(events) == [ledgered]
    finally:
        await db.dispose()


async def test_a_batch_of_new_and_known_messages_claims_each_as_its_state_says(database_url: str) -> None:
    db = Database(database_url)
    await db.migrate(MIGRATIONS)
    ledger = _ledger(db)
    sent, crashed, webhook_crashed, retried = (new_campaign_id() for _ in range(4))
    fresh = [new_campaign_id() for _ in range(3)]
    try:
        async with db.transaction() as session:
            for campaign_id in (sent, crashed, webhook_crashed, retried):
                await store.insert_queued_if_absent(
                    session, campaign_id=campaign_id, channel="CHANNEL_SMS", profile_id="prf_1", now=QUEUED_AT
                )
            await store.set_state(session, sent, DeliveryState.SENT, now=SENT_AT, count_attempt=True)
            await store.set_state(session, crashed, DeliveryState.SENDING, now=SENT_AT)
            await store.set_state(session, webhook_crashed, DeliveryState.SENDING, now=SENT_AT)
            await store.set_state(session, retried, DeliveryState.QUEUED, now=SENT_AT, count_attempt=True)

        # One batch: each known message once, three new ones, and a second copy of the first new one.
        batch = [
            Intent(fresh[0], "CHANNEL_SMS", "prf_2", False, QUEUED_AT),
            Intent(sent, "CHANNEL_SMS", "prf_1", False, QUEUED_AT),
            Intent(crashed, "CHANNEL_SMS", "prf_1", False, QUEUED_AT),
            Intent(fresh[1], "CHANNEL_WEBHOOK", "prf_3", True, QUEUED_AT),
            Intent(webhook_crashed, "CHANNEL_WEBHOOK", "prf_1", True, QUEUED_AT),
            Intent(retried, "CHANNEL_SMS", "prf_1", False, QUEUED_AT),
            Intent(fresh[0], "CHANNEL_SMS", "prf_2", False, QUEUED_AT),
            Intent(fresh[2], "CHANNEL_SMS", "prf_4", False, QUEUED_AT),
        ]
        claims = await asyncio.gather(*(ledger.claim(intent) for intent in batch))

        assert claims == [
            Claim(DispatchAction.SEND, DeliveryState.QUEUED, 0),
            Claim(DispatchAction.SKIP, DeliveryState.SENT, 1),
            Claim(DispatchAction.MARK_AMBIGUOUS, DeliveryState.SENDING, 0),
            Claim(DispatchAction.SEND, DeliveryState.QUEUED, 0),
            Claim(DispatchAction.SEND, DeliveryState.SENDING, 0),
            Claim(DispatchAction.SEND, DeliveryState.QUEUED, 1),
            Claim(DispatchAction.SKIP, DeliveryState.SENDING, 0),
            Claim(DispatchAction.SEND, DeliveryState.QUEUED, 0),
        ]
        async with db.snapshot() as session:
            records = {c: await store.load_message(session, c) for c in (sent, crashed, webhook_crashed, *fresh)}
            events = (await session.execute(select(func.count()).select_from(store.outbox))).scalar_one()
        states = {c: (r.state, [s.step for s in r.timeline][-1]) for c, r in records.items() if r is not None}
        assert states == {
            sent: (DeliveryState.SENT, "delivery:QUEUED"),
            crashed: (DeliveryState.AMBIGUOUS, "delivery:AMBIGUOUS"),
            webhook_crashed: (DeliveryState.SENDING, "delivery:SENDING"),
            **{c: (DeliveryState.SENDING, "delivery:SENDING") for c in fresh},
        }
        for campaign_id in fresh:
            record = records[campaign_id]
            assert record is not None and [s.step for s in record.timeline] == ["delivery:QUEUED", "delivery:SENDING"]
        assert events == 1  # the AMBIGUOUS one's DeliveryUpdated
    finally:
        await db.dispose()


async def test_the_relay_is_woken_after_a_statement_that_wrote_events_and_only_then(postgres_url: str) -> None:
    db = Database(postgres_url)
    await db.migrate(MIGRATIONS)
    woken: list[int] = []
    outbox = Outbox(store.outbox, on_commit=lambda: woken.append(len(woken)))
    ledger = Ledger(db, outbox, TracerProvider().get_tracer("test"))
    sent, settled_by_receipt = new_campaign_id(), new_campaign_id()
    try:
        for campaign_id in (sent, settled_by_receipt):
            await ledger.claim(Intent(campaign_id, "CHANNEL_SMS", "prf_1", False, QUEUED_AT))
        async with db.transaction() as session:
            await store.set_state(session, settled_by_receipt, DeliveryState.DELIVERED, now=SENT_AT, reason="receipt")
        assert woken == []

        late = Outcome(
            settled_by_receipt,
            DeliveryState.SENT,
            SENT_AT,
            "",
            "",
            "SM2",
            _delivery_updated(outbox, settled_by_receipt, DeliveryState.SENT),
        )
        assert await ledger.settle(late) is False
        assert woken == []
        event = _delivery_updated(outbox, sent, DeliveryState.SENT)
        assert await ledger.settle(Outcome(sent, DeliveryState.SENT, SENT_AT, "", "", "SM1", event)) is True
        assert woken == [0]
    finally:
        await db.dispose()


async def test_when_the_known_messages_fail_the_new_ones_keep_their_claims_and_the_known_go_alone(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(postgres_url)
    await db.migrate(MIGRATIONS)
    ledger = _ledger(db)
    known, fresh = new_campaign_id(), new_campaign_id()
    try:
        async with db.transaction() as session:
            await store.insert_queued_if_absent(
                session, campaign_id=known, channel="CHANNEL_SMS", profile_id="prf_1", now=QUEUED_AT
            )
        write_all = ledger._write_all
        failures = iter([RuntimeError("the first transaction of known messages fails")])

        def failing_once(*args: Any) -> Any:
            for failure in failures:
                raise failure
            return write_all(*args)

        monkeypatch.setattr(ledger, "_write_all", failing_once)

        claims = await asyncio.gather(
            ledger.claim(Intent(fresh, "CHANNEL_SMS", "prf_2", False, QUEUED_AT)),
            ledger.claim(Intent(known, "CHANNEL_SMS", "prf_1", False, QUEUED_AT)),
        )

        # The new message's claim committed with the statement and stands; written again, it would have found its
        # own row SENDING and made it AMBIGUOUS. The known one was written alone after its batch failed.
        assert claims == [
            Claim(DispatchAction.SEND, DeliveryState.QUEUED, 0),
            Claim(DispatchAction.SEND, DeliveryState.QUEUED, 0),
        ]
        async with db.snapshot() as session:
            records = [await store.load_message(session, c) for c in (fresh, known)]
        assert [r.state if r else None for r in records] == [DeliveryState.SENDING, DeliveryState.SENDING]
    finally:
        await db.dispose()
