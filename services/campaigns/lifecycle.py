"""The campaign lifecycle and its maker-checker rules: which transition each state allows, and who may make it."""

from dataclasses import dataclass

from plumbing.errors import PRECONDITION_APPROVAL, PRECONDITION_VERSION, FailedPrecondition, InvalidArgument
from services.campaigns.campaigns import CampaignState

S = CampaignState

EDITABLE = frozenset({S.DRAFT, S.SUBMITTED, S.APPROVED})
"""States before launch: the definition may still change (and a change sends it back to DRAFT)."""
PAUSABLE = frozenset({S.SCHEDULED, S.RUNNING})
TERMINAL = frozenset({S.COMPLETED, S.CANCELLED})
RELEASING = frozenset({S.SCHEDULED, S.RUNNING})
"""States in which the release runner may create and dispatch outreaches."""

MAX_REASON = 1000


def campaign_subject(campaign_key: str) -> str:
    """The campaign a refused transition is about, as a refusal's PreconditionFailure names it."""
    return f"campaigns/{campaign_key}"


@dataclass(frozen=True)
class Transition:
    """The state a request moves the campaign to, and the audit entry it writes."""

    to_state: CampaignState
    action: str
    note: str = ""


def update(campaign_key: str, state: CampaignState) -> Transition:
    """A new version goes back to DRAFT: whatever was submitted or approved was another definition."""
    if state not in EDITABLE:
        raise FailedPrecondition(
            f"campaign {campaign_key} is {state.value}; only DRAFT, SUBMITTED or APPROVED campaigns can be "
            "changed (a launched campaign cannot: cancel it and create a new one)",
            field="campaign_key",
            subject=campaign_subject(campaign_key),
        )
    return Transition(S.DRAFT, "updated")


def _require_version(campaign_key: str, current: int, requested: int) -> None:
    if requested and requested != current:
        raise FailedPrecondition(
            f"campaign {campaign_key} is at version {current}, not {requested}; reload it and act on "
            f"version {current} (or pass version 0 for the current one)",
            field="version",
            subject=campaign_subject(campaign_key),
            kind=PRECONDITION_VERSION,
        )


def submit(campaign_key: str, state: CampaignState, current_version: int, version: int) -> Transition:
    _require_version(campaign_key, current_version, version)
    if state != S.DRAFT:
        raise FailedPrecondition(
            f"campaign {campaign_key} is {state.value}; only a DRAFT campaign can be submitted for approval",
            field="campaign_key",
            subject=campaign_subject(campaign_key),
        )
    return Transition(S.SUBMITTED, "submitted")


def approve(
    campaign_key: str, state: CampaignState, current_version: int, version: int, author: str, actor: str, note: str
) -> Transition:
    _require_version(campaign_key, current_version, version)
    if state != S.SUBMITTED:
        raise FailedPrecondition(
            f"campaign {campaign_key} is {state.value}; only a SUBMITTED campaign can be approved "
            "(submit it first with SubmitCampaign)",
            field="campaign_key",
            subject=campaign_subject(campaign_key),
        )
    if actor == author:
        raise FailedPrecondition(
            f"{actor} wrote version {current_version} of campaign {campaign_key} and cannot approve it; "
            "another person with the approve scope must (maker-checker)",
            field="campaign_key",
            subject=campaign_subject(campaign_key),
            kind=PRECONDITION_APPROVAL,
        )
    return Transition(S.APPROVED, "approved", note.strip()[:MAX_REASON])


def reject(campaign_key: str, state: CampaignState, current_version: int, version: int, reason: str) -> Transition:
    if not reason.strip():
        raise InvalidArgument("reason is required: tell the author what to change", field="reason")
    _require_version(campaign_key, current_version, version)
    if state != S.SUBMITTED:
        raise FailedPrecondition(
            f"campaign {campaign_key} is {state.value}; only a SUBMITTED campaign can be rejected",
            field="campaign_key",
            subject=campaign_subject(campaign_key),
        )
    return Transition(S.DRAFT, "rejected", reason.strip()[:MAX_REASON])


def check_launchable(campaign_key: str, state: CampaignState, *, require_approval: bool) -> None:
    if require_approval and state != S.APPROVED:
        hint = {
            S.DRAFT: "submit it (SubmitCampaign) and have someone else approve it (ApproveCampaign)",
            S.SUBMITTED: "it is waiting for approval by someone other than its author",
        }.get(state, "only an APPROVED campaign can be launched")
        raise FailedPrecondition(
            f"campaign {campaign_key} is {state.value}; it must be APPROVED before launch: {hint}",
            field="campaign_key",
            subject=campaign_subject(campaign_key),
            kind=PRECONDITION_APPROVAL,
        )
    if not require_approval and state not in (S.DRAFT, S.APPROVED):
        raise FailedPrecondition(
            f"campaign {campaign_key} is {state.value}; only DRAFT or APPROVED campaigns can be launched",
            field="campaign_key",
            subject=campaign_subject(campaign_key),
        )


def pause(campaign_key: str, state: CampaignState, reason: str) -> Transition:
    if state not in PAUSABLE:
        raise FailedPrecondition(
            f"campaign {campaign_key} is {state.value}; only SCHEDULED or RUNNING campaigns can be paused",
            field="campaign_key",
            subject=campaign_subject(campaign_key),
        )
    return Transition(S.PAUSED, "paused", reason.strip()[:MAX_REASON])


def resume(campaign_key: str, state: CampaignState, paused_from: str | None) -> Transition:
    """Back to where it was paused: SCHEDULED if no run had started, RUNNING otherwise."""
    if state != S.PAUSED:
        raise FailedPrecondition(
            f"campaign {campaign_key} is {state.value}; only a PAUSED campaign can be resumed",
            field="campaign_key",
            subject=campaign_subject(campaign_key),
        )
    target = S(paused_from) if paused_from in (S.SCHEDULED, S.RUNNING) else S.RUNNING
    return Transition(target, "resumed")


def cancel(campaign_key: str, state: CampaignState, reason: str) -> Transition:
    if state in TERMINAL:
        raise FailedPrecondition(
            f"campaign {campaign_key} is {state.value} already; only a campaign that has not finished can be cancelled",
            field="campaign_key",
            subject=campaign_subject(campaign_key),
        )
    return Transition(S.CANCELLED, "cancelled", reason.strip()[:MAX_REASON])
