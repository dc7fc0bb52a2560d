"""Which database failures a caller may retry: they become UNAVAILABLE instead of INTERNAL."""

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from plumbing.db import transient_failure


def test_a_sqlite_lock_held_past_the_busy_timeout_is_retryable(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}", connect_args={"timeout": 0})
    with engine.connect() as holder, engine.connect() as waiter:
        holder.exec_driver_sql("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError) as raised:
            waiter.exec_driver_sql("BEGIN IMMEDIATE")
        holder.exec_driver_sql("ROLLBACK")
    engine.dispose()
    assert transient_failure(raised.value) == "the database stayed locked by another writer past the busy timeout"


def test_a_constraint_violation_is_not_retryable(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        connection.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(IntegrityError) as raised:
            connection.execute(text("INSERT INTO t VALUES (1)"))
    engine.dispose()
    assert transient_failure(raised.value) is None
    assert transient_failure(RuntimeError("database is locked")) is None
