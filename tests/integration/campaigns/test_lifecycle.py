"""Maker-checker, versions, pause / resume / cancel and the audit log on a real server, NATS and both databases."""

import grpc
import pytest

from plumbing.page_tokens import encode_token
from tests.integration.campaigns.harness import (
    CHECKER,
    MAKER,
    RELEASED_PROFILES,
    Harness,
    all_outreaches,
    approve,
    campaign_message,
    create,
    programme_code,
    state_of,
)
from tests.status_details import field_violations, precondition_violations
from tests.waiting import eventually
from xsell.campaigns.v1 import resources_pb2, service_pb2, service_pb2_grpc

S = resources_pb2


async def _rejected(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def _audit(stub: service_pb2_grpc.CampaignsServiceStub, key: str) -> list[tuple[str, str, int, int]]:
    entries: list[resources_pb2.CampaignAuditEntry] = []
    token = ""
    while True:
        page = await stub.ListCampaignAudit(
            service_pb2.ListCampaignAuditRequest(campaign_key=key, page_size=2, page_token=token)
        )
        entries.extend(page.entries)
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert all(entry.time.seconds > 0 for entry in entries)
    return [(entry.action, entry.actor, entry.version, entry.state) for entry in entries]


async def test_maker_checker_versions_and_audit(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    created = (
        await stub.CreateCampaign(
            service_pb2.CreateCampaignRequest(request_id="mc-create", campaign=campaign_message(programme_code())),
            metadata=MAKER,
        )
    ).campaign
    key = created.campaign_key
    assert (created.state, created.version, created.author, created.approver) == (
        S.CAMPAIGN_STATE_DRAFT,
        1,
        "maker",
        "",
    )

    # A draft cannot be launched, approved or rejected.
    error = await _rejected(
        stub.LaunchCampaign(service_pb2.LaunchCampaignRequest(request_id="mc-l0", campaign_key=key))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"campaign {key} is DRAFT; it must be APPROVED before launch" in (error.details() or "")
    error = await _rejected(
        stub.ApproveCampaign(service_pb2.ApproveCampaignRequest(request_id="mc-a0", campaign_key=key), metadata=CHECKER)
    )
    assert "only a SUBMITTED campaign can be approved" in (error.details() or "")

    submitted = (
        await stub.SubmitCampaign(service_pb2.SubmitCampaignRequest(request_id="mc-s1", campaign_key=key, version=1))
    ).campaign
    assert submitted.state == S.CAMPAIGN_STATE_SUBMITTED
    # The author cannot approve their own version.
    error = await _rejected(
        stub.ApproveCampaign(service_pb2.ApproveCampaignRequest(request_id="mc-a1", campaign_key=key), metadata=MAKER)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "maker wrote version 1" in (error.details() or "") and "cannot approve it" in (error.details() or "")
    [(kind, subject, _)] = precondition_violations(error)
    assert (kind, subject) == ("APPROVAL", f"campaigns/{key}")
    # A rejection needs a reason, then sends it back to draft.
    error = await _rejected(
        stub.RejectCampaign(service_pb2.RejectCampaignRequest(request_id="mc-r0", campaign_key=key), metadata=CHECKER)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "reason is required" in (error.details() or "")
    rejected = (
        await stub.RejectCampaign(
            service_pb2.RejectCampaignRequest(request_id="mc-r1", campaign_key=key, reason="tone down the subject"),
            metadata=CHECKER,
        )
    ).campaign
    assert rejected.state == S.CAMPAIGN_STATE_DRAFT

    # An update makes version 2 by its own author; approving version 1 is now refused.
    changed = campaign_message(programme_code())
    changed.display_name = "Lumpsum, gently"
    updated = (
        await stub.UpdateCampaign(
            service_pb2.UpdateCampaignRequest(
                request_id="mc-u1", campaign_key=key, campaign=changed, expected_version=1
            ),
            metadata=(("x-xsell-client", "editor"),),
        )
    ).campaign
    assert (updated.version, updated.author, updated.display_name) == (2, "editor", "Lumpsum, gently")
    stale = await _rejected(
        stub.UpdateCampaign(
            service_pb2.UpdateCampaignRequest(
                request_id="mc-u2", campaign_key=key, campaign=changed, expected_version=1
            )
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    await stub.SubmitCampaign(service_pb2.SubmitCampaignRequest(request_id="mc-s2", campaign_key=key))
    old = await _rejected(
        stub.ApproveCampaign(
            service_pb2.ApproveCampaignRequest(request_id="mc-a2", campaign_key=key, version=1), metadata=CHECKER
        )
    )
    assert "is at version 2, not 1" in (old.details() or "")
    assert field_violations(old) == ["version"]
    assert [(kind, subject) for kind, subject, _ in precondition_violations(old)] == [("VERSION", f"campaigns/{key}")]
    # The maker of version 1 may approve version 2: its author is the editor.
    approved = (
        await stub.ApproveCampaign(
            service_pb2.ApproveCampaignRequest(request_id="mc-a3", campaign_key=key, version=2, note="ok"),
            metadata=MAKER,
        )
    ).campaign
    assert (approved.state, approved.approver) == (S.CAMPAIGN_STATE_APPROVED, "maker")
    # A retried approval returns the first answer.
    again = (
        await stub.ApproveCampaign(
            service_pb2.ApproveCampaignRequest(request_id="mc-a3", campaign_key=key, version=2, note="ok"),
            metadata=MAKER,
        )
    ).campaign
    assert again == approved

    await stub.LaunchCampaign(service_pb2.LaunchCampaignRequest(request_id="mc-l1", campaign_key=key))

    async def completed() -> bool:
        return (await state_of(stub, key)).state == S.CAMPAIGN_STATE_COMPLETED

    await eventually(completed)
    # Launched campaigns cannot change, be paused or be cancelled any more.
    error = await _rejected(
        stub.UpdateCampaign(service_pb2.UpdateCampaignRequest(request_id="mc-u3", campaign_key=key, campaign=changed))
    )
    assert "is COMPLETED; only DRAFT, SUBMITTED or APPROVED campaigns can be changed" in (error.details() or "")
    error = await _rejected(stub.PauseCampaign(service_pb2.PauseCampaignRequest(request_id="mc-p", campaign_key=key)))
    assert "is COMPLETED; only SCHEDULED or RUNNING campaigns can be paused" in (error.details() or "")
    error = await _rejected(stub.CancelCampaign(service_pb2.CancelCampaignRequest(request_id="mc-c", campaign_key=key)))
    assert "is COMPLETED already" in (error.details() or "")

    assert await _audit(stub, key) == [
        ("created", "maker", 1, S.CAMPAIGN_STATE_DRAFT),
        ("submitted", "internal", 1, S.CAMPAIGN_STATE_SUBMITTED),
        ("rejected", "checker", 1, S.CAMPAIGN_STATE_DRAFT),
        ("updated", "editor", 2, S.CAMPAIGN_STATE_DRAFT),
        ("submitted", "internal", 2, S.CAMPAIGN_STATE_SUBMITTED),
        ("approved", "maker", 2, S.CAMPAIGN_STATE_APPROVED),
        ("launched", "internal", 2, S.CAMPAIGN_STATE_RUNNING),
        ("completed", "system", 2, S.CAMPAIGN_STATE_COMPLETED),
    ]


async def test_pause_stops_the_release_resume_continues_and_cancel_ends_it(harness: Harness) -> None:
    stub = await harness.start()
    # The second page is refused until the test allows it, so the pause lands mid-run.
    harness.segments.unavailable_tokens.add("p03")
    paused = await create(stub, campaign_message(programme_code()), "pr-create")
    await approve(stub, paused.campaign_key)
    await stub.LaunchCampaign(service_pb2.LaunchCampaignRequest(request_id="pr-l", campaign_key=paused.campaign_key))

    async def first_page_only() -> bool:
        return (await state_of(stub, paused.campaign_key)).outreach_count == 3

    await eventually(first_page_only)
    done = (
        await stub.PauseCampaign(
            service_pb2.PauseCampaignRequest(request_id="pr-p", campaign_key=paused.campaign_key, reason="check copy")
        )
    ).campaign
    assert (done.state, done.pause_reason) == (S.CAMPAIGN_STATE_PAUSED, "check copy")
    error = await _rejected(
        stub.PauseCampaign(service_pb2.PauseCampaignRequest(request_id="pr-p2", campaign_key=paused.campaign_key))
    )
    assert "is PAUSED; only SCHEDULED or RUNNING campaigns can be paused" in (error.details() or "")
    harness.segments.unavailable_tokens.clear()

    # Another campaign released after the pause completes, while the paused one stays where it stopped.
    other = await create(stub, campaign_message(programme_code()), "pr-other")
    await approve(stub, other.campaign_key)
    await stub.LaunchCampaign(service_pb2.LaunchCampaignRequest(request_id="pr-lo", campaign_key=other.campaign_key))

    async def other_completed() -> bool:
        return (await state_of(stub, other.campaign_key)).state == S.CAMPAIGN_STATE_COMPLETED

    await eventually(other_completed)
    still = await state_of(stub, paused.campaign_key)
    assert (still.state, still.outreach_count) == (S.CAMPAIGN_STATE_PAUSED, 3)

    resumed = (
        await stub.ResumeCampaign(
            service_pb2.ResumeCampaignRequest(request_id="pr-r", campaign_key=paused.campaign_key)
        )
    ).campaign
    assert (resumed.state, resumed.pause_reason) == (S.CAMPAIGN_STATE_RUNNING, "")

    async def resumed_and_completed() -> bool:
        return (await state_of(stub, paused.campaign_key)).state == S.CAMPAIGN_STATE_COMPLETED

    await eventually(resumed_and_completed)
    outreaches = await all_outreaches(stub, paused.campaign_key)
    assert sorted(o.profile_id for o in outreaches) == sorted(RELEASED_PROFILES)

    # Cancel: a paused campaign is stopped for good and cannot be resumed.
    harness.segments.unavailable_tokens.add("p03")
    cancelled = await create(stub, campaign_message(programme_code()), "pr-cancel")
    await approve(stub, cancelled.campaign_key)
    await stub.LaunchCampaign(
        service_pb2.LaunchCampaignRequest(request_id="pr-lc", campaign_key=cancelled.campaign_key)
    )

    async def cancelled_first_page() -> bool:
        return (await state_of(stub, cancelled.campaign_key)).outreach_count == 3

    await eventually(cancelled_first_page)
    await stub.PauseCampaign(service_pb2.PauseCampaignRequest(request_id="pr-pc", campaign_key=cancelled.campaign_key))
    gone = (
        await stub.CancelCampaign(
            service_pb2.CancelCampaignRequest(
                request_id="pr-c", campaign_key=cancelled.campaign_key, reason="wrong offer"
            )
        )
    ).campaign
    assert gone.state == S.CAMPAIGN_STATE_CANCELLED
    error = await _rejected(
        stub.ResumeCampaign(service_pb2.ResumeCampaignRequest(request_id="pr-rc", campaign_key=cancelled.campaign_key))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is CANCELLED; only a PAUSED campaign can be resumed" in (error.details() or "")
    harness.segments.unavailable_tokens.clear()
    # A later campaign completes; the cancelled one never releases its remaining members.
    later = await create(stub, campaign_message(programme_code()), "pr-later")
    await approve(stub, later.campaign_key)
    await stub.LaunchCampaign(service_pb2.LaunchCampaignRequest(request_id="pr-ll", campaign_key=later.campaign_key))

    async def later_completed() -> bool:
        return (await state_of(stub, later.campaign_key)).state == S.CAMPAIGN_STATE_COMPLETED

    await eventually(later_completed)
    assert (await state_of(stub, cancelled.campaign_key)).outreach_count == 3
    audit = await _audit(stub, cancelled.campaign_key)
    assert [action for action, *_ in audit][-2:] == ["paused", "cancelled"]


async def test_a_draft_can_be_cancelled_and_unknown_campaigns_are_not_found(
    stub: service_pb2_grpc.CampaignsServiceStub,
) -> None:
    created = await create(stub, campaign_message(programme_code()), "dc-create")
    cancelled = (
        await stub.CancelCampaign(
            service_pb2.CancelCampaignRequest(request_id="dc-c", campaign_key=created.campaign_key)
        )
    ).campaign
    assert cancelled.state == S.CAMPAIGN_STATE_CANCELLED
    error = await _rejected(
        stub.SubmitCampaign(service_pb2.SubmitCampaignRequest(request_id="dc-s", campaign_key=created.campaign_key))
    )
    assert "is CANCELLED; only a DRAFT campaign can be submitted" in (error.details() or "")
    for call in (
        stub.SubmitCampaign(service_pb2.SubmitCampaignRequest(request_id="x1", campaign_key="cmp_nope")),
        stub.PauseCampaign(service_pb2.PauseCampaignRequest(request_id="x2", campaign_key="cmp_nope")),
        stub.ListCampaignAudit(service_pb2.ListCampaignAuditRequest(campaign_key="cmp_nope")),
    ):
        assert (await _rejected(call)).code() == grpc.StatusCode.NOT_FOUND
    missing_id = await _rejected(
        stub.SubmitCampaign(service_pb2.SubmitCampaignRequest(campaign_key=created.campaign_key))
    )
    assert missing_id.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_without_require_approval_a_draft_launches(harness: Harness) -> None:
    harness.settings = harness.settings.model_copy(update={"require_approval": False})
    stub = await harness.start()
    created = await create(stub, campaign_message(programme_code()), "na-create")
    launched = (
        await stub.LaunchCampaign(
            service_pb2.LaunchCampaignRequest(request_id="na-l", campaign_key=created.campaign_key)
        )
    ).campaign
    assert launched.state == S.CAMPAIGN_STATE_RUNNING


async def test_the_audit_refuses_a_page_token_of_the_campaigns_outreaches(
    stub: service_pb2_grpc.CampaignsServiceStub,
) -> None:
    """ListOutreaches' token has the audit's shape (the campaign_key, then a keyset) with a campaign ID for the keyset:
    the audit read it as a number and answered INTERNAL."""
    key = (await create(stub, campaign_message(programme_code()), "audit-foreign-token")).campaign_key
    token = encode_token("ListCampaignAudit", {"campaign_key": key, "after": "CSELL-NOV-T06-0884"})
    error = await _rejected(
        stub.ListCampaignAudit(service_pb2.ListCampaignAuditRequest(campaign_key=key, page_token=token))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("page_token: ")
