"""The operator's dead-letter tool against a real NATS server: list with the reason, replay once the cause is fixed,
and only the durable that dead-lettered the message applies it again (others' inboxes skip it)."""

import asyncio
import sys
from pathlib import Path

import pytest
import structlog
from opentelemetry import trace
from sqlalchemy import MetaData

from plumbing.bus import (
    DLQ_SEQUENCE_HEADER,
    DLQ_STREAM_HEADER,
    DLQ_SUBJECT_HEADER,
    Bus,
    Consumer,
    ConsumerSpec,
    Delivery,
    PermanentError,
    StreamSpec,
)
from plumbing.db import Database
from plumbing.ids import new_id
from plumbing.outbox import Inbox, inbox_table
from services import dead_letters
from services.streams import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM
from tests.waiting import eventually
from xsell.segments.v1.events_pb2 import SegmentPublished

tracer = trace.get_tracer("test")
SUBJECT = "test.replay.segment_published"
CONSUMED = {"attribution-test": ("TEST_REPLAY", SUBJECT), "campaigns-test": ("TEST_REPLAY", SUBJECT)}
"""The test's durables, and the stream and subject each consumes: the only ones their dead letters are replayed from."""


async def _dead_count(bus: Bus, durable: str) -> int:
    return len(await dead_letters.dead_letters(bus, durable))


async def test_a_dead_letter_is_listed_replayed_and_applied_once_by_its_durable_only(
    nats_bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    await nats_bus.ensure_streams([StreamSpec("TEST_REPLAY", ("test.replay.>",)), DEAD_LETTER_STREAM])
    metadata = MetaData()
    inbox = Inbox(inbox_table(metadata))
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}")
    async with db.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    applied: dict[str, list[str]] = {"attribution-test": [], "campaigns-test": []}
    broken = True

    def handler_for(durable: str):  # type: ignore[no-untyped-def]
        async def handle(event: SegmentPublished, delivery: Delivery) -> None:
            if durable == "campaigns-test" and broken:
                raise PermanentError(f"segment {event.segment_id} refers to a campaign this version cannot read")
            async with db.transaction() as session:
                if await inbox.claim(session, durable, delivery.message_id):
                    applied[durable].append(event.segment_id)

        return handle

    consumers = [
        Consumer(
            nats_bus,
            ConsumerSpec("TEST_REPLAY", durable, SUBJECT, f"{DEAD_LETTER_PREFIX}.{durable}"),
            SegmentPublished,
            handler_for(durable),
            tracer,
        )
        for durable in applied
    ]
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        message = SegmentPublished(segment_id="seg_sip_only", version=3).SerializeToString()
        with structlog.testing.capture_logs() as logs:
            await nats_bus.js.publish(SUBJECT, message, headers={"Nats-Msg-Id": "published-1"})
            await eventually(lambda: _dead_count(nats_bus, "campaigns-test"))
            await eventually(
                lambda: asyncio.sleep(0, [line for line in logs if line["event"] == "message_dead_lettered"])
            )
        # The error line says what to do, with the very commands this test runs next (it said only the reason).
        (dead_lettered,) = [line for line in logs if line["event"] == "message_dead_lettered"]
        assert "python -m services.dead_letters list --durable campaigns-test" in dead_lettered["fix"]
        assert "python -m services.dead_letters replay --durable campaigns-test --seq" in dead_lettered["fix"]
        await eventually(lambda: asyncio.sleep(0, applied["attribution-test"] == ["seg_sip_only"]))

        (letter,) = await dead_letters.dead_letters(nats_bus, "campaigns-test")
        assert letter.original_subject == SUBJECT
        assert letter.original_message_id == "published-1"
        assert "cannot read" in letter.reason

        # The operator's CLI lists it (the same process a runbook step runs).
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.dead_letters",
            "--nats-url",
            nats_url,
            "list",
            "--durable",
            "campaigns-test",
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await process.communicate()
        assert process.returncode == 0
        listed = stdout.decode()
        assert "cannot read" in listed and str(letter.seq) in listed

        broken = False
        assert await dead_letters.replay(nats_bus, "campaigns-test", consumed=CONSUMED) == [letter.seq]
        await eventually(lambda: asyncio.sleep(0, applied["campaigns-test"] == ["seg_sip_only"]))
        await asyncio.sleep(0.5)  # give the other durable the time to (wrongly) apply the replay too
        assert applied == {"attribution-test": ["seg_sip_only"], "campaigns-test": ["seg_sip_only"]}
        assert await dead_letters.dead_letters(nats_bus, "campaigns-test") == []
    finally:
        for consumer in consumers:
            await consumer.stop()
        await asyncio.gather(*tasks)
        await db.dispose()


async def test_a_replay_republishes_the_stored_original_never_the_letters_copy(nats_bus: Bus) -> None:
    """Whoever may write a dead-letter subject chooses the letter's headers and payload: a replay takes the message
    the letter names from the durable's own stream, and refuses a letter naming none, another stream or another
    subject's message; a refused letter stays."""
    await nats_bus.ensure_streams([DEAD_LETTER_STREAM, StreamSpec("TEST_REPLAY", ("test.replay.>",))])
    genuine = await nats_bus.js.publish(SUBJECT, b"genuine", headers={"Nats-Msg-Id": "genuine-1"})
    other = await nats_bus.js.publish("test.replay.other", b"other", headers={"Nats-Msg-Id": "other-1"})

    async def letter(payload: bytes, **where: str) -> None:
        headers = {"Nats-Msg-Id": f"dlq:campaigns-test:{new_id()}", DLQ_SUBJECT_HEADER: SUBJECT, **where}
        await nats_bus.js.publish(f"{DEAD_LETTER_PREFIX}.campaigns-test", payload, headers=headers)

    refusals = [
        ({}, "does not name where its original is stored"),
        ({DLQ_STREAM_HEADER: "XSELL_CAMPAIGNS", DLQ_SEQUENCE_HEADER: "1"}, "names stream 'XSELL_CAMPAIGNS'"),
        ({DLQ_STREAM_HEADER: "TEST_REPLAY", DLQ_SEQUENCE_HEADER: str(other.seq)}, "a 'test.replay.other' message"),
        ({DLQ_STREAM_HEADER: "TEST_REPLAY", DLQ_SEQUENCE_HEADER: "999"}, "is no longer in the stream"),
    ]
    for where, refusal in refusals:
        await letter(b"forged", **where)
        with pytest.raises(ValueError, match=refusal):
            await dead_letters.replay(nats_bus, "campaigns-test", consumed=CONSUMED)
        [kept] = await dead_letters.dead_letters(nats_bus, "campaigns-test")
        await nats_bus.js.delete_msg(DEAD_LETTER_STREAM.name, kept.seq)

    await letter(b"forged-payload", **{DLQ_STREAM_HEADER: "TEST_REPLAY", DLQ_SEQUENCE_HEADER: str(genuine.seq)})
    assert len(await dead_letters.replay(nats_bus, "campaigns-test", consumed=CONSUMED)) == 1
    last = await nats_bus.js.get_last_msg("TEST_REPLAY", SUBJECT)
    assert last.data == b"genuine" and last.headers is not None and last.headers["Xsell-Replay-Of"] == "genuine-1"
    assert await dead_letters.dead_letters(nats_bus, "campaigns-test") == []
    with pytest.raises(ValueError, match="campaigns-test is not a durable of xsell's"):
        await dead_letters.replay(nats_bus, "campaigns-test")


async def test_a_letter_whose_id_was_taken_first_is_written_all_the_same(nats_bus: Bus) -> None:
    """Every durable's letters share the dead-letter stream and its duplicate window, and a letter's id is
    `dlq:<durable>:<message id>`: one published first under that id, on any dead-letter subject, made the real letter
    vanish while its message was terminated."""
    await nats_bus.ensure_streams([StreamSpec("TEST_REPLAY", ("test.replay.>",)), DEAD_LETTER_STREAM])
    durable = "campaigns-test"
    taken = {"Nats-Msg-Id": f"dlq:{durable}:published-2"}
    await nats_bus.js.publish(f"{DEAD_LETTER_PREFIX}.attribution-test", b"first", headers=taken)

    async def refuse(event: SegmentPublished, delivery: Delivery) -> None:
        raise PermanentError("this version cannot read it")

    spec = ConsumerSpec("TEST_REPLAY", durable, SUBJECT, f"{DEAD_LETTER_PREFIX}.{durable}")
    consumer = Consumer(nats_bus, spec, SegmentPublished, refuse, tracer)
    running = asyncio.create_task(consumer.run())
    try:
        message = SegmentPublished(segment_id="seg_taken").SerializeToString()
        await nats_bus.js.publish(SUBJECT, message, headers={"Nats-Msg-Id": "published-2"})
        [letter] = await eventually(lambda: dead_letters.dead_letters(nats_bus, durable))
        assert letter.original_message_id == "published-2" and "cannot read" in letter.reason
    finally:
        await consumer.stop()
        await running


async def test_replaying_a_seq_that_is_not_there_names_it(nats_bus: Bus) -> None:
    await nats_bus.ensure_streams([DEAD_LETTER_STREAM])
    with pytest.raises(ValueError, match=r"seq \[99\]; `list --durable campaigns-test`"):
        await dead_letters.replay(nats_bus, "campaigns-test", [99], consumed=CONSUMED)
