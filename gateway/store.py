"""The gateway's own database: API keys, each stored as the hash of its secret."""

from datetime import UTC, datetime

from sqlalchemy import JSON, Column, DateTime, Float, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy.engine import Row

from gateway.keys import ApiKey
from gateway.limits import RateLimit
from plumbing.db import Database
from plumbing.errors import NotFound

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("client_name", String(200), nullable=False),
    # sha256(secret), hex; the secret itself is shown once at creation and never stored.
    Column("key_hash", String(64), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # Both NULL: the gateway's default limit applies.
    Column("rate_per_second", Float, nullable=True),
    Column("rate_burst", Integer, nullable=True),
)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back naive; they were written as UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _to_key(row: Row) -> ApiKey:
    created_at = _utc(row.created_at)
    assert created_at is not None
    return ApiKey(
        key_id=row.key_id,
        client_name=row.client_name,
        key_hash=row.key_hash,
        scopes=frozenset(row.scopes),
        created_at=created_at,
        revoked_at=_utc(row.revoked_at),
        rate_limit=RateLimit(row.rate_per_second, row.rate_burst) if row.rate_per_second is not None else None,
    )


def _limit_columns(limit: RateLimit | None) -> dict[str, float | int | None]:
    return {
        "rate_per_second": limit.per_second if limit else None,
        "rate_burst": limit.burst if limit else None,
    }


class KeyStore:
    """Reads and writes the api_keys table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, key: ApiKey) -> None:
        async with self._db.transaction() as session:
            await session.execute(
                insert(api_keys).values(
                    key_id=key.key_id,
                    client_name=key.client_name,
                    key_hash=key.key_hash,
                    scopes=sorted(key.scopes),
                    created_at=key.created_at,
                    revoked_at=key.revoked_at,
                    **_limit_columns(key.rate_limit),
                )
            )

    async def put(self, key: ApiKey) -> None:
        """Inserts the key, or replaces the stored one with the same key id (the bootstrap key), keeping its limit."""
        values = {
            "client_name": key.client_name,
            "key_hash": key.key_hash,
            "scopes": sorted(key.scopes),
            "revoked_at": key.revoked_at,
        }
        async with self._db.transaction() as session:
            changed = await session.execute(update(api_keys).where(api_keys.c.key_id == key.key_id).values(**values))
            if changed.rowcount == 0:  # type: ignore[attr-defined]
                # A limit set on the stored key (keys limit) survives restarts; only a new key takes this one.
                await session.execute(
                    insert(api_keys).values(
                        key_id=key.key_id, created_at=key.created_at, **values, **_limit_columns(key.rate_limit)
                    )
                )

    async def get(self, key_id: str) -> ApiKey | None:
        async with self._db.snapshot() as session:
            row = (await session.execute(select(api_keys).where(api_keys.c.key_id == key_id))).first()
        return _to_key(row) if row else None

    async def list(self) -> list[ApiKey]:
        async with self._db.snapshot() as session:
            rows = (await session.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id))).all()
        return [_to_key(row) for row in rows]

    async def revoke(self, key_id: str, at: datetime) -> ApiKey:
        """Marks the key revoked; revoking it again keeps the first revocation time."""
        async with self._db.transaction() as session:
            await session.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            row = (await session.execute(select(api_keys).where(api_keys.c.key_id == key_id))).first()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}; `python -m gateway keys list` shows them", field="key_id")
        return _to_key(row)

    async def set_rate_limit(self, key_id: str, limit: RateLimit | None) -> ApiKey:
        """Gives the key its own limit, or None to go back to the gateway's default."""
        async with self._db.transaction() as session:
            await session.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(**_limit_columns(limit)))
            row = (await session.execute(select(api_keys).where(api_keys.c.key_id == key_id))).first()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}; `python -m gateway keys list` shows them", field="key_id")
        return _to_key(row)
