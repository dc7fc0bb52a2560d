"""Recipients' numbers kept only as a keyed hash: enough to find the message an inbound SMS or WhatsApp message that
quotes none of ours answers (a "STOP" or a "YES" typed fresh), never enough to read a number back."""

import hashlib
import hmac
import re

_NOT_DIGITS = re.compile(r"\D")
DEV_SECRET = b"dev-recipient-key-change-me"
"""The key `make run` and tests use; XSELL_CHANNELS_RECIPIENT_KEY_SECRET replaces it in a deployment."""
DEFAULT_COUNTRY_CODE = "91"
NATIONAL_DIGITS = 10
"""India's national significant number: what is left of a mobile number without its country code."""


def international_digits(number: str, country_code: str = DEFAULT_COUNTRY_CODE) -> str:
    """The number's digits with its country code, however the provider wrote it: "+91 98765 43210",
    "919876543210" (WhatsApp's wa_id), "09876543210" (Exotel's From, with the trunk 0), "9876543210" and
    "00919876543210" all give "919876543210". Empty when there are no digits."""
    digits = _NOT_DIGITS.sub("", number)
    if digits.startswith("00"):
        return digits[2:]  # the international call prefix
    if digits.startswith("0"):
        return country_code + digits[1:]  # the trunk prefix of a national number
    if 0 < len(digits) <= NATIONAL_DIGITS:
        return country_code + digits
    return digits


def recipient_key(secret: bytes, number: str, country_code: str = DEFAULT_COUNTRY_CODE) -> str | None:
    """HMAC-SHA256 of the number's international digits, 32 hex characters; None for a number without digits.
    Without the secret, which only channels holds, a key cannot be tested against a list of numbers."""
    digits = international_digits(number, country_code)
    if not digits:
        return None
    return hmac.new(secret, digits.encode(), hashlib.sha256).hexdigest()[:32]
