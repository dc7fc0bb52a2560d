"""format_inr: lakh/crore words and Indian digit grouping."""

import pytest

from services.campaigns.rendering import Money, format_inr, format_money

RUPEE = 100
LAKH = 100_000 * RUPEE
CRORE = 10_000_000 * RUPEE


@pytest.mark.parametrize(
    ("paise", "expected"),
    [
        (0, "₹0"),
        (999 * RUPEE, "₹999"),
        (1_000 * RUPEE, "₹1,000"),
        (45_000 * RUPEE, "₹45,000"),
        (1 * LAKH, "₹1,00,000"),
        (17_40_000 * RUPEE, "₹17,40,000"),
        (1_23_45_678 * RUPEE, "₹1,23,45,678"),
        (12_34_56_78_901 * RUPEE, "₹12,34,56,78,901"),
        (1_234 * RUPEE + 50, "₹1,234.50"),
        (5, "₹0.05"),
        (-17_40_000 * RUPEE, "-₹17,40,000"),
    ],
)
def test_grouped_uses_indian_digit_grouping(paise: int, expected: str) -> None:
    assert format_inr(paise, "grouped") == expected


@pytest.mark.parametrize(
    ("paise", "expected"),
    [
        (17_40_000 * RUPEE, "₹17.4 lakh"),
        (1 * LAKH, "₹1 lakh"),
        (2_50_000 * RUPEE, "₹2.5 lakh"),
        (99_99_000 * RUPEE, "₹99.99 lakh"),
        # 99.999 lakh rounds to 100 lakh, which is said as one crore.
        (99_99_900 * RUPEE, "₹1 crore"),
        (1 * CRORE, "₹1 crore"),
        (1_24_00_000 * RUPEE, "₹1.24 crore"),
        (1_23_50_000 * RUPEE, "₹1.24 crore"),
        (250 * CRORE, "₹250 crore"),
        (45_000 * RUPEE, "₹45,000"),
        (45_000 * RUPEE + 50, "₹45,001"),
        (-1_24_00_000 * RUPEE, "-₹1.24 crore"),
    ],
)
def test_compact_uses_lakh_and_crore(paise: int, expected: str) -> None:
    assert format_inr(paise, "compact") == expected


def test_compact_is_the_default_style() -> None:
    assert format_inr(17_40_000 * RUPEE) == "₹17.4 lakh"


def test_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError):
        format_inr(100, "western")  # type: ignore[arg-type]


def test_other_currencies_keep_their_code() -> None:
    assert format_money(Money(123_450, "USD")) == "USD 1,234.50"
    assert format_money(Money(17_40_000 * RUPEE, "INR")) == "₹17,40,000"
