"""Signed pickles: what lets a worker rebuild a job, and a job's returned object.

A pickle runs code when it is loaded, and the job database is an ordinary
file.  So nothing dr_exp stores is unpickled unless its signature verifies
under a key this process holds (see :mod:`dr_exp.signing`).
"""

from __future__ import annotations

from typing import Any

import cloudpickle

from dr_exp import signing
from dr_exp.signing import NotSigned as SignatureMismatch  # noqa: F401 - its older name


def sign(data: bytes) -> str:
    return signing.sign_bytes(signing.signing_key(), data)


def dumps(obj: Any) -> tuple[bytes, str]:
    """Pickle ``obj`` (by value where it lives in ``__main__``) and sign it."""
    data = cloudpickle.dumps(obj)
    return data, sign(data)


def loads(data: bytes, signature: str, what: str = "payload") -> Any:
    """Unpickle ``data`` only if ``signature`` verifies under a key this process holds."""
    signing.verify_bytes(data, signature, what)
    return cloudpickle.loads(data)
