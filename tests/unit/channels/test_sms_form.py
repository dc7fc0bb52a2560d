"""Exotel's form body is written directly; it must be what urllib's urlencode writes, byte for byte."""

import random
from urllib.parse import urlencode

from services.channels.providers.sms import form_urlencoded

TEXTS = [
    "",
    "plain",
    "Your loan of Rs 5,00,000 is pre-approved. Apply: https://bank.example.in/a?o=T06&x=1",
    "tilde~dot.dash-under_score",
    "+91 98765 43210",
    "100% sure; a+b=c / d\\e \"quoted\" 'single' <tag> #hash ?q",
    "line\nbreak\r\ttab",
    "हिंदी में संदेश ₹ 5,000",
    "emoji 🎉 and ümlaut",
    "\x00\x7f",
]


def test_the_form_body_is_what_urlencode_writes() -> None:
    for text in TEXTS:
        fields = {"Body": text, "To": "+919876543210", "Custom Field": text[::-1]}
        assert form_urlencoded(fields) == urlencode(fields).encode()


def test_the_form_body_is_what_urlencode_writes_for_any_character() -> None:
    rng = random.Random(5)
    alphabet = [chr(code) for code in range(0, 0x250)] + ["₹", "🎉", "\u0915", "\u200d"]
    for _ in range(500):
        fields = {
            "".join(rng.choices(alphabet, k=rng.randint(1, 8))): "".join(rng.choices(alphabet, k=rng.randint(0, 60)))
            for _ in range(rng.randint(1, 4))
        }
        assert form_urlencoded(fields) == urlencode(fields).encode()
