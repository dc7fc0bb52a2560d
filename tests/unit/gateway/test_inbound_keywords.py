"""Which inbound texts opt a person out (the first word) or decline the offer (the whole text), in any case and
with any punctuation."""

import pytest

from gateway.webhooks import declines, opts_out


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        "Stop.",
        " STOP ALL",
        "stop 56161",
        "Stop sending these",
        "UNSUBSCRIBE",
        "OptOut",
        "opt-out",
        "OPT OUT",
        "cancel",
        "END",
        "quit!",
        "STOPALL",
    ],
)
def test_an_opt_out_keyword_as_the_first_word_opts_out(text: str) -> None:
    assert opts_out(text)


@pytest.mark.parametrize(
    "text", ["", "YES", "Interested", "Don't stop", "please stop", "STOPPED by the branch", "optional", "ending soon?"]
)
def test_anything_else_is_a_reply(text: str) -> None:
    assert not opts_out(text)


@pytest.mark.parametrize(
    "text",
    ["NO", "no", "No.", " N ", "Nope!", "no thanks", "No, thank you", "NOT INTERESTED", "Not now", "nahi", "नहीं।"],
)
def test_a_bare_refusal_declines(text: str) -> None:
    assert declines(text)
    assert not opts_out(text)


@pytest.mark.parametrize(
    "text", ["", "YES", "No problem, call me", "not interested in the card, but the loan?", "Now", "Know more", "STOP"]
)
def test_anything_more_than_a_refusal_is_a_reply_an_rm_reads(text: str) -> None:
    assert not declines(text)
