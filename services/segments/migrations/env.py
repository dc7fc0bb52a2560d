"""Alembic environment of the segments database."""

from plumbing.migrations import run_migrations
from services.segments import store

run_migrations(store.metadata)
