"""Which inbound texts opt a person out: the first word, in any case and with any punctuation."""

import pytest

from gateway.webhooks import opts_out


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
