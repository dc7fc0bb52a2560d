"""Revenue models, campaign cost and ROMI: the money rules of attribution, in integer paise.

Revenue: NIM flat (lending)
---------------------------
A lender earns its net interest margin (NIM) on the disbursed amount every year of the loan's
expected tenor, so a disbursement of `amount` paise under a model with `nim_bps` basis points
(1 bp = 0.01 %) and `tenor_years` years is worth:

    year-1 revenue   = amount × nim_bps / 10 000
    lifetime revenue = year-1 revenue × tenor_years

Rounding: the two figures are computed exactly (as fractions) from the disbursed amount and each
is rounded once, half up, to whole paise, per disbursement. Sums over disbursements add these
rounded paise, so a campaign's revenue is the sum of what each disbursement was credited with
and never drifts when read again.

Worked example (the seed's CSELL-NOV-T06-0884): ₹17,40,000 disbursed (174 000 000 paise) at
260 bp over 10 years → year-1 ₹45,240 (4 524 000 paise), lifetime ₹4,52,400 (45 240 000 paise).

Cost
----
Each outreach carries the cost booked against it:

    send cost  = send_cost_paise[channel]                        booked when the outreach is recorded
    RM time    = rm_minutes_per_lead × rm_cost_paise_per_minute   booked when a lead is created
    fixed      = an allocated share of fixed costs                booked later, by allocation

With the defaults an e-mail outreach with one lead costs ₹0.50 + 15 min × ₹6.50 = ₹98.00 (9 800 paise).

ROMI
----
    ROMI = lifetime revenue / cost        (0 while the cost is 0)

so the worked example's ROMI is 45 240 000 / 9 800 ≈ 4 616.3×.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

DEFAULT_PRODUCT = "default"
"""The revenue-model key used when a product has no model of its own."""

NIM_FLAT = "nim_flat"


def round_half_up(value: Fraction) -> int:
    """`value` rounded to the nearest integer, halves away from zero (₹0.005 → ₹0.01)."""
    magnitude = (abs(value.numerator) * 2 + value.denominator) // (value.denominator * 2)
    return magnitude if value >= 0 else -magnitude


@dataclass(frozen=True)
class Revenue:
    """What one disbursement is credited with, in paise."""

    lifetime_paise: int
    year1_paise: int


@dataclass(frozen=True)
class NimFlatModel:
    """Lending revenue: a flat NIM on the disbursed amount for every year of the expected tenor."""

    nim_bps: int
    tenor_years: int
    kind: str = NIM_FLAT

    def __post_init__(self) -> None:
        if self.nim_bps < 0:
            raise ValueError(f"nim_bps must be zero or positive, got {self.nim_bps}")
        if self.tenor_years <= 0:
            raise ValueError(f"tenor_years must be positive, got {self.tenor_years}")

    def price(self, amount_paise: int) -> Revenue:
        year1_exact = Fraction(amount_paise * self.nim_bps, 10_000)
        return Revenue(
            lifetime_paise=round_half_up(year1_exact * self.tenor_years),
            year1_paise=round_half_up(year1_exact),
        )


RevenueModel = NimFlatModel
"""Every revenue-model kind; AUM-based (funds) and balance-based (deposits) models join this union."""


@dataclass(frozen=True)
class RevenueModels:
    """The revenue model of each product code, with a "default" for products without their own."""

    by_product: Mapping[str, RevenueModel]

    def __post_init__(self) -> None:
        if DEFAULT_PRODUCT not in self.by_product:
            raise ValueError(f'revenue models need a "{DEFAULT_PRODUCT}" entry for products without a model')

    def for_products(self, *product_codes: str) -> tuple[str, RevenueModel]:
        """The first of `product_codes` that has a model (empty codes skipped), else the default."""
        for code in product_codes:
            if code and code in self.by_product:
                return code, self.by_product[code]
        return DEFAULT_PRODUCT, self.by_product[DEFAULT_PRODUCT]


@dataclass(frozen=True)
class CostModel:
    """What an outreach costs: a send cost per channel and the RM's time per lead."""

    send_cost_paise: Mapping[str, int]
    rm_minutes_per_lead: int
    rm_cost_paise_per_minute: int

    def send_cost(self, channel: str) -> int:
        """The cost of sending one outreach on `channel` ("email", "sms"...); 0 for a channel without a price."""
        return self.send_cost_paise.get(channel, 0)

    def rm_time_cost(self) -> int:
        """The cost of the RM time one lead takes."""
        return self.rm_minutes_per_lead * self.rm_cost_paise_per_minute


def romi(lifetime_revenue_paise: int, cost_paise: int) -> float:
    """Return on marketing investment: lifetime revenue per unit of cost; 0 while nothing was spent."""
    if cost_paise <= 0:
        return 0.0
    return lifetime_revenue_paise / cost_paise
