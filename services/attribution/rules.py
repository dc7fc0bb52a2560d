"""The ledger's rules: funnel steps, loan stages, and what a lead, application, sanction, disbursement or conversion
needs, with the last-touch window that links a conversion without a campaign ID."""

from collections.abc import Mapping
from datetime import datetime, timedelta

from plumbing.errors import PRECONDITION_ORDER, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

SENT = "sent"
DELIVERED = "delivered"
OPENED = "opened"
CLICKED = "clicked"
RESPONDED = "responded"
APPLIED = "applied"
SANCTIONED = "sanctioned"
DISBURSED = "disbursed"
ACTIVATED = "activated"

FUNNEL_STEPS = (SENT, DELIVERED, OPENED, CLICKED, RESPONDED, APPLIED, SANCTIONED, DISBURSED, ACTIVATED)
"""The funnel in order. A step counts as reached when it or any later step was reached, so the
funnel never widens downstream: a click whose open pixel was blocked still counts as an open, and
a disbursement recorded before the delivery receipt arrived still counts as delivered."""

CONVERTED = DISBURSED
"""The step that makes an outreach a conversion (a funded account): a loan's disbursement, or a fund, deposit or
card conversion that brings money in. Activation (first use after funding) comes after it."""

FIRST_TRANSACTION = "first_transaction"
FUNDING_KINDS = (
    "lumpsum_invested",
    "sip_registered",
    "sip_step_up",
    "switch_regular_to_direct",
    "dividend_to_growth",
    "account_funded",
)
"""Conversion kinds that bring money in: priced by the product's revenue model and counted as the outreach's
conversion (its disbursed step). A first transaction is the activated step instead, and is not priced."""
CONVERSION_KINDS = (*FUNDING_KINDS, FIRST_TRANSACTION)

EXPLICIT = "campaign_id"
LAST_TOUCH = "last_touch"
UNATTRIBUTED = "unattributed"
"""How a conversion was linked: by the campaign ID the caller named, by the person's last touch, or not at all."""

DEFAULT_WINDOW = "default"
"""The last-touch window key used for products without a window of their own."""

MAX_DESCRIPTION_LENGTH = 500

LOAN_STAGES = (APPLIED, SANCTIONED, DISBURSED)
"""A loan's stages in order; a loan only moves forward."""

EXAMPLE_CAMPAIGN_ID = "CSELL-NOV-T06-0884"
MAX_ID_LENGTH = 100
MAX_PROFILE_ID_LENGTH = 128
"""Segments' limit: a person it admits is one attribution can record."""


def funnel_rank(step: str) -> int:
    """The step's position in the funnel, 1 for sent."""
    return FUNNEL_STEPS.index(step) + 1


def require_campaign_id(campaign_id: str, field: str = "campaign_id") -> None:
    if not campaign_id:
        raise InvalidArgument(
            f"{field} is required: the ID printed on the outreach, e.g. {EXAMPLE_CAMPAIGN_ID}", field=field
        )
    check_id(campaign_id, field)


def require_id(value: str, field: str, example: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} is required, e.g. {example!r}", field=field)
    check_id(value, field)


def check_id(value: str, field: str) -> None:
    """An id a source system gave (empty passes: whether one is required is the caller's rule); a profile id may be
    as long as segments admits."""
    limit = MAX_PROFILE_ID_LENGTH if field.endswith("profile_id") else MAX_ID_LENGTH
    if len(value) > limit:
        raise InvalidArgument(f"{field} must be at most {limit} characters", field=field)
    if value and not value.strip():
        raise InvalidArgument(f"{field} is only spaces; send the id the source system gave", field=field)
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        # A NUL, a line break or an escape: no system issues ids so, and PostgreSQL refuses a NUL in text (INTERNAL).
        raise InvalidArgument(f"{field} holds a control character; send the id the source system gave", field=field)


def unknown_outreach(campaign_id: str) -> NotFound:
    return NotFound(
        f"campaign_id {campaign_id!r} is not a known outreach; "
        f"use the ID printed on the outreach, e.g. {EXAMPLE_CAMPAIGN_ID}",
        field="campaign_id",
    )


def withdrawn_outreach(campaign_id: str, at: datetime) -> NotFound:
    return NotFound(
        f"campaign_id {campaign_id!r} was withdrawn at {at.isoformat()} before it was sent (another campaign's "
        "outreach to the person outranked it under a frequency cap): nothing is attributed to it",
        field="campaign_id",
    )


def already_recorded(field: str, value: str) -> AlreadyExists:
    """A source system's id (a disbursement's, a conversion's) that the ledger already holds under another request."""
    return AlreadyExists(
        f"{field} {value!r} is already recorded; a retry of the same request must reuse its request_id", field=field
    )


MAX_MINOR_UNITS = 2**53
"""The largest amount in minor units (₹90 lakh crore in paise), as segments bounds money: sums of a campaign's
amounts stay far inside a 64-bit integer."""


def check_amount(minor_units: int, currency_code: str, currency: str, field: str = "amount") -> None:
    """A positive amount in the ledger's currency."""
    if minor_units <= 0:
        raise InvalidArgument(
            f"{field}.minor_units must be a positive amount in paise, e.g. 174000000 for ₹17,40,000.00; "
            f"got {minor_units}",
            field=f"{field}.minor_units",
        )
    if minor_units > MAX_MINOR_UNITS:
        # Sums of them are kept in 64-bit integers: 2**62 paise was accepted, and the loan's next tranche overflowed.
        raise InvalidArgument(
            f"{field}.minor_units must be at most {MAX_MINOR_UNITS} (segments' bound on money); got {minor_units}",
            field=f"{field}.minor_units",
        )
    if currency_code != currency:
        raise InvalidArgument(
            f"{field}.currency_code must be {currency!r}; got {currency_code[:20]!r}", field=f"{field}.currency_code"
        )


def check_application(loan_number: str, applied_campaign_id: str | None, campaign_id: str) -> None:
    """A loan number belongs to one campaign ID for good."""
    if applied_campaign_id is not None and applied_campaign_id != campaign_id:
        raise AlreadyExists(
            f"loan {loan_number} was already applied under campaign_id {applied_campaign_id!r}; "
            f"a loan number has one origination source",
            field="loan_number",
        )


def loan_subject(loan_number: str) -> str:
    """The loan a refusal is about, as its PreconditionFailure names it."""
    return f"loans/{loan_number}"


def check_sanction(loan_number: str, stage: str | None) -> None:
    if stage is None:
        raise FailedPrecondition(
            f"loan {loan_number} has no application; record the application first",
            subject=loan_subject(loan_number),
            kind=PRECONDITION_ORDER,
        )
    if stage == DISBURSED:
        raise FailedPrecondition(
            f"loan {loan_number} is already disbursed; a disbursed loan cannot be sanctioned",
            subject=loan_subject(loan_number),
        )


def check_disbursement(loan_number: str, stage: str | None) -> None:
    if stage is None:
        raise FailedPrecondition(
            f"loan {loan_number} has no application; record the application and the sanction first",
            subject=loan_subject(loan_number),
            kind=PRECONDITION_ORDER,
        )
    if stage == APPLIED:
        raise FailedPrecondition(
            f"loan {loan_number} is at stage {stage!r}, not sanctioned; record the sanction first",
            subject=loan_subject(loan_number),
            kind=PRECONDITION_ORDER,
        )


def check_same_campaign(loan_number: str, loan_campaign_id: str, campaign_id: str) -> None:
    if loan_campaign_id != campaign_id:
        raise InvalidArgument(
            f"campaign_id {campaign_id!r} does not match the campaign_id {loan_campaign_id!r} "
            f"loan {loan_number} was applied under",
            field="campaign_id",
        )


def check_not_in_future(at: datetime, now: datetime, skew: timedelta, field: str) -> None:
    if at > now + skew:
        raise InvalidArgument(
            f"{field} {at.isoformat()} is more than {int(skew.total_seconds())}s in the future; report it after it "
            "happens, with a correct clock (or leave it unset for now)",
            field=field,
        )


def check_not_before_outreach(campaign_id: str, outreach_created_at: datetime, at: datetime, field: str) -> None:
    if at < outreach_created_at:
        raise InvalidArgument(
            f"{field} {at.isoformat()} is before outreach {campaign_id} was created "
            f"({outreach_created_at.isoformat()}); an outreach cannot lead to anything before it exists",
            field=field,
        )


def conversion_step(kind: str) -> str:
    """The funnel step a conversion of `kind` reaches: activated for a first transaction, else the conversion."""
    return ACTIVATED if kind == FIRST_TRANSACTION else CONVERTED


def window_days(windows: Mapping[str, int], product_code: str) -> int:
    """The product's last-touch window in days, or the default window's."""
    return windows.get(product_code, windows[DEFAULT_WINDOW])


def touch_window(at: datetime, days: int) -> tuple[datetime, datetime]:
    """The instants (inclusive) an outreach must be created within to be the last touch of a conversion at `at`:
    from `days` days before it up to the conversion itself, never after it."""
    return at - timedelta(days=days), at


def check_same_profile(campaign_id: str, outreach_profile_id: str, profile_id: str) -> None:
    """A conversion named by its campaign ID is that outreach's person's, so a different profile_id is a mistake."""
    if profile_id and profile_id != outreach_profile_id:
        raise InvalidArgument(
            f"profile_id {profile_id!r} is not the person outreach {campaign_id} was sent to; "
            "leave profile_id empty or send the outreach's person",
            field="profile_id",
        )


def check_activation(campaign_id: str, funded_at: datetime | None, at: datetime) -> None:
    """A first transaction activates a funded account: after the outreach's conversion, never before it."""
    if funded_at is None:
        raise FailedPrecondition(
            f"outreach {campaign_id} has no funded conversion yet; record the funding (a disbursement or an "
            "account_funded / invested conversion) before its first transaction",
            subject=f"outreaches/{campaign_id}",
            kind=PRECONDITION_ORDER,
        )
    if at < funded_at:
        raise InvalidArgument(
            f"occur_time {at.isoformat()} is before outreach {campaign_id} was funded ({funded_at.isoformat()}); "
            "a first transaction comes after the funding",
            field="occur_time",
        )


def check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidArgument(
            f"description must be at most {MAX_DESCRIPTION_LENGTH} characters; got {len(description)}",
            field="description",
        )
    if "\x00" in description:
        # Line breaks and tabs are text; a NUL is not, and PostgreSQL refuses it (INTERNAL).
        raise InvalidArgument("description holds a NUL character; send text", field="description")
