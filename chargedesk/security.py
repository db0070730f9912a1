"""Hashing of secrets: low-entropy passwords with scrypt, random API keys with SHA-256."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt cost: about 15-25 ms per check here, paid once per station connection.
_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(
        ["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        dklen=len(expected),
        maxmem=128 * int(n) * int(r) * 2,
    )
    return hmac.compare_digest(actual, expected)


def new_api_key() -> str:
    return "cd_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # API keys carry 256 random bits, so a fast hash cannot be brute-forced; a slow one
    # would only cost every request.
    return hashlib.sha256(key.encode()).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
