"""Signatures, access keys and secrets at rest.

* Provider messages are signed: lowercase hex HMAC-SHA256, keyed with the provider's signing
  secret, over the message without ``signature`` as compact sorted JSON (CONTRACT.md).
* Access keys are kept only as salted scrypt hashes and compared in constant time.
* Signing secrets must be readable to verify an HMAC, so they are encrypted at rest (Fernet) with
  the deployment's key, never stored in clear.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from cryptography.fernet import Fernet, InvalidToken

__all__ = ["canonical_bytes", "sign", "signature_matches", "hash_access_key", "access_key_matches",
           "SecretBox", "redact", "SECRET_FIELDS"]

SECRET_FIELDS = frozenset({"signature", "access_key", "signing_secret", "signing_secrets", "previous_signing_secret",
                           "secret"})
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def canonical_bytes(message: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in message.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(message: Mapping[str, Any], secret: str) -> str:
    return _signature(canonical_bytes(message), secret)


def _signature(canonical: bytes, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), canonical, hashlib.sha256).hexdigest()


def signature_matches(message: Mapping[str, Any], secrets: Iterable[str], *, canonical: bytes | None = None) -> bool:
    """True when the message's signature was made with one of the provider's current secrets.
    ``canonical``: the message's canonical_bytes, when the caller has them already."""
    given = message.get("signature")
    if not isinstance(given, str):
        return False
    signed = canonical_bytes(message) if canonical is None else canonical
    ok = False
    for secret in secrets:  # every secret is tried, so timing does not tell which one matched
        ok |= hmac.compare_digest(_signature(signed, secret), given)
    return ok


def hash_access_key(key: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(key.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    enc = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${enc(salt).decode()}${enc(digest).decode()}"


def access_key_matches(key: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(key.encode("utf-8"), salt=base64.b64decode(salt), dklen=32,
                                   n=int(n), r=int(r), p=int(p))
        return hmac.compare_digest(candidate, base64.b64decode(digest))
    except (ValueError, binascii.Error):
        return False


class SecretBox:
    """Encrypts signing secrets at rest with the deployment key (MATOMETE_SECRET_KEY or a key file)."""

    def __init__(self, key: str | bytes):
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, secret_key: str | None, key_file: str) -> "SecretBox":
        if secret_key:
            return cls(secret_key)
        path = Path(key_file)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def seal(self, secrets: list[str]) -> str:
        return self._fernet.encrypt(json.dumps(secrets).encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> list[str]:
        """The secrets of a sealed value; memoized by the sealed text, so a re-sealed (rotated)
        value is decrypted anew and nothing goes stale."""
        return list(self._open(sealed))

    @functools.lru_cache(maxsize=256)  # noqa: B019 — one SecretBox per process, bounded
    def _open(self, sealed: str) -> tuple[str, ...]:
        try:
            return tuple(json.loads(self._fernet.decrypt(sealed.encode("ascii"))))
        except InvalidToken as exc:
            raise ValueError("signing secrets cannot be decrypted: wrong MATOMETE_SECRET_KEY?") from exc


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of a message with every secret field replaced by '***' (bounded depth)."""
    if depth > 20:
        return "…"
    if isinstance(value, Mapping):
        return {str(k): ("***" if str(k) in SECRET_FIELDS else redact(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, depth + 1) for v in value]
    return value
