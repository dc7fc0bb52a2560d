"""An original has at most one resend: the unique index on resend_of refuses a second one, while any number of
originals (resend_of empty) go in, on both backends."""

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from plumbing.db import Database
from services.campaigns import store
from tests.integration.campaigns.harness import campaign_row, outreach_row

NOW = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


@pytest.fixture
async def db(campaigns_db: Database) -> Database:
    async with campaigns_db.transaction() as session:
        await store.insert_campaign(session, campaign_row("cmp_resend", "RSND", NOW))
    return campaigns_db


def _outreach(number: int, resend_of: str | None = None) -> dict[str, Any]:
    return outreach_row(
        f"RSND-NOV-T00-{number:04d}",
        "cmp_resend",
        f"p-{number}",
        NOW,
        run_id="run_resends" if resend_of else "run_1",
        resend_of=resend_of,
    )


async def test_originals_go_in_and_a_second_resend_of_one_is_refused(db: Database) -> None:
    async with db.transaction() as session:
        await store.insert_outreaches(session, [_outreach(n) for n in range(1, 4)])
        await store.insert_outreaches(session, [_outreach(11, resend_of="RSND-NOV-T00-0001")])

    with pytest.raises(IntegrityError):
        async with db.transaction() as session:
            await store.insert_outreaches(session, [_outreach(12, resend_of="RSND-NOV-T00-0001")])

    async with db.snapshot() as session:
        count = (await session.execute(select(func.count()).select_from(store.outreaches))).scalar_one()
    assert count == 4
