"""The rendered SMS, WhatsApp, push and webhook messages as campaigns hands them over, and their validation."""

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.channels.delivery import MalformedDispatch, within_address_limit

# E.164: a plus, a country code that does not start with 0, at most 15 digits in all.
_E164 = re.compile(r"\+[1-9]\d{6,14}")


@dataclass(frozen=True)
class OutgoingSms:
    """A rendered SMS: the body must match the DLT template registered for the sender header."""

    to_number: str
    sender_id: str
    dlt_template_id: str
    body: str


@dataclass(frozen=True)
class OutgoingWhatsApp:
    """A WhatsApp template message: only templates Meta approved may start a conversation."""

    to_number: str
    template_name: str
    language_code: str
    parameters: tuple[str, ...]


@dataclass(frozen=True)
class OutgoingPush:
    """A push notification to one device."""

    device_token: str
    title: str
    body: str
    deep_link: str


@dataclass(frozen=True)
class OutgoingWebhook:
    """A JSON document to post to a CRM or relationship-manager tool."""

    url: str
    payload: dict[str, object]


Outgoing = OutgoingSms | OutgoingWhatsApp | OutgoingPush | OutgoingWebhook

SMS_BODY_LIMIT = 2000  # the gateway refuses longer bodies


def _number(value: str, field: str) -> str:
    number = within_address_limit(value, field).strip()
    if not number:
        raise MalformedDispatch(f"{field} is empty")
    if not _E164.fullmatch(number):
        raise MalformedDispatch(f"{field} is not an E.164 number such as +919876543210")
    return number


def validate_sms(sms: OutgoingSms | None) -> OutgoingSms:
    if sms is None:
        raise MalformedDispatch("channel is CHANNEL_SMS but the request carries no sms message")
    number = _number(sms.to_number, "sms.to_number")
    if not sms.sender_id.strip():
        raise MalformedDispatch("sms.sender_id is empty; DLT requires the registered sender header")
    if not sms.dlt_template_id.strip():
        raise MalformedDispatch("sms.dlt_template_id is empty; DLT requires the registered template id")
    if not sms.body.strip():
        raise MalformedDispatch("sms.body is empty")
    if len(sms.body) > SMS_BODY_LIMIT:
        raise MalformedDispatch(f"sms.body is longer than {SMS_BODY_LIMIT} characters")
    return OutgoingSms(number, sms.sender_id.strip(), sms.dlt_template_id.strip(), sms.body)


def validate_whatsapp(message: OutgoingWhatsApp | None) -> OutgoingWhatsApp:
    if message is None:
        raise MalformedDispatch("channel is CHANNEL_WHATSAPP but the request carries no whatsapp message")
    number = _number(message.to_number, "whatsapp.to_number")
    if not message.template_name.strip():
        raise MalformedDispatch("whatsapp.template_name is empty; a business-initiated message must be a template")
    if not message.language_code.strip():
        raise MalformedDispatch("whatsapp.language_code is empty, e.g. en or hi")
    return OutgoingWhatsApp(number, message.template_name.strip(), message.language_code.strip(), message.parameters)


def validate_push(push: OutgoingPush | None) -> OutgoingPush:
    if push is None:
        raise MalformedDispatch("channel is CHANNEL_PUSH but the request carries no push message")
    if not within_address_limit(push.device_token, "push.device_token").strip():
        raise MalformedDispatch("push.device_token is empty")
    if not push.title.strip() and not push.body.strip():
        raise MalformedDispatch("push has neither title nor body")
    return OutgoingPush(push.device_token.strip(), push.title, push.body, push.deep_link.strip())


def validate_webhook(url: str, payload_json: str, *, allowed_hosts: frozenset[str]) -> OutgoingWebhook:
    """The webhook to call; only hosts an operator allowed, so a template cannot make channels call anywhere."""
    target = url.strip()
    if not target:
        raise MalformedDispatch("webhook.url is empty")
    try:
        parts = urlsplit(target)
    except ValueError as error:
        raise MalformedDispatch("webhook.url is not a URL") from error
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise MalformedDispatch("webhook.url must be an absolute http(s) URL")
    try:
        parts.port  # noqa: B018 - read for its check: urlsplit parses the port only when it is asked for
    except ValueError as error:
        raise MalformedDispatch(f"webhook.url has no valid port ({error}); write 1-65535 or none") from error
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in target):
        raise MalformedDispatch("webhook.url holds a space or a control character; percent-encode it")
    if parts.hostname not in allowed_hosts:
        raise MalformedDispatch(
            f"webhook.url host {parts.hostname} is not in the channels webhook_allowed_hosts setting"
        )
    try:
        payload = json.loads(payload_json) if payload_json.strip() else {}
    except json.JSONDecodeError as error:
        raise MalformedDispatch(f"webhook.payload_json is not JSON: {error.msg} at {error.pos}") from error
    except RecursionError as error:
        raise MalformedDispatch(f"webhook.payload_json nests deeper than {MAX_PAYLOAD_DEPTH} levels") from error
    except ValueError as error:
        # Python's cap on the digits of an integer it converts (4300 by default).
        raise MalformedDispatch("webhook.payload_json holds a number with more digits than can be read") from error
    if not isinstance(payload, dict):
        raise MalformedDispatch("webhook.payload_json must be a JSON object")
    if (fault := _unwritable(payload)) is not None:
        raise MalformedDispatch(f"webhook.payload_json {fault}")
    return OutgoingWebhook(target, payload)


MAX_PAYLOAD_DEPTH = 100
"""How deep a webhook payload's objects and arrays may nest. A CRM task or a next-best-action is a few levels; the body
is written with orjson, which stops at 255 levels, else with json, which stops at Python's recursion limit (~1000)."""
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _unwritable(payload: dict[str, object]) -> str | None:
    """What would stop the body from being written in the hand-over, after the intent (a string with a lone surrogate,
    a "\\ud800" escape JSON reads without a pair, cannot be UTF-8; a nesting past what the writers take), or None.
    Walked with a list, not by recursion: the payload may be as deep as json.loads goes."""
    pending: list[tuple[object, int]] = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return "is not valid UTF-8 text: it holds a lone surrogate (an unpaired \\ud800-\\udfff escape)"
        elif isinstance(value, dict | list):
            if depth > MAX_PAYLOAD_DEPTH:
                return f"nests deeper than {MAX_PAYLOAD_DEPTH} levels"
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items)
    return None
