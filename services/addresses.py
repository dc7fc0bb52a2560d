"""The address a DispatchRequested was made for, and when two addresses are the same person's: one definition for
campaigns (which makes the message), channels (which asks before sending it) and segments (which holds the current
address)."""

from xsell.campaigns.v1.events_pb2 import DispatchRequested

MAX_ADDRESS = 4096
"""The longest address segments' CheckSuppression compares, and so the longest channels sends (nothing is sent
unchecked): an e-mail is at most 254 characters, an FCM token a few hundred."""


def address_of(request: DispatchRequested) -> str:
    """The e-mail, phone number or push token the message goes to; "" for a webhook call."""
    kind = request.WhichOneof("message")
    if kind == "email":
        return request.email.to_address
    if kind == "sms":
        return request.sms.to_number
    if kind == "whatsapp":
        return request.whatsapp.to_number
    if kind == "push":
        return request.push.device_token
    return ""


def same_address(one: str, other: str) -> bool:
    """Equal without surrounding spaces or case: the CRM writing "A@Bank.in" for "a@bank.in" replaces nothing."""
    return one.strip().casefold() == other.strip().casefold()
