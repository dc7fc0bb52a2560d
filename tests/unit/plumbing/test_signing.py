"""Signed tokens for links that leave the system."""

import pytest

from plumbing.signing import BadSignature, sign, verify


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
