"""Alembic environment of the campaigns database."""

from plumbing.migrations import run_migrations
from services.campaigns import store

run_migrations(store.metadata)
