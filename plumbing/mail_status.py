"""What a bounce says about the recipient's address, read alike by channels (a relay's refusal at RCPT, FCM's answer)
and segments (a bounce's detail): only a bad address is worth never writing to again. For e-mail that is an SMTP
enhanced status code (RFC 3463); for push, FCM's UNREGISTERED (the app is gone from the device)."""

import re

DND = "DND"
"""How a bounce's detail starts for an SMS refused because the number is on India's Do-Not-Disturb registry (NCPR):
the number is good, and the refusal not for ever (a person may leave the registry)."""

# 5.1.1 no such mailbox, 5.1.2 no such domain, 5.1.3 bad address syntax, 5.1.6 mailbox moved, 5.1.10 the domain takes no
# mail (null MX, RFC 7505), 5.2.1 mailbox disabled. Not 5.7.x (a policy: spam, reputation, a block list), 5.2.2
# (mailbox full) or 5.3.x / 5.4.x (the receiving system's trouble): the address is good, a later message may go.
_BAD_ADDRESS = re.compile(r"(5\.1\.(?:1|2|3|6|10)|5\.2\.1)(?![.\d])")


def bad_address_status(text: str) -> str | None:
    """The status at the start of `text` ("5.1.1 user unknown", "5.1.1 permanent") when it says the address is bad."""
    found = _BAD_ADDRESS.match(text.lstrip())
    return found.group(1) if found else None


def bad_address(detail: str) -> str | None:
    """What in a bounce's detail says the address is bad: its SMTP status ("5.1.1 permanent") or FCM's UNREGISTERED."""
    if detail.lstrip().startswith("UNREGISTERED"):
        return "UNREGISTERED"
    return bad_address_status(detail)


def on_dnd_registry(detail: str) -> bool:
    """Whether a bounce's detail says the number is on the Do-Not-Disturb registry ("DND failed-dnd")."""
    return detail.lstrip().startswith(DND)
