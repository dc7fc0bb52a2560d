"""On SQLite the ledger's batch statements bypass SQLAlchemy's parameter processing; they store what it stores."""

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from plumbing.db import Database, transient_failure
from services.channels import store
from services.channels.app import MIGRATIONS
from services.channels.delivery import DeliveryState, TimelineStep

QUEUED_AT = datetime(2026, 11, 27, 9, 5, 7, tzinfo=UTC)  # no microseconds: SQLAlchemy still writes .000000
SENT_AT = datetime(2026, 11, 27, 9, 5, 7, 120034, tzinfo=UTC)
STORED = text(
    "SELECT m.state, m.attempts, m.reason, m.provider_message_id, m.created_at, m.updated_at, m.sent_at, t.step, t.at, "
    "t.detail, m.recipient_key FROM messages m JOIN message_timeline t USING (campaign_id) WHERE m.campaign_id = :id "
    "ORDER BY t.seq"
)


def _through_the_ledger_statements(session: Session) -> None:
    locked, created = store.claim_rows(
        session,
        [{"campaign_id": "ledger", "channel": "CHANNEL_SMS", "profile_id": "prf_1", "recipient_key": "0f3a"}],
        now=QUEUED_AT,
    )
    assert locked == {"ledger": (DeliveryState.QUEUED, 0)} and created == ["ledger"]
    store.mark_sending(session, ["ledger"], now=QUEUED_AT)
    change = {
        "campaign_id": "ledger",
        "state": DeliveryState.SENT,
        "at": SENT_AT,
        "reason": "",
        "provider_message_id": "SM1",
        "count_attempt": True,
    }
    assert store.set_states(session, [change], only_if_sending=True) == 1
    # claim_rows leaves a new message's QUEUED step to its caller, who writes it with the batch's other steps.
    store.add_timeline_steps(
        session,
        [
            ("ledger", TimelineStep("delivery:QUEUED", QUEUED_AT)),
            ("ledger", TimelineStep("delivery:SENT", SENT_AT, "queued")),
        ],
    )


async def test_the_sqlite_ledger_statements_store_times_and_states_as_sqlalchemy_core_does(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'channels.db'}")
    await db.migrate(MIGRATIONS)
    try:
        await db.run_in_transaction(_through_the_ledger_statements)
        async with db.transaction() as session:
            await store.insert_queued_if_absent(
                session,
                campaign_id="core",
                channel="CHANNEL_SMS",
                profile_id="prf_1",
                now=QUEUED_AT,
                recipient_key="0f3a",
            )
            await store.set_state(session, "core", DeliveryState.SENDING, now=QUEUED_AT)
            await store.set_state(
                session,
                "core",
                DeliveryState.SENT,
                now=SENT_AT,
                reason="",
                provider_message_id="SM1",
                count_attempt=True,
            )
            await store.add_timeline(session, "core", [TimelineStep("delivery:SENT", SENT_AT, "queued")])

        async with db.snapshot() as session:
            ledger = (await session.execute(STORED, {"id": "ledger"})).all()
            core = (await session.execute(STORED, {"id": "core"})).all()
            record = await store.load_message(session, "ledger")

        assert ledger == core
        assert ledger[0][4:7] == (
            "2026-11-27 09:05:07.000000",
            "2026-11-27 09:05:07.120034",
            "2026-11-27 09:05:07.120034",
        )
        assert record is not None and record.state is DeliveryState.SENT and record.attempts == 1
        assert [(s.step, s.at) for s in record.timeline] == [("delivery:QUEUED", QUEUED_AT), ("delivery:SENT", SENT_AT)]
    finally:
        await db.dispose()


async def test_only_ambiguous_messages_are_indexed_by_state_and_an_operators_list_reads_them_so(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'channels.db'}")
    await db.migrate(MIGRATIONS)
    try:
        async with db.transaction() as session:
            await store.insert_queued_if_absent(
                session, campaign_id="unsure", channel="CHANNEL_SMS", profile_id="prf_2", now=QUEUED_AT
            )
            await store.set_state(session, "unsure", DeliveryState.AMBIGUOUS, now=SENT_AT, reason="no answer")
        operators_list = "SELECT campaign_id FROM messages WHERE state = 'AMBIGUOUS' ORDER BY updated_at"
        async with db.snapshot() as session:
            indexes = (
                await session.execute(
                    text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'")
                )
            ).all()
            plan = (await session.execute(text(f"EXPLAIN QUERY PLAN {operators_list}"))).all()
            listed = (await session.execute(text(operators_list))).scalars().all()
        # A message passing through QUEUED, SENDING and SENT touches no index on its state: the one index that names
        # state holds only AMBIGUOUS rows.
        on_state = {name: sql for name, sql in indexes if sql is not None and "state" in sql}
        assert list(on_state) == ["ix_messages_ambiguous"]
        assert "WHERE state = 'AMBIGUOUS'" in on_state["ix_messages_ambiguous"]
        assert "ix_messages_ambiguous" in " ".join(str(row[-1]) for row in plan)
        assert listed == ["unsure"]
    finally:
        await db.dispose()


async def test_a_ledger_statement_that_finds_the_database_locked_fails_as_a_retryable_sqlalchemy_error(
    tmp_path: Path,
) -> None:
    # The statements run on the driver's connection; its errors must still reach the ledger as SQLAlchemy raises them,
    # or _retried would not know a lock timeout (another process writing the file) from a lasting failure.
    path = tmp_path / "channels.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.migrate(MIGRATIONS)
    await db.dispose()
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with Session(engine) as session, pytest.raises(OperationalError) as raised:
            store.add_timeline_steps(session, [("ledger", TimelineStep("delivery:QUEUED", QUEUED_AT))])
        assert "database is locked" in str(raised.value.orig)
        assert transient_failure(raised.value) is not None
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
