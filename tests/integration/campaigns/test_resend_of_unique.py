"""An original has at most one resend: the unique index on resend_of refuses a second one, while any number of
originals (resend_of empty) go in, on both backends."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from plumbing.db import Database
from services.campaigns import store
from services.campaigns.app import MIGRATIONS

NOW = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate(MIGRATIONS)
    async with database.transaction() as session:
        await store.insert_campaign(
            session,
            {
                "campaign_key": "cmp_resend",
                "display_name": "resend",
                "labels": [],
                "category": 1,
                "programme": "RSND",
                "trigger_code": "T00",
                "segment_id": "seg",
                "segment_version": 1,
                "channel": "EMAIL",
                "offer_product_code": "P",
                "subject_template": "",
                "html_template": "",
                "text_template": "",
                "from_name": "",
                "time_zone": "Asia/Kolkata",
                "state": "RUNNING",
                "outreach_count": 0,
                "created_at": NOW,
            },
        )
    yield database
    await database.dispose()


def _outreach(number: int, resend_of: str | None = None) -> dict[str, Any]:
    return {
        "campaign_id": f"RSND-NOV-T00-{number:04d}",
        "campaign_key": "cmp_resend",
        "run_id": "run_resends" if resend_of else "run_1",
        "profile_id": f"p-{number}",
        "channel": "EMAIL",
        "trigger_code": "T00",
        "offer_product_code": "P",
        "labels": [],
        "category": 1,
        "created_at": NOW,
        "ordinal": number,
        "resend_of": resend_of,
    }


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
