"""Maker-checker for segment versions: which transition each state allows, and who may make it."""

from dataclasses import dataclass
from enum import StrEnum

from plumbing.errors import PRECONDITION_APPROVAL, PRECONDITION_STATE


class VersionState(StrEnum):
    DRAFT = "DRAFT"
    SUBMITTED = "SUBMITTED"
    APPROVED = "APPROVED"
    PUBLISHED = "PUBLISHED"
    # A version is archived when its segment is, or when a newer version is published in its place.
    ARCHIVED = "ARCHIVED"


class Action(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    SUBMITTED = "submitted"
    APPROVED = "approved"
    REJECTED = "rejected"
    PUBLISHED = "published"
    ARCHIVED = "archived"


MAX_NOTE = 2000


class TransitionRefused(Exception):
    """A transition the current state or the actor forbids; `message` says what to do instead, `kind` which
    precondition failed (plumbing.errors' PRECONDITION_*)."""

    def __init__(self, message: str, kind: str = PRECONDITION_STATE) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class NoteProblem(ValueError):
    """A note or reason that cannot be recorded."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class VersionRef:
    """The part of a stored version the rules look at."""

    segment_id: str
    version: int
    state: VersionState
    author: str


def _where(ref: VersionRef) -> str:
    return f"segment {ref.segment_id} version {ref.version} is {ref.state}"


def _refuse_archived(ref: VersionRef) -> None:
    if ref.state is VersionState.ARCHIVED:
        raise TransitionRefused(
            f"{_where(ref)}; archived versions cannot change: edit the segment with UpdateSegment to make a new draft"
        )


def submit(ref: VersionRef) -> VersionState:
    """DRAFT → SUBMITTED."""
    _refuse_archived(ref)
    if ref.state is not VersionState.DRAFT:
        raise TransitionRefused(
            f"{_where(ref)}; only a DRAFT version can be submitted: edit it with UpdateSegment to make a new draft"
        )
    return VersionState.SUBMITTED


def approve(ref: VersionRef, actor: str) -> VersionState:
    """SUBMITTED → APPROVED, by anyone but the author (four eyes)."""
    _refuse_archived(ref)
    if ref.state is not VersionState.SUBMITTED:
        hint = "submit it first with SubmitSegment" if ref.state is VersionState.DRAFT else "it needs no approval"
        raise TransitionRefused(f"{_where(ref)}; only a SUBMITTED version can be approved: {hint}")
    if actor == ref.author:
        raise TransitionRefused(
            "the author cannot approve their own segment; ask another approver", kind=PRECONDITION_APPROVAL
        )
    return VersionState.APPROVED


def reject(ref: VersionRef) -> VersionState:
    """SUBMITTED → DRAFT, with a reason for the author."""
    _refuse_archived(ref)
    if ref.state is not VersionState.SUBMITTED:
        raise TransitionRefused(f"{_where(ref)}; only a SUBMITTED version can be rejected")
    return VersionState.DRAFT


def publishable(ref: VersionRef, *, require_approval: bool) -> None:
    """Raises unless the version may be published: APPROVED, or any pending state when approval is off."""
    _refuse_archived(ref)
    if ref.state is VersionState.APPROVED:
        return
    if not require_approval and ref.state in (VersionState.DRAFT, VersionState.SUBMITTED):
        return
    if ref.state is VersionState.DRAFT:
        todo = "submit it with SubmitSegment and have someone other than its author approve it with ApproveSegment"
    elif ref.state is VersionState.SUBMITTED:
        todo = "have someone other than its author approve it with ApproveSegment"
    else:
        todo = "edit the segment with UpdateSegment to make a new version"
    raise TransitionRefused(f"{_where(ref)}; only an APPROVED version can be published: {todo}")


def reason(text: str, *, required: bool, field: str) -> str:
    """A trimmed note or reason for the audit log."""
    trimmed = text.strip()
    if required and not trimmed:
        raise NoteProblem(f"{field} is required: say why, for the author, e.g. 'window should be 180 days'")
    if len(trimmed) > MAX_NOTE:
        raise NoteProblem(f"{field} must be at most {MAX_NOTE} characters, got {len(trimmed)}")
    return trimmed
