"""Signed tokens: what a user gets for signing in, and shows instead of a password.

A token is ``qkv1.<claims>.<signature>``: the claims (user, the user's
generation, expiry in Unix milliseconds) as base64url msgpack, signed with
HMAC-SHA256 under the cluster's auth secret. The secret is drawn when auth is
enabled and replicated through the log, so every member verifies every
token without asking the one that issued it. A token dies when it expires,
when its user's password changes or its user loses a role (the generation
moves on), when its user is deleted, and when auth is disabled (the secret
is dropped; the next enable draws a new one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from quorumkv.errors import InvalidToken
from quorumkv.kv.packing import pack, unpack

PREFIX = "qkv1."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    generation: int
    expires_ms: int


def sign(secret: bytes, claims: Claims) -> str:
    body = _b64(pack([claims.user, claims.generation, claims.expires_ms]))
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"{PREFIX}{body}.{_b64(mac)}"


def looks_like_token(text: str) -> bool:
    return text.startswith(PREFIX)


def verify(secret: bytes, token: str, *, now_ms: int) -> Claims:
    """The claims of a genuine, unexpired token; InvalidToken otherwise. Whether its user
    and generation are still current is the caller's check."""
    if not secret:
        raise InvalidToken("auth is not enabled: tokens are not in use", reason="disabled")
    if not token.startswith(PREFIX) or token.count(".") != 2:
        raise InvalidToken("malformed token", reason="malformed")
    body, _, mac_text = token[len(PREFIX):].partition(".")
    expected = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    try:
        mac = _unb64(mac_text)
    except ValueError:
        raise InvalidToken("malformed token", reason="malformed") from None
    if not hmac.compare_digest(mac, expected):
        raise InvalidToken("the token's signature is not this cluster's (forged, or issued "
                           "before auth was last enabled)", reason="signature")
    try:
        fields = unpack(_unb64(body))
        if not isinstance(fields, list) or len(fields) != 3:
            raise ValueError("claims are an array of three")
        user, generation, expires_ms = fields
        claims = Claims(str(user), int(generation), int(expires_ms))
    except (ValueError, TypeError):
        raise InvalidToken("malformed token", reason="malformed") from None
    if claims.expires_ms <= now_ms:
        raise InvalidToken("the token has expired: sign in again", reason="expired")
    return claims
