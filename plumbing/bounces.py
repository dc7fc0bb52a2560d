"""What a bounce says about the recipient's address, read alike by the gateway (a provider's report), channels (a
relay's refusal at RCPT, FCM's answer) and segments (a bounce's detail, which it turns into a suppression).

Three kinds of bounce are worth a suppression; any other says nothing against the address (a spam block, a full
mailbox, a transient failure given up), and the next message may go:
- a bad address, never worth writing to again until it changes: an SMTP enhanced status code (RFC 3463) that says so,
  FCM's UNREGISTERED (the app is gone from the device), or INVALID_NUMBER (the SMS provider says the number does not
  exist);
- DND: an SMS refused because the number is on India's Do-Not-Disturb registry (NCPR). The number is good, and the
  refusal not for ever: a person may leave the registry;
- UNREACHABLE: the channel cannot reach the person at that address for now (WhatsApp's 131026: the number is not on
  WhatsApp, or its app is too old or has not accepted the terms). They may join or update later.
A bounce of the last two kinds has a detail that starts with its word ("DND failed-dnd", "UNREACHABLE whatsapp
131026"), so segments can tell them apart without knowing any provider.
"""

import re

DND = "DND"
UNREACHABLE = "UNREACHABLE"
INVALID_NUMBER = "INVALID_NUMBER"
# The first words of a bounce's detail that say the address is bad, beside an SMTP status.
_BAD_ADDRESS_WORDS = frozenset({"UNREGISTERED", INVALID_NUMBER})
FOR_A_WHILE = (DND, UNREACHABLE)
"""The bounces that suppress the channel for a while, then let it be tried again."""

# 5.1.1 no such mailbox, 5.1.2 no such domain, 5.1.3 bad address syntax, 5.1.6 mailbox moved, 5.1.10 the domain takes no
# mail (null MX, RFC 7505), 5.2.1 mailbox disabled. Not 5.7.x (a policy: spam, reputation, a block list), 5.2.2
# (mailbox full) or 5.3.x / 5.4.x (the receiving system's trouble): the address is good, a later message may go.
_BAD_ADDRESS = re.compile(r"(5\.1\.(?:1|2|3|6|10)|5\.2\.1)(?![.\d])")


def bad_address_status(text: str) -> str | None:
    """The status at the start of `text` ("5.1.1 user unknown", "5.1.1 permanent") when it says the address is bad."""
    found = _BAD_ADDRESS.match(text.lstrip())
    return found.group(1) if found else None


def bad_address(detail: str) -> str | None:
    """What in a bounce's detail says the address is bad: its SMTP status ("5.1.1 permanent"), FCM's UNREGISTERED or
    the SMS provider's INVALID_NUMBER."""
    word = detail.lstrip().partition(" ")[0]
    if word in _BAD_ADDRESS_WORDS:
        return word
    return bad_address_status(detail)


# Meta's failure codes that say the person cannot be reached on WhatsApp for now, whichever message is sent: the number
# is not on WhatsApp, or its app is too old or has not accepted the terms (131026); the number is in Meta's
# marketing-message experiment, where no business's marketing template reaches it (130472).
WHATSAPP_UNREACHABLE = frozenset({130472, 131026})


def whatsapp_unreachable(code: object) -> str:
    """The bounce's detail ("UNREACHABLE whatsapp 131026") when a WhatsApp failure code (a number, or its text as in
    a webhook) says the person cannot be reached there for now; "" otherwise."""
    try:
        number = int(str(code))
    except ValueError:
        return ""
    return f"{UNREACHABLE} whatsapp {number}" if number in WHATSAPP_UNREACHABLE else ""


def for_a_while(detail: str) -> str | None:
    """DND or UNREACHABLE when a bounce's detail says the channel refuses the address for a while, else None."""
    word = detail.lstrip().partition(" ")[0]
    return word if word in FOR_A_WHILE else None


WHATSAPP_MARKETING_SETTING = "WhatsApp setting: marketing messages"
"""The detail of an unsubscribe or a resubscribe that WhatsApp's own setting made: the person stopped or resumed
marketing messages from the business in WhatsApp (a `user_preferences` webhook; Meta's error 131050 on a message says
the same of a stop). Segments lifts, on a resubscribe, only an opt-out with this origin: one given by a typed STOP, an
unsubscribe link or the institution stays until RemoveSuppression."""
