"""Every example segment file selects exactly the hand-checked people, on SQLite and PostgreSQL.

The 15 recipe segments, its engagement and high-value filters, and three governed bank audiences
(examples/segments/) run against about twenty people built below so that each file's members are
known by hand; the comment on each person says which files must select them and why.
"""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from plumbing.db import Database
from services.segments import store
from services.segments.compiler import compile_rule
from services.segments.records import IncomingEvent, ProfileUpdate
from services.segments.rule_files import load_segment_file
from services.segments.rules import EventRecord, World, members, parse_rule
from services.segments.values import Value

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "segments"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

EXPECTED: dict[str, set[str]] = {
    "sip_only_investors.yaml": {"f01", "f05"},
    "lumpsum_only_investors.yaml": {"f03", "f04"},
    "equity_only_investors.yaml": {"f01"},
    "debt_only_investors.yaml": {"f03"},
    "single_scheme_investors.yaml": {"f01", "f03"},
    "single_amc_investors.yaml": {"f01", "f03", "f09"},
    "no_elss_investors.yaml": {"f01", "f03", "f04", "f05", "f08", "f09"},
    "no_international_exposure.yaml": {"f01", "f02", "f03", "f04", "f07", "f08", "f09"},
    "no_sectoral_thematic.yaml": {"f01", "f02", "f03", "f04", "f08", "f09", "f11"},
    "no_stp_investors.yaml": {"f03", "f08"},
    "no_swp_investors.yaml": {"f02", "f05", "f08"},
    "no_minor_folio.yaml": {"f01", "f08"},
    "regular_plan_only.yaml": {"f01", "f03", "f04", "f07"},
    "sip_no_stepup.yaml": {"f01", "f07"},
    "dividend_payout_only.yaml": {"f02", "f07"},
    "engagement_filter.yaml": {"f01", "f09"},
    "high_value_filter.yaml": {"f03", "f11"},
    "bank_card_likely_transactors.yaml": {"b01"},
    "bank_deposit_direct_deposit_elsewhere.yaml": {"b06"},
    "bank_personal_loan_preapproved.yaml": {"b07", "b11"},
}


def _s(text: str) -> Value:
    return Value.string(text)


def _set(*members: str) -> Value:
    return Value.string_set(set(members))


def _inr(rupees: float) -> Value:
    return Value.money(round(rupees * 100), "INR")


def _ago(days: float = 0, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


def _fund(
    investment: str,
    categories: Value,
    plan: str,
    option: str,
    schemes: int,
    amcs: int,
    tier: str,
    **flags: bool,
) -> dict[str, Value]:
    values = {
        "investment_type": _s(investment),
        "fund_categories": categories,
        "plan_type": _s(plan),
        "option_type": _s(option),
        "number_of_schemes": Value.num(schemes),
        "number_of_amcs": Value.num(amcs),
        "customer_tier": _s(tier),
    }
    return values | {name: Value.boolean(flag) for name, flag in flags.items()}


def _bank(**values: Value) -> dict[str, Value]:
    return {"held_products": _set("savings"), "kyc_status": _s("complete")} | values


F = False
T = True
PEOPLE: dict[str, dict[str, Value]] = {
    # SIP 10 days ago, no lumpsum; Equity only, 1 scheme / 1 AMC, Regular, no step-up, children
    # without a minor folio; 3 sessions in 20 days: sip_only, equity_only, single_*, no_elss,
    # no_international, no_sectoral, no_minor_folio, regular, sip_no_stepup, engagement.
    "f01": _fund(
        "SIP",
        _set("Equity"),
        "Regular",
        "Growth",
        1,
        1,
        "Standard",
        has_sip_stepup=F,
        has_stp=F,
        has_swp=F,
        has_children=T,
        has_minor_folio=F,
    ),
    # SIP and lumpsum in the year; Equity + ELSS; Premium without SWP; Dividend; 2 sessions only.
    "f02": _fund(
        "Both",
        _set("Equity", "ELSS"),
        "Direct",
        "Dividend",
        3,
        2,
        "Premium",
        has_stp=T,
        has_swp=F,
        has_children=F,
    ),
    # Lumpsum 50 days ago, SIP 400 days ago; Debt only; Lumpsum without STP; HNI with SWP;
    # 10 transactions in 80 days: lumpsum_only, debt_only, single_*, no_stp, regular, high_value.
    "f03": _fund("Lumpsum", _set("Debt"), "Regular", "Growth", 1, 1, "HNI", has_stp=F, has_swp=T),
    # Lumpsum 364 days ago and SIP 366 days ago (just out of the window); Equity + Debt; 9 transactions
    # in 90 days and one at 95: lumpsum_only, no_elss, no_international, no_sectoral, regular.
    "f04": _fund("Lumpsum", _set("Equity", "Debt"), "Regular", "Growth", 2, 2, "Standard", has_stp=T),
    # SIP an hour inside the year, lumpsum an hour outside it; International + Sectoral; HNI without
    # SWP; step-up; 2 of 3 sessions in 30 days: sip_only, no_elss, no_swp.
    "f05": _fund(
        "SIP",
        _set("Equity", "International", "Sectoral"),
        "Direct",
        "Growth",
        3,
        3,
        "HNI",
        has_sip_stepup=T,
        has_swp=F,
    ),
    # Nothing known, nothing done: in no segment, not even the "does not contain" ones.
    "f06": {},
    # Thematic + ELSS; SIP without step-up; Regular; Dividend; has a minor folio already:
    # no_international, regular, sip_no_stepup, dividend.
    "f07": _fund(
        "SIP",
        _set("Thematic", "ELSS"),
        "Regular",
        "Dividend",
        4,
        3,
        "Standard",
        has_sip_stepup=F,
        has_children=T,
        has_minor_folio=T,
    ),
    # An empty (but known) category set; Lumpsum without STP; HNI without SWP; children without a
    # minor folio: no_elss, no_international, no_sectoral, no_stp, no_swp, no_minor_folio.
    "f08": _fund(
        "Lumpsum",
        _set(),
        "Direct",
        "Growth",
        2,
        2,
        "HNI",
        has_stp=F,
        has_swp=F,
        has_children=T,
        has_minor_folio=F,
    ),
    # Hybrid; 2 schemes at 1 AMC; 5 sessions in 29 days: single_amc, no_elss, no_international,
    # no_sectoral, engagement.
    "f09": _fund("Both", _set("Hybrid"), "Direct", "Growth", 2, 1, "Standard"),
    # 9 transactions in 90 days (a tenth 1 hour outside) and 12 more long ago: in nothing.
    "f10": {},
    # 11 transactions in 10 days; lowercase "regular" plan; HNI with SWP; no Sectoral: high_value, no_sectoral.
    "f11": _fund("Both", _set("Equity", "ELSS", "International"), "regular", "Growth", 5, 4, "HNI", has_swp=T),
    # SIP with step-up unknown; Standard tier without SWP: no_swp needs Premium / HNI, sip_no_stepup
    # needs has_sip_stepup = false, not missing; ELSS + International + Sectoral: in nothing.
    "f12": _fund("SIP", _set("ELSS", "International", "Sectoral"), "Direct", "Growth", 2, 2, "Standard", has_swp=F),
    # Bank: 6 card spends of 600 rupees in 90 days: the card audience.
    "b01": _bank(marketing_opt_out=Value.boolean(False)),
    # As b01, but declined a credit card offer 20 days ago (suppressed).
    "b02": _bank(),
    # As b01, but already holds a credit card (suppressed).
    "b03": _bank(held_products=_set("savings", "credit_card")),
    # 4 spends of 600 and 2 of 200 rupees: below the 5 qualifying spends.
    "b04": _bank(),
    # Card spends and a salary elsewhere with a 1.5 lakh balance, but opted out of marketing.
    "b05": _bank(marketing_opt_out=Value.boolean(True), avg_monthly_balance=_inr(150_000)),
    # Salary elsewhere 30 days ago, balance exactly 1 lakh (the bound is inclusive): the deposit audience;
    # a credit card decline does not suppress a deposit offer.
    "b06": _bank(avg_monthly_balance=_inr(100_000)),
    # Salary elsewhere but a balance one paisa short of 1 lakh; bureau 780, no DPD, declined the loan
    # before the last offer (40 days ago): the loan audience.
    "b07": _bank(
        avg_monthly_balance=_inr(99_999.99),
        bureau_score=Value.num(780),
        max_dpd_12m=Value.num(0),
        last_offered_at=Value.timestamp(_ago(40)),
    ),
    # Bureau exactly 750, but declined the loan 10 days ago, after the last offer (suppressed).
    "b08": _bank(bureau_score=Value.num(750), max_dpd_12m=Value.num(0), last_offered_at=Value.timestamp(_ago(40))),
    # Bureau 800, never offered, but complained 5 days ago (suppressed).
    "b09": _bank(bureau_score=Value.num(800), max_dpd_12m=Value.num(0)),
    # Bureau 749 and KYC pending.
    "b10": _bank(bureau_score=Value.num(749), max_dpd_12m=Value.num(0), kyc_status=_s("pending")),
    # Bureau 760, never offered, holds a credit card but no personal loan: the loan audience.
    "b11": _bank(bureau_score=Value.num(760), max_dpd_12m=Value.num(0), held_products=_set("savings", "credit_card")),
}


def _spends(rupees: float, count: int, start_day: int = 1) -> list[EventRecord]:
    return [EventRecord("debit_card_spend", _ago(start_day + i), {"amount": _inr(rupees)}) for i in range(count)]


def _repeat(name: str, days_ago: list[float]) -> list[EventRecord]:
    return [EventRecord(name, _ago(days)) for days in days_ago]


EVENTS: dict[str, list[EventRecord]] = {
    "f01": [EventRecord("sip_registered", _ago(10)), *_repeat("session_start", [1, 10, 20])],
    "f02": [
        EventRecord("sip_registered", _ago(30)),
        EventRecord("lumpsum_invested", _ago(100)),
        *_repeat("session_start", [2, 29]),
    ],
    "f03": [
        EventRecord("lumpsum_invested", _ago(50)),
        EventRecord("sip_registered", _ago(400)),
        *_repeat("transaction_success", [8 * i for i in range(10)]),
    ],
    "f04": [
        EventRecord("lumpsum_invested", _ago(364)),
        EventRecord("sip_registered", _ago(366)),
        *_repeat("transaction_success", [*(10 * i for i in range(9)), 95]),
    ],
    "f05": [
        EventRecord("sip_registered", _ago(365, hours=-1)),
        EventRecord("lumpsum_invested", _ago(365, hours=1)),
        *_repeat("session_start", [3, 15, 31]),
    ],
    "f09": _repeat("session_start", [1, 5, 10, 20, 29]),
    "f10": _repeat("transaction_success", [*(9 * i for i in range(9)), 90 + 1 / 24, *(100 + i for i in range(12))]),
    "f11": _repeat("transaction_success", [i for i in range(11)]),
    "b01": _spends(600, 6),
    "b02": [*_spends(600, 6), EventRecord("offer_declined", _ago(20), {"product": _s("credit_card")})],
    "b03": _spends(600, 6),
    "b04": [*_spends(600, 4), *_spends(200, 2, start_day=10)],
    "b05": [*_spends(600, 6), EventRecord("salary_credit_elsewhere", _ago(10))],
    "b06": [
        EventRecord("salary_credit_elsewhere", _ago(30)),
        EventRecord("offer_declined", _ago(10), {"product": _s("credit_card")}),
    ],
    "b07": [
        EventRecord("salary_credit_elsewhere", _ago(5)),
        EventRecord("offer_declined", _ago(60), {"product": _s("personal_loan")}),
    ],
    "b08": [EventRecord("offer_declined", _ago(10), {"product": _s("personal_loan")})],
    "b09": [EventRecord("complaint_raised", _ago(5))],
}
WORLD = World(attributes=PEOPLE, events=EVENTS)


def test_every_example_file_has_expectations() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("file_name", sorted(EXPECTED))
def test_example_file_is_valid_and_its_reference_members_are_the_expected(file_name: str) -> None:
    segment = load_segment_file(EXAMPLES / file_name)
    assert segment.name
    assert segment.description and "\n" not in segment.description.strip()
    assert members(parse_rule(segment.rule), WORLD, NOW) == EXPECTED[file_name]


@pytest.fixture
async def loaded(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    # The compiler reads only the store's tables, so the schema comes straight from its metadata.
    async with db.engine.begin() as connection:
        await connection.run_sync(store.metadata.create_all)
    async with db.transaction() as session:
        await store.upsert_profiles(session, [ProfileUpdate(pid, dict(values)) for pid, values in PEOPLE.items()], NOW)
        await store.insert_events(
            session,
            [
                IncomingEvent(f"{pid}-{i}", pid, e.name, e.occurred_at, dict(e.properties))
                for pid, history in EVENTS.items()
                for i, e in enumerate(history)
            ],
            NOW,
        )
    yield db
    await db.dispose()


async def test_every_example_selects_exactly_the_expected_people_in_sql(loaded: Database) -> None:
    got: dict[str, set[str]] = {}
    async with loaded.transaction() as session:
        for file_name in sorted(EXPECTED):
            rule = parse_rule(load_segment_file(EXAMPLES / file_name).rule)
            got[file_name] = set((await session.execute(compile_rule(rule, NOW))).scalars())
    assert got == EXPECTED
