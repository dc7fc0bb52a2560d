"""BatchGetProfiles on SQLite and PostgreSQL: many people's attributes and suppressions in force, in one call."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.ids import new_id
from services.segments.api import BATCH_GET_PROFILES_MAX
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub
from xsell.type.v1 import channel_pb2


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _text(value: str) -> r.Value:
    return r.Value(string_value=value)


async def _seed(segments: SegmentsServiceStub, now: datetime) -> None:
    upserted = await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[
                r.Profile(
                    profile_id="asha",
                    attributes={
                        "email": _text("asha@example.in"),
                        "first_name": _text("Asha"),
                        "fund_categories": r.Value(string_set_value=r.StringSet(values=["Debt", "Equity"])),
                    },
                ),
                r.Profile(profile_id="ravi", attributes={"first_name": _text("Ravi")}),
                r.Profile(profile_id="kiran", attributes={"first_name": _text("Kiran")}),
            ],
        )
    )
    assert upserted.accepted_count == 3
    added = await segments.AddSuppressions(
        api.AddSuppressionsRequest(
            request_id=new_id("req_"),
            suppressions=[
                r.Suppression(profile_id="asha", reason=r.SUPPRESSION_REASON_OPT_OUT, note="ticket 1"),
                r.Suppression(
                    profile_id="asha", channel=channel_pb2.CHANNEL_SMS, reason=r.SUPPRESSION_REASON_DND_REGISTRY
                ),
                # Lapses in an hour: in force now, not tomorrow.
                r.Suppression(
                    profile_id="ravi",
                    channel=channel_pb2.CHANNEL_EMAIL,
                    reason=r.SUPPRESSION_REASON_RECENT_DECLINE,
                    expire_time=_stamp(now + timedelta(hours=1)),
                ),
            ],
        )
    )
    assert added.accepted_count == 3


async def test_many_profiles_come_back_with_their_attributes_and_the_suppressions_in_force(
    segments: SegmentsServiceStub,
) -> None:
    now = datetime.now(UTC)
    await _seed(segments, now)

    response = await segments.BatchGetProfiles(
        api.BatchGetProfilesRequest(profile_ids=["ravi", "nobody", "asha", "kiran", "ravi", "ghost"])
    )

    assert [p.profile.profile_id for p in response.profiles] == ["ravi", "asha", "kiran"]
    assert list(response.missing_profile_ids) == ["nobody", "ghost"]
    ravi, asha, kiran = response.profiles
    # The same attributes GetProfile returns, person by person.
    for found in response.profiles:
        alone = (await segments.GetProfile(api.GetProfileRequest(profile_id=found.profile.profile_id))).profile
        assert dict(found.profile.attributes) == dict(alone.attributes)
        assert found.profile.update_time == alone.update_time
    assert sorted(asha.profile.attributes["fund_categories"].string_set_value.values) == ["Debt", "Equity"]
    assert [(s.channel, s.reason, s.note) for s in asha.suppressions] == [
        (channel_pb2.CHANNEL_UNSPECIFIED, r.SUPPRESSION_REASON_OPT_OUT, "ticket 1"),
        (channel_pb2.CHANNEL_SMS, r.SUPPRESSION_REASON_DND_REGISTRY, ""),
    ]
    assert [(s.profile_id, s.channel, s.reason) for s in ravi.suppressions] == [
        ("ravi", channel_pb2.CHANNEL_EMAIL, r.SUPPRESSION_REASON_RECENT_DECLINE)
    ]
    assert ravi.suppressions[0].HasField("expire_time")
    assert list(kiran.suppressions) == []

    # At a later moment the expired suppression is no longer in force; the others still are.
    tomorrow = await segments.BatchGetProfiles(
        api.BatchGetProfilesRequest(profile_ids=["asha", "ravi"], at_time=_stamp(now + timedelta(days=1)))
    )
    assert [len(p.suppressions) for p in tomorrow.profiles] == [2, 0]

    assert await segments.BatchGetProfiles(api.BatchGetProfilesRequest()) == api.BatchGetProfilesResponse()


async def _refused(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


async def test_too_many_or_empty_ids_are_refused_naming_the_field(segments: SegmentsServiceStub) -> None:
    code, details = await _refused(
        segments.BatchGetProfiles(
            api.BatchGetProfilesRequest(profile_ids=[f"p{i}" for i in range(BATCH_GET_PROFILES_MAX + 1)])
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("profile_ids") and f"at most {BATCH_GET_PROFILES_MAX}" in details

    code, details = await _refused(segments.BatchGetProfiles(api.BatchGetProfilesRequest(profile_ids=["asha", ""])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("profile_ids[1]")

    # The bound itself is allowed.
    full = await segments.BatchGetProfiles(
        api.BatchGetProfilesRequest(profile_ids=[f"p{i}" for i in range(BATCH_GET_PROFILES_MAX)])
    )
    assert len(full.missing_profile_ids) == BATCH_GET_PROFILES_MAX
