"""What a CRM or LOS sends wrong is refused by field, on SQLite and PostgreSQL alike, and records nothing."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from plumbing.ids import new_id
from tests.integration.attribution.seeding import SENT_AT, Service, inr, publish_outreach, ts
from tests.waiting import eventually
from xsell.attribution.v1 import resources_pb2, service_pb2


async def _outreach(service: Service) -> str:
    campaign_id = f"CSELL-NOV-T06-{new_id()}"
    await publish_outreach(service.bus, campaign_id)

    async def known() -> bool:
        try:
            await service.stub.GetCampaignAttribution(
                service_pb2.GetCampaignAttributionRequest(campaign_id=campaign_id)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
        return True

    await eventually(known)
    return campaign_id


async def _attribution(service: Service, campaign_id: str) -> resources_pb2.CampaignAttribution:
    request = service_pb2.GetCampaignAttributionRequest(campaign_id=campaign_id)
    return (await service.stub.GetCampaignAttribution(request)).attribution


@pytest.mark.parametrize(
    ("method", "field", "value"),
    [
        ("CreateLead", "crm_lead_id", "CRM-7781\x00"),
        ("CreateLead", "crm_lead_id", "   "),
        ("RecordApplication", "loan_number", "LA-2025-0001\x00"),
        ("RecordApplication", "loan_number", " "),
        ("RecordApplication", "campaign_id", "\x00"),
        ("RecordApplication", "product_code", "PL_TOPUP\n"),
        ("RecordConversion", "conversion_id", "MF-ORD-1\x00"),
        ("RecordConversion", "profile_id", "prf_kaveri\x00"),
        ("RecordProfileConversion", "profile_id", "prf_kaveri\x1b"),
        ("RecordFixedCost", "description", "Agency fee\x00"),
    ],
)
async def test_an_id_with_a_control_character_or_only_spaces_is_refused_by_field(
    service: Service, method: str, field: str, value: str
) -> None:
    """PostgreSQL refuses a NUL in text: such an id answered INTERNAL there, and SQLite stored it."""
    campaign_id = await _outreach(service)
    requests = {
        "CreateLead": service_pb2.CreateLeadRequest(campaign_id=campaign_id, crm_lead_id="CRM-7781"),
        "RecordApplication": service_pb2.RecordApplicationRequest(loan_number="LA-2025-0001", campaign_id=campaign_id),
        "RecordConversion": service_pb2.RecordConversionRequest(
            conversion_id="MF-ORD-1",
            kind=resources_pb2.CONVERSION_KIND_LUMPSUM_INVESTED,
            campaign_id=campaign_id,
            profile_id="prf_kaveri",
            amount=inr(500_000),
        ),
        "RecordProfileConversion": service_pb2.RecordProfileConversionRequest(
            conversion_id="DISB-1", profile_id="prf_kaveri", product_code="MSME_WC_TOPUP", amount=inr(500_000)
        ),
        "RecordFixedCost": service_pb2.RecordFixedCostRequest(
            campaign_key="cmp_msme_gst", amount=inr(100_000), description="Agency fee"
        ),
    }
    request = requests[method]
    request.request_id = new_id()  # type: ignore[union-attr]
    setattr(request, field, value)
    before = await _attribution(service, campaign_id)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await getattr(service.stub, method)(request)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith(f"{field}: {field} ")
    assert await _attribution(service, campaign_id) == before


@pytest.mark.parametrize(
    ("report_filter", "field"),
    [
        (service_pb2.ReportFilter(labels=["Cross-Sell – MSME", "x" * 70_000]), "filter.labels[1]"),
        (service_pb2.ReportFilter(labels=["Cross-Sell\x00"]), "filter.labels[0]"),
        (service_pb2.ReportFilter(campaign_key="cmp_msme_gst\x00"), "filter.campaign_key"),
    ],
)
async def test_a_report_filter_naming_no_possible_label_or_id_is_refused_by_field(
    service: Service, report_filter: service_pb2.ReportFilter, field: str
) -> None:
    """A 70,000-character label is a LIKE pattern SQLite calls too complex, and PostgreSQL refuses a NUL: INTERNAL."""
    await _outreach(service)
    for call in (
        service.stub.GetAttributionReport(service_pb2.GetAttributionReportRequest(filter=report_filter)),
        service.stub.GetLift(service_pb2.GetLiftRequest(filter=report_filter)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith(f"{field}: {field} ")


async def test_an_application_or_a_sanction_from_before_the_outreach_is_refused_as_a_disbursement_is(
    service: Service,
) -> None:
    """A LOS reporting a loan applied for before the outreach was sent: it was not the outreach's doing. A disbursement
    was refused so, while the application and the sanction were booked, their funnel steps before the send."""
    campaign_id = await _outreach(service)
    before_send = ts(SENT_AT - timedelta(days=3))
    application = service_pb2.RecordApplicationRequest(
        request_id=new_id(), loan_number="LA-2025-0001", campaign_id=campaign_id, apply_time=before_send
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.stub.RecordApplication(application)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("apply_time: apply_time ")
    assert (await _attribution(service, campaign_id)).funnel.applied == 0

    application.request_id, application.apply_time.seconds = new_id(), ts(SENT_AT + timedelta(days=1)).seconds
    await service.stub.RecordApplication(application)
    sanction = service_pb2.RecordSanctionRequest(
        request_id=new_id(),
        loan_number="LA-2025-0001",
        campaign_id=campaign_id,
        amount=inr(100_000_00),
        sanction_time=before_send,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.stub.RecordSanction(sanction)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("sanction_time: sanction_time ")
    assert (await _attribution(service, campaign_id)).funnel.sanctioned == 0


@pytest.mark.parametrize("method", ["RecordApplication", "RecordSanction", "RecordDisbursement", "RecordConversion"])
async def test_a_time_ahead_of_the_clock_is_refused_by_field(service: Service, method: str) -> None:
    """A LOS clock years ahead (or a date typed wrong): the disbursement was booked into 2030's days and lag."""
    campaign_id = await _outreach(service)
    await service.stub.RecordApplication(
        service_pb2.RecordApplicationRequest(request_id=new_id(), loan_number="LA-1", campaign_id=campaign_id)
    )
    await service.stub.RecordSanction(
        service_pb2.RecordSanctionRequest(
            request_id=new_id(), loan_number="LA-1", campaign_id=campaign_id, amount=inr(100_000_00)
        )
    )
    ahead = ts(datetime.now(UTC) + timedelta(days=365))
    request, field = {
        "RecordApplication": (
            service_pb2.RecordApplicationRequest(loan_number="LA-2", campaign_id=campaign_id, apply_time=ahead),
            "apply_time",
        ),
        "RecordSanction": (
            service_pb2.RecordSanctionRequest(
                loan_number="LA-1", campaign_id=campaign_id, amount=inr(100_000_00), sanction_time=ahead
            ),
            "sanction_time",
        ),
        "RecordDisbursement": (
            service_pb2.RecordDisbursementRequest(
                disbursement_id="DISB-1",
                loan_number="LA-1",
                campaign_id=campaign_id,
                amount=inr(100_000_00),
                disburse_time=ahead,
            ),
            "disburse_time",
        ),
        "RecordConversion": (
            service_pb2.RecordConversionRequest(
                conversion_id="MF-ORD-1",
                kind=resources_pb2.CONVERSION_KIND_LUMPSUM_INVESTED,
                campaign_id=campaign_id,
                amount=inr(500_000),
                occur_time=ahead,
            ),
            "occur_time",
        ),
    }[method]
    request.request_id = new_id()  # type: ignore[union-attr]
    before = await _attribution(service, campaign_id)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await getattr(service.stub, method)(request)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith(f"{field}: {field} ")
    assert "in the future" in (refused.value.details() or "")
    assert await _attribution(service, campaign_id) == before


async def test_a_day_before_the_year_1000_keeps_its_four_digits(service: Service) -> None:
    """ "0999-01-01" was read back as "999-01-01", which sorts after every real day: a report from it showed nothing,
    and a fixed cost booked on it answered a book_date the service itself refuses."""
    await _outreach(service)
    report = await service.stub.GetAttributionReport(
        service_pb2.GetAttributionReportRequest(filter=service_pb2.ReportFilter(start_date="0999-01-01"))
    )
    assert report.total.sent == 1
    cost = await service.stub.RecordFixedCost(
        service_pb2.RecordFixedCostRequest(
            request_id=new_id(), campaign_key="cmp_msme_gst", amount=inr(100_000), book_date="0999-01-01"
        )
    )
    assert cost.cost.book_date == "0999-01-01"


async def test_a_leads_page_token_of_the_other_filter_names_the_request_field(service: Service) -> None:
    """The refusal named "awaiting", a field no request has."""
    campaign_id = await _outreach(service)
    for crm_lead_id in ("CRM-1", "CRM-2"):
        await service.stub.CreateLead(
            service_pb2.CreateLeadRequest(request_id=new_id(), campaign_id=campaign_id, crm_lead_id=crm_lead_id)
        )
    first = await service.stub.ListLeads(service_pb2.ListLeadsRequest(page_size=1))
    assert first.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.stub.ListLeads(
            service_pb2.ListLeadsRequest(awaiting_crm_lead_id=True, page_token=first.next_page_token)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "another awaiting_crm_lead_id; pass the same awaiting_crm_lead_id" in (refused.value.details() or "")
