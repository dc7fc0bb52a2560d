"""Page tokens of keyset-paginated list RPCs (AIP-158): the keyset, the RPC and the request it belongs to, as URL-safe
JSON."""

import base64
import binascii
import json

from plumbing.errors import InvalidArgument

LIST_KEY = "list"
"""The payload's entry naming the list RPC that issued the token. Lists of one shape (a campaign_key, then a keyset)
read each other's tokens without it: a wrong page, or a keyset parsed as another list's (INTERNAL)."""


def encode_token(rpc: str, payload: dict[str, str]) -> str:
    """The page token the list RPC `rpc` issues for `payload` (the request's fields and the keyset)."""
    payload = {LIST_KEY: rpc, **payload}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(rpc: str, token: str, expected: dict[str, str], key: str) -> str | None:
    """The keyset value of a page token `rpc` made for the same request, or None for the first page."""
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get(key), str):
        raise InvalidArgument(
            "page_token is not one this service issued; pass next_page_token unchanged", field="page_token"
        )
    if payload.get(LIST_KEY) != rpc:
        raise InvalidArgument(
            f"page_token is not one {rpc} issued; pass the next_page_token of the previous {rpc} response unchanged,"
            " or start again without page_token",
            field="page_token",
        )
    changed = next((name for name, value in expected.items() if payload.get(name) != value), None)
    if changed is not None:
        raise InvalidArgument(
            f"page_token belongs to a request with another {changed}; pass the same {changed} as the first page, or "
            "start again without page_token",
            field="page_token",
        )
    return str(payload[key])


def page_size(requested: int, default: int, maximum: int) -> int:
    """The page size a list RPC serves: `default` for 0, at most `maximum` (AIP-158 serves larger sizes at the maximum
    rather than rejecting them); a negative one is refused."""
    if requested < 0:
        raise InvalidArgument(
            f"page_size must be 0 (default {default}) or positive, got {requested}", field="page_size"
        )
    return min(requested or default, maximum)
