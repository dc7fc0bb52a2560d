"""Events written by add_rows_sync (a synchronous transaction's, plain tuples on SQLite) are stored as add_rows (Core)
stores them: the same text for the time, headers that read back equal, the same payload."""

import sqlite3
from pathlib import Path

from sqlalchemy import MetaData, select

from plumbing.db import Database
from plumbing.outbox import Outbox, outbox_table, utcnow


async def test_add_rows_sync_stores_each_column_as_core_does(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    metadata = MetaData()
    table = outbox_table(metadata)
    woken: list[str] = []
    outbox = Outbox(table, on_commit=lambda: woken.append("relay"))
    at = utcnow()
    headers = {
        "Nats-Msg-Id": "evt_x",
        "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        "Xsell-Campaign-Id": "C",
    }

    def row(event_id: str) -> dict[str, object]:
        return {"event_id": event_id, "subject": "s.x", "payload": b"\x00\x01pay", "headers": headers, "created_at": at}

    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        async with db.transaction() as session:
            await outbox.add_rows(session, [row("core")])
        await db.run_in_transaction(lambda session: outbox.add_rows_sync(session, [row("plain")]))
        async with db.snapshot() as session:
            read = {r.event_id: r for r in (await session.execute(select(table))).all()}
    finally:
        await db.dispose()
    assert woken == ["relay", "relay"]  # both wake the relay once committed
    core, plain = read["core"], read["plain"]
    assert (plain.subject, plain.payload, plain.headers, plain.created_at) == (
        core.subject,
        core.payload,
        core.headers,
        core.created_at,
    )
    with sqlite3.connect(path) as raw:
        stored = dict(raw.execute("SELECT event_id, created_at FROM outbox").fetchall())
    assert stored["plain"] == stored["core"]
