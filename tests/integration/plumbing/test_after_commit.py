"""Effects outside the database (metrics, caches) follow a commit, never a rollback."""

import pytest
from sqlalchemy import text

from plumbing.db import Database, after_commit


async def test_an_action_runs_after_commit_and_not_after_rollback(database_url: str) -> None:
    db = Database(database_url)
    ran: list[str] = []
    try:
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
            after_commit(session, lambda: ran.append("committed"))
            assert ran == []
        assert ran == ["committed"]

        with pytest.raises(RuntimeError):
            async with db.transaction() as session:
                after_commit(session, lambda: ran.append("rolled back"))
                raise RuntimeError("the request failed")
        assert ran == ["committed"]
    finally:
        await db.dispose()
