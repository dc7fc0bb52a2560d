"""Pipelined SMTP against a relay scripted in memory: replies in pieces, refusals and losses classified."""

import asyncio
from collections.abc import Callable

import pytest

from services.channels.delivery import ProviderOutcomeUnknown, ProviderRejected, ProviderUnavailable
from services.channels.smtp import SmtpSender, _Envelope, _Pipeline, _pipelined_transaction, _SessionLost, xtext

MESSAGE = b"Subject: offer\r\n\r\n.leading dot\r\nbody\r\n"
ENVELOPE = _Envelope("offers@bank.in", "priya@example.in")


class ScriptedRelay(asyncio.Transport):
    """A transport whose relay answers each write with the chunks `answer` gives for it (or closes)."""

    def __init__(self, answer: Callable[[bytes], list[bytes] | None]) -> None:
        super().__init__()
        self.answer = answer
        self.written: list[bytes] = []
        self.closed = False
        self.pipeline: _Pipeline | None = None

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(bytes(data))
        chunks = self.answer(bytes(data))
        loop = asyncio.get_running_loop()
        if chunks is None:
            loop.call_soon(self._lose)
            return
        for chunk in chunks:
            # Each chunk in a turn of its own, as separate segments would come.
            loop.call_soon(self._deliver, chunk)

    def _deliver(self, chunk: bytes) -> None:
        assert self.pipeline is not None
        if not self.closed:
            self.pipeline.data_received(chunk)

    def _lose(self) -> None:
        assert self.pipeline is not None
        self.closed = True
        self.pipeline.connection_lost(ConnectionResetError())

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, _Pipeline)
        self.pipeline = protocol


def session(answer: Callable[[bytes], list[bytes] | None], timeout: float = 1.0) -> tuple[_Pipeline, ScriptedRelay]:
    relay = ScriptedRelay(answer)
    return _Pipeline.take_over(relay, timeout), relay


def relay_that(*, envelope: list[bytes] | None, data: list[bytes] | None) -> Callable[[bytes], list[bytes] | None]:
    """Answers the MAIL/RCPT/DATA write with `envelope` and the message with `data` (None: the connection drops)."""
    return lambda written: envelope if written.startswith(b"MAIL FROM:") else data


async def test_replies_split_anywhere_and_multi_line_are_read_in_order_and_the_data_is_dot_stuffed() -> None:
    pipeline, relay = session(
        relay_that(
            envelope=[b"250 2.1.0 Ok\r\n25", b"0 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"],
            data=[b"250-2.0.0 Ok:\r\n250 queued as ABC\r\n"],
        )
    )
    reply = await _pipelined_transaction(pipeline, MESSAGE, ENVELOPE)

    assert reply == "2.0.0 Ok: queued as ABC"
    assert relay.written == [
        b"MAIL FROM:<offers@bank.in>\r\nRCPT TO:<priya@example.in>\r\nDATA\r\n",
        b"Subject: offer\r\n\r\n..leading dot\r\nbody\r\n.\r\n",
    ]
    assert pipeline.is_connected and not pipeline.replies_waiting


async def test_a_refused_recipient_is_the_outcome_and_nothing_is_sent() -> None:
    pipeline, relay = session(
        relay_that(
            envelope=[b"250 Ok\r\n550 5.1.1 <priya@example.in>: unknown\r\n503 5.5.1 No recipients\r\n"], data=[]
        )
    )
    with pytest.raises(ProviderRejected, match=r"SMTP 550 on RCPT") as refused:
        await _pipelined_transaction(pipeline, MESSAGE, ENVELOPE)

    assert "priya" not in str(refused.value)
    assert len(relay.written) == 1  # no data after a refusal


async def test_what_the_relay_says_is_kept_without_the_recipients_number_or_address() -> None:
    """The reply to the data is the SENT step's detail, a refusal the FAILED reason: both are kept and published."""
    accepted, _ = session(
        relay_that(
            envelope=[b"250 Ok\r\n250 Ok\r\n354 Go ahead\r\n"],
            data=[b"250 2.0.0 Ok: queued for <priya@example.in> (mobile 9876543210)\r\n"],
        )
    )
    reply = await _pipelined_transaction(accepted, MESSAGE, ENVELOPE)
    assert reply == "2.0.0 Ok: queued for <[address]> (mobile [number])"
    refusal = b"250 Ok\r\n550 5.1.1 user +91 98765 43210 unknown\r\n503 5.5.1 No recipients\r\n"
    refused, _ = session(relay_that(envelope=[refusal], data=[]))
    with pytest.raises(ProviderRejected) as failure:
        await _pipelined_transaction(refused, MESSAGE, ENVELOPE)
    assert failure.value.reason == "SMTP 550 on RCPT: 5.1.1 user [number] unknown"


async def test_a_relay_that_says_354_after_a_refusal_gets_no_data_and_the_session_is_closed() -> None:
    pipeline, relay = session(relay_that(envelope=[b"451 4.3.0 Try later\r\n250 Ok\r\n354 Go ahead\r\n"], data=[]))
    with pytest.raises(ProviderUnavailable, match=r"SMTP 451 on MAIL"):
        await _pipelined_transaction(pipeline, MESSAGE, ENVELOPE)

    assert len(relay.written) == 1
    assert relay.closed and not pipeline.is_connected


async def test_a_connection_lost_before_the_data_is_a_lost_session_and_after_it_an_unknown_outcome() -> None:
    before, _ = session(relay_that(envelope=None, data=None))
    with pytest.raises(_SessionLost):
        await _pipelined_transaction(before, MESSAGE, ENVELOPE)

    after, relay = session(relay_that(envelope=[b"250 Ok\r\n250 Ok\r\n354 Go ahead\r\n"], data=None))
    with pytest.raises(ProviderOutcomeUnknown, match="may have queued it"):
        await _pipelined_transaction(after, MESSAGE, ENVELOPE)
    assert len(relay.written) == 2


async def test_a_relay_that_does_not_answer_the_data_in_time_is_an_unknown_outcome() -> None:
    pipeline, relay = session(relay_that(envelope=[b"250 Ok\r\n250 Ok\r\n354 Go ahead\r\n"], data=[]), timeout=0.05)
    with pytest.raises(ProviderOutcomeUnknown):
        await _pipelined_transaction(pipeline, MESSAGE, ENVELOPE)
    assert relay.closed


async def test_a_reply_while_idle_makes_the_session_lost_before_anything_is_written() -> None:
    pipeline, relay = session(relay_that(envelope=[], data=[]))
    pipeline.data_received(b"421 4.4.2 Idle timeout, closing\r\n")
    with pytest.raises(_SessionLost):
        await _pipelined_transaction(pipeline, MESSAGE, ENVELOPE)
    assert relay.written == []


async def test_an_address_with_a_line_break_cannot_add_a_command() -> None:
    pipeline, relay = session(relay_that(envelope=[b"250 Ok\r\n250 Ok\r\n354 Go ahead\r\n"], data=[b"250 Ok\r\n"]))
    await _pipelined_transaction(pipeline, MESSAGE, _Envelope("offers@bank.in", "priya@example.in\r\nRCPT TO:<x@y.in>"))
    # Written as the address it parses to, as aiosmtplib writes it (composing refuses it before this anyway).
    assert relay.written[0] == b"MAIL FROM:<offers@bank.in>\r\nRCPT TO:<priya@example.in>\r\nDATA\r\n"


def test_xtext_writes_plus_equals_spaces_and_what_is_not_ascii_as_hex() -> None:
    assert xtext("CSELL-NOV-T06-0884") == "CSELL-NOV-T06-0884"
    assert xtext("a+b=c d\u00e9") == "a+2Bb+3Dc+20d+C3+A9"


async def test_with_delivery_reports_every_message_asks_for_its_report_with_the_campaign_id_as_envid() -> None:
    sender = SmtpSender("127.0.0.1", 25, delivery_reports=True)
    pipeline, relay = session(relay_that(envelope=[b"250 Ok\r\n250 Ok\r\n354 Go ahead\r\n"], data=[b"250 Ok\r\n"]))
    await _pipelined_transaction(pipeline, MESSAGE, sender._envelope("offers@bank.in", "priya@example.in", "CS+1=x"))

    assert relay.written[0] == (
        b"MAIL FROM:<offers@bank.in> RET=HDRS ENVID=CS+2B1+3Dx\r\n"
        b"RCPT TO:<priya@example.in> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;priya@example.in\r\nDATA\r\n"
    )
    # Over RFC 3461's 100 characters of ENVID, it is left out: the returned headers still carry the campaign ID.
    assert sender._envelope("o@b.in", "p@e.in", "+" * 40).mail_options == ("RET=HDRS",)
    assert SmtpSender("127.0.0.1", 25)._envelope("o@b.in", "p@e.in", "CS-1") == _Envelope("o@b.in", "p@e.in")
