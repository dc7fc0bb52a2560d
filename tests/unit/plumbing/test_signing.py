"""Signed tokens for links that leave the system."""

import pytest

from plumbing.signing import CLICK, OPEN, UNSUBSCRIBE, BadSignature, link_token, serves, sign, verify


def test_round_trip() -> None:
    token = sign({"c": "CSELL-NOV-T06-0884", "u": "https://example.com/invest?x=1"}, "s3cret")
    assert verify(token, "s3cret") == {"c": "CSELL-NOV-T06-0884", "u": "https://example.com/invest?x=1"}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: "x" + t,
        lambda t: t.split(".")[0],
        lambda t: "",
    ],
)
def test_tampered_tokens_are_rejected(tamper) -> None:  # type: ignore[no-untyped-def]
    token = sign({"c": "CSELL-NOV-T06-0884"}, "s3cret")
    with pytest.raises(BadSignature):
        verify(tamper(token), "s3cret")


def test_other_key_is_rejected() -> None:
    with pytest.raises(BadSignature):
        verify(sign({"c": "X"}, "one"), "two")


def test_a_link_token_serves_its_own_purpose_only() -> None:
    click = verify(link_token("C1", CLICK, "s3cret", "https://example.com/"), "s3cret")
    assert click == {"c": "C1", "k": "c", "u": "https://example.com/"}
    assert [serves(click, p) for p in (CLICK, OPEN, UNSUBSCRIBE)] == [True, False, False]
    unsubscribe = verify(link_token("C1", UNSUBSCRIBE, "s3cret"), "s3cret")
    assert [serves(unsubscribe, p) for p in (CLICK, OPEN, UNSUBSCRIBE)] == [False, False, True]


def test_tokens_from_before_purposes_serve_where_they_did() -> None:
    legacy_click, legacy_outreach = {"c": "C1", "u": "https://example.com/"}, {"c": "C1"}
    assert [serves(legacy_click, p) for p in (CLICK, OPEN, UNSUBSCRIBE)] == [True, False, False]
    assert [serves(legacy_outreach, p) for p in (CLICK, OPEN, UNSUBSCRIBE)] == [False, True, True]
