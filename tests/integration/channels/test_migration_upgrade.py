"""A channels ledger at revision 0008 upgrades to 0009 (profile_id 128 characters wide) on SQLite and PostgreSQL,
keeping its messages, their timelines and its partial indexes; a profile id of 128 characters then fits."""

from datetime import UTC, datetime

from sqlalchemy import text

from plumbing.db import Database
from services.channels.app import MIGRATIONS

_NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


async def test_a_ledger_at_0008_upgrades_keeping_its_messages_and_timelines(database_url: str) -> None:
    db = Database(database_url)
    message = (
        "INSERT INTO messages (campaign_id, channel, profile_id, state, attempts, reason, created_at, updated_at) "
        "VALUES (:campaign_id, 'CHANNEL_SMS', :profile_id, :state, 1, '', :now, :now)"
    )
    step = "INSERT INTO message_timeline (campaign_id, step, at, detail) VALUES (:campaign_id, 'SENT', :now, '')"
    try:
        await db.migrate(MIGRATIONS, "0008")
        async with db.engine.begin() as connection:
            for number, state in enumerate(("SENT", "AMBIGUOUS")):
                fields = {"campaign_id": f"CSELL-NOV-T06-{number:04d}", "profile_id": "p" * 100, "now": _NOW}
                await connection.execute(text(message), {**fields, "state": state})
                await connection.execute(text(step), fields)
        await db.migrate(MIGRATIONS, "0009")  # as a service does at its start, to head
        async with db.engine.begin() as connection:
            long = {"campaign_id": "CSELL-NOV-T06-0128", "profile_id": "p" * 128, "now": _NOW, "state": "SENT"}
            await connection.execute(text(message), long)
        async with db.engine.connect() as connection:
            kept = (await connection.execute(text("SELECT campaign_id, state FROM messages ORDER BY 1"))).all()
            steps = (await connection.execute(text("SELECT count(*) FROM message_timeline"))).scalar_one()
            revision = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            if db.is_sqlite:
                ambiguous_index = (
                    await connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'ix_messages_ambiguous'"))
                ).scalar_one()
                assert "WHERE state = 'AMBIGUOUS'" in ambiguous_index  # still partial after the table was copied
    finally:
        await db.dispose()
    assert [tuple(row) for row in kept] == [
        ("CSELL-NOV-T06-0000", "SENT"),
        ("CSELL-NOV-T06-0001", "AMBIGUOUS"),
        ("CSELL-NOV-T06-0128", "SENT"),
    ]
    assert (steps, revision) == (2, "0009")
