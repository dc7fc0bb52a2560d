"""Bus.publish_batch: every message acknowledged by the stream, duplicates reported, refusals raised."""

import pytest
from nats.js import api

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
    with pytest.raises(PublishFailed, match="503") as refused:
        await nats_bus.publish_batch(messages)
    assert refused.value.stored == 1  # the first was stored: only the second need go again
    # The batch can be published again once the subject has a stream; the stored one is a duplicate.
    await nats_bus.ensure_streams([StreamSpec(f"NOSTREAM_{suffix}".upper(), (f"nostream.{suffix}",))])
    assert await nats_bus.publish_batch(messages) == [True, False]


async def test_a_refusal_in_the_middle_counts_the_head_stored_and_not_what_the_stream_took_after_it(
    nats_bus: Bus,
) -> None:
    """A stream at its byte limit refuses a large message and may still take a smaller one after it: `stored` is the
    head before the first refusal, which a caller may take as published, and the failure waits for every answer."""
    suffix = await _stream(nats_bus)
    stream = f"BATCH_{suffix}".upper()
    config = (await nats_bus.js.stream_info(stream)).config
    config.max_bytes, config.discard = 20_000, api.DiscardPolicy.NEW
    await nats_bus.js.update_stream(config)
    subject = f"batch.{suffix}.event"
    sizes = [1_000, 1_000, 30_000, 1_000]
    messages = [(subject, b"x" * size, {MSG_ID_HEADER: f"{suffix}-{n}"}) for n, size in enumerate(sizes)]

    with pytest.raises(PublishFailed, match="maximum bytes exceeded") as refused:
        await nats_bus.publish_batch(messages)
    assert refused.value.stored == 2
    assert (await nats_bus.js.stream_info(stream)).state.messages == 3  # the small one after it was taken

    config.max_bytes = -1
    await nats_bus.js.update_stream(config)
    assert await nats_bus.publish_batch(messages[2:]) == [False, True]


async def test_an_empty_batch_publishes_nothing(nats_bus: Bus) -> None:
    assert await nats_bus.publish_batch([]) == []
