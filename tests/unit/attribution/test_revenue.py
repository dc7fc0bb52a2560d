"""Revenue, cost and ROMI: the seed's worked example to the paisa, and the rounding rule."""

from fractions import Fraction

import pytest

from services.attribution.revenue import CostModel, NimFlatModel, RevenueModels, romi, round_half_up
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
