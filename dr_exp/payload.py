"""Signed pickles: what lets a worker rebuild a job, and a job's returned object.

A pickle runs code when it is loaded, and the job database is an ordinary
file.  So every pickle dr_exp stores is signed with an HMAC-SHA256 under a
per-user secret key, and nothing is unpickled unless its signature verifies.

The key lives in ``$DR_EXP_SECRET_KEY_FILE``, else
``$XDG_CONFIG_HOME/dr_exp/secret.key`` (``~/.config/dr_exp/secret.key``),
created with mode 0600 on first use.  On a cluster the home directory is
shared, so workers on every node find the same key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import cloudpickle

from dr_exp import paths


class SignatureMismatch(Exception):
    """The stored pickle was not signed with this user's key: it is never loaded."""


def key_path() -> Path:
    return paths.secret_key_file()


_cached_key: tuple[Path, bytes] | None = None


def secret_key() -> bytes:
    """The user's signing key, created (mode 0600) the first time it is needed."""
    global _cached_key
    path = key_path()
    if _cached_key is not None and _cached_key[0] == path:
        return _cached_key[1]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        except FileExistsError:
            pass  # another process created it first; read theirs
    key = path.read_text().strip().encode()
    if len(key) < 32:
        raise SignatureMismatch(
            f"the secret key in {path} is too short; delete it to make a new one"
        )
    _cached_key = (path, key)
    return key


def sign(data: bytes) -> str:
    return hmac.new(secret_key(), data, hashlib.sha256).hexdigest()


def dumps(obj: Any) -> tuple[bytes, str]:
    """Pickle ``obj`` (by value where it lives in ``__main__``) and sign it."""
    data = cloudpickle.dumps(obj)
    return data, sign(data)


def loads(data: bytes, signature: str, what: str = "payload") -> Any:
    """Unpickle ``data`` only if ``signature`` verifies under this user's key."""
    if not signature or not hmac.compare_digest(sign(data), signature):
        raise SignatureMismatch(
            f"{what} signature mismatch: it was not written by dr_exp with this user's key "
            f"({key_path()}), so it was not unpickled"
        )
    return cloudpickle.loads(data)
