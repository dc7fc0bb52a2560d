"""Suppressions over gRPC on SQLite and PostgreSQL: per-record validation, replace, list, check at a time, remove."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.ids import new_id
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub
from xsell.type.v1 import channel_pb2


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def _check(stub: SegmentsServiceStub, profile_id: str, channel: int, at: datetime | None = None) -> list[str]:
    request = api.CheckSuppressionRequest(profile_id=profile_id, channel=channel)  # type: ignore[arg-type]
    if at is not None:
        request.at_time.CopyFrom(_stamp(at))
    response = await stub.CheckSuppression(request)
    assert response.suppressed == bool(response.suppressions)
    return sorted(r.SuppressionReason.Name(s.reason) for s in response.suppressions)


async def test_whatsapp_needs_a_true_opt_in_at_check_time_and_other_channels_none(
    segments: SegmentsServiceStub,
) -> None:
    defined = await segments.DefineAttributes(
        api.DefineAttributesRequest(
            request_id=new_id("req_"),
            attributes=[r.AttributeDefinition(name="whatsapp_opt_in", type=r.ATTRIBUTE_TYPE_BOOLEAN)],
        )
    )
    assert not defined.errors
    profiles = [r.Profile(profile_id=p) for p in ("wa-yes", "wa-no", "wa-unset")]
    profiles[0].attributes["whatsapp_opt_in"].bool_value = True
    profiles[1].attributes["whatsapp_opt_in"].bool_value = False
    upserted = await segments.UpsertProfiles(api.UpsertProfilesRequest(request_id=new_id("req_"), profiles=profiles))
    assert not upserted.errors

    async def missing(profile_id: str, channel: int) -> str:
        request = api.CheckSuppressionRequest(profile_id=profile_id, channel=channel)  # type: ignore[arg-type]
        response = await segments.CheckSuppression(request)
        assert not response.suppressed  # consent is reported beside suppressions, not as one
        return response.consent_missing

    whatsapp, sms = channel_pb2.CHANNEL_WHATSAPP, channel_pb2.CHANNEL_SMS
    assert await missing("wa-yes", whatsapp) == ""
    assert await missing("wa-no", whatsapp) == "whatsapp_opt_in is not true"
    assert await missing("wa-unset", whatsapp) == "no whatsapp_opt_in attribute"
    assert [await missing(p, sms) for p in ("wa-yes", "wa-no", "wa-unset")] == ["", "", ""]


async def test_an_address_the_person_has_since_replaced_is_reported_and_their_own_is_not(
    segments: SegmentsServiceStub,
) -> None:
    asha, ravi = new_id("asha_"), new_id("ravi_")
    profiles = [r.Profile(profile_id=asha), r.Profile(profile_id=ravi)]
    profiles[0].attributes["email"].string_value = "asha.old@example.in"
    profiles[0].attributes["phone"].string_value = "+919800000001"
    profiles[1].attributes["email"].string_value = "ravi@example.in"
    upserted = await segments.UpsertProfiles(api.UpsertProfilesRequest(request_id=new_id("req_"), profiles=profiles))
    assert not upserted.errors

    async def replaced(profile_id: str, channel: int, address: str) -> str:
        request = api.CheckSuppressionRequest(profile_id=profile_id, channel=channel, address=address)  # type: ignore[arg-type]
        response = await segments.CheckSuppression(request)
        assert not response.suppressed  # a replaced address is not a suppression: the person may be contacted
        return response.address_replaced

    email, sms, whatsapp, push = (
        channel_pb2.CHANNEL_EMAIL,
        channel_pb2.CHANNEL_SMS,
        channel_pb2.CHANNEL_WHATSAPP,
        channel_pb2.CHANNEL_PUSH,
    )
    # Their own address, however the case and spaces were written, is not replaced.
    assert await replaced(asha, email, "asha.old@example.in") == ""
    assert await replaced(asha, email, " Asha.Old@Example.IN ") == ""
    assert await replaced(asha, sms, "+919800000001") == ""

    changed = r.Profile(profile_id=asha)
    changed.attributes["email"].string_value = "asha.new@example.in"
    changed.attributes["phone"].string_value = "+919800000002"
    upserted = await segments.UpsertProfiles(api.UpsertProfilesRequest(request_id=new_id("req_"), profiles=[changed]))
    assert not upserted.errors
    assert await replaced(asha, email, "asha.old@example.in") == (
        "the person's email has been replaced since the message was made"
    )
    assert await replaced(asha, sms, "+919800000001") == (
        "the person's phone has been replaced since the message was made"
    )
    assert await replaced(asha, whatsapp, "+919800000001") != ""
    assert await replaced(asha, email, "asha.new@example.in") == ""
    # Nothing to compare: no address given, no push token on the profile, no such person, a channel without one.
    assert await replaced(asha, email, "") == ""
    assert await replaced(ravi, push, "token-1") == ""
    assert await replaced(new_id("nobody_"), email, "x@example.in") == ""
    assert await replaced(ravi, channel_pb2.CHANNEL_WEBHOOK, "anything") == ""


async def test_suppressions_are_added_replaced_listed_checked_and_lifted(segments: SegmentsServiceStub) -> None:
    in_30_days = datetime.now(UTC) + timedelta(days=30)
    request = api.AddSuppressionsRequest(
        request_id=new_id("req_"),
        suppressions=[
            r.Suppression(profile_id="asha", reason=r.SUPPRESSION_REASON_OPT_OUT, note="ticket 1"),
            r.Suppression(profile_id="asha", channel=channel_pb2.CHANNEL_SMS, reason=r.SUPPRESSION_REASON_DND_REGISTRY),
            r.Suppression(profile_id="", reason=r.SUPPRESSION_REASON_OPT_OUT),
            r.Suppression(
                profile_id="ravi",
                channel=channel_pb2.CHANNEL_EMAIL,
                reason=r.SUPPRESSION_REASON_RECENT_DECLINE,
                expire_time=_stamp(in_30_days),
            ),
            r.Suppression(profile_id="kiran"),
        ],
    )
    added = await segments.AddSuppressions(request)
    assert added.accepted_count == 3
    assert [(e.index, e.field) for e in added.errors] == [
        (2, "suppressions[2].profile_id"),
        (4, "suppressions[4].reason"),
    ]
    assert await segments.AddSuppressions(request) == added

    # The same person, channel and reason again replaces the first one.
    await segments.AddSuppressions(
        api.AddSuppressionsRequest(
            request_id=new_id("req_"),
            suppressions=[r.Suppression(profile_id="asha", reason=r.SUPPRESSION_REASON_OPT_OUT, note="ticket 2")],
        )
    )
    listed: list[r.Suppression] = []
    token = ""
    while True:
        page = await segments.ListSuppressions(api.ListSuppressionsRequest(page_size=2, page_token=token))
        listed.extend(page.suppressions)
        token = page.next_page_token
        if not token:
            break
    assert [(s.profile_id, s.channel, s.reason, s.note) for s in listed] == [
        ("asha", channel_pb2.CHANNEL_UNSPECIFIED, r.SUPPRESSION_REASON_OPT_OUT, "ticket 2"),
        ("asha", channel_pb2.CHANNEL_SMS, r.SUPPRESSION_REASON_DND_REGISTRY, ""),
        ("ravi", channel_pb2.CHANNEL_EMAIL, r.SUPPRESSION_REASON_RECENT_DECLINE, ""),
    ]
    assert listed[2].expire_time.ToDatetime(tzinfo=UTC) == in_30_days
    only_ravi = await segments.ListSuppressions(api.ListSuppressionsRequest(profile_id="ravi"))
    assert [s.profile_id for s in only_ravi.suppressions] == ["ravi"]

    assert await _check(segments, "asha", channel_pb2.CHANNEL_EMAIL) == ["SUPPRESSION_REASON_OPT_OUT"]
    assert await _check(segments, "asha", channel_pb2.CHANNEL_SMS) == [
        "SUPPRESSION_REASON_DND_REGISTRY",
        "SUPPRESSION_REASON_OPT_OUT",
    ]
    assert await _check(segments, "ravi", channel_pb2.CHANNEL_EMAIL) == ["SUPPRESSION_REASON_RECENT_DECLINE"]
    assert await _check(segments, "ravi", channel_pb2.CHANNEL_SMS) == []
    assert await _check(segments, "ravi", channel_pb2.CHANNEL_UNSPECIFIED) == []
    # After its expiry the decline no longer counts.
    assert await _check(segments, "ravi", channel_pb2.CHANNEL_EMAIL, in_30_days + timedelta(seconds=1)) == []
    assert await _check(segments, "nobody", channel_pb2.CHANNEL_EMAIL) == []

    lift = api.RemoveSuppressionRequest(
        request_id=new_id("req_"), profile_id="asha", reason=r.SUPPRESSION_REASON_OPT_OUT
    )
    assert (await segments.RemoveSuppression(lift)).removed
    assert (await segments.RemoveSuppression(lift)).removed  # a retry answers the same
    lift.request_id = new_id("req_")
    assert not (await segments.RemoveSuppression(lift)).removed
    assert await _check(segments, "asha", channel_pb2.CHANNEL_EMAIL) == []


async def test_bad_suppression_requests_are_rejected(segments: SegmentsServiceStub) -> None:
    async def code_of(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        return raised.value.code(), raised.value.details() or ""

    code, details = await code_of(segments.AddSuppressions(api.AddSuppressionsRequest(request_id="r")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("suppressions:")
    code, details = await code_of(
        segments.CheckSuppression(api.CheckSuppressionRequest(channel=channel_pb2.CHANNEL_SMS))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("profile_id:")
    code, details = await code_of(segments.CheckSuppression(api.CheckSuppressionRequest(profile_id="p", channel=42)))  # type: ignore[arg-type]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("channel:")
    code, details = await code_of(
        segments.CheckSuppression(
            api.CheckSuppressionRequest(profile_id="p", channel=channel_pb2.CHANNEL_EMAIL, address="a" * 4097)
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("address: address must be at most 4096")
    code, details = await code_of(
        segments.RemoveSuppression(api.RemoveSuppressionRequest(request_id="r", profile_id="p"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("reason:")
    code, _ = await code_of(segments.ListSuppressions(api.ListSuppressionsRequest(page_token="junk")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await code_of(segments.ListSuppressions(api.ListSuppressionsRequest(page_size=-1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await segments.ListSuppressions(api.ListSuppressionsRequest())).suppressions
