"""Recipients' numbers kept as a keyed hash: the same person however the number is written, nothing without the key."""

import pytest

from services.channels.recipients import international_digits, recipient_key

SECRET = b"test-recipient-key"


def test_the_formats_a_provider_writes_a_number_in_give_one_key() -> None:
    written = ("+91 98765 43210", "919876543210", "+91-98765-43210", "09876543210", "9876543210", "00919876543210")
    keys = {recipient_key(SECRET, n) for n in written}
    assert len(keys) == 1
    (key,) = keys
    assert key is not None and len(key) == 32 and "9876543210" not in key


def test_another_number_or_another_key_gives_another_hash() -> None:
    key = recipient_key(SECRET, "+919876543210")
    assert recipient_key(SECRET, "+919876543211") != key
    assert recipient_key(b"another-key", "+919876543210") != key


def test_a_number_without_digits_has_no_key() -> None:
    assert recipient_key(SECRET, "") is None
    assert recipient_key(SECRET, "+ -") is None


@pytest.mark.parametrize(
    ("written", "digits"),
    [
        ("+91 98765 43210", "919876543210"),
        ("09876543210", "919876543210"),
        ("98765 43210", "919876543210"),
        ("0044 20 7946 0958", "442079460958"),
        ("+44 20 7946 0958", "442079460958"),
        ("", ""),
    ],
)
def test_a_number_is_read_with_its_country_code(written: str, digits: str) -> None:
    assert international_digits(written) == digits
