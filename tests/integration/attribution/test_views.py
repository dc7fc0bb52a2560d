"""The views over gRPC on SQLite and PostgreSQL: the seed's worked example by trigger, label, channel and period,
its funnel, trend and lag; lift against the holdout; and rollup rows that match a recompute from the ledger."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from plumbing.db import Database
from plumbing.ids import new_id
from services.attribution import views
from tests.integration.attribution.seeding import (
    EXAMPLE,
    MSME,
    RETAIL,
    SENT_AT,
    Service,
    inr,
    publish_holdout,
    publish_outreach,
    seed_worked_example,
    ts,
    wait_sent,
)
from tests.waiting import eventually
from xsell.attribution.v1 import resources_pb2, service_pb2, service_pb2_grpc
from xsell.type.v1 import channel_pb2

NOVEMBER = service_pb2.ReportFilter(start_date="2025-11-01", end_date="2025-11-30")


async def _report(
    stub: service_pb2_grpc.AttributionServiceStub,
    report_filter: service_pb2.ReportFilter = NOVEMBER,
    dimension: int = resources_pb2.REPORT_DIMENSION_TRIGGER,
) -> service_pb2.GetAttributionReportResponse:
    return await stub.GetAttributionReport(
        service_pb2.GetAttributionReportRequest(filter=report_filter, dimension=dimension)  # type: ignore[arg-type]
    )


async def test_the_worked_example_by_trigger_to_the_rupee(service: Service) -> None:
    await seed_worked_example(service.bus, service.stub)
    # Read right after the disbursement call returned: the rollup moved in its transaction.
    report = await _report(service.stub)

    assert report.utc_offset == "+05:30"
    total = report.total
    assert (total.sent, total.conversions) == (2, 1)
    assert total.conversion_rate == pytest.approx(0.5)
    assert total.disbursed_amount.minor_units == 174_000_000
    assert total.lifetime_revenue.minor_units == 45_240_000  # ₹4,52,400
    assert total.year1_revenue.minor_units == 4_524_000  # ₹45,240
    assert total.cost.minor_units == 9_800 + 25  # the example's ₹98 and the T01 SMS

    rows = {row.key: row.figures for row in report.rows}
    assert list(rows) == ["T06", "T01"]  # highest revenue first
    t06 = rows["T06"]
    assert (t06.sent, t06.conversions, t06.conversion_rate) == (1, 1, 1.0)
    assert t06.cost.minor_units == 9_800
    assert t06.cost_per_conversion.minor_units == 9_800
    assert t06.romi == pytest.approx(45_240_000 / 9_800)
    assert t06.funnel == resources_pb2.Funnel(
        sent=1, delivered=1, opened=1, clicked=1, responded=1, applied=1, sanctioned=1, disbursed=1
    )
    t01 = rows["T01"]
    assert (t01.sent, t01.conversions, t01.cost.minor_units, t01.romi) == (1, 0, 25, 0.0)
    assert t01.funnel.sent == 1 and t01.funnel.delivered == 0

    # Each count on its local day: sent Nov 13, reply Nov 14, application 15, sanction 18, money 22.
    trend = {point.date: point.figures for point in report.trend}
    assert list(trend) == ["2025-11-13", "2025-11-14", "2025-11-15", "2025-11-18", "2025-11-22"]
    assert trend["2025-11-13"].sent == 2
    assert trend["2025-11-14"].cost.minor_units == 9_750  # the RM's 15 minutes
    assert trend["2025-11-22"].conversions == 1
    assert trend["2025-11-22"].disbursed_amount.minor_units == 174_000_000

    # Nine days from send to disbursement: the 7–14 day bucket.
    lag = {(bucket.min_days, bucket.max_days): bucket.conversions for bucket in report.lag}
    assert lag[(7, 14)] == 1
    assert sum(lag.values()) == 1


async def test_views_by_label_channel_campaign_and_period(service: Service) -> None:
    await seed_worked_example(service.bus, service.stub)

    retail = await _report(service.stub, service_pb2.ReportFilter(labels=[RETAIL]))
    assert (retail.total.sent, retail.total.conversions, retail.total.disbursed_amount.minor_units) == (1, 0, 0)
    assert [row.key for row in retail.rows] == ["T01"]

    by_label = await _report(service.stub, dimension=resources_pb2.REPORT_DIMENSION_LABEL)
    labels = {row.key: row.figures for row in by_label.rows}
    assert set(labels) == {MSME, RETAIL}
    assert labels[MSME].lifetime_revenue.minor_units == 45_240_000

    by_channel = await _report(service.stub, dimension=resources_pb2.REPORT_DIMENSION_CHANNEL)
    assert {row.key: row.figures.sent for row in by_channel.rows} == {"email": 1, "sms": 1}
    email_only = await _report(service.stub, service_pb2.ReportFilter(channel=channel_pb2.CHANNEL_EMAIL))
    assert email_only.total.conversions == 1 and email_only.total.sent == 1

    by_campaign = await _report(service.stub, dimension=resources_pb2.REPORT_DIMENSION_CAMPAIGN)
    assert [row.key for row in by_campaign.rows] == ["cmp_msme_gst", "cmp_emi_calc"]
    by_programme = await _report(service.stub, dimension=resources_pb2.REPORT_DIMENSION_PROGRAMME)
    assert [(row.key, row.figures.sent) for row in by_programme.rows] == [("CSELL", 2)]
    by_product = await _report(service.stub, dimension=resources_pb2.REPORT_DIMENSION_PRODUCT)
    assert {row.key for row in by_product.rows} == {"MSME_WC_TOPUP", "PL_TOPUP"}

    # The week of the sends holds no money; the week of the disbursement holds no sends.
    first_week = await _report(service.stub, service_pb2.ReportFilter(start_date="2025-11-13", end_date="2025-11-19"))
    assert (first_week.total.sent, first_week.total.conversions) == (2, 0)
    assert first_week.total.disbursed_amount.minor_units == 0
    disbursement_day = await _report(
        service.stub, service_pb2.ReportFilter(start_date="2025-11-22", end_date="2025-11-22")
    )
    assert (disbursement_day.total.sent, disbursement_day.total.conversions) == (0, 1)
    december = await _report(service.stub, service_pb2.ReportFilter(start_date="2025-12-01", end_date="2025-12-31"))
    assert december.total.sent == 0 and not december.rows

    with pytest.raises(grpc.aio.AioRpcError) as bad_date:
        await _report(service.stub, service_pb2.ReportFilter(start_date="2025-11-31"))
    assert bad_date.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filter.start_date" in (bad_date.value.details() or "")


async def test_the_rollup_matches_a_recompute_from_the_ledger(service: Service) -> None:
    await seed_worked_example(service.bus, service.stub)
    # An ID imported from before campaign IDs had parts: its programme is all of it, in both computations.
    await publish_outreach(service.bus, "LEGACY0001", trigger="T00")
    await wait_sent(service.stub, 3)
    programmes = await _report(service.stub, dimension=resources_pb2.REPORT_DIMENSION_PROGRAMME)
    assert {row.key for row in programmes.rows} == {"CSELL", "LEGACY0001"}
    db = Database(service.database_url)
    try:
        async with db.transaction() as session:
            assert await views.stored(session) == await views.recompute(session, 330)
    finally:
        await db.dispose()


async def test_lift_against_the_holdout_with_an_interval_and_a_plain_statement(service: Service) -> None:
    stub, bus = service.stub, service.bus
    # 40 reached, 12 of whom disbursed; 40 held out, 2 of whom took the loan anyway.
    for index in range(40):
        await publish_outreach(bus, f"CSELL-NOV-T06-{index:04d}", profile_id=f"prf_t{index}")
        await publish_holdout(bus, f"prf_h{index}")
    await wait_sent(stub, 40)

    async def held_out() -> int:
        response = await stub.GetLift(service_pb2.GetLiftRequest(filter=NOVEMBER))
        return response.lift.held_out >= 40

    await eventually(held_out)
    small = (await stub.GetLift(service_pb2.GetLiftRequest(filter=service_pb2.ReportFilter(labels=[RETAIL])))).lift
    assert small.held_out == 0 and not small.conclusive
    assert small.statement.startswith("No one was held out")

    for index in range(12):
        campaign_id = f"CSELL-NOV-T06-{index:04d}"
        loan = f"LA-{index}"
        await stub.RecordApplication(
            service_pb2.RecordApplicationRequest(request_id=new_id(), loan_number=loan, campaign_id=campaign_id)
        )
        await stub.RecordSanction(
            service_pb2.RecordSanctionRequest(
                request_id=new_id(), loan_number=loan, campaign_id=campaign_id, amount=inr(100_000_00)
            )
        )
        await stub.RecordDisbursement(
            service_pb2.RecordDisbursementRequest(
                request_id=new_id(),
                disbursement_id=f"D-{index}",
                loan_number=loan,
                campaign_id=campaign_id,
                amount=inr(100_000_00),
            )
        )
    for index in range(2):
        await stub.RecordProfileConversion(
            service_pb2.RecordProfileConversionRequest(
                request_id=new_id(),
                conversion_id=f"ORG-{index}",
                profile_id=f"prf_h{index}",
                product_code="MSME_WC_TOPUP",
                amount=inr(100_000_00),
                occur_time=ts(SENT_AT + timedelta(days=5)),
            )
        )
    # A held-out person's conversion from before the hold-out is not an effect of anything.
    await stub.RecordProfileConversion(
        service_pb2.RecordProfileConversionRequest(
            request_id=new_id(),
            conversion_id="ORG-early",
            profile_id="prf_h5",
            product_code="MSME_WC_TOPUP",
            amount=inr(100_000_00),
            occur_time=ts(SENT_AT - timedelta(days=5)),
        )
    )

    lift = (await stub.GetLift(service_pb2.GetLiftRequest(filter=service_pb2.ReportFilter()))).lift
    assert (lift.treated, lift.treated_conversions, lift.held_out, lift.held_out_conversions) == (40, 12, 40, 2)
    assert lift.treated_rate == pytest.approx(0.30)
    assert lift.held_out_rate == pytest.approx(0.05)
    assert lift.lift == pytest.approx(0.25)
    assert 0 < lift.lift_low < 0.25 < lift.lift_high < 1
    assert lift.confidence == pytest.approx(0.95)
    assert lift.conclusive
    assert lift.statement.startswith("Reaching people raised conversion by 25.0 points")

    # No one held out was reached on a channel: a channel filter leaves no control group, and says so.
    by_channel = (
        await stub.GetLift(
            service_pb2.GetLiftRequest(filter=service_pb2.ReportFilter(channel=channel_pb2.CHANNEL_EMAIL))
        )
    ).lift
    assert (by_channel.treated, by_channel.held_out) == (40, 0)
    assert by_channel.statement.startswith("No one was held out")

    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await stub.RecordProfileConversion(
            service_pb2.RecordProfileConversionRequest(
                request_id=new_id(),
                conversion_id="ORG-0",
                profile_id="prf_h0",
                product_code="MSME_WC_TOPUP",
                amount=inr(1),
            )
        )
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_step_recorded_late_with_an_earlier_time_moves_the_funnel_between_days(service: Service) -> None:
    """A click arrives first, its open (blocked pixel, later replayed) a day earlier: the opened level moves."""
    stub, bus = service.stub, service.bus
    from tests.integration.attribution.seeding import publish_step, wait_funnel
    from xsell.channels.v1 import resources_pb2 as channels_pb2

    await publish_outreach(bus, EXAMPLE)
    await wait_sent(stub, 1)
    await publish_step(
        bus, EXAMPLE, engagement=channels_pb2.ENGAGEMENT_KIND_CLICKED, at=datetime(2025, 11, 15, 6, tzinfo=UTC)
    )
    await wait_funnel(stub, EXAMPLE, "clicked")
    before = {p.date: p.figures.funnel.opened for p in (await _report(stub)).trend}
    assert before.get("2025-11-15") == 1
    await publish_step(
        bus, EXAMPLE, engagement=channels_pb2.ENGAGEMENT_KIND_OPENED, at=datetime(2025, 11, 14, 6, tzinfo=UTC)
    )

    async def moved() -> bool:
        trend = {p.date: p.figures.funnel.opened for p in (await _report(stub)).trend}
        return trend.get("2025-11-14") == 1 and trend.get("2025-11-15", 0) == 0

    await eventually(moved)
    total = (await _report(stub)).total.funnel
    assert (total.opened, total.clicked) == (1, 1)
    db = Database(service.database_url)
    try:
        async with db.transaction() as session:
            assert await views.stored(session) == await views.recompute(session, 330)
    finally:
        await db.dispose()


async def test_a_lag_of_exactly_a_bucket_bound_is_in_that_bucket_and_a_microsecond_more_in_the_next(
    service: Service,
) -> None:
    # The writer buckets a lag in float days (reporting.lag_bucket); the recompute in integer microseconds, in SQL.
    on_the_bound, just_over = "CSELL-NOV-T06-0901", "CSELL-NOV-T06-0902"
    for campaign_id in (on_the_bound, just_over):
        await publish_outreach(service.bus, campaign_id)
    await wait_sent(service.stub, 2)
    for campaign_id, lag in ((on_the_bound, timedelta(days=7)), (just_over, timedelta(days=7, microseconds=1))):
        loan = f"LA-{campaign_id}"
        await service.stub.RecordApplication(
            service_pb2.RecordApplicationRequest(
                request_id=new_id(), loan_number=loan, campaign_id=campaign_id, apply_time=ts(SENT_AT)
            )
        )
        await service.stub.RecordSanction(
            service_pb2.RecordSanctionRequest(
                request_id=new_id(),
                loan_number=loan,
                campaign_id=campaign_id,
                amount=inr(100_000_00),
                sanction_time=ts(SENT_AT),
            )
        )
        await service.stub.RecordDisbursement(
            service_pb2.RecordDisbursementRequest(
                request_id=new_id(),
                disbursement_id=f"D-{campaign_id}",
                loan_number=loan,
                campaign_id=campaign_id,
                amount=inr(100_000_00),
                disburse_time=ts(SENT_AT + lag),
            )
        )
    report = await _report(service.stub)
    assert {(bucket.min_days, bucket.max_days): bucket.conversions for bucket in report.lag if bucket.conversions} == {
        (3, 7): 1,
        (7, 14): 1,
    }
    db = Database(service.database_url)
    try:
        async with db.transaction() as session:
            assert await views.stored(session) == await views.recompute(session, 330)
    finally:
        await db.dispose()
