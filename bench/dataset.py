"""Loads the generated population straight into the segments service's tables, and caches it under var/bench/.

Setup, not measurement: the schema comes from the service's own migrations, secondary indexes are
dropped while rows are bulk-inserted (sqlite3 executemany, asyncpg COPY) and rebuilt afterwards,
then the tables are analysed. A finished dataset gets a manifest; a run with the same scale and
seed reuses it, and every measured run works on a copy (file copy / CREATE DATABASE … TEMPLATE).
"""

import asyncio
import hashlib
import json
import multiprocessing
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

import services.segments
from bench import generator
from bench.postgres import BenchPostgres
from plumbing.db import Database
from services.segments import store

# Bump when the generator or the load changes shape, so stale caches are rebuilt.
DATASET_VERSION = 1
# The dataset is stamped at the first revision: the tables it fills. The service's start-up (and the
# recompute figure) apply the later revisions to each working copy, so a new migration from the
# other sides of issue 3 does not invalidate a cached million-person dataset.
BASE_REVISION = "0001"
# The service's own migrations (app.MIGRATIONS), without importing its composition root.
MIGRATIONS = Path(services.segments.__file__).parent / "migrations"
BULK_TABLES = (store.profile_attributes, store.events)


@dataclass(frozen=True)
class Manifest:
    """What a cached dataset holds and how long it took to build."""

    version: int
    schema: str
    scale: float
    seed: int
    anchor: str
    profiles: int
    attribute_rows: int
    events: int
    generate_and_insert_s: float
    index_s: float
    total_s: float
    built_at: str
    note: str = ""

    @property
    def anchor_time(self) -> datetime:
        return datetime.fromisoformat(self.anchor)


def _read_manifest(path: Path, spec: generator.Spec) -> Manifest | None:
    if not path.exists():
        return None
    try:
        manifest = Manifest(**json.loads(path.read_text()))
    except (TypeError, ValueError):
        return None
    if (manifest.version, manifest.schema) != (DATASET_VERSION, base_schema()):
        return None
    if manifest.scale != spec.scale or manifest.seed != spec.seed:
        return None
    return manifest


def base_schema() -> str:
    """A fingerprint of the base revision's migration: a change to it means the cache is stale."""
    (initial,) = (MIGRATIONS / "versions").glob(f"{BASE_REVISION}_*.py")
    return hashlib.sha256(initial.read_bytes()).hexdigest()[:16]


def _upgrade_to(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def migrate(url: str, revision: str = "head") -> None:
    """Applies the service's migrations up to `revision` (head: what the service itself would do)."""
    database = Database(url)
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(_upgrade_to, revision)
    finally:
        await database.dispose()


def _write_manifest(path: Path, manifest: Manifest) -> None:
    path.write_text(json.dumps(asdict(manifest), indent=2) + "\n")


# --- generation in worker processes ------------------------------------------------------------


@dataclass(frozen=True)
class LoadBlock:
    """One block's rows in the form the backend's bulk insert takes."""

    profiles: int
    attributes: list[generator.AttributeRow]
    events: list[tuple[Any, ...]]


_worker: dict[str, Any] = {}


def _init_worker(spec: generator.Spec, counts: list[int], backend: str) -> None:
    _worker.update(spec=spec, counts=counts, backend=backend)


def _make_block(index: int) -> LoadBlock:
    block = generator.block(_worker["spec"], index, _worker["counts"])
    events: list[tuple[Any, ...]]
    if _worker["backend"] == "sqlite":
        events = [
            (eid, pid, name, stamp, props, stamp)
            for eid, pid, name, at, props in block.events
            for stamp in (sqlite_time(at),)
        ]
    else:
        events = [
            (eid, pid, name, moment, props, moment)
            for eid, pid, name, at, props in block.events
            for moment in (generator.anchor_datetime(at),)
        ]
    return LoadBlock(len(block.profile_ids), block.attributes, events)


def load_blocks(spec: generator.Spec, backend: str, workers: int) -> Iterator[tuple[int, LoadBlock]]:
    """(first profile index, rows) per block in order, made by `workers` processes while the caller inserts."""
    counts = generator.event_counts(spec)
    if workers <= 1 or spec.blocks == 1:
        _init_worker(spec, counts, backend)
        for index in range(spec.blocks):
            yield index * generator.BLOCK, _make_block(index)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=(spec, counts, backend)) as pool:
        for index, rows in enumerate(pool.imap(_make_block, range(spec.blocks))):
            yield index * generator.BLOCK, rows


_days: dict[int, str] = {}


def sqlite_time(epoch: int) -> str:
    """SQLAlchemy's SQLite DateTime storage format (tests check it against the dialect)."""
    day, second = divmod(epoch, 86_400)
    date = _days.get(day)
    if date is None:
        date = _days[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))
    hour, rest = divmod(second, 3600)
    return f"{date} {hour:02d}:{rest // 60:02d}:{rest % 60:02d}.000000"


def _progress(label: str, done: int, total: int, started: float) -> None:
    if done == total or done % 10 == 0:
        print(f"  {label}: block {done}/{total}, {time.monotonic() - started:.0f}s", flush=True)


# --- SQLite -----------------------------------------------------------------------------------


class SqliteDataset:
    """The dataset as a SQLite file: var/bench/data/<key>.db with <key>.json beside it."""

    def __init__(self, root: Path, spec: generator.Spec) -> None:
        self.spec = spec
        self.path = root / "data" / f"sqlite-{spec.key}.db"
        self.manifest_path = self.path.with_suffix(".json")

    def cached(self) -> Manifest | None:
        return _read_manifest(self.manifest_path, self.spec) if self.path.exists() else None

    async def ensure(self, workers: int) -> Manifest:
        manifest = self.cached()
        if manifest is not None:
            return manifest
        return await self.build(workers)

    async def build(self, workers: int) -> Manifest:
        started = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial.db")
        for leftover in (partial, self.path, self.manifest_path):
            leftover.unlink(missing_ok=True)
        await migrate(f"sqlite+aiosqlite:///{partial}", BASE_REVISION)
        counts = await asyncio.to_thread(self._load, partial, workers, started)
        partial.rename(self.path)
        manifest = Manifest(
            version=DATASET_VERSION,
            schema=base_schema(),
            scale=self.spec.scale,
            seed=self.spec.seed,
            anchor=self.spec.anchor.isoformat(),
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            total_s=round(time.monotonic() - started, 1),
            **counts,
        )
        _write_manifest(self.manifest_path, manifest)
        return manifest

    def _load(self, path: Path, workers: int, started: float) -> dict[str, Any]:
        connection = sqlite3.connect(path, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=OFF")
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute("PRAGMA cache_size=-1000000")
            tables = ", ".join(f"'{table.name}'" for table in BULK_TABLES)
            # The secondary indexes the base revision made (not the automatic primary-key ones).
            indexes = connection.execute(
                "SELECT name, sql FROM sqlite_master "
                f"WHERE type = 'index' AND tbl_name IN ({tables}) AND sql IS NOT NULL"
            ).fetchall()
            for name, _ in indexes:
                connection.execute(f"DROP INDEX IF EXISTS {name}")
            created = sqlite_time(int(self.spec.anchor.timestamp()))
            p, a, e = store.profiles, store.profile_attributes, store.events
            insert_profile = f"INSERT INTO {p.name} (profile_id, created_at, updated_at) VALUES (?, ?, ?)"
            insert_attribute = (
                f"INSERT INTO {a.name} (profile_id, name, value_type, text_value, num_value) VALUES (?, ?, ?, ?, ?)"
            )
            insert_event = (
                f"INSERT INTO {e.name} (event_id, profile_id, name, occurred_at, properties, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?)"
            )
            totals = {"profiles": 0, "attribute_rows": 0, "events": 0}
            connection.execute("BEGIN")
            for done, (first, block) in enumerate(load_blocks(self.spec, "sqlite", workers), start=1):
                connection.executemany(
                    insert_profile,
                    ((generator.profile_id(i), created, created) for i in range(first, first + block.profiles)),
                )
                connection.executemany(insert_attribute, block.attributes)
                connection.executemany(insert_event, block.events)
                totals["profiles"] += block.profiles
                totals["attribute_rows"] += len(block.attributes)
                totals["events"] += len(block.events)
                _progress("sqlite load", done, self.spec.blocks, started)
            connection.execute("COMMIT")
            loaded = time.monotonic()
            for name, sql in indexes:
                print(f"  sqlite index {name}", flush=True)
                connection.execute(sql)
            connection.execute("ANALYZE")
            connection.execute("PRAGMA journal_mode=WAL")
            return {
                **totals,
                "generate_and_insert_s": round(loaded - started, 1),
                "index_s": round(time.monotonic() - loaded, 1),
            }
        finally:
            connection.close()

    def working_copy(self, target: Path) -> str:
        """A fresh copy for a measured run; returns its SQLAlchemy URL."""
        target.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(self.path, target)
        return f"sqlite+aiosqlite:///{target.resolve()}"

    @property
    def url(self) -> str:
        return f"sqlite+aiosqlite:///{self.path.resolve()}"


# --- PostgreSQL -------------------------------------------------------------------------------


class PostgresDataset:
    """The dataset as database bench_<key> in the bench's embedded PostgreSQL under var/bench/pg."""

    def __init__(self, root: Path, spec: generator.Spec, server: BenchPostgres) -> None:
        self.spec = spec
        self.server = server
        self.database = "bench_" + spec.key.replace(".", "_").replace("-", "_")
        self.manifest_path = root / "data" / f"postgres-{spec.key}.json"

    async def cached(self) -> Manifest | None:
        manifest = _read_manifest(self.manifest_path, self.spec)
        if manifest is None or not await self.server.database_exists(self.database):
            return None
        return manifest

    async def ensure(self, workers: int) -> Manifest:
        manifest = await self.cached()
        if manifest is not None:
            return manifest
        return await self.build(workers)

    @property
    def url(self) -> str:
        return self.server.url(self.database)

    async def build(self, workers: int) -> Manifest:
        started = time.monotonic()
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        await self.server.recreate_database(self.database)
        await migrate(self.url, BASE_REVISION)
        connection = await self.server.connect(self.database)
        try:
            counts = await self._load(connection, workers, started)
        finally:
            await connection.close()
        manifest = Manifest(
            version=DATASET_VERSION,
            schema=base_schema(),
            scale=self.spec.scale,
            seed=self.spec.seed,
            anchor=self.spec.anchor.isoformat(),
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            total_s=round(time.monotonic() - started, 1),
            **counts,
        )
        _write_manifest(self.manifest_path, manifest)
        return manifest

    async def _load(self, connection: Any, workers: int, started: float) -> dict[str, Any]:
        # The secondary indexes the base revision made; constraint-backed ones (primary keys) stay.
        indexes = await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY($1::text[]) "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)",
            [table.name for table in BULK_TABLES],
        )
        for name, _ in indexes:
            await connection.execute(f"DROP INDEX IF EXISTS {name}")
        # Foreign keys are checked row by row during COPY; the generator guarantees them, so the bulk
        # load runs as a replica (triggers off) and the constraints stay declared.
        await connection.execute("SET session_replication_role = replica")
        await connection.execute("SET maintenance_work_mem = '1GB'")
        totals = {"profiles": 0, "attribute_rows": 0, "events": 0}
        queue: asyncio.Queue[tuple[int, LoadBlock] | None] = asyncio.Queue(maxsize=4)
        loop = asyncio.get_running_loop()

        failed = threading.Event()

        def produce() -> None:
            for item in load_blocks(self.spec, "postgres", workers):
                if failed.is_set():
                    return
                asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        producer = loop.run_in_executor(None, produce)
        try:
            await self._copy_blocks(connection, queue, totals, started)
        except BaseException:
            # The generator thread must not wait forever on a queue nobody reads.
            failed.set()
            while not queue.empty():
                queue.get_nowait()
            raise
        await producer
        loaded = time.monotonic()
        for name, sql in indexes:
            print(f"  postgres index {name}", flush=True)
            await connection.execute(sql)
        # COPY leaves hint bits unset and no visibility map: without this the first queries of every
        # run would rewrite the heap (and could not use index-only scans), on both sides of a ratio.
        print("  postgres vacuum (freeze, analyze)", flush=True)
        await connection.execute("VACUUM (FREEZE, ANALYZE)")
        return {
            **totals,
            "generate_and_insert_s": round(loaded - started, 1),
            "index_s": round(time.monotonic() - loaded, 1),
        }

    async def _copy_blocks(
        self,
        connection: Any,
        queue: "asyncio.Queue[tuple[int, LoadBlock] | None]",
        totals: dict[str, int],
        started: float,
    ) -> None:
        created = self.spec.anchor
        done = 0
        while (item := await queue.get()) is not None:
            first, block = item
            await connection.copy_records_to_table(
                store.profiles.name,
                records=[(generator.profile_id(i), created, created) for i in range(first, first + block.profiles)],
                columns=["profile_id", "created_at", "updated_at"],
            )
            await connection.copy_records_to_table(
                store.profile_attributes.name,
                records=block.attributes,
                columns=["profile_id", "name", "value_type", "text_value", "num_value"],
            )
            await connection.copy_records_to_table(
                store.events.name,
                records=block.events,
                columns=["event_id", "profile_id", "name", "occurred_at", "properties", "recorded_at"],
            )
            totals["profiles"] += block.profiles
            totals["attribute_rows"] += len(block.attributes)
            totals["events"] += len(block.events)
            done += 1
            _progress("postgres load", done, self.spec.blocks, started)

    async def working_copy(self, name: str) -> str:
        """A fresh copy (CREATE DATABASE … TEMPLATE) for a measured run; returns its SQLAlchemy URL."""
        await self.server.recreate_database(name, template=self.database)
        return self.server.url(name)
