"""A ledger at an earlier revision upgrades to the next on SQLite and PostgreSQL, keeping its rows."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, column, insert, inspect, select, table, text
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database, UtcDateTime
from services.attribution import store
from services.attribution.app import MIGRATIONS
from services.attribution.reconcile import reconcile
from services.attribution.reporting import COUNTER_COLUMNS, labels_key
from services.attribution.rules import FUNNEL_STEPS


def _config(connection: Connection | None, migrations: Path) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection
    return config


def _upgrade_to(connection: Connection, revision: str, migrations: Path) -> None:
    command.upgrade(_config(connection, migrations), revision)


def _downgrade_to(connection: Connection, revision: str, migrations: Path) -> None:
    command.downgrade(_config(connection, migrations), revision)


HEAD = ScriptDirectory.from_config(_config(None, MIGRATIONS)).get_current_head()


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
        async with db.engine.begin() as connection:
            await connection.run_sync(_upgrade_to, "0003", MIGRATIONS)
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


def _at(text_value: str) -> datetime:
    return datetime.fromisoformat(text_value).replace(tzinfo=UTC)


# The tables as revision 0003 had them, for writing a ledger the way the service did then.
_funnel_steps_0003 = table("funnel_steps", column("campaign_id"), column("step"), column("first_at", UtcDateTime))
_costs_0003 = table(
    "costs",
    column("campaign_id"),
    column("kind"),
    column("amount_paise"),
    column("currency_code"),
    column("ref"),
    column("at", UtcDateTime),
)
_MSME = ("cmp_msme_gst", "CSELL", "T06", "email", "MSME_WC_TOPUP", labels_key(["Cross-Sell – MSME"]))
_WELCOME = ("cmp_welcome", "WELCOME0001", "T01", "sms", "SAVINGS", "")


async def _ledger_at_0003(session: AsyncSession) -> None:
    """The worked example (sent, delivered, a lead, then ₹17,40,000 disbursed) and an outreach with no step whose
    campaign ID has no "-" (its programme is all of it), with the rollup rows the service kept for them."""
    outreach = {"profile_id": "prf_kaveri", "category": "upsell_increase_value"}
    await session.execute(
        insert(store.outreaches),
        [
            {
                **outreach,
                "campaign_id": "CSELL-NOV-T06-0884",
                "campaign_key": "cmp_msme_gst",
                "channel": "email",
                "trigger_code": "T06",
                "product_code": "MSME_WC_TOPUP",
                "labels": ["Cross-Sell – MSME"],
                "labels_key": _MSME[-1],
                "created_at": _at("2025-11-13T04:30:00"),
            },
            {
                **outreach,
                "campaign_id": "WELCOME0001",
                "campaign_key": "cmp_welcome",
                "channel": "sms",
                "trigger_code": "T01",
                "product_code": "SAVINGS",
                "labels": [],
                "labels_key": "",
                "created_at": _at("2025-11-14T20:00:00"),
            },
        ],
    )
    await session.execute(
        insert(_funnel_steps_0003),
        [
            {"campaign_id": "CSELL-NOV-T06-0884", "step": step, "first_at": _at(at)}
            for step, at in (
                ("sent", "2025-11-13T04:30:00"),
                ("delivered", "2025-11-13T04:31:00"),
                ("responded", "2025-11-15T06:00:00"),
                ("disbursed", "2025-11-22T06:00:00"),
            )
        ],
    )
    await session.execute(
        insert(_costs_0003),
        [
            {"campaign_id": campaign_id, "kind": kind, "amount_paise": amount, "currency_code": "INR", "ref": ref}
            | {"at": _at(at)}
            for campaign_id, kind, amount, ref, at in (
                ("CSELL-NOV-T06-0884", "send", 50, "", "2025-11-13T04:30:00"),
                ("CSELL-NOV-T06-0884", "rm_time", 9750, "lead_1", "2025-11-15T06:00:00"),
                ("WELCOME0001", "send", 25, "", "2025-11-14T20:00:00"),
            )
        ],
    )
    disbursed_at = _at("2025-11-22T06:00:00")
    await session.execute(
        insert(store.loans).values(
            loan_number="LA-2025-0001",
            campaign_id="CSELL-NOV-T06-0884",
            product_code="MSME_WC_TOPUP",
            stage="disbursed",
            currency_code="INR",
            sanctioned_paise=174_000_000,
            disbursed_paise=174_000_000,
            applied_at=disbursed_at,
            sanctioned_at=disbursed_at,
            first_disbursed_at=disbursed_at,
            last_disbursed_at=disbursed_at,
        )
    )
    await session.execute(
        insert(store.disbursements).values(
            disbursement_id="DISB-1",
            loan_number="LA-2025-0001",
            campaign_id="CSELL-NOV-T06-0884",
            amount_paise=174_000_000,
            currency_code="INR",
            disbursed_at=disbursed_at,
            lifetime_revenue_paise=45_240_000,
            year1_revenue_paise=4_524_000,
            revenue_model="default",
            recorded_at=disbursed_at,
        )
    )
    # Each funnel level on the day of its step or of the earliest later one; the lag (9.06 days) in the ≤ 14 bucket.
    rollup_rows = [
        ("2025-11-13", _MSME, {"sent": 1, "f_sent": 1, "f_delivered": 1, "cost_paise": 50}),
        ("2025-11-15", _MSME, {"f_opened": 1, "f_clicked": 1, "f_responded": 1, "cost_paise": 9750}),
        (
            "2025-11-22",
            _MSME,
            {"f_applied": 1, "f_sanctioned": 1, "f_disbursed": 1, "lag_3": 1}
            | {"disbursed_paise": 174_000_000, "lifetime_paise": 45_240_000, "year1_paise": 4_524_000},
        ),
        ("2025-11-15", _WELCOME, {"sent": 1, "cost_paise": 25}),
    ]
    await session.execute(
        insert(store.rollup),
        [
            {**dict(zip(store.ROLLUP_KEY, (day, *dimensions), strict=True)), **dict.fromkeys(COUNTER_COLUMNS, 0)}
            | counters
            for day, dimensions, counters in rollup_rows
        ],
    )


async def test_a_ledger_at_0003_upgrades_with_each_outreachs_funnel_on_one_row_and_reconciles_with_no_drift(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(_upgrade_to, "0003", MIGRATIONS)
        async with db.transaction() as session:
            await _ledger_at_0003(session)
        await db.migrate(MIGRATIONS)
        async with db.snapshot() as session:
            groups = {
                row.group_id: tuple(row[name] for name in store.GROUP_DIMENSIONS)
                for row in (await session.execute(select(store.outreach_groups))).mappings().all()
            }
            funnel = {
                row.campaign_id: row for row in (await session.execute(select(store.outreach_funnel))).mappings().all()
            }
            cost_groups = (await session.execute(select(store.costs.c.kind, store.costs.c.group_id))).all()
            revision = (await session.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            tables = await session.run_sync(lambda sync: set(inspect(sync.connection()).get_table_names()))
        result = await reconcile(db, 330)
    finally:
        await db.dispose()
    assert revision == HEAD and "funnel_steps" not in tables
    assert sorted(groups.values()) == sorted([_MSME, _WELCOME])
    example, welcome = funnel["CSELL-NOV-T06-0884"], funnel["WELCOME0001"]
    assert groups[example["group_id"]] == _MSME and groups[welcome["group_id"]] == _WELCOME
    assert example["created_at"] == _at("2025-11-13T04:30:00")
    assert {step: example[store.step_column(step)] for step in FUNNEL_STEPS} == {
        "sent": _at("2025-11-13T04:30:00"),
        "delivered": _at("2025-11-13T04:31:00"),
        "opened": None,
        "clicked": None,
        "responded": _at("2025-11-15T06:00:00"),
        "applied": None,
        "sanctioned": None,
        "disbursed": _at("2025-11-22T06:00:00"),
        "activated": None,
    }
    assert all(welcome[store.step_column(step)] is None for step in FUNNEL_STEPS)
    assert sorted(cost_groups) == sorted(
        [("send", example["group_id"]), ("rm_time", example["group_id"]), ("send", welcome["group_id"])]
    )
    # The rollup the service kept before the upgrade is exactly what the upgraded ledger recomputes.
    assert (result.rows_checked, result.differences) == (4, [])


# outreach_funnel and costs as revision 0004 had them: instants as timestamps.
_funnel_0004 = table(
    "outreach_funnel",
    column("campaign_id"),
    column("created_at", UtcDateTime),
    *(column(store.step_column(step), UtcDateTime) for step in FUNNEL_STEPS),
)
_costs_0004 = table("costs", column("at", UtcDateTime))
# Microseconds that a float of seconds since 1970 would round, and instants either side of a local (IST) midnight.
_INSTANTS = {
    "created_at": datetime(2025, 11, 13, 18, 29, 59, 999_999, tzinfo=UTC),
    "sent_at": datetime(2025, 11, 13, 18, 30, tzinfo=UTC),
    "delivered_at": datetime(2025, 11, 13, 18, 30, 0, 1, tzinfo=UTC),
    "disbursed_at": datetime(2025, 11, 22, 6, 0, 0, 123_457, tzinfo=UTC),
}
_FUNNEL_AT_0004 = dict.fromkeys(store.step_column(step) for step in FUNNEL_STEPS) | _INSTANTS


async def test_a_ledger_at_0004_upgrades_with_its_instants_as_integers_to_the_microsecond_and_back(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(_upgrade_to, "0003", MIGRATIONS)
        async with db.transaction() as session:
            await _ledger_at_0003(session)
        async with db.engine.begin() as connection:
            await connection.run_sync(_upgrade_to, "0004", MIGRATIONS)
            await connection.execute(_funnel_0004.update().values(_FUNNEL_AT_0004))
            await connection.execute(_costs_0004.update().values(at=_INSTANTS["delivered_at"]))
        async with db.engine.begin() as connection:
            await connection.run_sync(_upgrade_to, "0005", MIGRATIONS)
        async with db.engine.connect() as connection:
            upgraded = (await connection.execute(select(store.outreach_funnel))).mappings().all()
            booked = (await connection.execute(select(store.costs.c.at))).scalars().all()
            raw = text("SELECT created_at, sent_at, opened_at FROM outreach_funnel")
            stored = (await connection.execute(raw)).all()
        async with db.engine.begin() as connection:
            await connection.run_sync(_downgrade_to, "0004", MIGRATIONS)
        # New connections: asyncpg's prepared statements of the upgraded tables would not run on the downgraded ones.
        await db.engine.dispose()
        async with db.engine.connect() as connection:
            downgraded = (await connection.execute(select(_funnel_0004))).mappings().all()
            booked_back = (await connection.execute(select(_costs_0004.c.at))).scalars().all()
    finally:
        await db.dispose()
    since_1970 = (_INSTANTS["created_at"] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert [tuple(row) for row in stored] == [(since_1970, since_1970 + 1, None)] * 2
    for rows in (upgraded, downgraded):
        assert [{name: row[name] for name in _FUNNEL_AT_0004} for row in rows] == [_FUNNEL_AT_0004] * 2
    assert booked == booked_back == [_INSTANTS["delivered_at"]] * 3
