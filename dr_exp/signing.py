"""Keys and signatures: nothing runs unless a key this process holds signed it.

The job database and the sync queue are ordinary files.  Whoever can write them
(a group sharing a queue, loose permissions on a shared filesystem) could
otherwise decide what a worker runs: a sweep's code and sys.path, a job's
overrides (apps build objects from their config), an uploader's destination and
rsync arguments.  So every row that decides what runs is signed with
HMAC-SHA256, and carries the id of the key that signed it:

- the **private key**, ``$DR_EXP_SECRET_KEY_FILE``, else
  ``$XDG_CONFIG_HOME/dr_exp/secret.key``: created on first use, atomically, with
  mode 0600, and refused if its mode lets anyone else read it;
- a **shared key**, ``$DR_EXP_SHARED_KEY_FILE``, for a lab that opts in to one
  queue for a group: it may be group-readable (0640), never world-readable.  When
  it is set, submissions are signed with it, and workers hold it beside their
  private key.

A worker claims only jobs signed by a key it holds; other users' jobs stay
pending, untouched.  A key id is the first 16 hex digits of the key's SHA-256:
it names a key without revealing it.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from dr_exp import paths
from dr_exp.errors import UserError


class KeyProblem(UserError):
    """A key file that cannot be used as it is (looser mode, too short, unreadable)."""


class NotSigned(UserError):
    """A row whose signature does not verify under any key this process holds."""


@dataclass(frozen=True)
class Key:
    id: str
    secret: bytes
    path: Path


def key_id(secret: bytes) -> str:
    import hashlib  # (here, not at import: `dr_exp status` never signs)

    return hashlib.sha256(secret).hexdigest()[:16]


def _create(path: Path) -> None:
    """Write a new key so that no reader ever sees a partial file: a private temporary
    file, then a hard link to the real name, which fails if another process won."""
    import secrets

    paths.ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process created it first: use theirs
    finally:
        tmp.unlink()


def _read(path: Path, allowed: int, why: str) -> Key:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        secret = path.read_text().strip().encode()
    except OSError as e:
        raise KeyProblem(f"cannot read the signing key {path}: {e.strerror}") from None
    if mode & ~allowed & 0o777:
        raise KeyProblem(f"the signing key {path} has mode {mode:04o}; {why}")
    if len(secret) < 32:
        raise KeyProblem(f"the signing key {path} is too short; delete it to make a new one")
    return Key(key_id(secret), secret, path)


_cache: dict[tuple[str, str], Key] = {}


def private_key() -> Key:
    """This user's key, created (mode 0600) the first time it is needed."""
    path = paths.secret_key_file()
    cached = _cache.get(("private", str(path)))
    if cached is not None:
        return cached
    if not path.exists():
        _create(path)
    why = (
        f"only its owner may read it: chmod 600 {path} (a lab that shares one queue sets "
        f"{paths.ENV_SHARED_KEY_FILE} instead)"
    )
    key = _cache[("private", str(path))] = _read(path, 0o600, why)
    return key


def shared_key() -> Optional[Key]:
    """The lab's shared key, when ``$DR_EXP_SHARED_KEY_FILE`` names one (never created here)."""
    raw = os.environ.get(paths.ENV_SHARED_KEY_FILE)
    if not raw:
        return None
    path = Path(raw).expanduser()
    cached = _cache.get(("shared", str(path)))
    if cached is not None:
        return cached
    why = f"a shared key may be read by its group, never by everyone: chmod 640 {path}"
    key = _cache[("shared", str(path))] = _read(path, 0o660, why)
    return key


def signing_key() -> Key:
    """The key new rows are signed with: the shared key if there is one, else ours."""
    return shared_key() or private_key()


def keyring() -> dict[str, Key]:
    """Every key this process holds, by id."""
    keys = [private_key(), shared_key()]
    return {k.id: k for k in keys if k is not None}


def sign_bytes(key: Key, data: bytes) -> str:
    """``<key id>:<HMAC-SHA256>`` of ``data``."""
    import hashlib
    import hmac

    return f"{key.id}:{hmac.new(key.secret, data, hashlib.sha256).hexdigest()}"


def canonical(kind: str, fields: Mapping[str, Any]) -> bytes:
    """The bytes a row's signature covers: its kind and fields, in one canonical JSON."""
    return json.dumps([kind, dict(fields)], sort_keys=True, separators=(",", ":")).encode()


def sign_fields(kind: str, fields: Mapping[str, Any], key: Optional[Key] = None) -> str:
    return sign_bytes(key or signing_key(), canonical(kind, fields))


def verify_bytes(data: bytes, signature: Optional[str], what: str) -> Key:
    """The key that signed ``data``; NotSigned unless it is one this process holds."""
    key_part, _, mac = (signature or "").partition(":")
    key = keyring().get(key_part)
    import hmac

    if key is None or not hmac.compare_digest(sign_bytes(key, data), signature or ""):
        raise NotSigned(
            f"{what} is not signed by a key this worker holds (its signature does not "
            "verify: it was written by another key, or changed outside dr_exp), so nothing "
            "of it was used"
        )
    return key


def verify_fields(kind: str, fields: Mapping[str, Any], signature: Optional[str], what: str) -> Key:
    return verify_bytes(canonical(kind, fields), signature, what)


def digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
