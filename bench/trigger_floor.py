"""The trigger bench's floor: MembershipChanged in, one transaction, DispatchRequested out, with bare clients.

    python -m bench.trigger_floor <nats-url> <database>    # until SIGTERM; prints "ready" once subscribed

<database> is a SQLite file's path, or a PostgreSQL libpq URI (`postgresql://...`): then each entry's row is one
INSERT committed on its own through asyncpg, a round trip to the server as the service's statements are.

`bench.campaigns` starts this in a process of its own, on a NATS server of its own with the services'
streams, and drives it exactly as it drives the campaigns service (MembershipChanged published at 1k/s,
each one's DispatchRequested received), so the floor's latency is what the machine, NATS and the bench's
own publishing and receiving take for the least work an entry can get: a JetStream push consumer (nats.py,
explicit acks), the message decoded, one row inserted and committed (the standard library's sqlite3 with the
services' pragmas, or asyncpg), one DispatchRequested published to the stream's subject and the message acknowledged.
No segments look-up, no spans, metrics or logs, no outbox: the service's latency over this is its own work.
"""

import asyncio
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.postgres import connect_uri
from plumbing.bus import MSG_ID_HEADER
from services import streams
from xsell.campaigns.v1 import events_pb2
from xsell.segments.v1 import events_pb2 as segment_events

DURABLE = "bench-trigger-floor"


_CREATE = "CREATE TABLE IF NOT EXISTS entries (event_id TEXT PRIMARY KEY, profile_id TEXT NOT NULL, at REAL NOT NULL)"


def open_database(path: Path) -> sqlite3.Connection:
    """A fresh file with one table, in autocommit mode (each entry opens and commits its own transaction)."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(_CREATE)
    return connection


async def open_writer(database: str) -> tuple[Callable[[str, str], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """`write(event_id, profile_id)`, one committed transaction per call, and `close()`: on the SQLite file at
    `database`, or on the PostgreSQL database its `postgresql://` URI names."""
    if database.startswith(("postgresql://", "postgres://")):
        pg = await connect_uri(database)
        await pg.execute(_CREATE)

        async def write_pg(event_id: str, profile_id: str) -> None:
            await pg.execute(
                "INSERT INTO entries (event_id, profile_id, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                event_id,
                profile_id,
                time.time(),
            )

        return write_pg, pg.close
    connection = open_database(Path(database))

    async def write_sqlite(event_id: str, profile_id: str) -> None:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "INSERT OR IGNORE INTO entries (event_id, profile_id, at) VALUES (?, ?, ?)",
            (event_id, profile_id, time.time()),
        )
        connection.execute("COMMIT")

    async def close_sqlite() -> None:
        connection.close()

    return write_sqlite, close_sqlite


def dispatch_for(change: segment_events.MembershipChanged) -> tuple[str, bytes, dict[str, str]]:
    """The DispatchRequested an entry leads to: subject, payload and headers (its event id as the Nats-Msg-Id)."""
    event_id = f"floor-{change.event_id}"
    request = events_pb2.DispatchRequested(
        event_id=event_id, campaign_id=f"FLOOR-{change.profile_id}", profile_id=change.profile_id
    )
    return streams.DISPATCH_REQUESTED, request.SerializeToString(), {MSG_ID_HEADER: event_id}


async def serve(nats_url: str, database: str) -> None:
    write, close = await open_writer(database)
    nc = await nats.connect(nats_url, name="bench-trigger-floor")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)

    async def handle(msg: Msg) -> None:
        change = segment_events.MembershipChanged.FromString(msg.data)
        await write(change.event_id, change.profile_id)
        subject, payload, headers = dispatch_for(change)
        await nc.publish(subject, payload, headers=headers)
        await msg.ack()

    js = nc.jetstream()
    config = ConsumerConfig(
        durable_name=DURABLE,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW,
        max_ack_pending=streams.CAMPAIGNS_TRIGGERS.max_ack_pending,
    )
    subscription = await js.subscribe(
        streams.MEMBERSHIP_CHANGED, durable=DURABLE, cb=handle, manual_ack=True, config=config
    )
    print("ready", flush=True)
    try:
        await stopping.wait()
    finally:
        await subscription.unsubscribe()
        await nc.drain()
        await close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(serve(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
