"""Alembic environment of the gateway's database."""

from gateway import store
from plumbing.migrations import run_migrations

run_migrations(store.metadata)
