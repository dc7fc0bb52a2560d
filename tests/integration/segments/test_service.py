"""The segments service end to end over gRPC, on SQLite and PostgreSQL, with a real NATS."""

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plumbing.bus import Bus
from plumbing.ids import new_id
from services import streams
from tests.integration.segments.approval import publish
from tests.unit.segments.builders import all_, attr, b, event, money, n, not_, s, segment, sip_only, ss, ts
from tests.waiting import eventually
from xsell.segments.v1 import events_pb2
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub


def _ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def _event(profile_id: str, name: str, when: datetime, **properties: r.Value) -> r.Event:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return r.Event(event_id=new_id("e_"), profile_id=profile_id, name=name, occur_time=stamp, properties=properties)


async def _ingest(stub: SegmentsServiceStub, *events: r.Event) -> api.IngestEventsResponse:
    response: api.IngestEventsResponse = await stub.IngestEvents(
        api.IngestEventsRequest(request_id=new_id("req_"), events=list(events))
    )
    return response


async def _create(stub: SegmentsServiceStub, rule: r.Rule, name: str = "test segment") -> r.Segment:
    response = await stub.CreateSegment(
        api.CreateSegmentRequest(request_id=new_id("req_"), segment=r.Segment(display_name=name, rule=rule))
    )
    return response.segment


async def _publish(stub: SegmentsServiceStub, segment_id: str) -> r.Segment:
    return await publish(stub, segment_id)


async def _members(stub: SegmentsServiceStub, segment_id: str, *names: str) -> dict[str, r.Member]:
    response = await stub.ListSegmentMembers(
        api.ListSegmentMembersRequest(segment_id=segment_id, attribute_names=list(names))
    )
    return {m.profile_id: m for m in response.members}


async def test_sip_only_investors_are_exactly_the_expected_members(
    segments: SegmentsServiceStub, spans: InMemorySpanExporter
) -> None:
    first_sip = _event("sip", "sip_registered", _ago(10))
    await _ingest(
        segments,
        first_sip,
        _event("both", "sip_registered", _ago(20)),
        _event("both", "lumpsum_invested", _ago(100)),
        _event("old_lumpsum", "sip_registered", _ago(300)),
        _event("old_lumpsum", "lumpsum_invested", _ago(400)),
        _event("lumpsum", "lumpsum_invested", _ago(3)),
        _event("stale_sip", "sip_registered", _ago(500)),
    )
    repeated = _event("sip", "lumpsum_invested", _ago(1))
    repeated.event_id = first_sip.event_id
    # A repeated event id is accepted and changes nothing: "sip" stays a SIP-only investor.
    assert (await _ingest(segments, repeated)).accepted_count == 1
    request = api.CreateSegmentRequest(
        request_id=new_id("req_"), segment=r.Segment(display_name="SIP-only investors", rule=sip_only())
    )
    draft = (await segments.CreateSegment(request)).segment
    assert (await segments.CreateSegment(request)).segment == draft
    assert draft.state == r.SEGMENT_STATE_DRAFT
    assert draft.version == 1
    published = await _publish(segments, draft.segment_id)
    assert published.state == r.SEGMENT_STATE_PUBLISHED
    assert published.member_count == 2
    assert published.HasField("publish_time")
    assert set(await _members(segments, draft.segment_id)) == {"sip", "old_lumpsum"}
    # Publishing again changes nothing and returns the same segment.
    assert await _publish(segments, draft.segment_id) == published
    publish_spans = [
        span for span in spans.get_finished_spans() if span.name == "/xsell.segments.v1.SegmentsService/PublishSegment"
    ]
    assert publish_spans and all(
        (span.attributes or {}).get("segment.id") == draft.segment_id for span in publish_spans
    )
    ingest = next(span for span in spans.get_finished_spans() if span.name.endswith("/IngestEvents"))
    assert (ingest.attributes or {}).get("segments.batch.size") == 7


async def test_batch_with_bad_records_keeps_the_good_ones(segments: SegmentsServiceStub) -> None:
    response = await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[
                r.Profile(profile_id="good_1", attributes={"investment_type": s("SIP")}),
                r.Profile(profile_id="", attributes={"investment_type": s("SIP")}),
                r.Profile(profile_id="bad_aum", attributes={"total_aum": r.Value()}),
                r.Profile(profile_id="good_2", attributes={"total_aum": money(174000000)}),
            ],
        )
    )
    assert response.accepted_count == 2
    assert [(e.index, e.record_id, e.field) for e in response.errors] == [
        (1, "", "profiles[1].profile_id"),
        (2, "bad_aum", "profiles[2].attributes.total_aum"),
    ]
    assert all(e.reason for e in response.errors)
    await segments.GetProfile(api.GetProfileRequest(profile_id="good_1"))
    await segments.GetProfile(api.GetProfileRequest(profile_id="good_2"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await segments.GetProfile(api.GetProfileRequest(profile_id="bad_aum"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    events = await _ingest(
        segments,
        _event("good_1", "sip_registered", _ago(1)),
        _event("good_1", "sip_registered", _ago(-1)),
        _event("good_1", "Lumpsum", _ago(1)),
    )
    assert events.accepted_count == 1
    assert [(e.index, e.field) for e in events.errors] == [(1, "events[1].occur_time"), (2, "events[2].name")]


async def test_profile_round_trips_every_value_kind_and_partial_updates_keep_others(
    segments: SegmentsServiceStub,
) -> None:
    declared = await segments.DefineAttributes(
        api.DefineAttributesRequest(
            request_id=new_id("req_"),
            attributes=[
                r.AttributeDefinition(name="no_categories", type=r.ATTRIBUTE_TYPE_STRING_SET),
                r.AttributeDefinition(name="last_sip_at", type=r.ATTRIBUTE_TYPE_TIMESTAMP),
            ],
        )
    )
    assert declared.accepted_count == 2
    last_sip = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    attributes = {
        "investment_type": s("SIP"),
        "number_of_schemes": n(3),
        "has_stp": b(False),
        "fund_categories": ss("Equity", "ELSS"),
        "no_categories": ss(),
        "last_sip_at": ts(last_sip),
        "total_aum": money(174000000, "INR"),
    }
    request_id = new_id("req_")
    first = await segments.UpsertProfiles(
        api.UpsertProfilesRequest(request_id=request_id, profiles=[r.Profile(profile_id="p1", attributes=attributes)])
    )
    assert first.accepted_count == 1
    await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[r.Profile(profile_id="p1", attributes={"fund_categories": ss("Debt"), "has_stp": b(True)})],
        )
    )
    profile = (await segments.GetProfile(api.GetProfileRequest(profile_id="p1"))).profile
    expected = {**attributes, "fund_categories": ss("Debt"), "has_stp": b(True)}
    got = dict(profile.attributes)
    assert set(got) == set(expected)
    for name, value in expected.items():
        if value.HasField("string_set_value"):
            assert sorted(got[name].string_set_value.values) == sorted(value.string_set_value.values), name
            assert got[name].HasField("string_set_value"), name
        else:
            assert got[name] == value, name
    assert got["last_sip_at"].timestamp_value.ToDatetime(tzinfo=UTC) == last_sip
    # A retry with the same request_id returns the first response and changes nothing.
    again = await segments.UpsertProfiles(
        api.UpsertProfilesRequest(request_id=request_id, profiles=[r.Profile(profile_id="p1", attributes=attributes)])
    )
    assert again == first
    profile = (await segments.GetProfile(api.GetProfileRequest(profile_id="p1"))).profile
    assert profile.attributes["has_stp"] == b(True)


async def test_invalid_rule_is_rejected_with_its_path(segments: SegmentsServiceStub) -> None:
    rule = all_(event("sip_registered", days=365), attr("total_aum", "BETWEEN", money(1)))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _create(segments, rule)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "segment.rule.all.rules[1].attribute.values" in (raised.value.details() or "")
    assert "OPERATOR_BETWEEN needs exactly 2 values" in (raised.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _create(segments, all_(sip_only(), not_(segment("seg_missing"))))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "segment.rule.all.rules[1].negate.segment.segment_id" in (raised.value.details() or "")
    assert "seg_missing" in (raised.value.details() or "")

    listed = await segments.ListSegments(api.ListSegmentsRequest())
    assert list(listed.segments) == []


async def test_entering_after_publish_is_published_on_nats_and_listed(
    segments: SegmentsServiceStub, nats_bus: Bus
) -> None:
    await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[
                r.Profile(profile_id="ravi", attributes={"customer_tier": s("HNI")}),
                r.Profile(profile_id="asha", attributes={"customer_tier": s("Standard")}),
            ],
        )
    )
    draft = await _create(segments, sip_only())
    assert (await _publish(segments, draft.segment_id)).member_count == 0

    received: list[events_pb2.MembershipChanged] = []

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        change = events_pb2.MembershipChanged.FromString(msg.data)
        if change.segment_id == draft.segment_id:
            received.append(change)

    subscription = await nats_bus.nc.subscribe(streams.MEMBERSHIP_CHANGED, cb=collect)
    try:
        await _ingest(segments, _event("ravi", "sip_registered", _ago(2)))
        await eventually(lambda: asyncio.sleep(0, result=len(received) >= 1))
        entered = received[0]
        assert (entered.profile_id, entered.change, entered.segment_version) == (
            "ravi",
            events_pb2.MEMBERSHIP_CHANGE_ENTERED,
            1,
        )
        assert entered.event_id
        members = await _members(segments, draft.segment_id, "customer_tier", "not_there")
        assert set(members) == {"ravi"}
        assert dict(members["ravi"].attributes) == {"customer_tier": s("HNI")}
        check = await segments.CheckMembership(
            api.CheckMembershipRequest(segment_id=draft.segment_id, profile_id="ravi")
        )
        assert check.is_member and check.segment_version == 1

        # A lumpsum makes ravi leave; an event for a person the CRM has not sent yet creates them.
        await _ingest(
            segments, _event("ravi", "lumpsum_invested", _ago(1)), _event("new_person", "sip_registered", _ago(1))
        )
        await eventually(lambda: asyncio.sleep(0, result=len(received) >= 3))
        assert sorted((c.profile_id, c.change) for c in received[1:]) == [
            ("new_person", events_pb2.MEMBERSHIP_CHANGE_ENTERED),
            ("ravi", events_pb2.MEMBERSHIP_CHANGE_EXITED),
        ]
    finally:
        await subscription.unsubscribe()
    assert set(await _members(segments, draft.segment_id)) == {"new_person"}
    got = (await segments.GetSegment(api.GetSegmentRequest(segment_id=draft.segment_id))).segment
    assert got.member_count == 1
    assert (await segments.GetProfile(api.GetProfileRequest(profile_id="new_person"))).profile.attributes == {}


async def test_segment_references_and_attribute_changes_keep_memberships_current(
    segments: SegmentsServiceStub,
) -> None:
    hni = await _create(segments, attr("customer_tier", "IN", s("HNI"), s("Premium")), "HNI")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _create(segments, segment("seg_nope"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    no_swp = await _create(segments, all_(segment(hni.segment_id), attr("has_swp", "NOT_EQUALS", b(True))), "No SWP")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _publish(segments, no_swp.segment_id)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"publish {hni.segment_id} first" in (raised.value.details() or "")
    await _publish(segments, hni.segment_id)
    await _publish(segments, no_swp.segment_id)

    await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[
                r.Profile(profile_id="a", attributes={"customer_tier": s("HNI")}),
                r.Profile(profile_id="b", attributes={"customer_tier": s("Premium"), "has_swp": b(True)}),
                r.Profile(profile_id="c", attributes={"customer_tier": s("Standard")}),
            ],
        )
    )
    assert set(await _members(segments, no_swp.segment_id)) == {"a"}
    await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[
                r.Profile(profile_id="a", attributes={"customer_tier": s("Standard")}),
                r.Profile(profile_id="b", attributes={"has_swp": b(False)}),
            ],
        )
    )
    assert set(await _members(segments, hni.segment_id)) == {"b"}
    assert set(await _members(segments, no_swp.segment_id)) == {"b"}
    counts = {s.segment_id: s.member_count for s in (await segments.ListSegments(api.ListSegmentsRequest())).segments}
    assert counts == {hni.segment_id: 1, no_swp.segment_id: 1}


async def test_listing_members_and_segments_pages_through_everything(segments: SegmentsServiceStub) -> None:
    people = [f"p{i:03d}" for i in range(23)]
    await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[r.Profile(profile_id=p, attributes={"number_of_schemes": n(i)}) for i, p in enumerate(people)],
        )
    )
    seg = await _create(segments, attr("number_of_schemes", "GREATER_OR_EQUAL", n(3)))
    await _publish(segments, seg.segment_id)
    seen: list[str] = []
    token = ""
    while True:
        page = await segments.ListSegmentMembers(
            api.ListSegmentMembersRequest(
                segment_id=seg.segment_id, page_size=5, page_token=token, attribute_names=["number_of_schemes"]
            )
        )
        assert len(page.members) <= 5
        for m in page.members:
            assert m.attributes["number_of_schemes"].number_value == people.index(m.profile_id)
            assert m.HasField("enter_time")
        seen.extend(m.profile_id for m in page.members)
        token = page.next_page_token
        if not token:
            break
    assert seen == people[3:]

    others = [await _create(segments, attr("x", "EXISTS"), f"s{i}") for i in range(3)]
    first = await segments.ListSegments(api.ListSegmentsRequest(page_size=2))
    second = await segments.ListSegments(api.ListSegmentsRequest(page_size=2, page_token=first.next_page_token))
    assert [x.segment_id for x in [*first.segments, *second.segments]] == [
        others[2].segment_id,
        others[1].segment_id,
        others[0].segment_id,
        seg.segment_id,
    ]
    assert second.next_page_token == ""


async def test_state_and_lookup_errors(segments: SegmentsServiceStub) -> None:
    draft = await _create(segments, sip_only())

    async def code_of(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        return raised.value.code(), raised.value.details() or ""

    code, details = await code_of(
        segments.ListSegmentMembers(api.ListSegmentMembersRequest(segment_id=draft.segment_id))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details == f"segment_id: segment {draft.segment_id} is DRAFT; publish it with PublishSegment first"
    code, _ = await code_of(
        segments.CheckMembership(api.CheckMembershipRequest(segment_id=draft.segment_id, profile_id="x"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _ = await code_of(segments.PublishSegment(api.PublishSegmentRequest(request_id="r", segment_id="seg_nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await code_of(segments.GetSegment(api.GetSegmentRequest(segment_id="seg_nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = await code_of(
        segments.CreateSegment(api.CreateSegmentRequest(request_id="r1", segment=r.Segment(rule=sip_only())))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "display_name" in details
    code, _ = await code_of(segments.IngestEvents(api.IngestEventsRequest(request_id="r2")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await code_of(segments.UpsertProfiles(api.UpsertProfilesRequest(profiles=[r.Profile(profile_id="p")])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await code_of(segments.ListSegments(api.ListSegmentsRequest(page_token="not-a-token")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_duplicates_of_a_request_get_one_answer_and_change_things_once(
    segments: SegmentsServiceStub,
) -> None:
    """A CRM that retries before the first call returned: on PostgreSQL the copies really run side by side."""
    now = datetime.now(UTC) - timedelta(minutes=1)
    ingest = api.IngestEventsRequest(
        request_id=new_id("req_"),
        events=[_event("dup-1", "sip_registered", now), _event("dup-2", "session_start", now)],
    )
    answers = await asyncio.gather(*(segments.IngestEvents(ingest) for _ in range(6)))
    assert {a.accepted_count for a in answers} == {2} and all(a == answers[0] for a in answers)

    profile = r.Profile(profile_id="dup-1")
    profile.attributes["investment_type"].string_value = "SIP"
    upsert = api.UpsertProfilesRequest(request_id=new_id("req_"), profiles=[profile])
    replies = await asyncio.gather(*(segments.UpsertProfiles(upsert) for _ in range(6)))
    assert all(reply == replies[0] for reply in replies) and replies[0].accepted_count == 1

    # The same request_id with another payload is refused, not applied.
    changed = api.UpsertProfilesRequest(request_id=upsert.request_id, profiles=[r.Profile(profile_id="dup-3")])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await segments.UpsertProfiles(changed)
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert "request_id" in refused.value.details()


async def test_calls_made_together_share_a_transaction_and_each_gets_its_own_answer(
    segments: SegmentsServiceStub, spans: InMemorySpanExporter
) -> None:
    """Twenty single-event calls at once: one group commit or a few, every person's membership right, every
    caller answered for its own records, a reused request_id refused while its batch-mates are kept."""
    published = await _publish(segments, (await _create(segments, sip_only(), "SIP-only investors")).segment_id)
    now = datetime.now(UTC) - timedelta(minutes=1)
    calls = [
        api.IngestEventsRequest(
            request_id=new_id("req_"),
            events=[_event(f"batch-{i}", "sip_registered" if i % 2 else "session_start", now)],
        )
        for i in range(20)
    ]
    bad = _event("batch-bad", "sip_registered", now)
    bad.ClearField("occur_time")
    calls.append(
        api.IngestEventsRequest(request_id=new_id("req_"), events=[bad, _event("batch-ok", "sip_registered", now)])
    )
    # The first call's request_id again with another payload: refused, not applied.
    reused = api.IngestEventsRequest(request_id=calls[0].request_id, events=[_event("batch-x", "sip_registered", now)])
    answers = await asyncio.gather(*(segments.IngestEvents(c) for c in [*calls, reused]), return_exceptions=True)

    assert [a.accepted_count for a in answers[:20]] == [1] * 20  # type: ignore[union-attr]
    mixed = answers[20]
    assert isinstance(mixed, api.IngestEventsResponse) and mixed.accepted_count == 1
    assert [e.field for e in mixed.errors] == ["events[0].occur_time"]
    refused = answers[21]
    assert isinstance(refused, grpc.aio.AioRpcError) and refused.code() == grpc.StatusCode.ABORTED
    assert "request_id" in (refused.details() or "")
    members = await _members(segments, published.segment_id)
    assert set(members) == {f"batch-{i}" for i in range(1, 20, 2)} | {"batch-ok"}
    # A retry of any call gets its first answer.
    assert await segments.IngestEvents(calls[3]) == answers[3]
    batches = [span for span in spans.get_finished_spans() if span.name == "ingest events batch"]
    assert batches and max(len(span.links) for span in batches) > 1
