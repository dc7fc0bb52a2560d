"""python -m services.migrate <service>: bring one service's database to the newest schema, then exit."""

import argparse
import asyncio
import sys
import zlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from plumbing.db import Database
from plumbing.logging import setup_logging
from plumbing.settings import ServiceSettings

log = structlog.get_logger("services.migrate")

LOCK_NOT_AVAILABLE = "55P03"


def _segments() -> tuple[ServiceSettings, Path]:
    from services.segments.app import MIGRATIONS
    from services.segments.settings import SegmentsSettings

    return SegmentsSettings(), MIGRATIONS


def _campaigns() -> tuple[ServiceSettings, Path]:
    from services.campaigns.app import MIGRATIONS
    from services.campaigns.settings import CampaignsSettings

    return CampaignsSettings(), MIGRATIONS


def _channels() -> tuple[ServiceSettings, Path]:
    from services.channels.app import MIGRATIONS
    from services.channels.settings import ChannelsSettings

    return ChannelsSettings(), MIGRATIONS


def _attribution() -> tuple[ServiceSettings, Path]:
    from services.attribution.app import MIGRATIONS
    from services.attribution.settings import AttributionSettings

    return AttributionSettings(), MIGRATIONS


def _gateway() -> tuple[ServiceSettings, Path]:
    from gateway.app import MIGRATIONS
    from gateway.settings import GatewaySettings

    return GatewaySettings(), MIGRATIONS


# Imported lazily: a migration container loads one service's settings and schema, not all five.
TARGETS: dict[str, Callable[[], tuple[ServiceSettings, Path]]] = {
    "segments": _segments,
    "campaigns": _campaigns,
    "channels": _channels,
    "attribution": _attribution,
    "gateway": _gateway,
}


def advisory_lock_key(service: str) -> int:
    """A stable PostgreSQL advisory-lock key per service database."""
    return zlib.crc32(f"xsell-migrate:{service}".encode())


LOCK_TIMEOUT = timedelta(seconds=10)
"""How long a migration's statement may wait for a table's lock on PostgreSQL before the migration gives up, nothing
applied, and the init container's restart tries again: the old pods serve meanwhile, and an ALTER waiting behind
their transactions would queue every write to that table behind it."""


class LockWaitTooLong(Exception):
    """A migration's statement waited longer than LOCK_TIMEOUT for a table's lock; nothing was applied."""


async def migrate(
    service: str, settings: ServiceSettings, migrations: Path, *, lock_timeout: timedelta = LOCK_TIMEOUT
) -> None:
    """Applies the migrations up to head; on PostgreSQL one runner at a time, so replicas rolling out together
    (each with its own init container) never race on the same DDL, and no statement waits for a table's lock
    longer than `lock_timeout` (LockWaitTooLong: nothing applied, retried by the init container's restart)."""
    db = Database(settings.resolved_database_url(service), pool_size=2)
    try:
        if db.is_sqlite:
            await db.migrate(migrations)
        else:
            # A session-level lock on a connection of its own, held while Alembic works on another.
            async with db.engine.connect() as lock:
                await lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": advisory_lock_key(service)})
                try:
                    await db.migrate(migrations, lock_timeout=lock_timeout)
                except DBAPIError as error:
                    if getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                        raise
                    raise LockWaitTooLong(
                        f"a migration of {service}'s database waited over {lock_timeout.total_seconds():g}s for a "
                        "table's lock (a long transaction of a running pod); nothing was applied, and the init "
                        "container's restart tries again"
                    ) from error
                finally:
                    await lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": advisory_lock_key(service)})
                    await lock.commit()
    finally:
        await db.dispose()


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.migrate",
        description="Apply one service's database migrations and exit (for init containers and Jobs).",
    )
    parser.add_argument("service", choices=sorted(TARGETS), help="whose database; settings come from XSELL_<NAME>_*")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings, migrations = TARGETS[args.service]()
    setup_logging(f"{args.service}-migrate", settings.log_level)
    log.info("migrations_starting", service=args.service)
    try:
        asyncio.run(migrate(args.service, settings, migrations))
    except LockWaitTooLong as error:
        log.error("migrations_waited_for_a_lock", service=args.service, reason=str(error))
        return 75  # EX_TEMPFAIL: try again later
    log.info("migrations_applied", service=args.service)
    return 0


if __name__ == "__main__":
    sys.exit(main())
