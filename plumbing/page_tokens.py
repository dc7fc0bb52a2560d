"""Page tokens of keyset-paginated list RPCs (AIP-158): the keyset and the request it belongs to, as URL-safe JSON."""

import base64
import binascii
import json

from plumbing.errors import InvalidArgument


def encode_token(payload: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: str, expected: dict[str, str], key: str) -> str | None:
    """The keyset value of a page token made for the same request, or None for the first page."""
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
