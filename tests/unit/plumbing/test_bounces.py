"""Which bounces say the recipient's address is bad (worth never writing to again), which refuse it for a while, and
which say nothing against it."""

import pytest

from plumbing.bounces import DND, UNREACHABLE, bad_address, bad_address_status, for_a_while, whatsapp_unreachable


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
    assert bad_address("INVALID_NUMBER exotel FAILED_INVALID_NUMBER") == "INVALID_NUMBER"  # no such number
    assert bad_address("UNREGISTEREDX") is None
    assert bad_address("5.1.1 permanent") == "5.1.1"
    assert bad_address("5.7.1 blocked") is None
    assert bad_address("INVALID_ARGUMENT") is None


@pytest.mark.parametrize(
    ("detail", "word"),
    [
        ("DND failed-dnd", DND),
        (" UNREACHABLE whatsapp 131026", UNREACHABLE),
        ("5.1.1 permanent", None),
        ("UNREGISTERED", None),
        ("DNDX", None),  # a word of its own, not DND
        ("whatsapp 131026 UNREACHABLE", None),  # the word leads
        ("", None),
    ],
)
def test_a_refusal_for_a_while_is_named_by_its_first_word(detail: str, word: str | None) -> None:
    assert for_a_while(detail) == word
    if word is not None:
        assert bad_address(detail) is None  # the address is good: it is tried again later


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        (131026, "UNREACHABLE whatsapp 131026"),  # not on WhatsApp, or too old an app
        ("130472", "UNREACHABLE whatsapp 130472"),  # Meta's marketing experiment; a webhook may give the code as text
        (131050, ""),  # stopped marketing messages: an opt-out, not a bounce
        (131049, ""),  # Meta's per-person marketing limit: this message, not the person
        (None, ""),
        ("", ""),
        ("not a code", ""),
    ],
)
def test_only_the_whatsapp_codes_about_the_person_are_unreachable(code: object, detail: str) -> None:
    assert whatsapp_unreachable(code) == detail
    if detail:
        assert for_a_while(detail) == UNREACHABLE
