"""The ledger's rules: funnel steps, loan stages, and what a lead, application, sanction or disbursement needs."""

from datetime import datetime

from plumbing.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

SENT = "sent"
DELIVERED = "delivered"
OPENED = "opened"
CLICKED = "clicked"
RESPONDED = "responded"
APPLIED = "applied"
SANCTIONED = "sanctioned"
DISBURSED = "disbursed"

FUNNEL_STEPS = (SENT, DELIVERED, OPENED, CLICKED, RESPONDED, APPLIED, SANCTIONED, DISBURSED)
"""The funnel in order. A step counts as reached when it or any later step was reached, so the
funnel never widens downstream: a click whose open pixel was blocked still counts as an open, and
a disbursement recorded before the delivery receipt arrived still counts as delivered."""

LOAN_STAGES = (APPLIED, SANCTIONED, DISBURSED)
"""A loan's stages in order; a loan only moves forward."""

EXAMPLE_CAMPAIGN_ID = "CSELL-NOV-T06-0884"
MAX_ID_LENGTH = 100


def funnel_rank(step: str) -> int:
    """The step's position in the funnel, 1 for sent."""
    return FUNNEL_STEPS.index(step) + 1


def require_campaign_id(campaign_id: str, field: str = "campaign_id") -> None:
    if not campaign_id:
        raise InvalidArgument(
            f"{field} is required: the ID printed on the outreach, e.g. {EXAMPLE_CAMPAIGN_ID}", field=field
        )
    if len(campaign_id) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field} must be at most {MAX_ID_LENGTH} characters", field=field)


def require_id(value: str, field: str, example: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} is required, e.g. {example!r}", field=field)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field} must be at most {MAX_ID_LENGTH} characters", field=field)


def unknown_outreach(campaign_id: str) -> NotFound:
    return NotFound(
        f"campaign_id {campaign_id!r} is not a known outreach; "
        f"use the ID printed on the outreach, e.g. {EXAMPLE_CAMPAIGN_ID}",
        field="campaign_id",
    )


def check_amount(minor_units: int, currency_code: str, currency: str, field: str = "amount") -> None:
    """A positive amount in the ledger's currency."""
    if minor_units <= 0:
        raise InvalidArgument(
            f"{field}.minor_units must be a positive amount in paise, e.g. 174000000 for ₹17,40,000.00; "
            f"got {minor_units}",
            field=f"{field}.minor_units",
        )
    if currency_code != currency:
        raise InvalidArgument(
            f"{field}.currency_code must be {currency!r}; got {currency_code!r}", field=f"{field}.currency_code"
        )


def check_application(loan_number: str, applied_campaign_id: str | None, campaign_id: str) -> None:
    """A loan number belongs to one campaign ID for good."""
    if applied_campaign_id is not None and applied_campaign_id != campaign_id:
        raise AlreadyExists(
            f"loan {loan_number} was already applied under campaign_id {applied_campaign_id!r}; "
            f"a loan number has one origination source",
            field="loan_number",
        )


def check_sanction(loan_number: str, stage: str | None) -> None:
    if stage is None:
        raise FailedPrecondition(f"loan {loan_number} has no application; record the application first")
    if stage == DISBURSED:
        raise FailedPrecondition(f"loan {loan_number} is already disbursed; a disbursed loan cannot be sanctioned")


def check_disbursement(loan_number: str, stage: str | None) -> None:
    if stage is None:
        raise FailedPrecondition(
            f"loan {loan_number} has no application; record the application and the sanction first"
        )
    if stage == APPLIED:
        raise FailedPrecondition(f"loan {loan_number} is at stage {stage!r}, not sanctioned; record the sanction first")


def check_same_campaign(loan_number: str, loan_campaign_id: str, campaign_id: str) -> None:
    if loan_campaign_id != campaign_id:
        raise InvalidArgument(
            f"campaign_id {campaign_id!r} does not match the campaign_id {loan_campaign_id!r} "
            f"loan {loan_number} was applied under",
            field="campaign_id",
        )


def check_not_before_outreach(campaign_id: str, outreach_created_at: datetime, at: datetime, field: str) -> None:
    if at < outreach_created_at:
        raise InvalidArgument(
            f"{field} {at.isoformat()} is before outreach {campaign_id} was created "
            f"({outreach_created_at.isoformat()}); an outreach cannot produce money before it exists",
            field=field,
        )
