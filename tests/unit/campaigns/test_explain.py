"""Why a person did or did not get a campaign, run by run, from the rows release and dispatch store."""

from datetime import UTC, datetime, timedelta
from typing import Any

from services.campaigns.explain import Outcome, explain

NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
CAMPAIGN = {"state": "RUNNING", "segment_id": "seg_sip_only", "segment_version": 3}


def _run(run_id: str = "run-1", **values: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "kind": "release",
        "created_at": NOW - timedelta(days=1),
        "materialized_at": NOW - timedelta(days=1),
        "completed_at": None,
        "released_through": 10,
        "next_step_at": None,
        **values,
    }


def _outreach(**values: Any) -> dict[str, Any]:
    row = {
        "campaign_id": "CSELL-NOV-T00-0001",
        "run_id": "run-1",
        "channel": "EMAIL",
        "ordinal": 3,
        "test": False,
        "withdrawn_at": None,
        "dispatched_at": None,
        "dispatch_after": None,
        "recipient_time_zone": None,
    }
    row.update(values)
    return row


def _one(outreaches: list[dict[str, Any]] = [], exclusions: list[dict[str, Any]] = [], **run: Any) -> Any:  # noqa: B006
    (decision,) = explain(CAMPAIGN, [_run(**run)], outreaches, exclusions, NOW)
    return decision


def test_a_campaign_that_has_not_run_says_so_with_its_state() -> None:
    (decision,) = explain({**CAMPAIGN, "state": "SCHEDULED"}, [], [], [], NOW)
    assert decision.outcome is Outcome.NOT_RUN
    assert "SCHEDULED" in decision.reason


def test_someone_neither_reached_nor_left_out_was_not_a_member_of_the_pinned_version() -> None:
    decision = _one()
    assert decision.outcome is Outcome.NOT_IN_AUDIENCE
    assert "seg_sip_only version 3" in decision.reason


def test_a_run_still_reading_its_audience_says_so() -> None:
    assert _one(materialized_at=None).outcome is Outcome.MATERIALISING


def test_left_out_people_get_the_kind_and_reason_release_recorded() -> None:
    excluded = {"run_id": "run-1", "created_at": NOW - timedelta(days=1)}
    suppressed = _one(exclusions=[{**excluded, "kind": "suppressed", "reason": "opt_out"}])
    assert suppressed.outcome is Outcome.SUPPRESSED and "opt out" in suppressed.reason
    no_contact = _one(exclusions=[{**excluded, "kind": "suppressed", "reason": "no_contact"}])
    assert "no address" in no_contact.reason
    held = _one(exclusions=[{**excluded, "kind": "held_out", "reason": "holdout"}])
    assert held.outcome is Outcome.HELD_OUT and "control group" in held.reason
    capped = _one(exclusions=[{**excluded, "kind": "capped", "reason": "per_person_weekly"}])
    assert capped.outcome is Outcome.CAPPED and "per person weekly" in capped.reason
    failed = _one(exclusions=[{**excluded, "kind": "render_failed", "reason": "'city' is undefined"}])
    assert failed.outcome is Outcome.RENDER_FAILED and "'city' is undefined" in failed.reason


def test_an_undispatched_outreach_says_what_it_waits_for() -> None:
    assert _one([_outreach(ordinal=12)]).outcome is Outcome.AWAITING_RELEASE
    quiet = _one([_outreach(dispatch_after=NOW + timedelta(hours=9), recipient_time_zone="Asia/Kolkata")])
    assert quiet.outcome is Outcome.QUIET_HOURS and "Asia/Kolkata" in quiet.reason
    (paused,) = explain({**CAMPAIGN, "state": "PAUSED"}, [_run()], [_outreach()], [], NOW)
    assert paused.outcome is Outcome.NOT_DISPATCHED and "PAUSED" in paused.reason
    withdrawn = _one([_outreach(withdrawn_at=NOW - timedelta(hours=2))])
    assert withdrawn.outcome is Outcome.WITHDRAWN and "better-ranked campaign" in withdrawn.reason


def test_a_dispatched_outreach_reports_its_most_telling_channel_fact() -> None:
    sent = NOW - timedelta(hours=5)
    dispatched = _outreach(dispatched_at=sent)
    assert _one([dispatched]).outcome is Outcome.DISPATCHED
    assert _one([{**dispatched, "delivered_at": sent}]).outcome is Outcome.DELIVERED
    clicked = _one([{**dispatched, "delivered_at": sent, "opened_at": sent, "clicked_at": sent}])
    assert clicked.outcome is Outcome.ENGAGED and clicked.reason.startswith("clicked")
    assert clicked.campaign_id == "CSELL-NOV-T00-0001"
    # An unsubscribe after the click is what the next campaign needs to know.
    opted_out = _one([{**dispatched, "clicked_at": sent, "opted_out_at": sent}])
    assert opted_out.outcome is Outcome.OPTED_OUT
    assert _one([{**dispatched, "bounced_at": sent}]).outcome is Outcome.FAILED


def test_a_failed_outreach_says_what_became_of_its_fallback_and_a_fallback_which_it_follows() -> None:
    sent = NOW - timedelta(hours=5)
    failed = _outreach(channel="WHATSAPP", dispatched_at=sent, failed_at=sent)
    assert _one([failed]).reason == "the message failed at 2025-11-20 07:00 UTC"
    # Channels' reason, kept with the failure: a provider's refusal and a suppression at send time read apart.
    suppressed = _one([{**failed, "failure_reason": "suppressed at send time: SUPPRESSION_REASON_OPT_OUT"}])
    assert suppressed.reason == (
        "the message failed at 2025-11-20 07:00 UTC (suppressed at send time: SUPPRESSION_REASON_OPT_OUT)"
    )
    # A DELIVERED receipt after the FAILED one corrects it, as channels' GetMessage shows; not the other way round.
    corrected = _one([{**failed, "delivered_at": sent + timedelta(minutes=3)}])
    assert corrected.outcome is Outcome.DELIVERED
    assert _one([{**failed, "delivered_at": sent - timedelta(minutes=3)}]).outcome is Outcome.FAILED
    fell_back = _one([{**failed, "fallback_state": "fell_back"}])
    assert fell_back.outcome is Outcome.FAILED and "it fell back to the next channel" in fell_back.reason
    assert (
        "no fallback: it was on the campaign's last channel"
        in _one([{**failed, "fallback_state": "last_channel"}]).reason
    )
    no_contact = _one([{**failed, "fallback_state": "suppressed:no_contact"}])
    assert no_contact.reason.endswith("; no fallback: no address on any later channel of the campaign")
    capped = _one([{**failed, "fallback_state": "capped:cap_all_day"}])
    assert capped.reason.endswith("; no fallback: capped:cap all day")
    fallback = _one([_outreach(channel="SMS", dispatched_at=sent, delivered_at=sent, fallback_of="CSELL-NOV-T00-0001")])
    assert fallback.outcome is Outcome.DELIVERED
    assert fallback.reason.endswith("(a fallback: CSELL-NOV-T00-0001 failed on an earlier channel)")


def test_every_run_gets_a_decision_newest_first_and_test_sends_do_not_count() -> None:
    runs = [_run("run-2"), _run("run-1")]
    decisions = explain(CAMPAIGN, runs, [_outreach(run_id="run-2", test=True), _outreach(run_id="run-1")], [], NOW)
    assert [(d.run_id, d.outcome) for d in decisions] == [
        ("run-2", Outcome.NOT_IN_AUDIENCE),
        ("run-1", Outcome.NOT_DISPATCHED),
    ]


def test_trigger_days_that_did_not_concern_the_person_are_skipped() -> None:
    runs = [_run("day-2", kind="trigger"), _run("day-1", kind="trigger")]
    (decision,) = explain(CAMPAIGN, runs, [], [], NOW)
    assert decision.outcome is Outcome.NOT_IN_AUDIENCE and "no trigger" in decision.reason
    reached = explain(CAMPAIGN, runs, [_outreach(run_id="day-1", dispatched_at=NOW)], [], NOW)
    assert [d.run_id for d in reached] == ["day-1"]
