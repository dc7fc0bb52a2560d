"""Fund, deposit and card conversions, the activated step and fixed campaign costs on SQLite and PostgreSQL: priced
to the rupee, linked by campaign ID or last touch, every rejection writing nothing, and views that match the ledger."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from plumbing.db import Database
from services import streams
from services.attribution.reconcile import reconcile
from tests.integration.attribution.seeding import (
    EXAMPLE,
    Service,
    inr,
    mark_sent,
    publish_holdout,
    publish_outreach,
    publish_step,
    publish_withdrawal,
    ts,
    wait_funnel,
    wait_sent,
)
from tests.waiting import eventually
from xsell.attribution.v1 import events_pb2, resources_pb2, service_pb2
from xsell.channels.v1 import resources_pb2 as channels_pb2
from xsell.type.v1 import channel_pb2

NOVEMBER = service_pb2.ReportFilter(start_date="2025-11-01", end_date="2025-11-30")
FUND_OUTREACH = "CSELL-NOV-M01-0001"
INVESTED_AT = datetime(2025, 11, 20, 6, 0, tzinfo=UTC)


@pytest.fixture
def service_settings() -> dict[str, Any]:
    return {
        "revenue_models": {
            "default": {"kind": "nim_flat", "nim_bps": 260, "tenor_years": 10},
            "MF_LUMPSUM": {"kind": "aum_trail", "rate_bps": 75, "months": 36},
            "FD_FUNDED": {"kind": "deposit_spread", "rate_bps": 250, "months": 18},
        },
        "last_touch_window_days": {"default": 30, "FD_FUNDED": 7},
    }


def _conversion(**fields: Any) -> service_pb2.RecordConversionRequest:
    defaults: dict[str, Any] = {
        "request_id": "r-invest",
        "conversion_id": "MF-ORD-1",
        "kind": resources_pb2.CONVERSION_KIND_LUMPSUM_INVESTED,
        "campaign_id": FUND_OUTREACH,
        "amount": inr(50_000_000),
        "occur_time": ts(INVESTED_AT),
    }
    return service_pb2.RecordConversionRequest(**{**defaults, **fields})


async def _report(service: Service) -> service_pb2.GetAttributionReportResponse:
    return await service.stub.GetAttributionReport(service_pb2.GetAttributionReportRequest(filter=NOVEMBER))


async def _no_drift(service: Service) -> None:
    db = Database(service.database_url)
    try:
        result = await reconcile(db, 330)
    finally:
        await db.dispose()
    assert not result.drift, [difference.describe() for difference in result.differences]


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def _fund_outreach(service: Service) -> None:
    await publish_outreach(
        service.bus,
        FUND_OUTREACH,
        trigger="M01",
        campaign_key="cmp_mf_lumpsum",
        profile_id="prf_meera",
        product_code="MF_LUMPSUM",
    )
    await wait_sent(service.stub, 1)
    await mark_sent(service.bus, service.stub, FUND_OUTREACH)


async def test_a_lumpsum_is_priced_to_the_rupee_counted_in_the_views_published_and_activated(
    service: Service,
) -> None:
    await _fund_outreach(service)
    events: list[events_pb2.ConversionRecorded] = []

    async def collect(message: Any) -> None:
        events.append(events_pb2.ConversionRecorded.FromString(message.data))

    subscription = await service.bus.nc.subscribe(streams.CONVERSION_RECORDED, cb=collect)
    try:
        response = await service.stub.RecordConversion(_conversion())
        # ₹5,00,000 at a 75 bp trail held 36 months: year 1 ₹3,750, lifetime ₹11,250; cost the e-mail's ₹0.50.
        conversion = response.conversion
        assert conversion.linkage == resources_pb2.CONVERSION_LINKAGE_CAMPAIGN_ID
        assert (conversion.campaign_id, conversion.profile_id, conversion.product_code) == (
            FUND_OUTREACH,
            "prf_meera",
            "MF_LUMPSUM",
        )
        assert conversion.year1_revenue.minor_units == 375_000
        assert conversion.lifetime_revenue.minor_units == 1_125_000
        attribution = response.attribution
        assert attribution.disbursed_amount.minor_units == 50_000_000
        assert attribution.cost.minor_units == 50
        assert attribution.romi == pytest.approx(22_500)
        assert attribution.funnel.disbursed == 1 and attribution.funnel.activated == 0

        report = await _report(service)
        total = report.total
        assert (total.sent, total.conversions) == (1, 1)
        assert total.disbursed_amount.minor_units == 50_000_000
        assert (total.lifetime_revenue.minor_units, total.year1_revenue.minor_units) == (1_125_000, 375_000)
        assert total.romi == pytest.approx(1_125_000 / 50)
        assert {point.date: point.figures.disbursed_amount.minor_units for point in report.trend} == {
            "2025-11-13": 0,
            "2025-11-20": 50_000_000,
        }

        published = await eventually(lambda: asyncio.sleep(0, result=list(events)))
        assert published[0].kind == resources_pb2.CONVERSION_KIND_LUMPSUM_INVESTED
        assert (published[0].conversion_id, published[0].campaign_id) == ("MF-ORD-1", FUND_OUTREACH)
        assert published[0].lifetime_revenue.minor_units == 1_125_000
    finally:
        await subscription.unsubscribe()

    # The first transaction after funding: activated, with no money of its own.
    activated = await service.stub.RecordConversion(
        _conversion(
            request_id="r-first-use",
            conversion_id="TXN-1",
            kind=resources_pb2.CONVERSION_KIND_FIRST_TRANSACTION,
            amount=inr(100_000),
            occur_time=ts(datetime(2025, 11, 24, 6, 0, tzinfo=UTC)),
        )
    )
    assert activated.conversion.lifetime_revenue.minor_units == 0
    assert activated.attribution.funnel.activated == 1
    report = await _report(service)
    assert report.total.funnel == resources_pb2.Funnel(
        sent=1, delivered=1, opened=1, clicked=1, responded=1, applied=1, sanctioned=1, disbursed=1, activated=1
    )
    assert report.total.conversions == 1
    assert report.total.disbursed_amount.minor_units == 50_000_000
    assert {point.date: point.figures.funnel.activated for point in report.trend}["2025-11-24"] == 1
    await _no_drift(service)


@pytest.mark.parametrize(
    "kind",
    [
        resources_pb2.CONVERSION_KIND_SIP_REGISTERED,
        resources_pb2.CONVERSION_KIND_SIP_STEP_UP,
        resources_pb2.CONVERSION_KIND_SWITCH_REGULAR_TO_DIRECT,
        resources_pb2.CONVERSION_KIND_DIVIDEND_TO_GROWTH,
    ],
    ids=lambda kind: resources_pb2.ConversionKind.Name(kind),
)
async def test_every_other_fund_conversion_is_priced_by_its_products_model_and_counted_once(
    service: Service, kind: int
) -> None:
    await _fund_outreach(service)
    response = await service.stub.RecordConversion(_conversion(kind=kind, conversion_id=f"MF-{kind}"))
    # The product's model prices every kind alike: ₹5,00,000 at a 75 bp trail for 36 months.
    assert response.conversion.kind == kind
    assert (response.conversion.year1_revenue.minor_units, response.conversion.lifetime_revenue.minor_units) == (
        375_000,
        1_125_000,
    )
    assert response.attribution.funnel.disbursed == 1
    # The same conversion again is refused and counts nothing twice.
    again = await _refused(
        service.stub.RecordConversion(_conversion(kind=kind, conversion_id=f"MF-{kind}", request_id="r-2"))
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    report = await _report(service)
    assert (report.total.conversions, report.total.disbursed_amount.minor_units) == (1, 50_000_000)
    await _no_drift(service)


async def test_without_a_campaign_id_the_last_touch_in_the_products_window_wins(service: Service) -> None:
    for campaign_id, day in (("CSELL-NOV-F01-0001", 1), ("CSELL-NOV-F01-0002", 10), ("CSELL-NOV-F01-0003", 20)):
        await publish_outreach(
            service.bus,
            campaign_id,
            trigger="F01",
            campaign_key="cmp_fd",
            profile_id="prf_ravi",
            product_code="FD_FUNDED",
            at=datetime(2025, 11, day, 4, 0, tzinfo=UTC),
        )
    await publish_holdout(service.bus, "prf_held")
    await wait_sent(service.stub, 3)

    def funded(request_id: str, conversion_id: str, profile_id: str, product: str, day: int) -> Any:
        return service.stub.RecordConversion(
            service_pb2.RecordConversionRequest(
                request_id=request_id,
                conversion_id=conversion_id,
                kind=resources_pb2.CONVERSION_KIND_ACCOUNT_FUNDED,
                profile_id=profile_id,
                product_code=product,
                amount=inr(20_000_000),
                occur_time=ts(datetime(2025, 11, day, 4, 0, tzinfo=UTC)),
            )
        )

    # Nov 12: two days after the Nov 10 outreach, inside FD_FUNDED's 7 days; the Nov 1 one is older, Nov 20 later.
    inside = await funded("r1", "FD-1", "prf_ravi", "FD_FUNDED", 12)
    assert inside.conversion.linkage == resources_pb2.CONVERSION_LINKAGE_LAST_TOUCH
    assert inside.conversion.campaign_id == "CSELL-NOV-F01-0002"
    # ₹2,00,000 at a 250 bp spread for 18 months: year 1 ₹5,000, lifetime ₹7,500.
    assert (inside.conversion.year1_revenue.minor_units, inside.conversion.lifetime_revenue.minor_units) == (
        500_000,
        750_000,
    )
    assert inside.attribution.campaign_id == "CSELL-NOV-F01-0002"

    # Nov 19: nine days after the latest earlier outreach, outside FD_FUNDED's 7 (the default 30 would link it).
    outside = await funded("r2", "FD-2", "prf_ravi", "FD_FUNDED", 19)
    assert outside.conversion.linkage == resources_pb2.CONVERSION_LINKAGE_UNATTRIBUTED
    assert outside.conversion.campaign_id == "" and not outside.HasField("attribution")
    assert outside.conversion.lifetime_revenue.minor_units == 750_000

    report = await _report(service)
    assert report.total.conversions == 1
    assert report.total.disbursed_amount.minor_units == 20_000_000

    # A first transaction's last touch is the latest funded outreach: Nov 10's (funded Nov 12), not Nov 20's.
    first_use = service_pb2.RecordConversionRequest(
        request_id="r-use",
        conversion_id="FD-TXN-1",
        kind=resources_pb2.CONVERSION_KIND_FIRST_TRANSACTION,
        profile_id="prf_ravi",
        product_code="FD_FUNDED",
        amount=inr(10_000),
        occur_time=ts(datetime(2025, 11, 13, 4, 0, tzinfo=UTC)),
    )
    used = await service.stub.RecordConversion(first_use)
    assert (used.conversion.linkage, used.conversion.campaign_id) == (
        resources_pb2.CONVERSION_LINKAGE_LAST_TOUCH,
        "CSELL-NOV-F01-0002",
    )
    assert used.attribution.funnel.activated == 1
    # Nobody else of the person was funded: a first transaction with no funded touch is unattributed.
    unfunded = service_pb2.RecordConversionRequest()
    unfunded.CopyFrom(first_use)
    unfunded.request_id, unfunded.conversion_id, unfunded.profile_id = "r-use-2", "FD-TXN-2", "prf_nobody"
    assert (await service.stub.RecordConversion(unfunded)).conversion.linkage == (
        resources_pb2.CONVERSION_LINKAGE_UNATTRIBUTED
    )
    assert (await _report(service)).total.funnel.activated == 1

    # An unattributed conversion still counts for lift: the held-out person converted anyway.
    held = await funded("r3", "FD-3", "prf_held", "MSME_WC_TOPUP", 20)
    assert held.conversion.linkage == resources_pb2.CONVERSION_LINKAGE_UNATTRIBUTED

    async def held_out_converted() -> bool:
        lift = (await service.stub.GetLift(service_pb2.GetLiftRequest(filter=NOVEMBER))).lift
        return (lift.held_out, lift.held_out_conversions) == (1, 1)

    await eventually(held_out_converted)
    await _no_drift(service)


async def test_the_last_touch_window_holds_at_its_edges_to_the_second(service: Service) -> None:
    created = datetime(2025, 11, 10, 4, 0, tzinfo=UTC)
    later = created + timedelta(days=8)
    for campaign_id, at in (("CSELL-NOV-F02-0001", created), ("CSELL-NOV-F02-0002", later)):
        await publish_outreach(
            service.bus,
            campaign_id,
            trigger="F02",
            campaign_key="cmp_fd_edge",
            profile_id="prf_asha",
            product_code="FD_FUNDED",
            at=at,
        )
    await wait_sent(service.stub, 2)

    async def linked(conversion_id: str, at: datetime) -> tuple[int, str]:
        response = await service.stub.RecordConversion(
            service_pb2.RecordConversionRequest(
                request_id=f"r-{conversion_id}",
                conversion_id=conversion_id,
                kind=resources_pb2.CONVERSION_KIND_ACCOUNT_FUNDED,
                profile_id="prf_asha",
                product_code="FD_FUNDED",
                amount=inr(20_000_000),
                occur_time=ts(at),
            )
        )
        return response.conversion.linkage, response.conversion.campaign_id

    unattributed = (resources_pb2.CONVERSION_LINKAGE_UNATTRIBUTED, "")
    # FD_FUNDED's window is 7 days and starts inclusive: exactly 7 days after the outreach it is the last touch, one
    # second later it is not (and the next outreach is still to come).
    assert await linked("FD-EDGE-1", created + timedelta(days=7)) == (
        resources_pb2.CONVERSION_LINKAGE_LAST_TOUCH,
        "CSELL-NOV-F02-0001",
    )
    assert await linked("FD-EDGE-2", created + timedelta(days=7, seconds=1)) == unattributed
    # The window ends at the conversion, inclusive: an outreach made at the conversion's very instant is its last
    # touch, and one made a second after it is not.
    assert await linked("FD-EDGE-3", later - timedelta(seconds=1)) == unattributed
    assert await linked("FD-EDGE-4", later) == (
        resources_pb2.CONVERSION_LINKAGE_LAST_TOUCH,
        "CSELL-NOV-F02-0002",
    )
    report = await _report(service)
    assert (report.total.conversions, report.total.disbursed_amount.minor_units) == (2, 40_000_000)
    await _no_drift(service)


async def test_every_rejection_names_the_field_and_writes_nothing(service: Service) -> None:
    await _fund_outreach(service)
    await publish_outreach(service.bus, EXAMPLE)
    await wait_sent(service.stub, 2)
    before = await _report(service)

    rejected = {
        "before its outreach": (_conversion(occur_time=ts(datetime(2025, 11, 1, tzinfo=UTC))), "INVALID_ARGUMENT"),
        "zero amount": (_conversion(amount=inr(0)), "INVALID_ARGUMENT"),
        "negative amount": (_conversion(amount=inr(-100)), "INVALID_ARGUMENT"),
        "unknown campaign ID": (_conversion(campaign_id="CSELL-NOV-M01-9999"), "NOT_FOUND"),
        "no kind": (_conversion(kind=resources_pb2.CONVERSION_KIND_UNSPECIFIED), "INVALID_ARGUMENT"),
        "another person": (_conversion(profile_id="prf_kaveri"), "INVALID_ARGUMENT"),
        "no campaign ID nor person": (_conversion(campaign_id=""), "INVALID_ARGUMENT"),
        "first use before funding": (
            _conversion(kind=resources_pb2.CONVERSION_KIND_FIRST_TRANSACTION),
            "FAILED_PRECONDITION",
        ),
    }
    fields = {
        "before its outreach": "occur_time",
        "zero amount": "amount.minor_units",
        "negative amount": "amount.minor_units",
        "unknown campaign ID": "campaign_id",
        "no kind": "kind",
        "another person": "profile_id",
        "no campaign ID nor person": "profile_id",
        "first use before funding": "funding",
    }
    for name, (request, code) in rejected.items():
        error = await _refused(service.stub.RecordConversion(request))
        assert error.code().name == code, name
        assert fields[name] in (error.details() or ""), (name, error.details())
    assert await _report(service) == before

    first = await service.stub.RecordConversion(_conversion())
    after = await _report(service)
    # The same request again gets the same answer and books nothing more.
    assert await service.stub.RecordConversion(_conversion()) == first
    assert (await _refused(service.stub.RecordConversion(_conversion(amount=inr(1))))).code() == (
        grpc.StatusCode.ABORTED
    )
    duplicate = await _refused(service.stub.RecordConversion(_conversion(request_id="r-other", amount=inr(1))))
    assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS and "conversion_id" in (duplicate.details() or "")
    await service.stub.RecordProfileConversion(
        service_pb2.RecordProfileConversionRequest(
            request_id="r-organic", conversion_id="ORG-1", profile_id="prf_x", product_code="MF_LUMPSUM", amount=inr(1)
        )
    )
    taken = await _refused(service.stub.RecordConversion(_conversion(request_id="r-taken", conversion_id="ORG-1")))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS
    early = await _refused(
        service.stub.RecordConversion(
            _conversion(
                request_id="r-early-use",
                conversion_id="TXN-early",
                kind=resources_pb2.CONVERSION_KIND_FIRST_TRANSACTION,
                occur_time=ts(datetime(2025, 11, 19, tzinfo=UTC)),
            )
        )
    )
    assert early.code() == grpc.StatusCode.INVALID_ARGUMENT and "occur_time" in (early.details() or "")
    assert await _report(service) == after
    await _no_drift(service)


async def test_a_fixed_cost_is_shared_by_sends_and_lands_on_its_day(service: Service) -> None:
    await publish_outreach(service.bus, EXAMPLE)
    await publish_outreach(service.bus, "CSELL-NOV-T06-0885", profile_id="prf_asha", channel=channel_pb2.CHANNEL_SMS)
    await wait_sent(service.stub, 2)
    await mark_sent(service.bus, service.stub, EXAMPLE, "CSELL-NOV-T06-0885")

    def book(**fields: Any) -> Any:
        defaults: dict[str, Any] = {
            "request_id": "r-fee",
            "campaign_key": "cmp_msme_gst",
            "amount": inr(1_000_001),
            "book_date": "2025-11-20",
            "description": "Agency fee, November",
        }
        return service.stub.RecordFixedCost(service_pb2.RecordFixedCostRequest(**{**defaults, **fields}))

    for fields, code, field in (
        ({"campaign_key": "cmp_unknown"}, grpc.StatusCode.NOT_FOUND, "campaign_key"),
        ({"amount": inr(0)}, grpc.StatusCode.INVALID_ARGUMENT, "amount.minor_units"),
        ({"book_date": "20/11/2025"}, grpc.StatusCode.INVALID_ARGUMENT, "book_date"),
        ({"description": "x" * 501}, grpc.StatusCode.INVALID_ARGUMENT, "description"),
    ):
        error = await _refused(book(**fields))
        assert error.code() == code and field in (error.details() or ""), fields
    booked = (await book()).cost
    assert (booked.book_date, booked.outreaches, booked.amount.minor_units) == ("2025-11-20", 2, 1_000_001)
    assert (await book()).cost == booked
    assert (await _refused(book(description="Creative"))).code() == grpc.StatusCode.ABORTED

    report = await _report(service)
    assert {point.date: point.figures.cost.minor_units for point in report.trend}["2025-11-20"] == 1_000_001
    assert report.total.cost.minor_units == 50 + 25 + 1_000_001
    # ₹10,000.01 over one e-mail and one SMS outreach: the odd paisa goes to the first group.
    by_channel = await service.stub.GetAttributionReport(
        service_pb2.GetAttributionReportRequest(filter=NOVEMBER, dimension=resources_pb2.REPORT_DIMENSION_CHANNEL)
    )
    assert {row.key: row.figures.cost.minor_units for row in by_channel.rows} == {
        "email": 50 + 500_001,
        "sms": 25 + 500_000,
    }
    await _no_drift(service)


async def test_the_send_cost_is_booked_once_on_the_day_a_provider_took_the_message(service: Service) -> None:
    bus, stub = service.bus, service.stub
    held, later = "CSELL-NOV-T06-0886", "CSELL-NOV-T06-0887"
    for campaign_id, profile_id in ((EXAMPLE, "prf_kaveri"), (held, "prf_asha"), (later, "prf_ravi")):
        await publish_outreach(bus, campaign_id, profile_id=profile_id, channel=channel_pb2.CHANNEL_SMS)
    await publish_outreach(bus, EXAMPLE, channel=channel_pb2.CHANNEL_SMS)  # republished: one outreach still
    await wait_sent(stub, 3)
    report = await _report(service)
    # Created on Nov 13 and counted there; no provider has taken any of them yet, so nothing is spent.
    assert (report.total.sent, report.total.cost.minor_units) == (3, 0)

    def costs_by_day(report: service_pb2.GetAttributionReportResponse) -> dict[str, int]:
        return {point.date: point.figures.cost.minor_units for point in report.trend if point.figures.cost.minor_units}

    # The delivery receipt overtakes its SENT: the SMS's ₹0.25 lands on the receipt's day (Nov 15 in Kolkata)...
    await publish_step(
        bus, EXAMPLE, delivery=channels_pb2.DELIVERY_STATE_DELIVERED, at=datetime(2025, 11, 15, 4, 0, tzinfo=UTC)
    )
    await wait_funnel(stub, EXAMPLE, "delivered")
    assert costs_by_day(await _report(service)) == {"2025-11-15": 25}
    # ...and moves to the SENT's day (Nov 14) when that arrives; a repeated SENT books nothing more.
    for at in (datetime(2025, 11, 14, 4, 0, tzinfo=UTC), datetime(2025, 11, 14, 5, 0, tzinfo=UTC)):
        await publish_step(bus, EXAMPLE, delivery=channels_pb2.DELIVERY_STATE_SENT, at=at)
    await mark_sent(bus, stub, later, at=datetime(2025, 11, 16, 4, 0, tzinfo=UTC))

    async def moved() -> dict[str, int] | None:
        by_day = costs_by_day(await _report(service))
        return by_day if "2025-11-15" not in by_day and "2025-11-16" in by_day else None

    assert await eventually(moved) == {"2025-11-14": 25, "2025-11-16": 25}
    # The outreach still held (quiet hours, a suppression, a provider's refusal) has cost nothing.
    held_attribution = await stub.GetCampaignAttribution(service_pb2.GetCampaignAttributionRequest(campaign_id=held))
    assert held_attribution.attribution.cost.minor_units == 0
    assert (await _report(service)).total.cost.minor_units == 50
    await _no_drift(service)


async def test_a_withdrawn_outreach_gives_back_its_send_and_cost_and_no_conversion_goes_to_it(service: Service) -> None:
    withdrawn_id, kept_id = "CSELL-NOV-M01-0002", "CSELL-NOV-M01-0003"
    person = {"campaign_key": "cmp_mf_lumpsum", "profile_id": "prf_meera"}
    # The withdrawal overtakes its outreach (another durable): it waits for the outreach, then takes its send back.
    await publish_withdrawal(service.bus, withdrawn_id, **person, at=INVESTED_AT - timedelta(days=2))
    await publish_outreach(
        service.bus,
        withdrawn_id,
        trigger="M01",
        product_code="MF_LUMPSUM",
        at=INVESTED_AT - timedelta(days=3),
        **person,
    )
    # An older outreach of another campaign to the same person, which stays.
    await publish_outreach(
        service.bus,
        kept_id,
        trigger="M01",
        campaign_key="cmp_mf_other",
        profile_id="prf_meera",
        product_code="MF_LUMPSUM",
        at=INVESTED_AT - timedelta(days=5),
    )

    async def withdrawn() -> grpc.aio.AioRpcError | None:
        try:
            await service.stub.GetCampaignAttribution(
                service_pb2.GetCampaignAttributionRequest(campaign_id=withdrawn_id)
            )
        except grpc.aio.AioRpcError as error:
            return error if "withdrawn" in (error.details() or "") else None
        return None

    refused = await eventually(withdrawn)
    assert refused is not None and refused.code() == grpc.StatusCode.NOT_FOUND
    await wait_sent(service.stub, 1)
    await mark_sent(service.bus, service.stub, kept_id, at=INVESTED_AT - timedelta(days=5))
    report = await _report(service)
    assert (report.total.sent, report.total.cost.minor_units) == (1, 50)  # the kept outreach's e-mail alone

    # By last touch the conversion goes past the withdrawn outreach, newer as it is, to the one that was sent.
    response = await service.stub.RecordConversion(
        _conversion(campaign_id="", profile_id="prf_meera", product_code="MF_LUMPSUM")
    )
    assert response.conversion.linkage == resources_pb2.CONVERSION_LINKAGE_LAST_TOUCH
    assert response.conversion.campaign_id == kept_id
    lift = (await service.stub.GetLift(service_pb2.GetLiftRequest(filter=NOVEMBER))).lift
    assert lift.treated == 1
    await _no_drift(service)
