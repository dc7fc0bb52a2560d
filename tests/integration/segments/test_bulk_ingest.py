"""The NATS bulk ingest path: batches applied like IngestEvents, answered with BulkIngestCompleted, applied once."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg
from sqlalchemy import func, select

from plumbing.bus import MSG_ID_HEADER, Bus, Delivery, PermanentError
from plumbing.db import Database
from plumbing.errors import InvalidArgument
from plumbing.ids import new_id
from services import streams
from services.segments import store
from services.segments.consumers import ProfileActivityConsumers
from tests.integration.segments.activity_consumers import activity_consumers
from tests.integration.segments.approval import publish
from tests.unit.segments.builders import attr, money, n, s
from tests.waiting import eventually
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.segments.v1 import events_pb2
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub
from xsell.type.v1 import channel_pb2


def _event(profile_id: str, days_ago: float, name: str = "transaction_success", **properties: r.Value) -> r.Event:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(days=days_ago))
    return r.Event(event_id=new_id("e_"), profile_id=profile_id, name=name, occur_time=stamp, properties=properties)


class Subscriber:
    """Collects the messages core NATS delivers on one subject while the test runs."""

    def __init__(self) -> None:
        self.messages: list[Msg] = []

    async def on_message(self, msg: Msg) -> None:
        self.messages.append(msg)

    def completed(self, request_id: str) -> list[events_pb2.BulkIngestCompleted]:
        decoded = [events_pb2.BulkIngestCompleted.FromString(m.data) for m in self.messages]
        return [c for c in decoded if c.request_id == request_id]


@pytest.fixture
async def subscribe(nats_bus: Bus) -> AsyncIterator[object]:
    subscriptions = []

    async def start(subject: str) -> Subscriber:
        subscriber = Subscriber()
        subscriptions.append(await nats_bus.nc.subscribe(subject, cb=subscriber.on_message))
        await nats_bus.nc.flush()
        return subscriber

    yield start
    for subscription in subscriptions:
        await subscription.unsubscribe()


async def _feed(bus: Bus, payload: bytes) -> None:
    await bus.js.publish(streams.INGEST_EVENTS, payload, headers={MSG_ID_HEADER: new_id("feed_")})


async def test_a_bulk_batch_is_applied_answered_and_a_resent_batch_changes_nothing(
    segments: SegmentsServiceStub, nats_bus: Bus, subscribe
) -> None:  # type: ignore[no-untyped-def]
    completed = await subscribe(streams.BULK_INGEST_COMPLETED)
    changes = await subscribe(streams.MEMBERSHIP_CHANGED)
    created = await segments.CreateSegment(
        api.CreateSegmentRequest(
            request_id=new_id("req_"),
            segment=r.Segment(display_name="multi-AMC", rule=attr("number_of_amcs", "GREATER_OR_EQUAL", n(2))),
        )
    )
    segment_id = created.segment.segment_id
    await publish(segments, segment_id)
    person = f"bulk-{new_id()}"
    future = _event(person, -1)
    batch = api.IngestEventsRequest(
        request_id=new_id("feed_"),
        events=[
            _event(person, 3, amc=s("HDFC"), amount=money(10_000_00)),
            future,
            _event(person, 2, amc=s("SBI"), amount=money(20_000_00)),
        ],
    )
    await _feed(nats_bus, batch.SerializeToString())
    [answer] = await eventually(lambda: _ready(completed.completed(batch.request_id)))
    assert answer.accepted_count == 2
    assert [(e.index, e.record_id, e.field) for e in answer.errors] == [
        (1, future.event_id, "events[1].occur_time"),
    ]
    profile = (await segments.GetProfile(api.GetProfileRequest(profile_id=person))).profile
    assert profile.attributes["number_of_amcs"] == n(2)
    assert profile.attributes["invested_last_90_days"] == money(30_000_00)
    checked = await segments.CheckMembership(api.CheckMembershipRequest(segment_id=segment_id, profile_id=person))
    assert checked.is_member
    entered = lambda: [m for m in changes.messages if person.encode() in m.data]  # noqa: E731

    # The feed sends the same batch again (a new message, the same request_id): the same answer, no change.
    await _feed(nats_bus, batch.SerializeToString())
    answers = await eventually(lambda: _ready(completed.completed(batch.request_id), count=2))
    assert answers[1].accepted_count == 2 and list(answers[1].errors) == list(answer.errors)
    assert answers[1].event_id != answer.event_id
    again = (await segments.GetProfile(api.GetProfileRequest(profile_id=person))).profile
    assert dict(again.attributes) == dict(profile.attributes)
    await eventually(lambda: _ready(entered()))
    assert len(entered()) == 1

    # The gRPC path shares the request_id: it returns the bulk path's answer and changes nothing.
    replay = await segments.IngestEvents(batch)
    assert replay.accepted_count == 2 and list(replay.errors) == list(answer.errors)


async def test_a_bulk_profile_dump_is_upserted_answered_and_shares_its_request_id_with_grpc(
    segments: SegmentsServiceStub, nats_bus: Bus, subscribe
) -> None:  # type: ignore[no-untyped-def]
    completed = await subscribe(streams.BULK_INGEST_COMPLETED)
    created = await segments.CreateSegment(
        api.CreateSegmentRequest(
            request_id=new_id("req_"),
            segment=r.Segment(display_name="Platinum", rule=attr("customer_tier", "EQUALS", s("Platinum"))),
        )
    )
    segment_id = created.segment.segment_id
    await publish(segments, segment_id)
    asha, ravi = f"dump-{new_id()}", f"dump-{new_id()}"
    people = [r.Profile(profile_id=asha), r.Profile(profile_id=ravi), r.Profile(profile_id="")]
    people[0].attributes["customer_tier"].string_value = "Platinum"
    people[0].attributes["email"].string_value = "asha@example.in"
    people[1].attributes["customer_tier"].string_value = "Gold"
    dump = api.UpsertProfilesRequest(request_id=new_id("dump_"), profiles=people)
    await nats_bus.js.publish(streams.INGEST_PROFILES, dump.SerializeToString(), headers={MSG_ID_HEADER: new_id("f_")})

    [answer] = await eventually(lambda: _ready(completed.completed(dump.request_id)))
    assert (answer.subject, answer.accepted_count) == (streams.INGEST_PROFILES, 2)
    assert [(e.index, e.field) for e in answer.errors] == [(2, "profiles[2].profile_id")]
    stored = (await segments.GetProfile(api.GetProfileRequest(profile_id=asha))).profile
    assert stored.attributes["email"] == s("asha@example.in")
    # Memberships follow, as for UpsertProfiles.
    checked = await segments.CheckMembership(api.CheckMembershipRequest(segment_id=segment_id, profile_id=asha))
    assert checked.is_member
    other = await segments.CheckMembership(api.CheckMembershipRequest(segment_id=segment_id, profile_id=ravi))
    assert not other.is_member

    # The CRM changes Asha since; the same dump again over gRPC is the first answer and applies nothing: the
    # request_id names one batch, whichever path brought it.
    promoted = r.Profile(profile_id=asha)
    promoted.attributes["email"].string_value = "asha.new@example.in"
    await segments.UpsertProfiles(api.UpsertProfilesRequest(request_id=new_id("req_"), profiles=[promoted]))
    replay = await segments.UpsertProfiles(dump)
    assert replay.accepted_count == 2 and list(replay.errors) == list(answer.errors)
    kept = (await segments.GetProfile(api.GetProfileRequest(profile_id=asha))).profile
    assert kept.attributes["email"] == s("asha.new@example.in")


async def _ready(items: list, count: int = 1) -> list | None:  # type: ignore[type-arg]
    return items if len(items) >= count else None


async def test_malformed_batches_are_dead_lettered(segments: SegmentsServiceStub, nats_bus: Bus, subscribe) -> None:  # type: ignore[no-untyped-def]
    dead = await subscribe(streams.SEGMENTS_BULK_INGEST.dead_letter_subject)
    garbage = b"\xff\xfe not a protobuf " + new_id().encode()
    nameless = api.IngestEventsRequest(events=[_event("p", 1)]).SerializeToString()
    await _feed(nats_bus, garbage)
    await _feed(nats_bus, nameless)
    await eventually(lambda: _ready([m for m in dead.messages if m.data in (garbage, nameless)], count=2))


@pytest.fixture
async def handlers(database_url: str) -> AsyncIterator[tuple[Database, ProfileActivityConsumers]]:
    async with activity_consumers(database_url) as made:
        yield made


async def _counts(db: Database) -> tuple[int, int, int]:
    async with db.transaction() as session:
        events = (await session.execute(select(func.count()).select_from(store.events))).scalar_one()
        outbox = (await session.execute(select(func.count()).select_from(store.outbox))).scalar_one()
        attributes = (await session.execute(select(func.count()).select_from(store.profile_attributes))).scalar_one()
    return int(events), int(outbox), int(attributes)


async def test_a_redelivered_message_is_skipped_by_the_inbox(
    handlers: tuple[Database, ProfileActivityConsumers],
) -> None:
    db, consumers = handlers
    batch = api.IngestEventsRequest(
        request_id="feed-1", events=[_event("p1", 1, amc=s("HDFC")), _event("p2", 1, amc=s("SBI"))]
    )
    delivery = Delivery(message_id="msg-1", subject=streams.INGEST_EVENTS, num_delivered=1)
    await consumers.on_bulk_ingest(batch, delivery)
    first = await _counts(db)
    assert first[0] == 2 and first[1] == 1
    await consumers.on_bulk_ingest(batch, Delivery(message_id="msg-1", subject=streams.INGEST_EVENTS, num_delivered=2))
    assert await _counts(db) == first
    # The same request_id with other events can never apply: dead-lettered, nothing written.
    changed = api.IngestEventsRequest(request_id="feed-1", events=[_event("p3", 1)])
    with pytest.raises(PermanentError, match="already used"):
        await consumers.on_bulk_ingest(changed, Delivery("msg-2", streams.INGEST_EVENTS, 1))
    assert await _counts(db) == first


async def test_concurrent_batches_of_one_person_keep_the_computed_value_exact(
    handlers: tuple[Database, ProfileActivityConsumers],
) -> None:
    db, consumers = handlers
    amcs = [f"AMC {i}" for i in range(6)]
    await asyncio.gather(
        *(
            consumers.on_bulk_ingest(
                api.IngestEventsRequest(request_id=f"feed-{i}", events=[_event("p1", 1, amc=s(amc))]),
                Delivery(f"msg-{i}", streams.INGEST_EVENTS, 1),
            )
            for i, amc in enumerate(amcs)
        )
    )
    async with db.transaction() as session:
        values = await store.attributes_of(session, ["p1"], ["number_of_amcs"])
    assert values["p1"]["number_of_amcs"].number == len(amcs)


async def test_an_engagement_whose_time_is_no_time_is_refused_alone_and_its_fetch_recorded(
    handlers: tuple[Database, ProfileActivityConsumers],
) -> None:
    db, consumers = handlers

    def opened(profile_id: str, seconds: int) -> channel_events.EngagementRecorded:
        event = channel_events.EngagementRecorded(
            event_id=new_id("evt_"),
            campaign_id="CSELL-NOV-T06-0001",
            channel=channel_pb2.CHANNEL_EMAIL,
            kind=channel_resources.ENGAGEMENT_KIND_OPENED,
            profile_id=profile_id,
        )
        event.occur_time.seconds = seconds
        return event

    now = int(datetime.now(UTC).timestamp())
    outcomes = await consumers.on_engagement_batch(
        [(opened("p-far", 2**40), Delivery(new_id(), "s", 1)), (opened("p-ok", now - 60), Delivery(new_id(), "s", 1))]
    )
    assert isinstance(outcomes[0], InvalidArgument) and "occur_time" in str(outcomes[0])
    assert outcomes[1] is None
    async with db.snapshot() as session:
        names = (await session.execute(select(store.events.c.profile_id))).scalars().all()
    assert names == ["p-ok"]
