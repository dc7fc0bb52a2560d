"""python -m services.migrate <service>: bring one service's database to the newest schema, then exit."""

import argparse
import asyncio
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import structlog
from sqlalchemy import text

from plumbing.db import Database
from plumbing.logging import setup_logging
from plumbing.settings import ServiceSettings

log = structlog.get_logger("services.migrate")


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


async def migrate(service: str, settings: ServiceSettings, migrations: Path) -> None:
    """Applies the migrations up to head; on PostgreSQL one runner at a time, so replicas rolling out together
    (each with its own init container) never race on the same DDL."""
    db = Database(settings.resolved_database_url(service), pool_size=2)
    try:
        if db.is_sqlite:
            await db.migrate(migrations)
        else:
            # A session-level lock on a connection of its own, held while Alembic works on another.
            async with db.engine.connect() as lock:
                await lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": advisory_lock_key(service)})
                try:
                    await db.migrate(migrations)
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
    asyncio.run(migrate(args.service, settings, migrations))
    log.info("migrations_applied", service=args.service)
    return 0


if __name__ == "__main__":
    sys.exit(main())
