"""Alembic environment of the channels database."""

from plumbing.migrations import run_migrations
from services.channels import store

run_migrations(store.metadata)
