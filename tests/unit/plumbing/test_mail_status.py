"""Which SMTP statuses say the recipient's address is bad (worth never writing to again) and which do not."""

import pytest

from plumbing.mail_status import bad_address, bad_address_status, on_dnd_registry


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("5.1.1 permanent", "5.1.1"),
        (" 5.1.1 <priya@example.in>: user unknown", "5.1.1"),
        ("5.1.2 Host unknown", "5.1.2"),
        ("5.1.10 null MX", "5.1.10"),
        ("5.2.1 mailbox disabled", "5.2.1"),
        ("5.7.1 permanent", None),  # a policy (spam, reputation): the address is good
        ("5.2.2 mailbox full", None),
        ("5.4.4 unable to route", None),
        ("4.1.1 try later", None),
        ("5.1.11 not a status we know", None),
        ("5.1.1.3", None),
        ("user unknown", None),
        ("", None),
    ],
)
def test_only_a_bad_address_status_is_one(text: str, status: str | None) -> None:
    assert bad_address_status(text) == status


def test_a_push_token_fcm_no_longer_knows_is_a_bad_address_too() -> None:
    assert bad_address("UNREGISTERED permanent") == "UNREGISTERED"
    assert bad_address("5.1.1 permanent") == "5.1.1"
    assert bad_address("5.7.1 blocked") is None
    assert bad_address("INVALID_ARGUMENT") is None


def test_an_sms_refused_for_the_dnd_registry_is_no_bad_address() -> None:
    assert on_dnd_registry("DND failed-dnd")
    assert bad_address("DND failed-dnd") is None
    assert not on_dnd_registry("5.1.1 permanent")
