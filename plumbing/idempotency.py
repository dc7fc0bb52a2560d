"""request_id idempotency for mutating RPCs: the same caller's same id and payload get the first response back."""

import contextvars
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import Column, DateTime, Index, LargeBinary, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from plumbing.db import Database
from plumbing.errors import Aborted, InvalidArgument
from plumbing.outbox import utcnow

R = TypeVar("R", bound=Message)

UNSCOPED = ""
"""The scope of calls made inside the cluster (the gateway's webhooks, services calling each other, the bulk feeds on
NATS) and of every answer remembered before request ids had scopes (the column's default: a replica of the release
before, still serving during a rollout, writes it too)."""

MAX_SCOPE = 100

request_scope: contextvars.ContextVar[str] = contextvars.ContextVar("xsell_request_scope", default=UNSCOPED)
"""Whose request ids the current call's are; plumbing.grpc_server sets it for each call from the gateway's metadata."""

RequestKey = tuple[str, str]
"""(scope, request_id): what an answer is remembered by."""


def api_key_scope(key_id: str) -> str:
    """The scope of the request ids of calls made with one API key (its public id, never its secret): two CRMs or LOSes
    that number their requests alike never meet each other's answers."""
    return f"api_key:{key_id}"


def scope_in(context: contextvars.Context) -> str:
    """The scope of a call whose context a batch carries (GroupCommit's Submitted.context): a batch is written in a
    context of its own, where `request_scope` is not the call's."""
    return context.get(request_scope, UNSCOPED)


def idempotency_table(metadata: MetaData) -> Table:
    """Responses of mutating RPCs by (method, request_id, scope), written in the same transaction as the change."""
    return Table(
        "idempotency",
        metadata,
        Column("method", String(100), primary_key=True),
        Column("request_id", String(200), primary_key=True),
        # Last in the key: a look-up by request_id finds the caller's row and the unscoped one in one index range.
        Column("scope", String(MAX_SCOPE), primary_key=True, server_default=UNSCOPED),
        Column("request_hash", String(64), nullable=False),
        Column("response", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        # By which the relay's housekeeping forgets answers older than the service's idempotency_keep_days.
        Index("ix_idempotency_created_at", "created_at"),
    )


def request_fingerprint(request: Message) -> str:
    """The hash a request_id's first request is remembered by: the request without its request_id."""
    without_id = type(request)()
    without_id.CopyFrom(request)
    if hasattr(without_id, "request_id"):
        without_id.ClearField("request_id")  # type: ignore[arg-type]
    return hashlib.sha256(without_id.SerializeToString(deterministic=True)).hexdigest()


def require_request_id(request: Message) -> str:
    """The request's request_id; INVALID_ARGUMENT when it is missing or too long."""
    request_id: str = getattr(request, "request_id", "")
    if not request_id:
        raise InvalidArgument(
            "request_id is required: any unique string per intended change, e.g. a UUID", field="request_id"
        )
    if len(request_id) > 200:
        raise InvalidArgument("request_id must be at most 200 characters", field="request_id")
    if "\x00" in request_id:
        # Remembered as text: PostgreSQL refuses a NUL, so such an id worked on SQLite only. Other characters stay
        # the caller's (the gateway derives ids from providers' message ids).
        raise InvalidArgument("request_id holds a NUL character; use text, e.g. a UUID", field="request_id")
    return request_id


class Idempotency:
    """Looks up and records RPC responses by request_id inside the caller's transaction.

    Usage in a servicer, within one transaction:
        if (previous := await idem.previous(session, "CreateLead", request, CreateLeadResponse)):
            return previous
        ... do the work ...
        await idem.remember(session, "CreateLead", request, response)
    A concurrent duplicate fails on the primary key at commit and is retried by the caller.

    Answers are remembered in the call's scope (`request_scope`: the gateway's API key, or UNSCOPED), and a call finds
    only its own scope's answers, and an unscoped one to exactly the same request: that is an answer remembered
    before request ids had scopes (a retry across the upgrade gets it, and is not applied twice), or a bulk feed's
    batch sent again through the gateway. An unscoped answer to another request is not the caller's, and is ignored.
    The async methods read the scope themselves; the synchronous ones, which may run on another thread, and the
    batch methods, whose calls come from many callers, are given each call's scope.
    """

    def __init__(self, table: Table) -> None:
        self.table = table

    async def previous(self, session: AsyncSession, method: str, request: Message, response_type: type[R]) -> R | None:
        return await session.run_sync(self.previous_sync, method, request, response_type, request_scope.get())

    def previous_sync(
        self, session: Session, method: str, request: Message, response_type: type[R], scope: str
    ) -> R | None:
        """previous() for a synchronous Session (Database.run_in_transaction's work)."""
        request_id = require_request_id(request)
        stored = self.stored_sync(session, method, [(scope, request)]).get((scope, request_id))
        if stored is None:
            return None
        answer = self.answer(method, request, stored, response_type)
        if isinstance(answer, Aborted):
            raise answer
        return answer

    def stored_sync(
        self, session: Session, method: str, requests: Sequence[tuple[str, Message]]
    ) -> dict[RequestKey, tuple[str, bytes]]:
        """The stored (request hash, response) of each (scope, request) already answered, by (scope, request_id), in
        one query: its scope's, else the unscoped one when it answered exactly this request."""
        by_key: dict[RequestKey, list[Message]] = {}
        for scope, request in requests:
            by_key.setdefault((scope, getattr(request, "request_id", "")), []).append(request)
        if not by_key:
            return {}
        rows = session.execute(
            select(self.table.c.scope, self.table.c.request_id, self.table.c.request_hash, self.table.c.response).where(
                self.table.c.method == method,
                self.table.c.request_id.in_(sorted({request_id for _, request_id in by_key})),
                self.table.c.scope.in_(sorted({scope for scope, _ in by_key} | {UNSCOPED})),
            )
        )
        found = {(row.scope, row.request_id): (row.request_hash, row.response) for row in rows}
        stored = {}
        for (scope, request_id), asking in by_key.items():
            if (own := found.get((scope, request_id))) is not None:
                stored[scope, request_id] = own
            elif (unscoped := found.get((UNSCOPED, request_id))) is not None and any(
                unscoped[0] == request_fingerprint(request) for request in asking
            ):
                stored[scope, request_id] = unscoped
        return stored

    @staticmethod
    def answer(method: str, request: Message, stored: tuple[str, bytes], response_type: type[R]) -> R | Aborted:
        """The stored answer to `request`, or the Aborted to raise when its request_id was used for another request."""
        request_hash, response = stored
        if request_hash != request_fingerprint(request):
            return Aborted(
                f"request_id {getattr(request, 'request_id', '')!r} was already used for a different {method} request; "
                "use a new request_id for a different change",
                field="request_id",
            )
        return response_type.FromString(response)

    async def remember(self, session: AsyncSession, method: str, request: Message, response: Message) -> None:
        await session.run_sync(self.remember_sync, method, request, response, request_scope.get())

    def remember_sync(self, session: Session, method: str, request: Message, response: Message, scope: str) -> None:
        """remember() for a synchronous Session."""
        self.remember_many_sync(session, method, [(scope, request, response)])

    async def previous_many(
        self, session: AsyncSession, method: str, requests: Sequence[tuple[str, Message]], response_type: type[R]
    ) -> dict[RequestKey, R | Aborted]:
        """previous() for many (scope, request) with distinct (scope, request_id) in one query: by (scope, request_id),
        the stored answer, or the Aborted to raise when the id was used for a different request; ids not seen yet are
        left out."""
        by_key = {(scope, getattr(request, "request_id", "")): request for scope, request in requests}
        stored = await session.run_sync(self.stored_sync, method, requests)
        return {key: self.answer(method, by_key[key], row, response_type) for key, row in stored.items()}

    async def remember_many(
        self, session: AsyncSession, method: str, answered: Sequence[tuple[str, Message, Message]]
    ) -> None:
        """remember() for many (scope, request, response) in one statement."""
        await session.run_sync(self.remember_many_sync, method, answered)

    def remember_many_sync(
        self, session: Session, method: str, answered: Sequence[tuple[str, Message, Message]]
    ) -> None:
        """remember_many() for a synchronous Session."""
        if not answered:
            return
        now = utcnow()
        session.execute(
            insert(self.table),
            [
                {
                    "method": method,
                    "request_id": request.request_id,  # type: ignore[attr-defined]
                    "scope": scope,
                    "request_hash": request_fingerprint(request),
                    "response": response.SerializeToString(),
                    "created_at": now,
                }
                for scope, request, response in answered
            ],
        )

    async def once_in(
        self,
        session: AsyncSession,
        method: str,
        request: Message,
        response_type: type[R],
        work: Callable[[AsyncSession], Awaitable[R]],
    ) -> R:
        """Runs `work(session)` once per request_id in the caller's transaction (a consumer's, beside its inbox claim),
        and remembers its answer there; a request_id answered before gets the first answer and runs nothing."""
        if (previous := await self.previous(session, method, request, response_type)) is not None:
            return previous
        response = await work(session)
        await self.remember(session, method, request, response)
        return response

    async def run_once(
        self,
        db: Database,
        method: str,
        request: Message,
        response_type: type[R],
        work: Callable[[AsyncSession], Awaitable[R]],
    ) -> R:
        """Runs `work(session)` in one transaction, once per request_id, and remembers its answer.

        A retry gets the first answer; a concurrent duplicate that lost the race on the primary key
        gets the winner's answer instead of an error.
        """
        try:
            async with db.transaction() as session:
                return await self.once_in(session, method, request, response_type, work)
        except IntegrityError:
            async with db.transaction() as session:
                previous = await self.previous(session, method, request, response_type)
            if previous is None:
                raise
            return previous
