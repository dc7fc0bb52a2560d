"""Compact HMAC-signed tokens for links that leave the system (tracking links, unsubscribe links)."""

import base64
import hashlib
import hmac
import json
from typing import Any


class BadSignature(ValueError):
    """The token was altered, truncated or signed with another key."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(payload: dict[str, Any], secret: str) -> str:
    """A URL-safe token carrying `payload`, verifiable with the same secret."""
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()[:16]
    return f"{body}.{_b64(mac)}"


def verify(token: str, secret: str) -> dict[str, Any]:
    """The payload of a token signed with `secret`; BadSignature otherwise."""
    body, _, mac = token.partition(".")
    if not body or not mac:
        raise BadSignature("token is not of the form <payload>.<signature>")
    expected = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()[:16]
    try:
        given = _unb64(mac)
        if not hmac.compare_digest(expected, given):
            raise BadSignature("signature does not match")
        payload = json.loads(_unb64(body))
    except (ValueError, json.JSONDecodeError) as error:
        raise BadSignature(f"token is malformed: {error}") from error
    if not isinstance(payload, dict):
        raise BadSignature("token payload is not an object")
    return payload


# What a tracking link's token is for (its "k"): a token opens one door only. A click link travels further than any
# other (forwarded, pasted into chats, logged by link scanners) and an open pixel is fetched by image proxies; if any
# token were good for any route, whoever saw one could unsubscribe the person or fake their opens.
CLICK, OPEN, UNSUBSCRIBE = "c", "o", "u"


def link_token(campaign_id: str, purpose: str, secret: str, url: str = "") -> str:
    """The signed token of one outreach's link for one purpose (CLICK with its target `url`, OPEN, UNSUBSCRIBE)."""
    payload = {"c": campaign_id, "k": purpose}
    if url:
        payload["u"] = url
    return sign(payload, secret)


def serves(payload: dict[str, Any], purpose: str) -> bool:
    """Whether a verified token's payload is for `purpose`. Tokens from before purposes (no "k", in mail already in
    inboxes) keep working where they did: a click token carries its target, the pixel's and the unsubscribe link's
    were one token without one."""
    if "k" in payload:
        return bool(payload["k"] == purpose)
    return ("u" in payload) == (purpose == CLICK)


ENVELOPE_MAC_CHARS = 20
"""Hex digits of the MAC an envelope id carries (80 bits)."""


def signed_envelope_id(campaign_id: str, secret: str) -> str:
    """`<campaign ID>.<MAC>`: the ENVID an e-mail asks its delivery reports to carry (RFC 3461), so that the mailbox
    records only reports about messages we sent, not ones anyone can write naming a guessed campaign ID."""
    return f"{campaign_id}.{_envelope_mac(campaign_id, secret)}"


def envelope_campaign_id(envelope_id: str, secret: str) -> str | None:
    """The campaign ID of an envelope id signed with `secret`; None when it is not one."""
    campaign_id, _, mac = envelope_id.rpartition(".")
    if not campaign_id or len(mac) != ENVELOPE_MAC_CHARS:
        return None
    expected = _envelope_mac(campaign_id, secret)
    return campaign_id if hmac.compare_digest(expected.encode(), mac.encode("ascii", "replace")) else None


def _envelope_mac(campaign_id: str, secret: str) -> str:
    return hmac.new(secret.encode(), b"envid:" + campaign_id.encode(), hashlib.sha256).hexdigest()[:ENVELOPE_MAC_CHARS]
