"""Opaque, time-ordered identifiers."""

from ulid import ULID


def new_id(prefix: str = "") -> str:
    """A new ULID, optionally prefixed (e.g. "seg_"), sortable by creation time."""
    return f"{prefix}{ULID()}"
