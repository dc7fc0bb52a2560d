"""SQLAlchemy's aiosqlite driver with one thread crossing per statement instead of four.

aiosqlite runs each sqlite3 call on a thread of its own and hands the result back through the event
loop. SQLAlchemy's adapter makes four such calls per statement (open a cursor, execute, fetch all,
close), and every crossing costs CPU on both threads (a queue, a futex wake, the loop's self-pipe) and,
on a busy loop, a wait for the GIL and for a turn of the loop. Measured on `select 1`: 372 µs of CPU
per statement through an AsyncSession, 42 µs for one aiosqlite call, 19 µs with the synchronous driver.

Here the cursor is opened, executed, drained and closed in ONE function on aiosqlite's thread. What
SQLAlchemy reads afterwards (description, rowcount, lastrowid) is copied from the sqlite3 cursor before
it closes, and the rows wait in the adapter as they always did. Everything else (connections, commit,
rollback, the pool, aiosqlite's own thread) is the stock driver's; `Database` builds every SQLite engine
with `module=dbapi()`.

A transaction of many short statements that must not wait for turns of a busy loop runs on no thread of aiosqlite's
at all, but through a synchronous pysqlite Session on the loop's thread (`Database.write_inline`, `InlineSession`).
"""

import functools
import sqlite3
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import aiosqlite
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT


@dataclass(slots=True)
class _Finished:
    """What a DBAPI cursor still answers once its statement has run and its rows are taken (arraysize may be set,
    as on any DBAPI cursor)."""

    description: Any
    rowcount: int
    lastrowid: int | None
    arraysize: int = 1

    def close(self) -> None:
        return None


def _run(
    connection: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> tuple[_Finished, list[Any] | None]:
    """On aiosqlite's thread: the whole statement, from cursor to closed cursor."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return _Finished(description, cursor.rowcount, cursor.lastrowid), rows
    finally:
        cursor.close()


class OneCrossingCursor(AsyncAdapt_aiosqlite_cursor):
    """The stock adapter's cursor, but a statement is one call on aiosqlite's thread."""

    __slots__ = ()
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No cursor is opened here (the stock adapter crosses threads to open one): _run opens its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = _Finished(description=None, rowcount=-1, lastrowid=None)  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = deque()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._run_async(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._run_async(operation, seq_of_parameters, many=True)

    async def _run_async(self, operation: Any, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            finished, rows = await connection._execute(_run, connection._conn, operation, parameters, many)
        self._cursor = finished  # type: ignore[assignment]
        if rows is not None:
            self._rows = deque(rows)

    def close(self) -> None:
        self._rows.clear()


class OneCrossingConnection(AsyncAdapt_aiosqlite_connection):
    """The stock adapter's connection, with its cursors; a commit or rollback with no transaction open costs nothing.

    The pool rolls back every connection it is given back unless the Connection closed a transaction itself, so a
    session that committed paid a fourth thread crossing for a rollback of nothing. sqlite3 knows whether a
    transaction is open (`in_transaction`, read on this thread as aiosqlite's own property does).
    """

    __slots__ = ()
    _cursor_cls = OneCrossingCursor  # type: ignore[assignment]

    def _in_transaction(self) -> bool:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        return connection._connection is not None and connection._connection.in_transaction

    def rollback(self) -> None:
        if self._in_transaction():
            super().rollback()

    def commit(self) -> None:
        if self._in_transaction():
            super().commit()


class OneCrossingDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite DBAPI shim whose connections open OneCrossingCursors."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> OneCrossingConnection:
        stock = super().connect(*arg, **kw)
        return OneCrossingConnection(self, stock._connection)


def dbapi() -> OneCrossingDbapi:
    """The `module=` for create_async_engine on a sqlite+aiosqlite URL."""
    return OneCrossingDbapi()


def sqlite_datetime(value: datetime) -> str:
    """A timezone-aware datetime as SQLAlchemy's SQLite DateTime stores it, in UTC: 'YYYY-MM-DD HH:MM:SS.ffffff', no
    offset. For rows written through the driver directly (plain tuples), which must read back as Core's do."""
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]


ROWS_PER_STATEMENT = 500
"""Rows per multi-row INSERT of insert_rows (fewer when a statement would bind more values than SQLite allows)."""

_tracer = trace.get_tracer(__name__)


async def insert_rows(
    connection: aiosqlite.Connection | sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Inserts `rows` (tuples of driver values in the order of `columns`) in the connection's open transaction, in
    one call on aiosqlite's thread, as multi-row INSERTs of ROWS_PER_STATEMENT rows and the rest by executemany.

    executemany steps once per row, and sqlite3 takes the GIL back between the steps: on a busy process each row
    waited for the GIL, and binding row by row cost more CPU than a statement of 500 rows (a release page's
    outreach and outbox rows: ~23 -> ~16 µs per outreach of the inserting thread). The statement of a full chunk
    is always the same text, so sqlite3 prepares it once; the rest goes by executemany, so no statement of
    another size is cached. One CLIENT span per call, as SQLAlchemy's instrumentation gives a statement (and none
    where instrumentation is suppressed, as it gives none there).
    """
    if not is_instrumentation_enabled():
        await _insert(connection, table, columns, rows)
        return
    with _tracer.start_as_current_span(
        f"INSERT {table}",
        kind=trace.SpanKind.CLIENT,
        attributes={"db.system": "sqlite", "db.operation": "INSERT", "db.sql.table": table, "db.rows": len(rows)},
    ):
        await _insert(connection, table, columns, rows)


async def _insert(
    connection: aiosqlite.Connection | sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """insert_values on aiosqlite's thread, or here for a sqlite3 connection on the loop's thread (InlineSession)."""
    if isinstance(connection, sqlite3.Connection):
        insert_values(connection, table, columns, rows)
    else:
        await connection._execute(insert_values, connection._conn, table, columns, rows)


def insert_values(
    connection: sqlite3.Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """What insert_rows runs on aiosqlite's thread, for a sqlite3 connection used directly (the bench's floor)."""
    names = tuple(columns)
    limit = connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per_statement = max(1, min(ROWS_PER_STATEMENT, limit // len(names)))
    full = len(rows) - len(rows) % per_statement if per_statement > 1 else 0
    cursor = connection.cursor()
    try:
        if full:
            statement = _values_statement(table, names, per_statement)
            for first in range(0, full, per_statement):
                cursor.execute(statement, list(chain.from_iterable(rows[first : first + per_statement])))
        if full < len(rows):
            cursor.executemany(_values_statement(table, names, 1), rows[full:])
    finally:
        cursor.close()


@functools.lru_cache(maxsize=64)
def _values_statement(table: str, columns: tuple[str, ...], count: int) -> str:
    row = f"({', '.join('?' for _ in columns)})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join(row for _ in range(count))}"
