"""Reading the campaign ID from raw request bytes, with the contracts' own message types."""

from gateway.forwarding import campaign_id_of, request_type
from gateway.tracking import is_web_url
from xsell.attribution.v1 import service_pb2 as attribution_pb2
from xsell.segments.v1 import service_pb2 as segments_pb2


def test_the_request_type_comes_from_the_descriptor_pool() -> None:
    assert request_type("/xsell.attribution.v1.AttributionService/CreateLead") is attribution_pb2.CreateLeadRequest


def test_a_request_with_a_campaign_id_yields_it() -> None:
    message_type = request_type("/xsell.attribution.v1.AttributionService/GetCampaignAttribution")
    raw = attribution_pb2.GetCampaignAttributionRequest(campaign_id="CSELL-NOV-T06-0884").SerializeToString()
    assert campaign_id_of(message_type, raw) == "CSELL-NOV-T06-0884"


def test_no_campaign_id_field_or_unparseable_bytes_yield_nothing() -> None:
    assert campaign_id_of(request_type("/xsell.segments.v1.SegmentsService/ListSegments"), b"") == ""
    assert campaign_id_of(segments_pb2.ListSegmentsRequest, b"\x0a\x05ab") == ""
    message_type = request_type("/xsell.attribution.v1.AttributionService/GetCampaignAttribution")
    assert campaign_id_of(message_type, b"\x0a\xff") == ""


def test_only_absolute_web_urls_may_be_redirect_targets() -> None:
    assert is_web_url("https://bank.example/offer?x=1")
    assert is_web_url("http://bank.example")
    assert not is_web_url("javascript:alert(1)")
    assert not is_web_url("data:text/html,hi")
    assert not is_web_url("//bank.example/offer")
    assert not is_web_url("https://bank.example/\r\nSet-Cookie: a=b")
    assert not is_web_url(None)
