"""Preview with explain, membership explained, and member streaming, over gRPC on SQLite and PostgreSQL."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.ids import new_id
from tests.integration.segments.approval import publish
from tests.integration.segments.server import serving
from tests.unit.segments.builders import attr, event, s, sip_only
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub
from xsell.type.v1 import channel_pb2


def _event(profile_id: str, name: str, days_ago: float) -> r.Event:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(days=days_ago))
    return r.Event(event_id=new_id("e_"), profile_id=profile_id, name=name, occur_time=stamp)


async def _refused(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


async def _people(stub: SegmentsServiceStub) -> None:
    await stub.IngestEvents(
        api.IngestEventsRequest(
            request_id=new_id("req_"),
            events=[
                _event("a_sip", "sip_registered", 10),
                _event("b_both", "sip_registered", 20),
                _event("b_both", "lumpsum_invested", 30),
                _event("c_lumpsum", "lumpsum_invested", 3),
                _event("d_browser", "session_start", 1),
                _event("e_old_lumpsum", "sip_registered", 40),
                _event("e_old_lumpsum", "lumpsum_invested", 400),
            ],
        )
    )


async def _suppress(stub: SegmentsServiceStub, *items: r.Suppression) -> None:
    await stub.AddSuppressions(api.AddSuppressionsRequest(request_id=new_id("req_"), suppressions=list(items)))


async def test_preview_counts_every_node_and_the_funnel_of_an_and(segments: SegmentsServiceStub) -> None:
    await _people(segments)
    preview = await segments.PreviewSegment(api.PreviewSegmentRequest(rule=sip_only(), sample_size=1))
    assert preview.count == 2
    assert list(preview.sample_profile_ids) == ["a_sip"]
    assert [(n.path, n.matched_count, n.cumulative_count) for n in preview.explain] == [
        ("rule", 2, 0),
        ("rule.all.rules[0]", 3, 3),  # a_sip, b_both, e_old_lumpsum
        ("rule.all.rules[1]", 3, 2),  # everyone but b_both and c_lumpsum
    ]
    assert preview.explain[2].summary == "did not perform lumpsum_invested in the last 365 days"

    created = await segments.CreateSegment(
        api.CreateSegmentRequest(request_id=new_id("req_"), segment=r.Segment(display_name="SIP", rule=sip_only()))
    )
    await segments.UpdateSegment(
        api.UpdateSegmentRequest(
            request_id=new_id("req_"), segment_id=created.segment.segment_id, rule=event("session_start", days=7)
        )
    )
    stored = await segments.PreviewSegment(api.PreviewSegmentRequest(segment_id=created.segment.segment_id, version=1))
    assert (stored.count, list(stored.sample_profile_ids)) == (2, ["a_sip", "e_old_lumpsum"])
    latest = await segments.PreviewSegment(api.PreviewSegmentRequest(segment_id=created.segment.segment_id))
    assert (latest.count, list(latest.sample_profile_ids)) == (1, ["d_browser"])

    code, details = await _refused(segments.PreviewSegment(api.PreviewSegmentRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("target:")
    code, details = await _refused(
        segments.PreviewSegment(api.PreviewSegmentRequest(rule=attr("x", "BETWEEN", s("a"))))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("rule.attribute")
    code, _ = await _refused(segments.PreviewSegment(api.PreviewSegmentRequest(segment_id="seg_missing")))
    assert code == grpc.StatusCode.NOT_FOUND
    # A caller's 10,000-character value echoed twice passed gRPC's 16 KiB trailer limit (RESOURCE_EXHAUSTED): every
    # refusal's text is bounded (plumbing.grpc_server.MAX_ERROR_TEXT), so the real answer arrives.
    code, details = await _refused(segments.PreviewSegment(api.PreviewSegmentRequest(segment_id="s" * 10_000)))
    assert code == grpc.StatusCode.NOT_FOUND and len(details) <= 1000
    code, _ = await _refused(
        segments.PreviewSegment(api.PreviewSegmentRequest(segment_id=created.segment.segment_id, version=7))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await _refused(segments.PreviewSegment(api.PreviewSegmentRequest(rule=sip_only(), sample_size=-1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # A rule naming no segment is refused as CreateSegment refuses it; it previewed as an empty audience.
    missing = r.Rule(segment=r.SegmentReference(segment_id="seg_missing"))
    code, details = await _refused(segments.PreviewSegment(api.PreviewSegmentRequest(rule=missing)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("rule.segment.segment_id: segment seg_missing does not exist")


async def test_explain_says_which_conditions_held_and_that_a_suppression_wins(segments: SegmentsServiceStub) -> None:
    await _people(segments)
    created = await segments.CreateSegment(
        api.CreateSegmentRequest(request_id=new_id("req_"), segment=r.Segment(display_name="SIP", rule=sip_only()))
    )
    sid = created.segment.segment_id
    code, _ = await _refused(
        segments.ExplainMembership(api.ExplainMembershipRequest(segment_id=sid, profile_id="a_sip"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    await publish(segments, sid)

    both = await segments.ExplainMembership(api.ExplainMembershipRequest(segment_id=sid, profile_id="b_both"))
    assert (both.satisfies_rule, both.is_member, both.eligible, both.segment_version) == (False, False, False, 1)
    assert [(c.path, c.held) for c in both.conditions] == [
        ("rule", False),
        ("rule.all.rules[0]", True),
        ("rule.all.rules[1]", False),
    ]

    await _suppress(
        segments,
        r.Suppression(profile_id="a_sip", channel=channel_pb2.CHANNEL_EMAIL, reason=r.SUPPRESSION_REASON_COMPLAINT),
    )
    by_email = await segments.ExplainMembership(
        api.ExplainMembershipRequest(segment_id=sid, profile_id="a_sip", channel=channel_pb2.CHANNEL_EMAIL)
    )
    assert (by_email.satisfies_rule, by_email.is_member, by_email.eligible) == (True, True, False)
    assert [x.reason for x in by_email.suppressions] == [r.SUPPRESSION_REASON_COMPLAINT]
    by_sms = await segments.ExplainMembership(
        api.ExplainMembershipRequest(segment_id=sid, profile_id="a_sip", channel=channel_pb2.CHANNEL_SMS)
    )
    assert (by_sms.is_member, by_sms.eligible, list(by_sms.suppressions)) == (True, True, [])

    code, _ = await _refused(
        segments.ExplainMembership(api.ExplainMembershipRequest(segment_id=sid, profile_id="nobody"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await _refused(segments.ExplainMembership(api.ExplainMembershipRequest(segment_id=sid)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def _stream(stub: SegmentsServiceStub, **fields) -> list[list[r.Member]]:  # type: ignore[no-untyped-def]
    return [
        list(message.members) async for message in stub.StreamSegmentMembers(api.StreamSegmentMembersRequest(**fields))
    ]


async def test_streaming_pages_resumes_exactly_once_and_leaves_suppressed_people_out(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    async with serving(database_url, nats_url, tmp_path, stream_page_size=10) as (stub, _):
        people = [f"p{i:02d}" for i in range(25)]
        await stub.UpsertProfiles(
            api.UpsertProfilesRequest(
                request_id=new_id("req_"),
                profiles=[r.Profile(profile_id=p, attributes={"investment_type": s("SIP")}) for p in people],
            )
        )
        created = await stub.CreateSegment(
            api.CreateSegmentRequest(
                request_id=new_id("req_"),
                segment=r.Segment(display_name="SIP", rule=attr("investment_type", "EQUALS", s("SIP"))),
            )
        )
        sid = created.segment.segment_id
        code, _ = await _refused(stub.StreamSegmentMembers(api.StreamSegmentMembersRequest(segment_id=sid)).read())
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        await publish(stub, sid)

        pages = await _stream(stub, segment_id=sid, version=1, attribute_names=["investment_type"])
        assert [len(page) for page in pages] == [10, 10, 5]
        streamed = [m.profile_id for page in pages for m in page]
        assert streamed == people
        assert all(m.attributes["investment_type"] == s("SIP") and m.HasField("enter_time") for p in pages for m in p)

        resumed = await _stream(stub, segment_id=sid, after_profile_id=streamed[11])
        assert [m.profile_id for page in resumed for m in page] == people[12:]
        assert not any(m.attributes for page in resumed for m in page)

        await _suppress(
            stub,
            r.Suppression(profile_id="p03", reason=r.SUPPRESSION_REASON_OPT_OUT),
            r.Suppression(profile_id="p04", channel=channel_pb2.CHANNEL_SMS, reason=r.SUPPRESSION_REASON_DND_REGISTRY),
            r.Suppression(
                profile_id="p05",
                channel=channel_pb2.CHANNEL_EMAIL,
                reason=r.SUPPRESSION_REASON_RECENT_DECLINE,
                expire_time=Timestamp(seconds=int((datetime.now(UTC) + timedelta(days=1)).timestamp())),
            ),
        )
        for channel, left_out in [
            (channel_pb2.CHANNEL_UNSPECIFIED, {"p03"}),
            (channel_pb2.CHANNEL_EMAIL, {"p03", "p05"}),
            (channel_pb2.CHANNEL_SMS, {"p03", "p04"}),
        ]:
            got = [m.profile_id for page in await _stream(stub, segment_id=sid, channel=channel) for m in page]
            assert got == [p for p in people if p not in left_out], channel
        audit = await _stream(stub, segment_id=sid, channel=channel_pb2.CHANNEL_SMS, include_suppressed=True)
        assert [m.profile_id for page in audit for m in page] == people
        # Suppressed people are marked with the reasons that apply on the streamed channel, everyone else unmarked.
        marks = {m.profile_id: list(m.suppression_reasons) for page in audit for m in page if m.suppression_reasons}
        assert marks == {"p03": [r.SUPPRESSION_REASON_OPT_OUT], "p04": [r.SUPPRESSION_REASON_DND_REGISTRY]}
        await _suppress(stub, r.Suppression(profile_id="p03", reason=r.SUPPRESSION_REASON_COMPLAINT))
        audit = await _stream(stub, segment_id=sid, channel=channel_pb2.CHANNEL_EMAIL, include_suppressed=True)
        marks = {m.profile_id: list(m.suppression_reasons) for page in audit for m in page if m.suppression_reasons}
        assert marks == {
            "p03": [r.SUPPRESSION_REASON_OPT_OUT, r.SUPPRESSION_REASON_COMPLAINT],
            "p05": [r.SUPPRESSION_REASON_RECENT_DECLINE],
        }
        # Every channel's suppressions come too, for callers with fallback channels.
        p04 = next(m for page in audit for m in page if m.profile_id == "p04")
        assert [(s.channel, s.reason) for s in p04.suppressions] == [
            (channel_pb2.CHANNEL_SMS, r.SUPPRESSION_REASON_DND_REGISTRY)
        ]
        p03 = next(m for page in audit for m in page if m.profile_id == "p03")
        assert {(s.channel, s.reason) for s in p03.suppressions} == {
            (channel_pb2.CHANNEL_UNSPECIFIED, r.SUPPRESSION_REASON_OPT_OUT),
            (channel_pb2.CHANNEL_UNSPECIFIED, r.SUPPRESSION_REASON_COMPLAINT),
        }
        unmarked = await _stream(stub, segment_id=sid, channel=channel_pb2.CHANNEL_EMAIL)
        assert not any(m.suppression_reasons or m.suppressions for page in unmarked for m in page)

        code, details = await _refused(
            stub.StreamSegmentMembers(api.StreamSegmentMembersRequest(segment_id=sid, version=2)).read()
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("version:")
        code, _ = await _refused(
            stub.StreamSegmentMembers(
                api.StreamSegmentMembersRequest(segment_id=sid, after_profile_id="x" * 200)
            ).read()
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code, _ = await _refused(
            stub.StreamSegmentMembers(
                api.StreamSegmentMembersRequest(segment_id=sid, attribute_names=["Bad Name"])
            ).read()
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code, _ = await _refused(stub.StreamSegmentMembers(api.StreamSegmentMembersRequest(segment_id="seg_no")).read())
        assert code == grpc.StatusCode.NOT_FOUND
