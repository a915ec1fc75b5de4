"""Password hashes: salted scrypt from the standard library, checked in constant time.

scrypt is memory-hard (guessing costs memory as well as time), is in
``hashlib`` on every platform Python supports, and needs no dependency. The
stored form names its parameters, so they can be raised later without
invalidating existing hashes::

    scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>

One hash takes tens of milliseconds of one core and 16 MiB: the node computes
them in a worker thread, never on its event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from quorumkv.errors import InvalidArgument

_N, _R, _P = 1 << 14, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_MAXMEM = 64 << 20
MIN_PASSWORD_LENGTH = 1


def hash_password(password: str, *, n: int = _N) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgument("a password must not be empty")
    salt = os.urandom(_SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=_R, p=_P, maxmem=_MAXMEM,
                            dklen=_HASH_BYTES)
    return "$".join(("scrypt", str(n), str(_R), str(_P), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()))


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; False for a malformed or empty hash (a
    user added without a password cannot sign in with one)."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, digest = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        actual = hashlib.scrypt(password.encode(), salt=salt, n=int(n), r=int(r), p=int(p),
                                maxmem=_MAXMEM, dklen=len(digest))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, digest)
