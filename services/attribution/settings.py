"""Settings of the attribution service, read from XSELL_ATTRIBUTION_* environment variables."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import SettingsConfigDict

from plumbing.settings import ServiceSettings
from services.attribution.revenue import (
    DEFAULT_PRODUCT,
    BalanceRateModel,
    CostModel,
    NimAmortisingModel,
    NimFlatModel,
    RevenueModel,
    RevenueModels,
)
from services.attribution.rules import DEFAULT_WINDOW


class NimFlatSettings(BaseModel):
    """A lending product priced at a flat NIM on the disbursed amount over an expected tenor."""

    kind: Literal["nim_flat"] = Field("nim_flat", description="The revenue-model kind.")
    nim_bps: int = Field(260, ge=0, description="Net interest margin in basis points per year, e.g. 260 = 2.60 %.")
    tenor_years: int = Field(10, gt=0, description="Expected life of the loan in years.")

    def model(self) -> RevenueModel:
        return NimFlatModel(self.nim_bps, self.tenor_years)


class NimAmortisingSettings(BaseModel):
    """A lending product whose NIM is earned on the falling balance of its EMI schedule, with expected prepayment."""

    kind: Literal["nim_amortising"] = Field(description="The revenue-model kind.")
    rate_bps: int = Field(ge=0, description="The loan's yearly interest rate in basis points, e.g. 1200 = 12 %.")
    nim_bps: int = Field(ge=0, description="Net interest margin in basis points per year on the outstanding balance.")
    tenor_months: int = Field(gt=0, description="The EMI schedule's length in months.")
    prepayment_bps: int = Field(
        0, ge=0, description="Expected prepayment per year, in basis points of the outstanding balance."
    )

    def model(self) -> RevenueModel:
        return NimAmortisingModel(self.rate_bps, self.nim_bps, self.tenor_months, self.prepayment_bps)


class BalanceRateSettings(BaseModel):
    """A fund (AUM × trail or TER share) or a deposit (balance × spread) earning a yearly rate for expected months."""

    kind: Literal["aum_trail", "deposit_spread"] = Field(description="The revenue-model kind.")
    rate_bps: int = Field(ge=0, description="Trail / TER share or deposit spread in basis points per year.")
    months: int = Field(gt=0, description="Expected holding period (funds) or life of the balance (deposits).")

    def model(self) -> RevenueModel:
        return BalanceRateModel(self.kind, self.rate_bps, self.months)


RevenueModelSettings = Annotated[
    NimFlatSettings | NimAmortisingSettings | BalanceRateSettings, Field(discriminator="kind")
]


def _default_revenue_models() -> dict[str, RevenueModelSettings]:
    return {DEFAULT_PRODUCT: NimFlatSettings(kind="nim_flat", nim_bps=260, tenor_years=10)}


class AttributionSettings(ServiceSettings):
    """Read from the environment under XSELL_ATTRIBUTION_, e.g. XSELL_ATTRIBUTION_RM_MINUTES_PER_LEAD=20."""

    model_config = SettingsConfigDict(env_prefix="XSELL_ATTRIBUTION_", extra="ignore")

    grpc_port: int = Field(50064, description="gRPC port of the attribution service; 0 picks a free one (tests).")
    revenue_models: dict[str, RevenueModelSettings] = Field(
        default_factory=_default_revenue_models,
        description=(
            'Revenue model per product code, with a "default" entry for every other product; JSON in the '
            'environment, e.g. {"default": {"kind": "nim_flat", "nim_bps": 260, "tenor_years": 10}, "PL_TOPUP": '
            '{"kind": "nim_amortising", "rate_bps": 1200, "nim_bps": 300, "tenor_months": 24, "prepayment_bps": 600}, '
            '"MF_LUMPSUM": {"kind": "aum_trail", "rate_bps": 75, "months": 36}} (docs/attribution.md).'
        ),
    )
    send_cost_paise: dict[str, int] = Field(
        default_factory=lambda: {"email": 50, "sms": 25, "whatsapp": 80, "push": 2, "webhook": 0},
        description="Cost of sending one outreach per channel name, in paise; JSON in the environment.",
    )
    future_skew_seconds: int = Field(
        300,
        ge=0,
        description="How far in the future a reported application, sanction, disbursement or conversion time may be "
        "(the clock skew of the LOS or fund platform); a later one is refused, as segments refuses an event's.",
    )
    rm_minutes_per_lead: int = Field(15, ge=0, description="Relationship-manager minutes one lead takes.")
    rm_cost_paise_per_minute: int = Field(650, ge=0, description="Cost of one RM minute, in paise.")
    currency: str = Field("INR", description="The ledger's currency; amounts in any other currency are rejected.")
    last_touch_window_days: dict[str, int] = Field(
        default_factory=lambda: {"default": 30},
        description=(
            "Days before a conversion without a campaign ID in which the person's latest outreach is its last "
            'touch, per product code, with a "default" entry for every other product; JSON in the environment, '
            'e.g. {"default": 30, "MF_SIP": 45}. No outreach in the window: the conversion is unattributed.'
        ),
    )
    report_utc_offset_minutes: int = Field(
        330,
        ge=-14 * 60,
        le=14 * 60,
        description="The UTC offset, in minutes, whose local days the views count in; 330 = IST (+05:30), "
        "which has no daylight saving. Changing it needs `python -m services.attribution.reconcile --fix`.",
    )

    @field_validator("revenue_models")
    @classmethod
    def _has_default(cls, value: dict[str, RevenueModelSettings]) -> dict[str, RevenueModelSettings]:
        if DEFAULT_PRODUCT not in value:
            raise ValueError(f'revenue_models needs a "{DEFAULT_PRODUCT}" entry for products without their own')
        return value

    @field_validator("last_touch_window_days")
    @classmethod
    def _positive_windows(cls, value: dict[str, int]) -> dict[str, int]:
        if DEFAULT_WINDOW not in value:
            raise ValueError(f'last_touch_window_days needs a "{DEFAULT_WINDOW}" entry for products without their own')
        short = sorted(product for product, days in value.items() if days <= 0)
        if short:
            raise ValueError(f"last-touch windows must be at least 1 day; not for {', '.join(short)}")
        return value

    @field_validator("send_cost_paise")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        negative = sorted(channel for channel, cost in value.items() if cost < 0)
        if negative:
            raise ValueError(f"send costs must be zero or positive; negative for {', '.join(negative)}")
        return value

    def revenue(self) -> RevenueModels:
        return RevenueModels({code: settings.model() for code, settings in self.revenue_models.items()})

    def cost(self) -> CostModel:
        return CostModel(dict(self.send_cost_paise), self.rm_minutes_per_lead, self.rm_cost_paise_per_minute)
