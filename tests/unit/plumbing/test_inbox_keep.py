"""An inbox entry outlives every message that could be redelivered to it."""

from datetime import timedelta

from plumbing.bus import ConsumerSpec
from plumbing.outbox import KEEP_APPLIED
from services import streams


def test_inbox_entries_are_kept_longer_than_any_consumed_stream_keeps_a_message() -> None:
    by_name = {spec.name: spec for spec in streams.ALL_STREAMS}
    consumed = {value.stream for value in vars(streams).values() if isinstance(value, ConsumerSpec)}
    assert consumed, "the durable consumers are declared in services.streams"
    for name in consumed:
        assert timedelta(seconds=by_name[name].max_age_seconds) < KEEP_APPLIED, name
