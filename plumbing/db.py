"""One async SQLAlchemy engine per service database, its sessions, and its Alembic migrations."""

import asyncio
import contextlib
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog
from alembic import command
from alembic.config import Config
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import DateTime, Table, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from plumbing import sqlite_async
from plumbing.settings import ServiceSettings
from plumbing.sqlite_checkpoints import WAL_AUTOCHECKPOINT_PAGES, WalCheckpointer
from plumbing.sqlite_plans import plan_for
from plumbing.telemetry import StatementSpans

T = TypeVar("T")

log = structlog.get_logger(__name__)


class Database:
    """A service's own database: SQLite under var/ by default, PostgreSQL in production."""

    def __init__(self, url: str, *, pool_size: int = 10, checkpoint_interval: float = 0.0) -> None:
        """`checkpoint_interval` > 0 (a SQLite file): its write-ahead log is checkpointed by a thread of its own that
        often (WalCheckpointer) instead of by whichever commit passes 1,000 pages; dispose() stops the thread."""
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        if self.is_sqlite and self.url.get_driver_name() == "aiosqlite":
            kwargs["module"] = sqlite_async.dbapi()
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._engine_options = kwargs
        self._sqlite_file = self.is_sqlite and bool(self.url.database) and self.url.database != ":memory:"
        # The loop this process's writers last ran on, and the checkpoint the checkpoint thread asked it for (SQLite).
        self._writers_loop: asyncio.AbstractEventLoop | None = None
        self._restart: asyncio.Task[None] | None = None
        self._restart_connection: sqlite3.Connection | None = None
        self._checkpoints: WalCheckpointer | None = None
        if self._sqlite_file and checkpoint_interval > 0:
            assert self.url.database is not None
            self._checkpoints = WalCheckpointer(self.url.database, checkpoint_interval, restart=self._restart_log_soon)
        if self.is_sqlite:
            self._as_sqlite(self.engine.sync_engine)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer and every transaction here is BEGIN IMMEDIATE: this process's transactions
        # queue on a lock of its own, in arrival order, instead of polling the file lock in the busy
        # handler (which sleeps up to 100 ms between tries and serves waiters in no order).
        self._sqlite_writer = asyncio.Lock() if self.is_sqlite else None
        # For run_in_transaction on a SQLite file: a pysqlite engine used from one thread of its own, made on first use.
        self._sync_sessions: sessionmaker[Session] | None = None
        self._sync_thread: ThreadPoolExecutor | None = None
        # For read_in_thread on a SQLite file: the same, for reads (BEGIN DEFERRED), beside the writer.
        self._reader_sessions: sessionmaker[Session] | None = None
        self._reader_thread: ThreadPoolExecutor | None = None
        # For run_inline, write_inline and read_inline on a SQLite file: a pysqlite engine used on the loop's thread,
        # and the connection kept for the writes among them (_inline_writes).
        self._inline_sync_sessions: sessionmaker[Session] | None = None
        self._inline_writer: Connection | None = None
        # For keep_connection (PostgreSQL): the connections kept out of the pool, closed by dispose.
        self._kept: list[KeptConnection] = []
        # One CLIENT span per statement, under whatever span issued it (the process's tracer provider); none for a
        # statement outside any span (StatementSpans). The instrumentation declares SQLAlchemy < 2.1, but the engine
        # events it hooks are unchanged in 2.1.
        SQLAlchemyInstrumentor().instrument(
            engine=self.engine.sync_engine,
            enable_commenter=False,
            skip_dep_check=True,
            tracer_provider=StatementSpans(),
        )

    @classmethod
    def of_service(cls, settings: ServiceSettings, service: str) -> "Database":
        """A service process's own database, as its settings say (the URL; on SQLite, the log's checkpoints)."""
        return cls(
            settings.resolved_database_url(service), checkpoint_interval=settings.sqlite_checkpoint_interval_seconds
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed when the block ends, rolled back on error."""
        if self._sqlite_writer is None:
            async with self.sessions() as session, session.begin():
                yield session
            return
        async with self._writers(), self.sessions() as session, session.begin():
            yield session

    async def run_in_transaction(self, work: Callable[[Session], T]) -> T:
        """`work(session)` with a synchronous Session inside one transaction, committed when it returns.

        On a SQLite file the whole transaction is one call to a thread of its own (a pysqlite connection, taken in
        this process's writer order like `transaction`): through aiosqlite every statement crosses to its thread and
        back, and on a busy event loop each crossing waits for a turn of the loop, so a transaction of five
        statements spent most of its time between its statements. Its statements get no spans of their own.
        Elsewhere `work` runs in the async session's greenlet, statement by statement.
        """
        if self._sqlite_writer is None or not self._sqlite_file:
            async with self.transaction() as session:
                return await session.run_sync(work)
        if self._sync_thread is None:
            self._sync_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        thread = self._sync_thread
        return await self._in_writer_turn(
            lambda: asyncio.get_running_loop().run_in_executor(thread, self._run_sync, work)
        )

    async def run_inline(self, work: Callable[[Session], T]) -> T:
        """run_in_transaction's `work`, on a SQLite file called right here, on the loop's thread, in this process's
        writer order: the loop waits for the transaction instead of a thread of its own running it.

        For a short hot transaction (the channels ledger's): in the writer thread its statements handed the
        interpreter lock back and forth with the busy loop at every step while the transaction held the write lock
        (a ledger transaction of 0.3-1.2 ms of CPU took 6.6-10.5 ms in its statements). A statement that waits for
        SQLite's lock (another process writing the file) blocks the loop up to the busy timeout; this process's own
        writers never hold it meanwhile. Its statements get no spans of their own. Elsewhere as run_in_transaction.
        """
        if self._sqlite_writer is None or not self._sqlite_file:
            return await self.run_in_transaction(work)
        async with self._writers():
            with suppress_instrumentation(), self._inline_writes() as session, session.begin():
                return work(session)

    def keep_connection(self) -> "KeptConnection":
        """PostgreSQL: an autocommit connection kept for one stream of writes, closed with the database."""
        if self.is_sqlite:
            raise RuntimeError("a kept connection is for PostgreSQL; on SQLite a write goes through run_inline")
        kept = KeptConnection(self.engine)
        self._kept.append(kept)
        return kept

    async def read_in_thread(self, work: Callable[[Session], T]) -> T:
        """`work(session)` with a synchronous Session in a `snapshot`: on a SQLite file one call to a reader thread
        of its own (a pysqlite connection, BEGIN DEFERRED: beside the writer, never waiting for it).

        For a hot read on a busy event loop: through aiosqlite its BEGIN, statements and end each cross to a
        thread and back, and each return waits for a turn of the loop behind whatever else is ready (the outbox
        relay's read of what a trigger batch had just committed waited behind the batch's acknowledgements).
        Here the loop is waited for once. Its statements get no spans of their own. Elsewhere `work` runs in
        the async snapshot's greenlet.
        """
        if not self._sqlite_file:
            async with self.snapshot() as session:
                return await session.run_sync(work)
        if self._reader_thread is None:
            self._reader_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        return await asyncio.get_running_loop().run_in_executor(self._reader_thread, self._read_sync, work)

    def _read_sync(self, work: Callable[[Session], T]) -> T:
        if self._reader_sessions is None:
            engine = create_engine(self.url.set(drivername="sqlite"))
            self._as_sqlite(engine)
            self._reader_sessions = sessionmaker(engine)
        # No spans: in this thread there is no current span, and SQLAlchemy's instrumentation would open a root
        # "connect" span per transaction (Engine.connect is wrapped for every engine).
        with suppress_instrumentation(), self._reader_sessions() as session, session.begin():
            session.connection(execution_options={_SQLITE_DEFERRED: True})
            return work(session)

    async def _in_writer_turn(self, start: Callable[[], "asyncio.Future[T]"]) -> T:
        """What `start` starts in another thread, begun in this process's writer order; the writer lock is held
        until its transaction has ended, even when the caller is cancelled meanwhile."""
        async with self._writers():
            written = start()
            try:
                return await asyncio.shield(written)
            finally:
                if not written.done():
                    await asyncio.wait([written])

    def _writers(self) -> asyncio.Lock:
        """This process's writer order on SQLite (one transaction writes at a time), noting the loop it is on."""
        assert self._sqlite_writer is not None
        self._writers_loop = asyncio.get_running_loop()
        return self._sqlite_writer

    def _restart_log_soon(self) -> None:
        """From the checkpoint thread: one more checkpoint, in the writers' turn on their loop, unless one is on its way
        (see WalCheckpointer). Nothing before a writer has run, nor once the loop is closed."""
        loop = self._writers_loop
        if loop is None or self._restart is not None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing writes any more
            loop.call_soon_threadsafe(self._start_restart)

    def _start_restart(self) -> None:
        if self._restart is None:
            self._restart = asyncio.get_running_loop().create_task(self._restart_log(), name="sqlite-log-restart")

    async def _restart_log(self) -> None:
        """A checkpoint where no commit lands meanwhile: what the checkpoint thread's last one left (what was committed
        while it ran) is copied, so the next commit writes the log from its start again. It runs on the loop, in the
        writers' turn: 2-4 ms in the trigger bench (a few dozen pages and two syncs). In the thread, holding the turn,
        it would also wait for the interpreter lock behind the busy loop after each step. PASSIVE: a reader on an
        older snapshot is not waited for, and the log restarts at a later try."""
        try:
            async with self._writers():
                if self._restart_connection is None:
                    assert self.url.database is not None
                    self._restart_connection = sqlite3.connect(self.url.database, isolation_level=None)
                self._restart_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as error:
            log.warning("sqlite_log_restart_failed", error=str(error))
        finally:
            self._restart = None

    async def write_inline(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`await work(session)` inside one transaction, committed when it returns.

        On a SQLite file the session is an InlineSession: its statements run right where they are awaited, on the
        caller's thread, through a synchronous pysqlite Session (run_inline's engine), in this process's writer order
        (`transaction`'s lock), so a statement never waits for a turn of the loop and the loop waits for it instead.
        For a hot transaction of many short statements (a trigger batch's): through aiosqlite each statement crossed
        to its thread and back and waited for a turn of the busy loop while the transaction held the write lock; on an
        event loop in a thread of its own (measured before this) the two threads handed the interpreter lock to each
        other at every statement; through an async engine whose driver crossed no thread, each statement still spawned
        a greenlet and went through the async adapter (~110 µs of CPU per prebuilt SELECT, against ~52 µs here). The
        work's statements get no spans of their own: the caller's span covers the transaction (a trigger batch made
        ~14 statement spans, ~50 µs each). A statement that waits for SQLite's lock (another process writing the
        file) blocks the loop up to the busy timeout; this process's own writers never hold it meanwhile. Elsewhere it
        runs as `transaction`.
        """
        if self._sqlite_writer is None or not self._sqlite_file:
            async with self.transaction() as session:
                return await work(session)
        async with self._writers():
            return await self._inline(work)

    async def read_inline(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`await work(session)` in a `snapshot`, its statements run as write_inline's (WAL: a reader does not wait
        for the writer, so the loop never waits for a lock here). Elsewhere it runs as `snapshot`."""
        if not self._sqlite_file:
            async with self.snapshot() as session:
                return await work(session)
        return await self._inline(work, snapshot=True)

    async def _inline(self, work: Callable[[AsyncSession], Awaitable[T]], *, snapshot: bool = False) -> T:
        sessions = self._inline_sync_sessions_made() if snapshot else self._inline_writes
        with suppress_instrumentation(), sessions() as session, session.begin():
            if snapshot:
                session.connection(execution_options={_SQLITE_DEFERRED: True})
            return await work(InlineSession(session))

    def _inline_writes(self) -> Session:
        """A Session on the pysqlite connection kept for write_inline's and run_inline's transactions. Both run in
        this process's writer order (`_sqlite_writer`), one at a time, so one connection serves them all, and a
        transaction skips the pool's check-out and its reset on return (a transaction of one statement ~165 -> ~82 µs
        of CPU in a loop). Reads (read_inline) keep the pool's connections: a snapshot's options would stay on a kept
        connection. A connection that failed is replaced, and one left inside a transaction (a rollback that failed)
        too: a Session would join that transaction rather than begin its own, and its commit would commit nothing."""
        writer = self._inline_writer
        if writer is not None and not (writer.closed or writer.invalidated) and writer.in_transaction():
            writer.close()
        if writer is None or writer.closed or writer.invalidated:
            writer = self._inline_writer = self._inline_sync_sessions_made().kw["bind"].connect()
        return Session(bind=writer, expire_on_commit=False)

    def _inline_sync_sessions_made(self) -> "sessionmaker[Session]":
        """run_inline's, write_inline's and read_inline's pysqlite engine, used on the loop's thread only."""
        if self._inline_sync_sessions is None:
            engine = create_engine(self.url.set(drivername="sqlite"))
            self._as_sqlite(engine)
            self._inline_sync_sessions = sessionmaker(engine, expire_on_commit=False)
        return self._inline_sync_sessions

    def _run_sync(self, work: Callable[[Session], T]) -> T:
        if self._sync_sessions is None:
            engine = create_engine(self.url.set(drivername="sqlite"))
            self._as_sqlite(engine)
            self._sync_sessions = sessionmaker(engine, expire_on_commit=False)
        with suppress_instrumentation(), self._sync_sessions() as session, session.begin():  # no spans, as above
            return work(session)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncSession]:
        """A read-only session whose statements all see one committed state of the database.

        For reads of several statements that must agree with each other (a funnel and its costs, a report's
        rows and its total): under PostgreSQL's default READ COMMITTED each statement would see the commits
        made since the last one. PostgreSQL runs it REPEATABLE READ READ ONLY; SQLite in WAL mode gives a
        deferred transaction one snapshot from its first read, and it does not wait behind this process's writers.
        """
        if self.is_sqlite:
            options: dict[str, Any] = {_SQLITE_DEFERRED: True}
        else:
            options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        async with self.sessions() as session, session.begin():
            await session.connection(execution_options=options)
            yield session

    async def migrate(
        self, migrations_dir: Path, revision: str = "head", *, lock_timeout: timedelta | None = None
    ) -> None:
        """Applies the service's Alembic migrations up to `revision` (head), in one transaction.

        On PostgreSQL with `lock_timeout`, a statement that waits longer than that for a table's lock fails (55P03)
        and the transaction with it, nothing applied: a rollout's migration runs while the old pods still serve, and
        an ALTER waiting behind their open transactions would hold every write to that table behind it meanwhile.

        On SQLite with foreign keys off while they run, then checked, as SQLite's own procedure for rebuilding a table
        has it (alembic's batch mode copies a table, drops it and renames the copy): with them on, dropping a table
        other tables refer to deletes its rows first, and fails ("FOREIGN KEY constraint failed") on a ledger that
        holds any. The pragma cannot change inside a transaction, so it is set outside one."""
        if not self.is_sqlite:
            async with self.engine.begin() as connection:
                if lock_timeout is not None:
                    milliseconds = max(1, int(lock_timeout.total_seconds() * 1000))
                    await connection.exec_driver_sql(f"SET LOCAL lock_timeout = {milliseconds}")
                await connection.run_sync(_upgrade, migrations_dir, revision)
            return
        async with self.engine.connect() as connection:
            await _sqlite_foreign_keys(connection, on=False)
            try:
                async with connection.begin():
                    await connection.run_sync(_upgrade, migrations_dir, revision)
                    dangling = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
                    if dangling:
                        tables = sorted({str(row[0]) for row in dangling})
                        raise RuntimeError(
                            f"the migration to {revision} left {len(dangling)} rows of {', '.join(tables)} "
                            "referring to rows that are gone; nothing was changed"
                        )
            finally:
                await _sqlite_foreign_keys(connection, on=True)

    def _as_sqlite(self, engine: Engine) -> None:
        """_as_sqlite, and when a thread checkpoints the log, the connections' own checkpoint left as a backstop."""
        _as_sqlite(engine)
        if self._checkpoints is not None:
            event.listen(engine, "connect", _backstop_checkpoints)

    async def dispose(self) -> None:
        if self._checkpoints is not None:
            await asyncio.to_thread(self._checkpoints.stop)
        if self._restart is not None:
            await asyncio.wait([self._restart])
        if self._restart_connection is not None:
            self._restart_connection.close()
            self._restart_connection = None
        for kept in self._kept:
            await kept.close()
        await self.engine.dispose()
        if self._inline_writer is not None:
            self._inline_writer.close()
            self._inline_writer = None
        if self._inline_sync_sessions is not None:
            self._inline_sync_sessions.kw["bind"].dispose()
            self._inline_sync_sessions = None
        if self._sync_thread is not None:
            await _stop_thread(self._sync_thread, self._sync_sessions)
            self._sync_thread, self._sync_sessions = None, None
        if self._reader_thread is not None:
            await _stop_thread(self._reader_thread, self._reader_sessions)
            self._reader_thread, self._reader_sessions = None, None


class InlineSession(AsyncSession):
    """An AsyncSession over a synchronous Session on the loop's thread (Database.write_inline, read_inline): awaiting
    `execute` runs the statement at once, with no greenlet spawned for it and no async adapter under it.

    What the async code of a transaction asks of its session: `execute`, `bind` (its dialect), `connection()` (the
    dialect and the driver's connection, for rows written through the driver), `sync_session` (events after commit).
    Any other AsyncSession method runs the synchronous Session's through greenlet_spawn, as AsyncSession's own do;
    with a synchronous driver nothing in it awaits.
    """

    def __init__(self, session: Session) -> None:  # no async engine to build a session on: it is given one
        self.sync_session = self._proxied = session
        self._async_bind = None
        self._async_binds = {}
        self._connection: Connection | None = None

    @property  # type: ignore[misc, override]
    def bind(self) -> Any:
        """The synchronous engine (its dialect is what callers read)."""
        return self.sync_session.bind

    async def execute(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if kwargs or _orm_enabled(statement):
            return self.sync_session.execute(statement, params, **kwargs)
        # Core statements (every service's tables are Core Tables) through the transaction's Connection: the same
        # result without the Session's ORM dispatch (~52 -> ~41 µs for a prebuilt SELECT).
        if self._connection is None:
            self._connection = self.sync_session.connection()
        # A prebuilt statement, from its second run, straight on the driver (plumbing.sqlite_plans: ~41 -> ~14 µs
        # for a prebuilt UNION of two IN look-ups, ~17 -> ~3.4 µs for a counter's UPDATE).
        plan = plan_for(statement, params, self._connection.dialect)
        if plan is not None:
            driver = self._connection.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)  # an InlineSession's engine is pysqlite's
            return plan.run(driver, params)
        return self._connection.execute(statement, params)

    async def connection(self, **kwargs: Any) -> Any:  # type: ignore[override]
        return InlineConnection(self.sync_session.connection(**kwargs))


def _orm_enabled(statement: Any) -> bool:
    """Whether a statement names ORM entities (then only the Session can run it)."""
    return bool(getattr(statement, "_propagate_attrs", {}).get("compile_state_plugin") == "orm")


class InlineConnection:
    """What InlineSession.connection() gives: the synchronous Connection's dialect, and its driver connection awaitable
    as an AsyncConnection's is."""

    def __init__(self, connection: Connection) -> None:
        self.sync_connection = connection
        self.dialect = connection.dialect

    async def get_raw_connection(self) -> Any:
        return self.sync_connection.connection


class KeptConnection:
    """A PostgreSQL connection kept out of the pool for one stream of writes, each statement committing on its own
    (autocommit), for plain SQL (`exec_driver_sql`, prepared once per connection by asyncpg) that holds a whole
    transaction in one statement.

    For a hot write on a busy event loop, where every round trip to the server waits for a turn of the loop: a
    transaction of separate statements pays BEGIN and COMMIT round trips besides its statements, and a checkout from
    the pool pays a ping (pool_pre_ping) and the pool's own work. Writes take turns on it. A write that fails
    discards the connection (it may have been lost, or left mid-statement) and the next one checks out another.
    Its statements get no spans of their own (the caller's span covers them).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._turn = asyncio.Lock()

    @asynccontextmanager
    async def use(self) -> AsyncIterator[AsyncConnection]:
        async with self._turn:
            with suppress_instrumentation():
                if self._connection is None:
                    connection = await self._engine.connect()
                    self._connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                try:
                    yield self._connection
                except BaseException:
                    connection, self._connection = self._connection, None
                    await connection.invalidate()
                    await connection.close()
                    raise

    async def close(self) -> None:
        async with self._turn:
            if self._connection is not None:
                connection, self._connection = self._connection, None
                await connection.close()


async def _stop_thread(thread: ThreadPoolExecutor, sessions: "sessionmaker[Session] | None") -> None:
    """Disposes the engine a database's thread of its own used (on that thread), then ends the thread."""
    if sessions is not None:
        engine = sessions.kw["bind"]
        await asyncio.get_running_loop().run_in_executor(thread, engine.dispose)
    thread.shutdown(wait=True)


def _upgrade(connection: Connection, migrations_dir: Path, revision: str = "head") -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def _sqlite_foreign_keys(connection: AsyncConnection, *, on: bool) -> None:
    """PRAGMA foreign_keys on this connection, outside any transaction (inside one SQLite ignores it): no BEGIN is
    issued for it (_sqlite_begin), and the transaction SQLAlchemy opened around it in name only is closed."""
    await connection.execution_options(**{_SQLITE_NO_BEGIN: True})
    try:
        await connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
        await connection.commit()
    finally:
        await connection.execution_options(**{_SQLITE_NO_BEGIN: False})


def _as_sqlite(engine: Engine) -> None:
    """Every engine on a service's SQLite file: its pragmas on each new connection, and BEGIN issued by us.

    pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT; SQLAlchemy emits BEGIN IMMEDIATE itself
    so writers queue on the lock instead of failing late (BEGIN DEFERRED for a snapshot).
    """
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _sqlite_begin)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes writers wait, not fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _backstop_checkpoints(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cursor.close()


_SQLITE_DEFERRED = "xsell_sqlite_deferred"


_SQLITE_NO_BEGIN = "xsell_sqlite_no_begin"


def _sqlite_begin(connection: Connection) -> None:
    if connection.get_execution_options().get(_SQLITE_NO_BEGIN, False):
        return  # a pragma that must run outside a transaction (_sqlite_foreign_keys)
    deferred = connection.get_execution_options().get(_SQLITE_DEFERRED, False)
    statement = "BEGIN DEFERRED" if deferred else "BEGIN IMMEDIATE"
    driver = connection.connection.driver_connection
    if isinstance(driver, sqlite3.Connection):
        # pysqlite's connections (the inline and thread engines): straight on the driver. Through exec_driver_sql
        # SQLAlchemy's execution context cost more than the BEGIN itself (~5% of a one-entry trigger transaction).
        run_on_driver(driver, statement, ())
    else:
        connection.exec_driver_sql(statement)


def after_commit(session: AsyncSession, action: Callable[[], None]) -> None:
    """Runs `action` once this session's transaction has committed, never when it rolls back: the place for
    effects outside the database that must only follow durable changes (metrics, in-memory caches)."""
    event.listen(session.sync_session, "after_commit", lambda _session: action(), once=True)


# SQLSTATEs of conflicts a retry resolves: serialization failure, deadlock, lock not available.
_RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}


def transient_failure(error: BaseException) -> str | None:
    """Why a database error is worth retrying (a lock wait that timed out, a deadlock, a lost connection), or None."""
    if not isinstance(error, DBAPIError):
        return None
    if error.connection_invalidated:
        return "the database connection was lost"
    original = error.orig
    if isinstance(error, OperationalError) and "database is locked" in str(original):
        return "the database stayed locked by another writer past the busy timeout"
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return f"the database resolved a conflict with a concurrent transaction (SQLSTATE {sqlstate})"
    return None


def in_values(values: Sequence[T]) -> list[T]:
    """`values` for an expanding IN, padded to the next power of two by repeating the last one (an IN is a set, so
    the copies change nothing): a list of any length then renders one of ~11 statements up to 1,000 values.

    Each length renders a statement text of its own, and the driver keeps the last 128 it prepared per connection
    (pysqlite's cached_statements; asyncpg's cache likewise): the outbox relay's marks of 1-1,000 seqs kept up to
    ~20 MiB of prepared statements on one SQLite connection (128 of ~900-1,000 values, measured with sqlite3 alone).
    """
    if not values:
        return []
    padded = list(values)
    size = 1 << (len(padded) - 1).bit_length()
    padded.extend([padded[-1]] * (size - len(padded)))
    return padded


_SQLITE_DRIVER_KEY = "xsell_sqlite_driver"


def sqlite_driver(session: Session | AsyncSession) -> sqlite3.Connection | None:
    """The pysqlite connection under the session's transaction, for a hot statement run on it directly; None where
    there is none (PostgreSQL, the aiosqlite adapter, an AsyncSession other than an InlineSession). Looked up once per
    transaction.

    On a SQLite file, Database.run_inline / write_inline / read_inline and run_in_transaction run on pysqlite engines.
    A statement through Connection.exec_driver_sql costs ~10 µs of SQLAlchemy (execution context, events, result
    wrapping) and a Core statement with its compiled cache more; the driver's own call ~1 µs. Run statements on it with
    run_on_driver, so errors still reach transient_failure as SQLAlchemy raises them.
    """
    if isinstance(session, AsyncSession):
        if not isinstance(session, InlineSession):
            return None
        session = session.sync_session

    def find(sync: Session) -> sqlite3.Connection | None:
        connection = sync.connection()
        driver = connection.connection.driver_connection if connection.dialect.name == "sqlite" else None
        return driver if isinstance(driver, sqlite3.Connection) else None

    return per_transaction(session, _SQLITE_DRIVER_KEY, find)


def per_transaction(session: Session | AsyncSession, key: str, make: Callable[[Session], T]) -> T:
    """What `make(session)` gave in the session's current transaction, kept in the session's info under `key` for
    that transaction only (the next one makes its own). Nothing is kept while no transaction has begun.

    The transaction is held by weak reference: held in the session's own info, it made a reference cycle (session,
    info, transaction, session) of ~47 objects per transaction, which only the collector could free (a
    young-generation pass every ~1.6 s at 1,000 trigger entries/s, 10-13 ms each on the loop).
    """
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    transaction = sync.get_transaction()
    known = sync.info.get(key)
    if known is not None and transaction is not None and known[0]() is transaction:
        return known[1]  # type: ignore[no-any-return]
    value = make(sync)
    transaction = sync.get_transaction()  # `make` may have begun it
    if transaction is not None:
        sync.info[key] = (weakref.ref(transaction), value)
    return value


def run_on_driver(connection: sqlite3.Connection, statement: str, parameters: Sequence[Any]) -> sqlite3.Cursor:
    """One statement on the driver's connection (a list of rows: executemany), its errors raised as SQLAlchemy raises
    them (DBAPIError), so transient_failure still tells a lock timeout from a lasting failure."""
    try:
        if isinstance(parameters, list):
            return connection.executemany(statement, parameters)
        return connection.execute(statement, parameters)
    except sqlite3.Error as error:
        raise DBAPIError.instance(statement, parameters, error, sqlite3.Error) from error


def dialect_of(session: AsyncSession) -> str:
    """ "postgresql" or "sqlite": the backend the session talks to."""
    return session.bind.dialect.name if session.bind is not None else "sqlite"


def upsert_insert(session: AsyncSession, table: Table) -> Any:
    """An INSERT for the session's dialect that supports on_conflict_do_nothing / do_update."""
    return (pg_insert if dialect_of(session) == "postgresql" else sqlite_insert)(table)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out on every backend; SQLite keeps no offset, so naive reads are UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: xsell stores timezone-aware UTC only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
