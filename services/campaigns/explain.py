"""Why a person did or did not get a campaign: one decision per run, from what release and dispatch stored.

Release records every member it leaves out (`run_exclusions`: suppressed with the suppression reason, held
out, capped with the cap) and every outreach it creates; dispatch and the channel events fill in the
outreach's times. This module turns those rows into a sentence per run, so a support agent or an SRE can
answer "why did this person not get this campaign?" without reading tables.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from services.campaigns.automation import FELL_BACK, LAST_CHANNEL
from services.campaigns.offers import AMOUNT_BELOW_MINIMUM, AMOUNT_MISSING


class Outcome(StrEnum):
    """What happened to one person in one run, from "never in it" to "clicked"."""

    NOT_RUN = "not_run"
    MATERIALISING = "materialising"
    NOT_IN_AUDIENCE = "not_in_audience"
    SUPPRESSED = "suppressed"
    NOT_ELIGIBLE = "not_eligible"
    HELD_OUT = "held_out"
    CAPPED = "capped"
    RENDER_FAILED = "render_failed"
    WITHDRAWN = "withdrawn"
    AWAITING_RELEASE = "awaiting_release"
    QUIET_HOURS = "quiet_hours"
    NOT_DISPATCHED = "not_dispatched"
    DISPATCHED = "dispatched"
    FAILED = "failed"
    DELIVERED = "delivered"
    ENGAGED = "engaged"
    OPTED_OUT = "opted_out"


@dataclass(frozen=True)
class Decision:
    run_id: str
    outcome: Outcome
    reason: str
    campaign_id: str = ""
    channel: str = ""
    at: datetime | None = None


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "an unknown time"


# Terminal channel facts, most telling first: an opt-out or a complaint outranks the click before it.
_SETTLED = (
    ("opted_out_at", Outcome.OPTED_OUT, "unsubscribed"),
    ("complained_at", Outcome.OPTED_OUT, "marked the message as spam"),
    ("bounced_at", Outcome.FAILED, "the message bounced"),
    ("failed_at", Outcome.FAILED, "the message failed"),
    ("replied_at", Outcome.ENGAGED, "replied"),
    ("clicked_at", Outcome.ENGAGED, "clicked"),
    ("opened_at", Outcome.ENGAGED, "opened"),
    ("delivered_at", Outcome.DELIVERED, "delivered"),
    ("sent_at", Outcome.DISPATCHED, "the provider accepted the message"),
)


def outreach_decision(outreach: Mapping[str, Any], run: Mapping[str, Any], state: str, now: datetime) -> Decision:
    """The state of an outreach that was created for the person in `run`."""
    base = {"run_id": run["run_id"], "campaign_id": outreach["campaign_id"], "channel": outreach["channel"]}
    if outreach.get("withdrawn_at") is not None:
        return Decision(
            outcome=Outcome.WITHDRAWN,
            reason=f"withdrawn at {_when(outreach['withdrawn_at'])} before dispatch: a better-ranked campaign "
            "took the person's contact under the frequency caps",
            at=outreach["withdrawn_at"],
            **base,
        )
    if outreach.get("dispatched_at") is None:
        ordinal, released = outreach.get("ordinal"), run.get("released_through") or 0
        if state in ("PAUSED", "CANCELLED"):
            return Decision(
                outcome=Outcome.NOT_DISPATCHED,
                reason=f"created but not dispatched: the campaign is {state}",
                **base,
            )
        if ordinal is not None and ordinal >= released:
            return Decision(
                outcome=Outcome.AWAITING_RELEASE,
                reason=f"waits for a later step of the staggered release (position {ordinal}, released up to "
                f"{released}; next step at {_when(run.get('next_step_at'))})",
                **base,
            )
        after = outreach.get("dispatch_after")
        if after is not None and after > now:
            zone = outreach.get("recipient_time_zone") or "the campaign's time zone"
            return Decision(
                outcome=Outcome.QUIET_HOURS,
                reason=f"held for quiet hours in {zone} until {_when(after)}",
                at=after,
                **base,
            )
        return Decision(outcome=Outcome.NOT_DISPATCHED, reason="released, about to be dispatched", **base)
    for column, outcome, words in _SETTLED:
        if column == "failed_at" and _delivered_after_failing(outreach):
            continue  # the provider's later receipt corrected its failure: channels shows DELIVERED too
        if outreach.get(column) is not None:
            reason = f"{words} at {_when(outreach[column])}{_why(outreach, column)}{_fallback_of(outreach)}"
            if outcome is Outcome.FAILED:
                reason += _fallback(outreach)
            return Decision(outcome=outcome, reason=reason, at=outreach[column], **base)
    return Decision(
        outcome=Outcome.DISPATCHED,
        reason=f"dispatched at {_when(outreach['dispatched_at'])}; no answer from the provider yet",
        at=outreach["dispatched_at"],
        **base,
    )


def _delivered_after_failing(outreach: Mapping[str, Any]) -> bool:
    failed, delivered = outreach.get("failed_at"), outreach.get("delivered_at")
    return failed is not None and delivered is not None and delivered >= failed


def _why(outreach: Mapping[str, Any], column: str) -> str:
    """Channels' reason for a failure: refused by the provider, suppressed at send time, malformed, given up..."""
    reason = outreach.get("failure_reason") if column == "failed_at" else None
    return f" ({reason})" if reason else ""


def _fallback_of(outreach: Mapping[str, Any]) -> str:
    """For a fallback: which failed outreach it follows."""
    failed = outreach.get("fallback_of")
    return f" (a fallback: {failed} failed on an earlier channel)" if failed else ""


def _fallback(outreach: Mapping[str, Any]) -> str:
    """What became of a failed outreach's fallback (fallback_on_failure), when it was decided."""
    state = outreach.get("fallback_state")
    if not state:
        return ""
    if state == FELL_BACK:
        return "; it fell back to the next channel the person can be reached on (its own run, <run>-f)"
    if state == LAST_CHANNEL:
        return "; no fallback: it was on the campaign's last channel"
    if state == "suppressed:no_contact":
        return "; no fallback: no address on any later channel of the campaign"
    return f"; no fallback: {state.replace('_', ' ')}"


_EXCLUDED = {
    "suppressed": (Outcome.SUPPRESSED, "suppressed ({reason})"),
    "not_eligible": (Outcome.NOT_ELIGIBLE, "not eligible for the offer ({reason})"),
    "held_out": (Outcome.HELD_OUT, "in the campaign's holdout (control group), measured for lift"),
    "capped": (Outcome.CAPPED, "over a frequency cap ({reason})"),
    "render_failed": (Outcome.RENDER_FAILED, "the content could not be rendered for them: {reason}"),
}


_NOT_ELIGIBLE = {
    AMOUNT_MISSING: "no offer amount: the attribute the amount rule reads is missing or in another currency",
    AMOUNT_BELOW_MINIMUM: "the offer amount from their profile is below the rule's minimum",
}


def exclusion_decision(exclusion: Mapping[str, Any], run: Mapping[str, Any]) -> Decision:
    """The person was a member when the run streamed its audience, and release left them out."""
    outcome, template = _EXCLUDED.get(exclusion["kind"], (Outcome.SUPPRESSED, "left out ({reason})"))
    reason = exclusion["reason"]
    if reason == "no_contact":
        text = "no address on any of the campaign's channels (e.g. no e-mail, no phone)"
    elif exclusion["kind"] == "not_eligible":
        text = template.format(reason=_NOT_ELIGIBLE.get(reason, f"fails the eligibility condition on {reason}"))
    else:
        text = template.format(reason=reason if exclusion["kind"] == "render_failed" else reason.replace("_", " "))
    return Decision(
        run_id=run["run_id"],
        outcome=outcome,
        reason=f"left out at release on {_when(exclusion.get('created_at'))}: {text}",
        at=exclusion.get("created_at"),
    )


def explain(
    campaign: Mapping[str, Any],
    runs: Sequence[Mapping[str, Any]],
    outreaches: Sequence[Mapping[str, Any]],
    exclusions: Sequence[Mapping[str, Any]],
    now: datetime,
) -> list[Decision]:
    """One decision per run of the campaign (newest first); a single NOT_RUN when it has not run yet."""
    if not runs:
        return [
            Decision(
                run_id="",
                outcome=Outcome.NOT_RUN,
                reason=f"the campaign has not run yet (it is {campaign['state']})",
            )
        ]
    by_run_outreach: dict[str, Mapping[str, Any]] = {}
    for outreach in outreaches:
        if not outreach.get("test"):
            by_run_outreach.setdefault(outreach["run_id"], outreach)
    by_run_exclusion = {exclusion["run_id"]: exclusion for exclusion in exclusions}
    decisions: list[Decision] = []
    for run in runs:
        if run.get("kind", "release") != "release" and run["run_id"] not in by_run_outreach:
            # Trigger days and resend passes concern only the people they reached or left out.
            if run["run_id"] in by_run_exclusion:
                decisions.append(exclusion_decision(by_run_exclusion[run["run_id"]], run))
            continue
        if run["run_id"] in by_run_outreach:
            decisions.append(outreach_decision(by_run_outreach[run["run_id"]], run, campaign["state"], now))
        elif run["run_id"] in by_run_exclusion:
            decisions.append(exclusion_decision(by_run_exclusion[run["run_id"]], run))
        elif run.get("materialized_at") is None and run.get("completed_at") is None:
            decisions.append(
                Decision(
                    run_id=run["run_id"],
                    outcome=Outcome.MATERIALISING,
                    reason="the run is still reading its audience; the person has not been reached in it yet",
                )
            )
        else:
            decisions.append(
                Decision(
                    run_id=run["run_id"],
                    outcome=Outcome.NOT_IN_AUDIENCE,
                    reason=f"not a member of segment {campaign['segment_id']} version {campaign['segment_version']} "
                    f"when the run read its audience ({_when(run.get('materialized_at') or run.get('created_at'))})",
                )
            )
    if not decisions:
        decisions.append(
            Decision(
                run_id="",
                outcome=Outcome.NOT_IN_AUDIENCE,
                reason=f"no trigger of the campaign fired for the person in its {len(runs)} run(s) so far",
            )
        )
    return decisions
