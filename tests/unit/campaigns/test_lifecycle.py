"""The lifecycle rules without I/O: which state allows which step, and maker-checker."""

import pytest

from plumbing.errors import FailedPrecondition, InvalidArgument
from services.campaigns import lifecycle
from services.campaigns.campaigns import CampaignState as S


def test_happy_path_states() -> None:
    assert lifecycle.submit("c", S.DRAFT, 1, 0).to_state == S.SUBMITTED
    assert lifecycle.approve("c", S.SUBMITTED, 1, 1, "maker", "checker", " fine ").to_state == S.APPROVED
    assert lifecycle.approve("c", S.SUBMITTED, 1, 1, "maker", "checker", " fine ").note == "fine"
    assert lifecycle.reject("c", S.SUBMITTED, 1, 0, "no").to_state == S.DRAFT
    assert lifecycle.pause("c", S.RUNNING, "").to_state == S.PAUSED
    assert lifecycle.resume("c", S.PAUSED, "SCHEDULED").to_state == S.SCHEDULED
    assert lifecycle.resume("c", S.PAUSED, None).to_state == S.RUNNING
    assert lifecycle.cancel("c", S.PAUSED, "").to_state == S.CANCELLED


def test_the_author_cannot_approve() -> None:
    with pytest.raises(FailedPrecondition) as error:
        lifecycle.approve("cmp_1", S.SUBMITTED, 3, 0, "asha", "asha", "")
    assert "asha wrote version 3 of campaign cmp_1 and cannot approve it" in error.value.message


def test_a_rejection_needs_a_reason() -> None:
    with pytest.raises(InvalidArgument) as error:
        lifecycle.reject("c", S.SUBMITTED, 1, 0, "  ")
    assert error.value.field == "reason"


@pytest.mark.parametrize("state", [S.SCHEDULED, S.RUNNING, S.PAUSED, S.COMPLETED, S.CANCELLED])
def test_only_unlaunched_campaigns_change(state: S) -> None:
    with pytest.raises(FailedPrecondition) as error:
        lifecycle.update("c", state)
    assert f"campaign c is {state.value}" in error.value.message


@pytest.mark.parametrize("state", [s for s in S if s != S.APPROVED])
def test_launch_needs_approval(state: S) -> None:
    with pytest.raises(FailedPrecondition) as error:
        lifecycle.check_launchable("c", state, require_approval=True)
    assert "must be APPROVED before launch" in error.value.message
    lifecycle.check_launchable("c", S.APPROVED, require_approval=True)


def test_without_approval_drafts_launch_but_launched_ones_do_not() -> None:
    lifecycle.check_launchable("c", S.DRAFT, require_approval=False)
    with pytest.raises(FailedPrecondition):
        lifecycle.check_launchable("c", S.RUNNING, require_approval=False)


@pytest.mark.parametrize("state", [S.DRAFT, S.SUBMITTED, S.APPROVED, S.PAUSED, S.COMPLETED, S.CANCELLED])
def test_only_scheduled_or_running_pause(state: S) -> None:
    with pytest.raises(FailedPrecondition):
        lifecycle.pause("c", state, "")


@pytest.mark.parametrize("state", [S.COMPLETED, S.CANCELLED])
def test_finished_campaigns_cannot_be_cancelled(state: S) -> None:
    with pytest.raises(FailedPrecondition) as error:
        lifecycle.cancel("c", state, "")
    assert "already" in error.value.message


def test_a_stale_version_is_refused() -> None:
    with pytest.raises(FailedPrecondition) as error:
        lifecycle.submit("c", S.DRAFT, 2, 1)
    assert "is at version 2, not 1" in error.value.message
