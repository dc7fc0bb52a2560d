"""What leads, applications, sanctions and disbursements need, and the errors that say what to change."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from plumbing.errors import DomainError
from services.attribution import rules


def _code(error: pytest.ExceptionInfo[DomainError]) -> grpc.StatusCode:
    return error.value.code


@pytest.mark.parametrize(("minor_units", "currency"), [(0, "INR"), (-100, "INR")])
def test_amount_must_be_positive_and_says_so_with_an_example(minor_units: int, currency: str) -> None:
    with pytest.raises(DomainError) as error:
        rules.check_amount(minor_units, currency, "INR")
    assert _code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field == "amount.minor_units"
    assert "amount.minor_units" in error.value.message
    assert "174000000" in error.value.message


def test_amount_must_be_in_the_ledger_currency() -> None:
    with pytest.raises(DomainError) as error:
        rules.check_amount(100, "USD", "INR")
    assert _code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field == "amount.currency_code"
    assert "'INR'" in error.value.message
    rules.check_amount(174_000_000, "INR", "INR")


def test_unknown_outreach_names_the_id_and_an_example() -> None:
    error = rules.unknown_outreach("CSELL-XXX")
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.message == (
        "campaign_id 'CSELL-XXX' is not a known outreach; use the ID printed on the outreach, e.g. CSELL-NOV-T06-0884"
    )


def test_missing_campaign_id_is_invalid() -> None:
    with pytest.raises(DomainError) as error:
        rules.require_campaign_id("")
    assert _code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field == "campaign_id"


def test_a_loan_number_keeps_its_campaign_id() -> None:
    rules.check_application("LA-2025-0001", None, "CSELL-NOV-T06-0884")
    rules.check_application("LA-2025-0001", "CSELL-NOV-T06-0884", "CSELL-NOV-T06-0884")
    with pytest.raises(DomainError) as error:
        rules.check_application("LA-2025-0001", "CSELL-NOV-T06-0884", "CSELL-NOV-T01-0001")
    assert _code(error) == grpc.StatusCode.ALREADY_EXISTS


def test_sanction_needs_an_application() -> None:
    with pytest.raises(DomainError) as error:
        rules.check_sanction("LA-2025-0001", None)
    assert _code(error) == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.message == "loan LA-2025-0001 has no application; record the application first"
    rules.check_sanction("LA-2025-0001", rules.APPLIED)
    with pytest.raises(DomainError):
        rules.check_sanction("LA-2025-0001", rules.DISBURSED)


@pytest.mark.parametrize("stage", [None, rules.APPLIED])
def test_disbursement_needs_a_sanction_and_names_the_stage(stage: str | None) -> None:
    with pytest.raises(DomainError) as error:
        rules.check_disbursement("LA-2025-0001", stage)
    assert _code(error) == grpc.StatusCode.FAILED_PRECONDITION
    assert "LA-2025-0001" in error.value.message
    assert (stage or "no application") in error.value.message


def test_disbursement_of_a_sanctioned_or_partly_disbursed_loan_is_allowed() -> None:
    rules.check_disbursement("LA-2025-0001", rules.SANCTIONED)
    rules.check_disbursement("LA-2025-0001", rules.DISBURSED)


def test_mismatched_campaign_id_names_both() -> None:
    with pytest.raises(DomainError) as error:
        rules.check_same_campaign("LA-2025-0001", "CSELL-NOV-T06-0884", "CSELL-NOV-T01-0001")
    assert _code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert "CSELL-NOV-T06-0884" in error.value.message
    assert "CSELL-NOV-T01-0001" in error.value.message


def test_money_cannot_come_before_the_outreach() -> None:
    created = datetime(2025, 11, 13, 9, 15, tzinfo=UTC)
    rules.check_not_before_outreach("C", created, created, field="disburse_time")
    with pytest.raises(DomainError) as error:
        rules.check_not_before_outreach("C", created, created - timedelta(seconds=1), field="disburse_time")
    assert _code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field == "disburse_time"


def test_funnel_ranks_follow_the_funnel() -> None:
    assert [rules.funnel_rank(step) for step in rules.FUNNEL_STEPS] == list(range(1, 10))
    assert rules.funnel_rank(rules.CLICKED) > rules.funnel_rank(rules.OPENED)


def test_a_first_transaction_is_the_activated_step_and_every_other_kind_the_conversion() -> None:
    assert rules.FUNNEL_STEPS[-2:] == (rules.DISBURSED, rules.ACTIVATED)
    assert rules.conversion_step(rules.FIRST_TRANSACTION) == rules.ACTIVATED
    assert {rules.conversion_step(kind) for kind in rules.FUNDING_KINDS} == {rules.CONVERTED}


def test_the_last_touch_window_is_the_products_or_the_default() -> None:
    windows = {"default": 30, "FD_FUNDED": 7}
    assert rules.window_days(windows, "FD_FUNDED") == 7
    assert rules.window_days(windows, "MF_LUMPSUM") == 30


@pytest.mark.parametrize(
    ("touch_days_before", "candidate"),
    [(0, True), (3, True), (7, True), (7.001, False), (30, False), (-0.001, False)],
)
def test_a_last_touch_is_an_outreach_within_the_window_and_never_after_the_conversion(
    touch_days_before: float, candidate: bool
) -> None:
    at = datetime(2025, 11, 20, 6, 0, tzinfo=UTC)
    start, end = rules.touch_window(at, 7)
    # Both ends inclusive, as store.last_touch queries them.
    assert (start <= at - timedelta(days=touch_days_before) <= end) is candidate


def test_a_conversion_named_by_campaign_id_is_that_outreachs_person() -> None:
    rules.check_same_profile("CSELL-1", "prf_meera", "")
    rules.check_same_profile("CSELL-1", "prf_meera", "prf_meera")
    with pytest.raises(DomainError) as error:
        rules.check_same_profile("CSELL-1", "prf_meera", "prf_kaveri")
    assert _code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field == "profile_id"


def test_activation_needs_the_funding_first() -> None:
    funded = datetime(2025, 11, 20, tzinfo=UTC)
    with pytest.raises(DomainError) as error:
        rules.check_activation("CSELL-1", None, funded)
    assert _code(error) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(DomainError) as error:
        rules.check_activation("CSELL-1", funded, funded - timedelta(seconds=1))
    assert _code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field == "occur_time"
    rules.check_activation("CSELL-1", funded, funded)


def test_a_description_has_a_length_limit() -> None:
    rules.check_description("x" * rules.MAX_DESCRIPTION_LENGTH)
    with pytest.raises(DomainError) as error:
        rules.check_description("x" * (rules.MAX_DESCRIPTION_LENGTH + 1))
    assert error.value.field == "description"
