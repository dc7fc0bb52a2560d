"""Suppression rules: validation per record, which channels a suppression covers, and expiry."""

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from services.segments import suppressions
from services.segments.suppressions import EVERY_CHANNEL, Suppression
from xsell.segments.v1 import resources_pb2 as r
from xsell.type.v1 import channel_pb2

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_global_suppressions_cover_every_channel_and_channel_ones_only_theirs() -> None:
    held = [
        Suppression("p", EVERY_CHANNEL, "OPT_OUT", None, ""),
        Suppression("p", "SMS", "DND_REGISTRY", None, ""),
    ]
    assert [s.reason for s in suppressions.in_force(held, channel_pb2.CHANNEL_UNSPECIFIED, NOW)] == ["OPT_OUT"]
    assert [s.reason for s in suppressions.in_force(held, channel_pb2.CHANNEL_EMAIL, NOW)] == ["OPT_OUT"]
    assert [s.reason for s in suppressions.in_force(held, channel_pb2.CHANNEL_SMS, NOW)] == [
        "OPT_OUT",
        "DND_REGISTRY",
    ]


def test_an_expired_suppression_no_longer_counts() -> None:
    lapsing = Suppression("p", "EMAIL", "RECENT_DECLINE", NOW + timedelta(days=30), "")
    assert suppressions.in_force([lapsing], channel_pb2.CHANNEL_EMAIL, NOW) == [lapsing]
    assert suppressions.in_force([lapsing], channel_pb2.CHANNEL_EMAIL, NOW + timedelta(days=30)) == []
    assert suppressions.in_force([lapsing], channel_pb2.CHANNEL_EMAIL, NOW + timedelta(days=31)) == []


def test_validation_keeps_good_records_rejects_bad_ones_and_the_last_duplicate_wins() -> None:
    given = [
        r.Suppression(profile_id="a", reason=r.SUPPRESSION_REASON_OPT_OUT, note="first"),
        r.Suppression(profile_id="", reason=r.SUPPRESSION_REASON_OPT_OUT),
        r.Suppression(profile_id="b"),
        r.Suppression(profile_id="c", reason=r.SUPPRESSION_REASON_COMPLAINT, expire_time=_stamp(NOW)),
        r.Suppression(profile_id="d", reason=r.SUPPRESSION_REASON_OPT_OUT, channel=99),  # type: ignore[arg-type]
        r.Suppression(profile_id="a", reason=r.SUPPRESSION_REASON_OPT_OUT, note="second"),
        r.Suppression(profile_id="f", reason=r.SUPPRESSION_REASON_OPT_OUT, expire_time=Timestamp(seconds=2**40)),
        r.Suppression(
            profile_id="e",
            channel=channel_pb2.CHANNEL_WHATSAPP,
            reason=r.SUPPRESSION_REASON_KYC_INCOMPLETE,
            expire_time=_stamp(NOW + timedelta(days=1)),
        ),
    ]
    accepted, problems = suppressions.validate(given, NOW)
    assert [(p.index, p.field) for p in problems] == [
        (1, "suppressions[1].profile_id"),
        (2, "suppressions[2].reason"),
        (3, "suppressions[3].expire_time"),
        (4, "suppressions[4].channel"),
        (6, "suppressions[6].expire_time"),  # past year 9999: this record's problem, not the batch's INTERNAL
    ]
    assert "OPT_OUT" in problems[1].reason
    assert "to 9999-12-31T23:59:59Z" in problems[4].reason
    assert accepted == [
        Suppression("a", EVERY_CHANNEL, "OPT_OUT", None, "second"),
        Suppression("e", "WHATSAPP", "KYC_INCOMPLETE", NOW + timedelta(days=1), ""),
    ]


def test_channels_and_reasons_round_trip_through_their_stored_keys() -> None:
    for channel in channel_pb2.Channel.values():
        assert suppressions.channel_number(suppressions.channel_key(channel)) == channel
    for reason in r.SuppressionReason.values():
        if reason != r.SUPPRESSION_REASON_UNSPECIFIED:
            assert suppressions.reason_number(suppressions.reason_key(reason)) == reason


def test_a_profile_id_or_note_no_system_writes_is_that_records_problem() -> None:
    """A NUL failed the whole batch on PostgreSQL with its good records; spaces or a line break suppressed no one."""
    given = [
        r.Suppression(profile_id="a", reason=r.SUPPRESSION_REASON_OPT_OUT),
        r.Suppression(profile_id="b\x00", reason=r.SUPPRESSION_REASON_OPT_OUT),
        r.Suppression(profile_id="  ", reason=r.SUPPRESSION_REASON_OPT_OUT),
        r.Suppression(profile_id="c\n", reason=r.SUPPRESSION_REASON_OPT_OUT),
        r.Suppression(profile_id="d", reason=r.SUPPRESSION_REASON_OPT_OUT, note="called\x00"),
    ]
    accepted, problems = suppressions.validate(given, NOW)
    assert [(p.index, p.field) for p in problems] == [
        (1, "suppressions[1].profile_id"),
        (2, "suppressions[2].profile_id"),
        (3, "suppressions[3].profile_id"),
        (4, "suppressions[4].note"),
    ]
    assert [a.profile_id for a in accepted] == ["a"]
