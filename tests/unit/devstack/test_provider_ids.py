"""The provider sinks' message ids do not repeat from one `make run` to the next."""

from aiohttp import web

from devstack.provider_sinks import ProviderSink


async def _never(_sink: ProviderSink, _request: web.Request, _body: bytes) -> tuple[str | None, object, object]:
    raise AssertionError("not called")


def test_a_new_sinks_ids_are_not_the_last_ones() -> None:
    """Each run's sink numbered its ids from 1: the second run's SMS had the first run's SmsSids, the gateway records a
    callback once per (SmsSid, status), and channels refused the second run's receipts (its SMS stayed SENT)."""
    first, second = ProviderSink("sms", _never), ProviderSink("sms", _never)  # type: ignore[arg-type]
    assert first.next_id() != second.next_id()
