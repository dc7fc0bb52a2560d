"""Bad input through the gateway gets the right status, a message that names the field, and writes nothing."""

import grpc
import pytest

from tests.e2e.conftest import AUTH, RunningStack
from xsell.attribution.v1 import service_pb2 as attribution
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc
from xsell.campaigns.v1 import resources_pb2 as campaign_resources
from xsell.campaigns.v1 import service_pb2 as campaigns
from xsell.campaigns.v1 import service_pb2_grpc as campaigns_grpc
from xsell.segments.v1 import resources_pb2 as seg
from xsell.segments.v1 import service_pb2 as segments
from xsell.segments.v1 import service_pb2_grpc as segments_grpc
from xsell.type.v1 import channel_pb2, money_pb2

# One worker runs every e2e test, so `make test` starts the whole stack once, not once per worker.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("stack")]


async def _rejected(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def test_bad_requests_are_rejected_with_actionable_errors(running_stack: RunningStack) -> None:
    async with grpc.aio.insecure_channel(running_stack.stack.gateway_target) as channel:
        segments_api = segments_grpc.SegmentsServiceStub(channel)
        campaigns_api = campaigns_grpc.CampaignsServiceStub(channel)
        attribution_api = attribution_grpc.AttributionServiceStub(channel)
        segments_before = len((await segments_api.ListSegments(segments.ListSegmentsRequest(), metadata=AUTH)).segments)
        campaigns_before = len(
            (await campaigns_api.ListCampaigns(campaigns.ListCampaignsRequest(), metadata=AUTH)).campaigns
        )

        # An invalid rule: BETWEEN with one value.
        error = await _rejected(
            segments_api.CreateSegment(
                segments.CreateSegmentRequest(
                    request_id="bad-rule-1",
                    segment=seg.Segment(
                        display_name="Broken",
                        rule=seg.Rule(
                            attribute=seg.AttributeCondition(
                                attribute="total_aum",
                                operator=seg.OPERATOR_BETWEEN,
                                values=[seg.Value(number_value=1)],
                            )
                        ),
                    ),
                ),
                metadata=AUTH,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "rule" in error.details() and "2" in error.details()

        # A campaign on a segment that does not exist.
        error = await _rejected(
            campaigns_api.CreateCampaign(
                campaigns.CreateCampaignRequest(
                    request_id="bad-campaign-1",
                    campaign=campaign_resources.Campaign(
                        display_name="Nowhere",
                        segment_id="seg_does_not_exist",
                        channel=channel_pb2.CHANNEL_EMAIL,
                        offer=campaign_resources.Offer(product_code="LUMPSUM"),
                        content=campaign_resources.Content(
                            email=campaign_resources.EmailContent(
                                subject_template="Hi",
                                html_template='<a href="{{ unsubscribe_url }}">Unsubscribe</a>',
                                text_template="Hi",
                            )
                        ),
                    ),
                ),
                metadata=AUTH,
            )
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "segment_id" in error.details() and "seg_does_not_exist" in error.details()

        # A disbursement with a negative amount.
        error = await _rejected(
            attribution_api.RecordDisbursement(
                attribution.RecordDisbursementRequest(
                    request_id="bad-disb-1",
                    disbursement_id="DISB-BAD-1",
                    loan_number="LA-2025-9999",
                    campaign_id="CSELL-NOV-T06-0001",
                    amount=money_pb2.Money(minor_units=-100, currency_code="INR"),
                ),
                metadata=AUTH,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "amount.minor_units" in error.details()

        # A disbursement for a campaign ID nobody issued.
        error = await _rejected(
            attribution_api.RecordDisbursement(
                attribution.RecordDisbursementRequest(
                    request_id="bad-disb-2",
                    disbursement_id="DISB-BAD-2",
                    loan_number="LA-2025-9999",
                    campaign_id="CSELL-NOV-T99-9999",
                    amount=money_pb2.Money(minor_units=100, currency_code="INR"),
                ),
                metadata=AUTH,
            )
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "campaign_id" in error.details() and "CSELL-NOV-T99-9999" in error.details()

        # Nothing was written by any of them.
        assert len((await segments_api.ListSegments(segments.ListSegmentsRequest(), metadata=AUTH)).segments) == (
            segments_before
        )
        assert len((await campaigns_api.ListCampaigns(campaigns.ListCampaignsRequest(), metadata=AUTH)).campaigns) == (
            campaigns_before
        )
        error = await _rejected(
            attribution_api.GetCampaignAttribution(
                attribution.GetCampaignAttributionRequest(campaign_id="CSELL-NOV-T99-9999"), metadata=AUTH
            )
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
