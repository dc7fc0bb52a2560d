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

Revenue: NIM amortising (lending)
---------------------------------
An amortising loan repays principal every month, so the lender earns its NIM on a falling balance.
With the loan's yearly rate `rate_bps`, r = rate / 12 a month and n = `tenor_months`:

    EMI            = amount × r × (1 + r)^n / ((1 + r)^n − 1)         (amount / n at a zero rate)
    each month     : revenue += opening balance × nim_bps / 10 000 / 12
                     balance −= EMI − balance × r                      (the principal part of the EMI)
                     balance −= balance × prepayment_bps / 10 000 / 12 (expected prepayment; the EMI stays,
                                                                         so the schedule ends sooner)
    lifetime revenue = the sum over every month until the balance is repaid
    year-1 revenue   = the sum over the first 12 months

Worked example: ₹10,00,000 at 12 % over 24 months, NIM 3 %, no prepayment → EMI ₹47,073.47;
year-1 ₹23,674, lifetime ₹32,441. (Check: the balances a lender earns on add up to the interest paid
÷ r, so lifetime = (24 × EMI − ₹10,00,000) ÷ 1 % × 0.25 %.)

Revenue: funds and deposits (balance × rate)
--------------------------------------------
    year-1 revenue   = amount × rate_bps / 10 000 × min(12, months) / 12
    lifetime revenue = amount × rate_bps / 10 000 × months / 12

`aum_trail`: a fund's trail commission (or TER share) on the invested amount over the expected
holding period: ₹5,00,000 at 75 bp held 36 months → year-1 ₹3,750, lifetime ₹11,250.
`deposit_spread`: a deposit's spread over the cost of funds on its balance over its expected life:
₹2,00,000 at 250 bp for 18 months → year-1 ₹5,000, lifetime ₹7,500.

Cost
----
Each outreach carries the cost booked against it:

    send cost  = send_cost_paise[channel]                        booked when a provider took the message
    RM time    = rm_minutes_per_lead × rm_cost_paise_per_minute   booked when a lead is created
    fixed      = a campaign's fixed cost, shared over its outreaches' groups in proportion to their sends
                 (largest remainder, so the shares add up to the booked amount), on the day it is booked

With the defaults an e-mail outreach with one lead costs ₹0.50 + 15 min × ₹6.50 = ₹98.00 (9 800 paise).

ROMI
----
    ROMI = lifetime revenue / cost        (0 while the cost is 0)

so the worked example's ROMI is 45 240 000 / 9 800 ≈ 4 616.3×.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

DEFAULT_PRODUCT = "default"
"""The revenue-model key used when a product has no model of its own."""

NIM_FLAT = "nim_flat"
NIM_AMORTISING = "nim_amortising"
AUM_TRAIL = "aum_trail"
DEPOSIT_SPREAD = "deposit_spread"


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


@dataclass(frozen=True)
class NimAmortisingModel:
    """Lending revenue on an amortising loan: the NIM on each month's opening balance of its EMI schedule, with an
    expected prepayment that shortens the schedule (the EMI stays, as Indian lenders do by default)."""

    rate_bps: int
    nim_bps: int
    tenor_months: int
    prepayment_bps: int = 0
    kind: str = NIM_AMORTISING

    def __post_init__(self) -> None:
        for name in ("rate_bps", "nim_bps", "prepayment_bps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be zero or positive, got {getattr(self, name)}")
        if self.tenor_months <= 0:
            raise ValueError(f"tenor_months must be positive, got {self.tenor_months}")

    def emi(self, amount_paise: int) -> Fraction:
        """The equated monthly instalment, exact: P·r·(1+r)^n / ((1+r)^n − 1), or P / n at a zero rate."""
        monthly = Fraction(self.rate_bps, 10_000 * 12)
        if monthly == 0:
            return Fraction(amount_paise, self.tenor_months)
        growth = (1 + monthly) ** self.tenor_months
        return amount_paise * monthly * growth / (growth - 1)

    def price(self, amount_paise: int) -> Revenue:
        monthly_rate = Fraction(self.rate_bps, 10_000 * 12)
        monthly_nim = Fraction(self.nim_bps, 10_000 * 12)
        monthly_prepayment = Fraction(self.prepayment_bps, 10_000 * 12)
        instalment = self.emi(amount_paise)
        balance = Fraction(amount_paise)
        lifetime = year1 = Fraction(0)
        for month in range(1, self.tenor_months + 1):
            if balance <= 0:
                break
            earned = balance * monthly_nim
            lifetime += earned
            if month <= 12:
                year1 += earned
            balance -= min(balance, instalment - balance * monthly_rate)
            balance -= balance * monthly_prepayment
        return Revenue(lifetime_paise=round_half_up(lifetime), year1_paise=round_half_up(year1))


@dataclass(frozen=True)
class BalanceRateModel:
    """Revenue at a yearly rate on a balance held for an expected number of months: a fund's AUM earning its trail
    commission (kind aum_trail), or a deposit earning its spread over the cost of funds (kind deposit_spread)."""

    kind: str
    rate_bps: int
    months: int

    def __post_init__(self) -> None:
        if self.kind not in (AUM_TRAIL, DEPOSIT_SPREAD):
            raise ValueError(f"kind must be {AUM_TRAIL} or {DEPOSIT_SPREAD}, got {self.kind}")
        if self.rate_bps < 0:
            raise ValueError(f"rate_bps must be zero or positive, got {self.rate_bps}")
        if self.months <= 0:
            raise ValueError(f"months must be positive, got {self.months}")

    def price(self, amount_paise: int) -> Revenue:
        monthly = Fraction(amount_paise * self.rate_bps, 10_000 * 12)
        return Revenue(
            lifetime_paise=round_half_up(monthly * self.months),
            year1_paise=round_half_up(monthly * min(12, self.months)),
        )


RevenueModel = NimFlatModel | NimAmortisingModel | BalanceRateModel
"""Every revenue-model kind; each prices an amount in paise into lifetime and year-1 revenue."""


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


def allocate(amount_paise: int, weights: Sequence[int]) -> list[int]:
    """`amount_paise` split in proportion to `weights` in whole paise that add up to it exactly: each share is
    rounded down, and the paise left over go one each to the largest remainders (the earliest on a tie)."""
    total = sum(weights)
    if total <= 0 or any(weight < 0 for weight in weights):
        raise ValueError(f"weights must be zero or positive with a positive sum, got {list(weights)}")
    shares = [amount_paise * weight // total for weight in weights]
    remainders = [amount_paise * weight % total for weight in weights]
    left = amount_paise - sum(shares)
    for index in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
        shares[index] += 1
    return shares


def romi(lifetime_revenue_paise: int, cost_paise: int) -> float:
    """Return on marketing investment: lifetime revenue per unit of cost; 0 while nothing was spent."""
    if cost_paise <= 0:
        return 0.0
    return lifetime_revenue_paise / cost_paise
