"""Many outbox events in one INSERT, for the release runner's pages (plumbing's Outbox.add inserts one row per call)."""

from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.message import Message
from opentelemetry import propagate
from sqlalchemy import Table, event, insert
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER
from plumbing.ids import new_id
from plumbing.outbox import utcnow


class BatchOutbox:
    """Builds outbox rows exactly as plumbing.outbox.Outbox.add does, and writes a page of them at once.

    `event()` captures the current trace context, so call it inside the span the event belongs to
    (the outreach's root span); the relay's PRODUCER span and the consumers continue that trace.
    """

    def __init__(self, table: Table, on_commit: Callable[[], None] | None = None) -> None:
        self.table = table
        self._on_commit = on_commit

    def event(self, subject: str, message: Message, *, campaign_id: str) -> dict[str, Any]:
        event_id = getattr(message, "event_id", "") or new_id("evt_")
        if hasattr(message, "event_id"):
            message.event_id = event_id  # type: ignore[attr-defined]
        headers: dict[str, str] = {MSG_ID_HEADER: event_id}
        propagate.inject(headers)
        headers[CAMPAIGN_ID_HEADER] = campaign_id
        return {
            "event_id": event_id,
            "subject": subject,
            "payload": message.SerializeToString(),
            "headers": headers,
            "created_at": utcnow(),
        }

    async def add_all(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
        """Queues the events; they are published only if the transaction commits."""
        if not rows:
            return
        await session.execute(insert(self.table), list(rows))
        if self._on_commit is not None:
            event.listen(session.sync_session, "after_commit", self._wake, once=True)

    def _wake(self, _session: object) -> None:
        if self._on_commit is not None:
            self._on_commit()
