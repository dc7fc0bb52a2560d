"""Concurrent disbursements share transactions on SQLite and PostgreSQL: each call still gets its own answer or its
own error, a retry its first answer, and the views end up exactly what the ledger says."""

import asyncio
from datetime import UTC, datetime

import grpc
import pytest

from plumbing.db import Database
from services.attribution import views
from tests.integration.attribution.seeding import SENT_AT, Service, inr, publish_outreach, ts, wait_sent
from xsell.attribution.v1 import service_pb2, service_pb2_grpc

DISBURSED_AT = datetime(2025, 11, 20, 6, 0, tzinfo=UTC)
OUTREACHES = [f"CSELL-NOV-T06-{n:04d}" for n in range(1, 13)]


@pytest.fixture
async def stub(service: Service) -> service_pb2_grpc.AttributionServiceStub:
    """Twelve outreaches, each with a sanctioned loan waiting for its disbursement."""
    stub = service.stub
    for number, campaign_id in enumerate(OUTREACHES):
        await publish_outreach(service.bus, campaign_id, profile_id=f"prf_{number}")
    await wait_sent(stub, len(OUTREACHES))
    for campaign_id in OUTREACHES:
        await stub.RecordApplication(
            service_pb2.RecordApplicationRequest(
                request_id=f"app-{campaign_id}", loan_number=f"LA-{campaign_id}", campaign_id=campaign_id
            )
        )
        await stub.RecordSanction(
            service_pb2.RecordSanctionRequest(
                request_id=f"san-{campaign_id}",
                loan_number=f"LA-{campaign_id}",
                campaign_id=campaign_id,
                amount=inr(200_000_000),
            )
        )
    return stub


def _disbursement(
    campaign_id: str, request_id: str, disbursement_id: str, amount: int = 100_000_000
) -> service_pb2.RecordDisbursementRequest:
    return service_pb2.RecordDisbursementRequest(
        request_id=request_id,
        disbursement_id=disbursement_id,
        loan_number=f"LA-{campaign_id}",
        campaign_id=campaign_id,
        amount=inr(amount),
        disburse_time=ts(DISBURSED_AT),
    )


async def test_concurrent_disbursements_each_get_their_own_outcome_and_the_views_match_the_ledger(
    stub: service_pb2_grpc.AttributionServiceStub, database_url: str
) -> None:
    calls = [_disbursement(campaign_id, f"dis-{campaign_id}", f"D-{campaign_id}") for campaign_id in OUTREACHES]
    # A retry of the first call, a second tranche of the second loan, a disbursement id already used by the
    # third call, a loan never applied for, and a disbursement before its outreach was sent.
    calls.append(_disbursement(OUTREACHES[0], f"dis-{OUTREACHES[0]}", f"D-{OUTREACHES[0]}"))
    calls.append(_disbursement(OUTREACHES[1], "dis-second-tranche", "D-second-tranche", amount=50_000_000))
    calls.append(_disbursement(OUTREACHES[3], "dis-reused-id", f"D-{OUTREACHES[2]}"))
    unknown_loan = _disbursement(OUTREACHES[4], "dis-unknown-loan", "D-unknown-loan")
    unknown_loan.loan_number = "LA-NEVER-APPLIED"
    calls.append(unknown_loan)
    too_early = _disbursement(OUTREACHES[5], "dis-too-early", "D-too-early")
    too_early.disburse_time.CopyFrom(ts(SENT_AT.replace(day=1)))
    calls.append(too_early)

    outcomes = await asyncio.gather(*(stub.RecordDisbursement(call) for call in calls), return_exceptions=True)

    answers = outcomes[: len(OUTREACHES)]
    assert all(isinstance(answer, service_pb2.RecordDisbursementResponse) for answer in answers)
    retry, second_tranche, reused_id, never_applied, before_outreach = outcomes[len(OUTREACHES) :]
    assert retry == answers[0]
    assert isinstance(second_tranche, service_pb2.RecordDisbursementResponse)
    assert second_tranche.attribution.disbursed_amount.minor_units == 150_000_000
    assert isinstance(reused_id, grpc.aio.AioRpcError) and reused_id.code() == grpc.StatusCode.ALREADY_EXISTS
    assert isinstance(never_applied, grpc.aio.AioRpcError)
    assert never_applied.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(before_outreach, grpc.aio.AioRpcError)
    assert before_outreach.code() == grpc.StatusCode.INVALID_ARGUMENT

    report = await stub.GetAttributionReport(service_pb2.GetAttributionReportRequest())
    # Twelve first tranches of ₹10 lakh and one second tranche of ₹5 lakh; the failed calls wrote nothing.
    assert report.total.disbursed_amount.minor_units == 12 * 100_000_000 + 50_000_000
    assert report.total.conversions == 12
    db = Database(database_url)
    try:
        async with db.snapshot() as session:
            assert await views.stored(session) == await views.recompute(session, 330)
    finally:
        await db.dispose()


async def test_a_disbursement_time_outside_what_a_timestamp_holds_is_the_los_error(
    stub: service_pb2_grpc.AttributionServiceStub,
) -> None:
    """A LOS's typo (seconds past year 9999, negative nanos) answered INTERNAL; it is INVALID_ARGUMENT naming the
    field, and the loan's next, valid disbursement is recorded."""
    for seconds, nanos in ((2**40, 0), (0, -1)):
        wrong = _disbursement(OUTREACHES[6], f"dis-wrong-{seconds}", f"D-wrong-{seconds}")
        wrong.disburse_time.seconds, wrong.disburse_time.nanos = seconds, nanos
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.RecordDisbursement(wrong)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "disburse_time" in (raised.value.details() or "")
    answer = await stub.RecordDisbursement(_disbursement(OUTREACHES[6], "dis-right", "D-right"))
    assert answer.attribution.disbursed_amount.minor_units == 100_000_000


async def test_an_amount_past_what_sums_can_hold_is_refused_and_the_loan_goes_on(
    stub: service_pb2_grpc.AttributionServiceStub,
) -> None:
    """2**62 paise was accepted, and the loan's next tranche overflowed a 64-bit sum (INTERNAL)."""
    huge = _disbursement(OUTREACHES[7], "dis-huge", "D-huge", amount=2**62)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RecordDisbursement(huge)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "amount.minor_units must be at most" in (raised.value.details() or "")
    answer = await stub.RecordDisbursement(_disbursement(OUTREACHES[7], "dis-fine", "D-fine"))
    assert answer.attribution.disbursed_amount.minor_units == 100_000_000


async def test_a_report_filter_on_a_channel_no_channel_has_names_the_field(
    stub: service_pb2_grpc.AttributionServiceStub,
) -> None:
    request = service_pb2.GetAttributionReportRequest()
    request.filter.channel = 99  # type: ignore[assignment]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetAttributionReport(request)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # was INTERNAL
    assert "filter.channel 99 is not one of" in (raised.value.details() or "")
    many = service_pb2.GetAttributionReportRequest()
    many.filter.labels.extend(f"label {n}" for n in range(5000))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetAttributionReport(many)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # was INTERNAL (SQLite's expression depth)
    assert "filter.labels may name at most 50" in (raised.value.details() or "")
