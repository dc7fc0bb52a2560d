"""Page tokens: the keyset round-trips; a token from elsewhere, another list or another request is refused by name."""

import pytest

from plumbing.errors import InvalidArgument
from plumbing.page_tokens import decode_token, encode_token


def test_a_token_returns_its_keyset_for_the_same_request() -> None:
    token = encode_token("ListOutreaches", {"campaign_key": "home-loan-topup", "after": "CSELL-NOV-T06-0884"})
    assert decode_token("ListOutreaches", token, {"campaign_key": "home-loan-topup"}, "after") == "CSELL-NOV-T06-0884"
    assert decode_token("ListOutreaches", "", {"campaign_key": "home-loan-topup"}, "after") is None


def test_a_token_of_another_request_names_the_field_to_keep() -> None:
    token = encode_token("ListOutreaches", {"campaign_key": "home-loan-topup", "after": "CSELL-NOV-T06-0884"})
    with pytest.raises(InvalidArgument, match="another campaign_key; pass the same campaign_key"):
        decode_token("ListOutreaches", token, {"campaign_key": "gold-loan"}, "after")


def test_a_token_of_another_list_of_the_same_shape_is_refused_by_name() -> None:
    """ListOutreaches and ListCampaignAudit both page by campaign_key, then a keyset: each took the other's token, and
    the audit read a campaign ID as its position (INTERNAL); ListAttributes took any list's token: a wrong page."""
    token = encode_token("ListOutreaches", {"campaign_key": "home-loan-topup", "after": "CSELL-NOV-T06-0884"})
    with pytest.raises(InvalidArgument, match="not one ListCampaignAudit issued; pass the next_page_token of the"):
        decode_token("ListCampaignAudit", token, {"campaign_key": "home-loan-topup"}, "after")
    with pytest.raises(InvalidArgument, match="not one ListAttributes issued"):
        decode_token("ListAttributes", token, {}, "after")


@pytest.mark.parametrize(
    "token", ["nonsense!", encode_token("ListSegments", {"before": "x"}), "e30", "eyJhZnRlciI6ImFnZV9ncm91cCJ9"]
)
def test_a_token_this_service_did_not_issue_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match=r"pass next_page_token unchanged|pass the next_page_token of"):
        decode_token("ListAttributes", token, {}, "after")
