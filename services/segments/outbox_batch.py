"""Writes many outbox events with one INSERT, in the caller's transaction (plumbing's Outbox adds one at a time)."""

from collections.abc import Callable, Sequence

from google.protobuf.message import Message
from opentelemetry import propagate
from sqlalchemy import Table, event, insert
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.bus import MSG_ID_HEADER
from plumbing.ids import new_id
from plumbing.outbox import utcnow


class OutboxBatch:
    """The same rows plumbing.outbox.Outbox.add writes (id, subject, payload, Nats-Msg-Id and trace
    context headers), so the plumbing relay publishes them unchanged."""

    def __init__(self, table: Table, on_commit: Callable[[], None] | None = None) -> None:
        self.table = table
        self._on_commit = on_commit

    async def add_all(self, session: AsyncSession, subject: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        created_at = utcnow()
        trace_headers: dict[str, str] = {}
        propagate.inject(trace_headers)
        rows = []
        for message in messages:
            event_id = getattr(message, "event_id", "") or new_id("evt_")
            message.event_id = event_id  # type: ignore[attr-defined]
            rows.append(
                {
                    "event_id": event_id,
                    "subject": subject,
                    "payload": message.SerializeToString(),
                    "headers": {MSG_ID_HEADER: event_id, **trace_headers},
                    "created_at": created_at,
                }
            )
        await session.execute(insert(self.table), rows)
        if self._on_commit is not None:
            event.listen(session.sync_session, "after_commit", self._wake, once=True)

    def _wake(self, _session: object) -> None:
        if self._on_commit is not None:
            self._on_commit()
