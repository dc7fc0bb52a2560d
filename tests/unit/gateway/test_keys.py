"""API key format, parsing and hashing."""

import hashlib

import pytest

from gateway.auth import presented_key
from gateway.keys import MalformedKey, format_key, generate_key, hash_secret, parse_key, secret_matches


def test_a_generated_key_round_trips_through_its_text_form() -> None:
    key = generate_key()
    text = format_key(key.key_id, key.secret)
    assert text.startswith(f"xsk_{key.key_id}_")
    assert parse_key(text) == key


def test_generated_keys_differ_and_carry_a_long_secret() -> None:
    first, second = generate_key(), generate_key()
    assert first.key_id != second.key_id
    assert first.secret != second.secret
    assert len(first.secret) >= 40


def test_the_secret_may_contain_underscores() -> None:
    parsed = parse_key("xsk_01abc_se_cr-et")
    assert parsed.key_id == "01abc"
    assert parsed.secret == "se_cr-et"


@pytest.mark.parametrize(
    "text",
    ["", "xsk", "xsk_", "xsk_abc", "xsk_abc_", "xsk__secret", "sk_abc_secret", "XSK_abc_secret", "xsk_a-b_secret"],
)
def test_malformed_keys_are_refused(text: str) -> None:
    with pytest.raises(MalformedKey):
        parse_key(text)


def test_only_the_sha256_of_the_secret_is_kept_and_it_matches_only_that_secret() -> None:
    stored = hash_secret("s3cret-value")
    assert stored == hashlib.sha256(b"s3cret-value").hexdigest()
    assert "s3cret" not in stored
    assert secret_matches("s3cret-value", stored)
    assert not secret_matches("s3cret-valuE", stored)
    assert not secret_matches("", stored)


def test_the_key_is_read_from_x_api_key_or_a_bearer_authorization() -> None:
    assert presented_key([("x-api-key", "xsk_a_b")]) == "xsk_a_b"
    assert presented_key([("authorization", "Bearer xsk_a_b")]) == "xsk_a_b"
    assert presented_key([("authorization", "bearer  xsk_a_b ")]) == "xsk_a_b"
    assert presented_key([("authorization", "Bearer xsk_b_c"), ("x-api-key", "xsk_a_b")]) == "xsk_a_b"
    assert presented_key([("authorization", "Basic abc")]) is None
    assert presented_key([("x-api-key", "  ")]) is None
    assert presented_key(None) is None
