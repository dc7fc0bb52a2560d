"""Page tokens: the keyset round-trips, and a token from elsewhere or from another request is refused by name."""

import pytest

from plumbing.errors import InvalidArgument
from plumbing.page_tokens import decode_token, encode_token


def test_a_token_returns_its_keyset_for_the_same_request() -> None:
    token = encode_token({"campaign_key": "home-loan-topup", "after": "CSELL-NOV-T06-0884"})
    assert decode_token(token, {"campaign_key": "home-loan-topup"}, "after") == "CSELL-NOV-T06-0884"
    assert decode_token("", {"campaign_key": "home-loan-topup"}, "after") is None


def test_a_token_of_another_request_names_the_field_to_keep() -> None:
    token = encode_token({"campaign_key": "home-loan-topup", "after": "CSELL-NOV-T06-0884"})
    with pytest.raises(InvalidArgument, match="another campaign_key; pass the same campaign_key"):
        decode_token(token, {"campaign_key": "gold-loan"}, "after")


@pytest.mark.parametrize("token", ["nonsense!", encode_token({"before": "x"}), "e30"])
def test_a_token_this_service_did_not_issue_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="pass next_page_token unchanged"):
        decode_token(token, {}, "after")
