"""Revenue, cost and ROMI: the seed's worked example to the paisa, and the rounding rule."""

from fractions import Fraction

import pytest

from services.attribution.revenue import (
    AUM_TRAIL,
    DEPOSIT_SPREAD,
    BalanceRateModel,
    CostModel,
    NimAmortisingModel,
    NimFlatModel,
    Revenue,
    RevenueModels,
    allocate,
    romi,
    round_half_up,
)
from services.attribution.settings import AttributionSettings

DEFAULT_SEND_COSTS = {"email": 50, "sms": 25, "whatsapp": 80, "push": 2, "webhook": 0}


def test_worked_example_csell_nov_t06_0884_comes_out_to_the_rupee() -> None:
    settings = AttributionSettings()  # type: ignore[call-arg]
    _, model = settings.revenue().for_products("MSME_WC_TOPUP")
    cost_model = settings.cost()

    revenue = model.price(174_000_000)  # ₹17,40,000 disbursed
    cost = cost_model.send_cost("email") + cost_model.rm_time_cost()  # one e-mail outreach, one lead

    assert revenue.lifetime_paise == 45_240_000  # ₹4,52,400
    assert revenue.year1_paise == 4_524_000  # ₹45,240
    assert cost == 9_800  # ₹0.50 + 15 min × ₹6.50 = ₹98.00
    assert romi(revenue.lifetime_paise, cost) == pytest.approx(4616.33, abs=0.01)


def test_rounding_is_half_up_once_per_figure() -> None:
    # 1 paisa at 250 bp is 0.025 paise a year: year-1 rounds to 0, ten years (0.25) to 0.
    assert NimFlatModel(nim_bps=250, tenor_years=10).price(1).year1_paise == 0
    # 20 paise at 250 bp is exactly half a paisa a year: half rounds up, and 5 paise over ten years.
    priced = NimFlatModel(nim_bps=250, tenor_years=10).price(20)
    assert (priced.year1_paise, priced.lifetime_paise) == (1, 5)
    # 19 paise: 0.475 → 0; 4.75 → 5. Lifetime is rounded from the exact figure, not from a rounded year-1.
    priced = NimFlatModel(nim_bps=250, tenor_years=10).price(19)
    assert (priced.year1_paise, priced.lifetime_paise) == (0, 5)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(Fraction(5, 2), 3), (Fraction(249, 100), 2), (Fraction(-5, 2), -3), (Fraction(0), 0), (Fraction(7), 7)],
)
def test_round_half_up(value: Fraction, expected: int) -> None:
    assert round_half_up(value) == expected


def test_product_model_falls_back_from_loan_to_outreach_to_default() -> None:
    home = NimFlatModel(nim_bps=180, tenor_years=20)
    msme = NimFlatModel(nim_bps=300, tenor_years=5)
    default = NimFlatModel(nim_bps=260, tenor_years=10)
    models = RevenueModels({"HOME_LOAN": home, "MSME_WC_TOPUP": msme, "default": default})
    assert models.for_products("HOME_LOAN", "MSME_WC_TOPUP") == ("HOME_LOAN", home)
    assert models.for_products("UNPRICED", "MSME_WC_TOPUP") == ("MSME_WC_TOPUP", msme)
    assert models.for_products("", "UNPRICED") == ("default", default)


def test_revenue_models_need_a_default() -> None:
    with pytest.raises(ValueError, match="default"):
        RevenueModels({"HOME_LOAN": NimFlatModel(nim_bps=180, tenor_years=20)})


def test_cost_of_a_channel_without_a_price_is_zero_and_romi_without_cost_is_zero() -> None:
    costs = CostModel(DEFAULT_SEND_COSTS, rm_minutes_per_lead=15, rm_cost_paise_per_minute=650)
    assert costs.send_cost("whatsapp") == 80
    assert costs.send_cost("unspecified") == 0
    assert romi(45_240_000, 0) == 0.0


def test_revenue_models_and_costs_are_settable_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "XSELL_ATTRIBUTION_REVENUE_MODELS",
        '{"default": {"kind": "nim_flat", "nim_bps": 260, "tenor_years": 10},'
        ' "HOME_LOAN": {"kind": "nim_flat", "nim_bps": 180, "tenor_years": 20}}',
    )
    monkeypatch.setenv("XSELL_ATTRIBUTION_SEND_COST_PAISE", '{"email": 40}')
    monkeypatch.setenv("XSELL_ATTRIBUTION_RM_MINUTES_PER_LEAD", "20")
    settings = AttributionSettings()  # type: ignore[call-arg]
    assert settings.grpc_port == 50064
    assert settings.revenue().for_products("HOME_LOAN")[1] == NimFlatModel(nim_bps=180, tenor_years=20)
    assert settings.cost().send_cost("email") == 40
    assert settings.cost().rm_time_cost() == 20 * 650


def test_revenue_models_without_default_are_rejected_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "XSELL_ATTRIBUTION_REVENUE_MODELS", '{"HOME_LOAN": {"kind": "nim_flat", "nim_bps": 180, "tenor_years": 20}}'
    )
    with pytest.raises(ValueError, match="default"):
        AttributionSettings()  # type: ignore[call-arg]


def test_amortising_nim_worked_example_comes_out_to_the_rupee() -> None:
    # ₹10,00,000 at 12 % a year over 24 months, NIM 3 %, no prepayment (docs/attribution.md).
    model = NimAmortisingModel(rate_bps=1200, nim_bps=300, tenor_months=24)
    instalment = model.emi(100_000_000)
    assert round_half_up(instalment) == 4_707_347  # EMI ₹47,073.47
    revenue = model.price(100_000_000)
    assert revenue.lifetime_paise == 3_244_083  # ₹32,440.83
    assert revenue.year1_paise == 2_367_431  # ₹23,674.31
    # Independently: the balances a lender earns on add up to the interest paid ÷ the monthly rate, so the NIM on
    # them is interest × (3 % / 12) ÷ (12 % / 12); after 12 months the balance is the value of 12 EMIs left.
    monthly = Fraction(1, 100)
    lifetime_interest = 24 * instalment - 100_000_000
    left_after_a_year = instalment * (1 - (1 + monthly) ** -12) / monthly
    year1_interest = 12 * instalment - (100_000_000 - left_after_a_year)
    assert revenue.lifetime_paise == round_half_up(lifetime_interest / 4)
    assert revenue.year1_paise == round_half_up(year1_interest / 4)


def test_amortising_nim_with_expected_prepayment_ends_the_schedule_sooner() -> None:
    # ₹1,20,000 interest-free over 3 months (EMI ₹40,000), NIM 1 % a month, 1 % of the balance prepaid a month:
    # month 1 earns on ₹1,20,000 (₹1,200), then 40,000 repaid and 800 prepaid; month 2 on ₹79,200 (₹792), then
    # 40,000 and 392; month 3 on ₹38,808 (₹388.08), which the last EMI repays.
    model = NimAmortisingModel(rate_bps=0, nim_bps=1200, tenor_months=3, prepayment_bps=1200)
    assert model.price(12_000_000) == Revenue(lifetime_paise=238_008, year1_paise=238_008)  # ₹2,380.08
    without = NimAmortisingModel(rate_bps=0, nim_bps=1200, tenor_months=3).price(12_000_000)
    assert without.lifetime_paise == 240_000  # 1 % of ₹1,20,000 + ₹80,000 + ₹40,000


def test_fund_aum_and_deposit_spread_worked_examples_come_out_to_the_rupee() -> None:
    # ₹5,00,000 invested, 75 bp trail, held 36 months; ₹2,00,000 deposited at a 250 bp spread for 18 months.
    fund = BalanceRateModel(AUM_TRAIL, rate_bps=75, months=36).price(50_000_000)
    deposit = BalanceRateModel(DEPOSIT_SPREAD, rate_bps=250, months=18).price(20_000_000)
    assert fund == Revenue(lifetime_paise=1_125_000, year1_paise=375_000)  # ₹11,250 and ₹3,750
    assert deposit == Revenue(lifetime_paise=750_000, year1_paise=500_000)  # ₹7,500 and ₹5,000
    # A balance held under a year earns only its months in year 1 too.
    assert BalanceRateModel(AUM_TRAIL, rate_bps=120, months=6).price(12_000_000).year1_paise == 72_000


def test_every_model_kind_is_configurable_per_product_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "XSELL_ATTRIBUTION_REVENUE_MODELS",
        '{"default": {"kind": "nim_flat", "nim_bps": 260, "tenor_years": 10},'
        ' "PL_TOPUP": {"kind": "nim_amortising", "rate_bps": 1200, "nim_bps": 300, "tenor_months": 24,'
        ' "prepayment_bps": 600},'
        ' "MF_LUMPSUM": {"kind": "aum_trail", "rate_bps": 75, "months": 36},'
        ' "FD_FUNDED": {"kind": "deposit_spread", "rate_bps": 250, "months": 18}}',
    )
    models = AttributionSettings().revenue()  # type: ignore[call-arg]
    assert models.for_products("PL_TOPUP")[1] == NimAmortisingModel(1200, 300, 24, 600)
    assert models.for_products("MF_LUMPSUM")[1] == BalanceRateModel(AUM_TRAIL, 75, 36)
    assert models.for_products("FD_FUNDED")[1] == BalanceRateModel(DEPOSIT_SPREAD, 250, 18)
    assert models.for_products("HOME_LOAN") == ("default", NimFlatModel(260, 10))


def test_a_model_of_an_unknown_kind_is_rejected_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "XSELL_ATTRIBUTION_REVENUE_MODELS",
        '{"default": {"kind": "nim_flat"}, "CARD": {"kind": "interchange", "rate_bps": 150, "months": 12}}',
    )
    with pytest.raises(ValueError, match="kind"):
        AttributionSettings()  # type: ignore[call-arg]


def test_a_fund_conversion_worked_example_comes_out_to_the_rupee() -> None:
    # ₹5,00,000 lumpsum at a 75 bp trail held 36 months (docs/attribution.md): the fund platform's conversion.
    models = RevenueModels({"default": NimFlatModel(260, 10), "MF_LUMPSUM": BalanceRateModel(AUM_TRAIL, 75, 36)})
    name, model = models.for_products("MF_LUMPSUM", "MSME_WC_TOPUP")
    assert name == "MF_LUMPSUM"
    assert model.price(50_000_000) == Revenue(lifetime_paise=1_125_000, year1_paise=375_000)
    assert romi(1_125_000, 50) == 22_500


@pytest.mark.parametrize(
    ("amount", "weights", "shares"),
    [
        (1_000_001, [1, 1], [500_001, 500_000]),
        (100, [1, 1, 1], [34, 33, 33]),
        (1_000, [3, 1], [750, 250]),
        (7, [0, 5], [0, 7]),
        (10, [1, 2, 2], [2, 4, 4]),
    ],
)
def test_a_fixed_cost_is_shared_by_weight_in_paise_that_add_up(
    amount: int, weights: list[int], shares: list[int]
) -> None:
    assert allocate(amount, weights) == shares
    assert sum(allocate(amount, weights)) == amount


def test_a_fixed_cost_needs_something_to_share_over() -> None:
    with pytest.raises(ValueError, match="positive sum"):
        allocate(100, [0, 0])


def test_last_touch_windows_need_a_default_and_at_least_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AttributionSettings().last_touch_window_days == {"default": 30}  # type: ignore[call-arg]
    monkeypatch.setenv("XSELL_ATTRIBUTION_LAST_TOUCH_WINDOW_DAYS", '{"MF_SIP": 45}')
    with pytest.raises(ValueError, match="default"):
        AttributionSettings()  # type: ignore[call-arg]
    monkeypatch.setenv("XSELL_ATTRIBUTION_LAST_TOUCH_WINDOW_DAYS", '{"default": 30, "MF_SIP": 0}')
    with pytest.raises(ValueError, match="MF_SIP"):
        AttributionSettings()  # type: ignore[call-arg]
