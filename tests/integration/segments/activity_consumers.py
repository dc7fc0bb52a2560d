"""Segments' NATS handlers (ProfileActivityConsumers) on a migrated database with the default catalog, called
directly by tests that drive a fetch by hand."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from opentelemetry import trace

from plumbing import bounces
from plumbing.db import Database
from plumbing.outbox import Outbox
from services.segments import store
from services.segments.activity import Activity
from services.segments.api_catalog import install_catalog_file
from services.segments.app import MIGRATIONS
from services.segments.consumers import ProfileActivityConsumers
from services.segments.settings import DEFAULT_CATALOG


@asynccontextmanager
async def activity_consumers(database_url: str) -> AsyncIterator[tuple[Database, ProfileActivityConsumers]]:
    """The handlers as the service builds them (its default windows), and their database; disposed on exit."""
    db = Database(database_url)
    await db.migrate(MIGRATIONS)
    activity = Activity(Outbox(store.outbox), trace.get_tracer("test"))
    await install_catalog_file(db, activity, str(DEFAULT_CATALOG))
    consumers = ProfileActivityConsumers(
        db,
        activity,
        trace.get_tracer("test"),
        retention=timedelta(days=730),
        future_skew=timedelta(minutes=5),
        decline_for=timedelta(days=90),
        recheck_after={bounces.DND: timedelta(days=30), bounces.UNREACHABLE: timedelta(days=30)},
    )
    try:
        yield db, consumers
    finally:
        await db.dispose()
