"""`make trace` with something other than a campaign ID it has spans for says what it wants and where to find one."""

from pathlib import Path

from devstack.trace import no_spans_message


def test_a_campaign_key_is_told_apart_from_a_campaign_id() -> None:
    message = no_spans_message("cmp_01M8MCGZANS0QN2XAKQFQDQGCM", Path("var"))
    assert message.startswith("cmp_01M8MCGZANS0QN2XAKQFQDQGCM is a campaign key")
    assert "CSELL-" in message and "var/mail/" in message


def test_an_unknown_campaign_id_says_where_campaign_ids_are() -> None:
    message = no_spans_message("CSELL-NOV-T00-9999", Path("var"))
    assert message.startswith("no spans for CSELL-NOV-T00-9999 in var/traces/") and "var/mail/" in message
