"""The attribute catalog over gRPC: the default catalog, DefineAttributes / ListAttributes, and typed upserts."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.ids import new_id
from tests.unit.segments.builders import b, money, n, s, ss
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub

RECIPE = {
    "investment_type",
    "fund_categories",
    "plan_type",
    "option_type",
    "number_of_schemes",
    "number_of_amcs",
    "has_minor_folio",
    "has_sip_stepup",
    "has_stp",
    "has_swp",
    "total_aum",
    "customer_tier",
    "age_group",
    "has_children",
    "invested_last_90_days",
    "first_name",
    "email",
    "phone",
    "pan",
}


async def _all_attributes(stub: SegmentsServiceStub, page_size: int) -> list[r.AttributeDefinition]:
    found: list[r.AttributeDefinition] = []
    token = ""
    while True:
        page = await stub.ListAttributes(api.ListAttributesRequest(page_size=page_size, page_token=token))
        assert len(page.attributes) <= page_size
        found.extend(page.attributes)
        token = page.next_page_token
        if not token:
            return found


async def _define(stub: SegmentsServiceStub, *definitions: r.AttributeDefinition) -> api.DefineAttributesResponse:
    response: api.DefineAttributesResponse = await stub.DefineAttributes(
        api.DefineAttributesRequest(request_id=new_id("req_"), attributes=list(definitions))
    )
    return response


async def test_the_default_catalog_declares_the_recipe_attributes(segments: SegmentsServiceStub) -> None:
    listed = await _all_attributes(segments, page_size=4)
    by_name = {a.name: a for a in listed}
    assert [a.name for a in listed] == sorted(by_name)
    assert set(by_name) >= RECIPE
    assert {name for name, a in by_name.items() if a.pii} == {"first_name", "email", "phone", "pan"}
    assert by_name["fund_categories"].type == r.ATTRIBUTE_TYPE_STRING_SET
    assert by_name["total_aum"].type == r.ATTRIBUTE_TYPE_MONEY
    amcs = by_name["number_of_amcs"].computed
    assert (amcs.event_name, amcs.aggregation, amcs.property) == (
        "transaction_success",
        r.AGGREGATION_DISTINCT_COUNT,
        "amc",
    )
    invested = by_name["invested_last_90_days"].computed
    assert (invested.aggregation, invested.window.seconds, invested.currency_code) == (
        r.AGGREGATION_SUM,
        90 * 24 * 3600,
        "INR",
    )
    assert by_name["investment_type"].create_time.seconds > 0
    for bad in (api.ListAttributesRequest(page_size=-1), api.ListAttributesRequest(page_token="not-a-token!")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await segments.ListAttributes(bad)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_define_keeps_good_definitions_rejects_type_changes_and_replays_by_request_id(
    segments: SegmentsServiceStub,
) -> None:
    request = api.DefineAttributesRequest(
        request_id=new_id("req_"),
        attributes=[
            r.AttributeDefinition(name="city", type=r.ATTRIBUTE_TYPE_STRING, description="Where the person lives"),
            r.AttributeDefinition(name="total_aum", type=r.ATTRIBUTE_TYPE_NUMBER),
            r.AttributeDefinition(name="customer_tier", type=r.ATTRIBUTE_TYPE_STRING, description="Standard to HNI"),
            r.AttributeDefinition(
                name="sessions_30d",
                type=r.ATTRIBUTE_TYPE_NUMBER,
                computed=r.ComputedAttribute(event_name="session_start", aggregation=r.AGGREGATION_COUNT),
            ),
            r.AttributeDefinition(
                name="bad_sum",
                type=r.ATTRIBUTE_TYPE_STRING,
                computed=r.ComputedAttribute(
                    event_name="transaction_success", aggregation=r.AGGREGATION_SUM, property="amount"
                ),
            ),
        ],
    )
    response = await segments.DefineAttributes(request)
    assert response.accepted_count == 3
    assert [(e.index, e.record_id, e.field) for e in response.errors] == [
        (1, "total_aum", "attributes[1].type"),
        (4, "bad_sum", "attributes[4].computed.aggregation"),
    ]
    assert "declared MONEY and its type cannot change" in response.errors[0].reason
    assert await segments.DefineAttributes(request) == response
    by_name = {a.name: a for a in await _all_attributes(segments, page_size=1000)}
    assert by_name["city"].description == "Where the person lives"
    assert by_name["customer_tier"].description == "Standard to HNI"
    assert by_name["total_aum"].type == r.ATTRIBUTE_TYPE_MONEY
    assert "bad_sum" not in by_name
    # A declared attribute is usable at once by this replica: its cache is refreshed on commit.
    upserted = await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"), profiles=[r.Profile(profile_id="p-city", attributes={"city": s("Pune")})]
        )
    )
    assert upserted.accepted_count == 1 and not upserted.errors


async def test_upserts_reject_undeclared_wrongly_typed_and_computed_attributes_and_keep_the_rest(
    segments: SegmentsServiceStub,
) -> None:
    response = await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[
                r.Profile(profile_id="ok-1", attributes={"investment_type": s("SIP"), "total_aum": money(1_00)}),
                r.Profile(
                    profile_id="undeclared", attributes={"investment_type": s("SIP"), "favourite_colour": s("x")}
                ),
                r.Profile(profile_id="wrong-type", attributes={"total_aum": n(174000000)}),
                r.Profile(profile_id="computed", attributes={"number_of_amcs": n(3)}),
                r.Profile(profile_id="ok-2", attributes={"fund_categories": ss("Debt"), "has_stp": b(False)}),
            ],
        )
    )
    assert response.accepted_count == 2
    assert [(e.index, e.record_id, e.field, e.reason) for e in response.errors] == [
        (
            1,
            "undeclared",
            "profiles[1].attributes.favourite_colour",
            "attribute 'favourite_colour' is not in the catalog; declare it with DefineAttributes",
        ),
        (2, "wrong-type", "profiles[2].attributes.total_aum", "attributes.total_aum: expected MONEY, got a number"),
        (
            3,
            "computed",
            "profiles[3].attributes.number_of_amcs",
            "attribute 'number_of_amcs' is computed from events and cannot be set; "
            "send transaction_success events instead",
        ),
    ]
    for kept in ("ok-1", "ok-2"):
        await segments.GetProfile(api.GetProfileRequest(profile_id=kept))
    for rejected in ("undeclared", "wrong-type", "computed"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await segments.GetProfile(api.GetProfileRequest(profile_id=rejected))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_new_computed_attribute_starts_from_the_events_already_stored(segments: SegmentsServiceStub) -> None:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(days=3))
    tickets = [5000, 250000, 100000]
    await segments.IngestEvents(
        api.IngestEventsRequest(
            request_id=new_id("req_"),
            events=[
                r.Event(
                    event_id=new_id("e_"),
                    profile_id="big-ticket",
                    name="lumpsum_invested",
                    occur_time=stamp,
                    properties={"amount": n(amount)},
                )
                for amount in tickets
            ],
        )
    )
    defined = await _define(
        segments,
        r.AttributeDefinition(
            name="largest_lumpsum",
            type=r.ATTRIBUTE_TYPE_NUMBER,
            computed=r.ComputedAttribute(
                event_name="lumpsum_invested", aggregation=r.AGGREGATION_MAX, property="amount"
            ),
        ),
    )
    assert defined.accepted_count == 1
    profile = (await segments.GetProfile(api.GetProfileRequest(profile_id="big-ticket"))).profile
    assert profile.attributes["largest_lumpsum"] == n(max(tickets))


@pytest.fixture
def without_catalog_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XSELL_SEGMENTS_CATALOG_FILE", "")


async def test_an_empty_catalog_file_setting_declares_nothing(
    without_catalog_file: None, segments: SegmentsServiceStub
) -> None:
    assert await _all_attributes(segments, page_size=10) == []
    response = await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[r.Profile(profile_id="p", attributes={"investment_type": s("SIP")})],
        )
    )
    assert response.accepted_count == 0
    assert "not in the catalog" in response.errors[0].reason
