"""Alembic environment of the attribution database."""

from plumbing.migrations import run_migrations
from services.attribution import store

run_migrations(store.metadata)
