"""A ledger at the previous head (0002) upgrades to the current one on SQLite and PostgreSQL, keeping its rows."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from plumbing.db import Database
from services.attribution.app import MIGRATIONS


def _upgrade_to(connection: Connection, revision: str, migrations: Path) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def test_a_ledger_at_0002_upgrades_keeping_its_rollup_with_nothing_activated(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(_upgrade_to, "0002", MIGRATIONS)
            await connection.execute(
                text(
                    "INSERT INTO rollup (day, campaign_key, programme, trigger_code, channel, product_code, "
                    "labels_key, sent, f_disbursed, disbursed_paise) "
                    "VALUES ('2025-11-22', 'cmp_msme_gst', 'CSELL', 'T06', 'email', 'MSME_WC_TOPUP', '', "
                    "1, 1, 174000000)"
                )
            )
        await db.migrate(MIGRATIONS)
        async with db.engine.connect() as connection:
            row = (
                await connection.execute(text("SELECT sent, f_disbursed, disbursed_paise, f_activated FROM rollup"))
            ).one()
            revision = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            conversions = (await connection.execute(text("SELECT count(*) FROM conversions"))).scalar_one()
            fixed_costs = (await connection.execute(text("SELECT count(*) FROM fixed_cost_shares"))).scalar_one()
    finally:
        await db.dispose()
    assert tuple(row) == (1, 1, 174_000_000, 0)
    assert (revision, conversions, fixed_costs) == ("0003", 0, 0)
