"""Bus.publish_batch: every message acknowledged by the stream, duplicates reported, refusals raised."""

import pytest

from plumbing.bus import MSG_ID_HEADER, Bus, PublishFailed, StreamSpec
from plumbing.ids import new_id


async def _stream(nats_bus: Bus) -> str:
    suffix = new_id("b").lower()
    await nats_bus.ensure_streams([StreamSpec(f"BATCH_{suffix}".upper(), (f"batch.{suffix}.>",))])
    return suffix


async def test_every_message_is_stored_in_order_and_a_repeated_id_is_reported_as_a_duplicate(nats_bus: Bus) -> None:
    suffix = await _stream(nats_bus)
    subject = f"batch.{suffix}.event"
    messages = [(subject, f"payload {n}".encode(), {MSG_ID_HEADER: f"{suffix}-{n}"}) for n in range(250)]

    assert await nats_bus.publish_batch(messages) == [False] * 250
    # The relay publishing a batch again after a crash: ids 0-9 are stored already, 250-259 are new.
    again = messages[:10] + [
        (subject, f"payload {n}".encode(), {MSG_ID_HEADER: f"{suffix}-{n}"}) for n in range(250, 260)
    ]
    assert await nats_bus.publish_batch(again) == [True] * 10 + [False] * 10

    info = await nats_bus.js.stream_info(f"BATCH_{suffix}".upper())
    assert info.state.messages == 260
    first, last = (
        await nats_bus.js.get_msg(f"BATCH_{suffix}".upper(), 1),
        await nats_bus.js.get_msg(f"BATCH_{suffix}".upper(), 260),
    )
    assert (first.data, last.data) == (b"payload 0", b"payload 259")


async def test_a_subject_no_stream_takes_fails_the_batch_and_names_the_status(nats_bus: Bus) -> None:
    suffix = await _stream(nats_bus)
    messages = [
        (f"batch.{suffix}.event", b"kept", {MSG_ID_HEADER: f"{suffix}-ok"}),
        (f"nostream.{suffix}", b"lost", {MSG_ID_HEADER: f"{suffix}-lost"}),
    ]
    with pytest.raises(PublishFailed, match="503"):
        await nats_bus.publish_batch(messages)
    # The batch can be published again once the subject has a stream; the stored one is a duplicate.
    await nats_bus.ensure_streams([StreamSpec(f"NOSTREAM_{suffix}".upper(), (f"nostream.{suffix}",))])
    assert await nats_bus.publish_batch(messages) == [True, False]


async def test_an_empty_batch_publishes_nothing(nats_bus: Bus) -> None:
    assert await nats_bus.publish_batch([]) == []
