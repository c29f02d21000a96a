"""What makes two submissions the same job: its experiment, its app and its overrides."""

from __future__ import annotations

import json
from typing import Iterable, Optional


def normalize_overrides(overrides: Iterable[str]) -> list[str]:
    """Overrides as identity sees them: stripped and sorted, so their order does not matter."""
    return sorted(o.strip() for o in overrides if o.strip())


def job_identity(experiment: str, app: Optional[str], overrides: Iterable[str]) -> str:
    """A job's identity: a hash of its experiment, app and normalized overrides.

    Priority and tags are deliberately left out, so re-running a sweep with a new
    priority still finds the jobs it queued before.
    """
    import hashlib  # here, not at import: OpenSSL's load is 5 ms of every `dr_exp status`

    text = json.dumps(
        [experiment, app or "", normalize_overrides(overrides)], separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]
