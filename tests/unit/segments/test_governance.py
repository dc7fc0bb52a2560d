"""The maker-checker state machine: which transitions each state allows, and the four-eyes rule."""

import pytest

from services.segments import governance
from services.segments.governance import TransitionRefused, VersionRef, VersionState


def _ref(state: VersionState, author: str = "maker") -> VersionRef:
    return VersionRef("seg_1", 2, state, author)


def test_the_happy_path_is_draft_submitted_approved() -> None:
    assert governance.submit(_ref(VersionState.DRAFT)) is VersionState.SUBMITTED
    assert governance.approve(_ref(VersionState.SUBMITTED), "checker") is VersionState.APPROVED
    governance.publishable(_ref(VersionState.APPROVED), require_approval=True)


def test_the_author_cannot_approve_their_own_version() -> None:
    with pytest.raises(TransitionRefused) as refused:
        governance.approve(_ref(VersionState.SUBMITTED, author="maker"), "maker")
    assert refused.value.message == "the author cannot approve their own segment; ask another approver"


def test_rejection_sends_a_submitted_version_back_to_draft() -> None:
    assert governance.reject(_ref(VersionState.SUBMITTED)) is VersionState.DRAFT


@pytest.mark.parametrize(
    ("transition", "states"),
    [
        (governance.submit, [VersionState.SUBMITTED, VersionState.APPROVED, VersionState.PUBLISHED]),
        (
            lambda ref: governance.approve(ref, "checker"),
            [VersionState.DRAFT, VersionState.APPROVED, VersionState.PUBLISHED],
        ),
        (governance.reject, [VersionState.DRAFT, VersionState.APPROVED, VersionState.PUBLISHED]),
    ],
)
def test_wrong_state_transitions_name_the_state(transition, states) -> None:  # type: ignore[no-untyped-def]
    for state in [*states, VersionState.ARCHIVED]:
        with pytest.raises(TransitionRefused) as refused:
            transition(_ref(state))
        assert f"segment seg_1 version 2 is {state}" in refused.value.message


def test_only_approved_versions_publish_when_approval_is_required() -> None:
    for state, hint in [
        (VersionState.DRAFT, "submit it with SubmitSegment"),
        (VersionState.SUBMITTED, "approve it with ApproveSegment"),
        (VersionState.ARCHIVED, "UpdateSegment"),
    ]:
        with pytest.raises(TransitionRefused) as refused:
            governance.publishable(_ref(state), require_approval=True)
        assert f"is {state}" in refused.value.message and hint in refused.value.message


def test_without_required_approval_drafts_and_submissions_publish_but_archived_never() -> None:
    governance.publishable(_ref(VersionState.DRAFT), require_approval=False)
    governance.publishable(_ref(VersionState.SUBMITTED), require_approval=False)
    with pytest.raises(TransitionRefused):
        governance.publishable(_ref(VersionState.ARCHIVED), require_approval=False)


def test_a_rejection_needs_a_reason_and_notes_are_bounded() -> None:
    with pytest.raises(governance.NoteProblem) as problem:
        governance.reason("   ", required=True, field="reason")
    assert "reason is required" in problem.value.message
    assert governance.reason("  window too wide ", required=True, field="reason") == "window too wide"
    assert governance.reason("", required=False, field="note") == ""
    with pytest.raises(governance.NoteProblem):
        governance.reason("x" * (governance.MAX_NOTE + 1), required=False, field="note")


def test_approval_is_required_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.segments.settings import SegmentsSettings

    defaults = SegmentsSettings()
    assert (defaults.require_approval, defaults.sweep_interval_seconds, defaults.stream_page_size) == (True, 60.0, 1000)
    monkeypatch.setenv("XSELL_SEGMENTS_REQUIRE_APPROVAL", "false")
    monkeypatch.setenv("XSELL_SEGMENTS_SWEEP_INTERVAL_SECONDS", "5")
    overridden = SegmentsSettings()
    assert (overridden.require_approval, overridden.sweep_interval_seconds) == (False, 5.0)
