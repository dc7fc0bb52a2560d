"""API keys: the xsk_<key id>_<secret> format, secret hashing and the record a key stands for."""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from gateway.limits import RateLimit
from plumbing.ids import new_id

KEY_PREFIX = "xsk"
MIN_SECRET_LENGTH = 16
_KEY_ID = re.compile(r"[A-Za-z0-9]{1,64}")


class MalformedKey(ValueError):
    """The text is not of the form xsk_<key id>_<secret>."""


@dataclass(frozen=True)
class PresentedKey:
    """A key as a caller sent it, split into its public id and its secret."""

    key_id: str
    secret: str


@dataclass(frozen=True)
class ApiKey:
    """A stored key: who it was issued to, what it may do, and only the hash of its secret."""

    key_id: str
    client_name: str
    key_hash: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None = None
    rate_limit: RateLimit | None = None
    """None: the gateway's default (XSELL_GATEWAY_RATE_LIMIT_PER_SECOND / _BURST)."""

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def parse_key(text: str) -> PresentedKey:
    """Splits xsk_<key id>_<secret>; the key id is alphanumeric, the secret may contain '_' and '-'."""
    prefix, _, rest = text.strip().partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not _KEY_ID.fullmatch(key_id) or not secret:
        raise MalformedKey("API keys look like xsk_<key id>_<secret>")
    return PresentedKey(key_id, secret)


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def generate_key() -> PresentedKey:
    """A fresh key id (lower-case ULID) and a 256-bit URL-safe secret."""
    return PresentedKey(new_id().lower(), secrets.token_urlsafe(32))


def hash_secret(secret: str) -> str:
    """The only form of the secret that is stored: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, key_hash: str) -> bool:
    """Constant-time comparison, so response timing says nothing about how much of the hash matched."""
    return hmac.compare_digest(hash_secret(secret), key_hash)
