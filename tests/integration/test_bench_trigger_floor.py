"""bench.trigger_floor, the campaigns bench's floor for the trigger latency: each MembershipChanged published to the
services' stream comes back once as a DispatchRequested for the same person, with one row committed per entry, on a
SQLite file or a PostgreSQL database."""

import asyncio
import sqlite3
import sys
from pathlib import Path

from bench.postgres import connect_uri
from plumbing.bus import MSG_ID_HEADER, Bus
from services import streams
from xsell.campaigns.v1 import events_pb2
from xsell.segments.v1 import events_pb2 as segment_events

ENTRIES = 25


async def _rows(database: str) -> list[tuple[str, str]]:
    if database.startswith("postgresql://"):
        connection = await connect_uri(database)
        try:
            return [tuple(row) for row in await connection.fetch("SELECT event_id, profile_id FROM entries")]
        finally:
            await connection.close()
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT event_id, profile_id FROM entries").fetchall()


async def test_every_entry_is_answered_once_and_written(
    nats_url: str, nats_bus: Bus, database_url: str, tmp_path: Path
) -> None:
    await nats_bus.ensure_streams(streams.ALL_STREAMS)
    answered: list[tuple[str, str]] = []
    all_answered = asyncio.Event()

    async def on_dispatch(msg: object) -> None:
        request = events_pb2.DispatchRequested.FromString(msg.data)  # type: ignore[attr-defined]
        answered.append((request.profile_id, msg.headers[MSG_ID_HEADER]))  # type: ignore[attr-defined]
        if len(answered) >= ENTRIES:
            all_answered.set()

    subscription = await nats_bus.nc.subscribe(streams.DISPATCH_REQUESTED, cb=on_dispatch)
    # The floor takes a file's path or a libpq URI, not a SQLAlchemy URL.
    database = (
        str(tmp_path / "floor.db")
        if database_url.startswith("sqlite")
        else database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    )
    floor = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.trigger_floor",
        nats_url,
        database,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert floor.stdout is not None
        assert (await asyncio.wait_for(floor.stdout.readline(), timeout=30)).strip() == b"ready"
        for number in range(ENTRIES):
            change = segment_events.MembershipChanged(
                event_id=f"evt_{number}",
                segment_id="floor-1",
                profile_id=f"p{number:03d}",
                change=segment_events.MEMBERSHIP_CHANGE_ENTERED,
            )
            await nats_bus.js.publish(
                streams.MEMBERSHIP_CHANGED, change.SerializeToString(), headers={MSG_ID_HEADER: change.event_id}
            )
        await asyncio.wait_for(all_answered.wait(), timeout=30)
        await asyncio.sleep(0.2)  # a second answer to any entry would arrive by now
    finally:
        floor.terminate()
        # SIGTERM ends it cleanly: it drains its connection and exits 0.
        assert await asyncio.wait_for(floor.wait(), timeout=30) == 0
        await subscription.unsubscribe()
    assert sorted(answered) == [(f"p{n:03d}", f"floor-evt_{n}") for n in range(ENTRIES)]
    assert sorted(await _rows(database)) == sorted((f"evt_{n}", f"p{n:03d}") for n in range(ENTRIES))
