"""Why an attempt failed, as a class, and whether the job's retry policy retries it.

Classes (stored with each attempt, and on a failed job):

- ``error``: the task raised;
- ``oom``: ``MemoryError``, a CUDA out-of-memory exception, or a SIGKILL with OOM
  evidence (the kernel's ``oom_kill`` count of this cgroup went up meanwhile);
- ``killed``: another signal ended the job's process;
- ``lost``: its worker stopped renewing the lease (reaped; ``max_attempts`` governs it);
- ``preempted`` / ``timeout``: the worker was stopped (SIGTERM/SIGUSR1, or SLURM's
  time-limit warning SIGUSR2) and gave the job back, without counting an attempt;
- ``signature``: its rows are not signed by a key this worker holds.

``hydra.launcher.retry`` maps classes to how many times a failure of that class is
retried (e.g. ``{oom: 1, killed: 1, error: 0}``), each after an exponential backoff.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Mapping, Optional

CLASSES = ("error", "oom", "killed", "lost", "preempted", "timeout", "signature")
RETRYABLE = ("error", "oom", "killed", "timeout")  # what hydra.launcher.retry may name
BACKOFF_MAX_S = 600.0  # the first retry waits hydra.launcher.retry_backoff_s, then 2x each


def of_exception(type_name: str, message: str) -> str:
    """The class of an exception raised by the task, from its type name and message."""
    text = f"{type_name} {message}".lower()
    if type_name == "MemoryError" or "outofmemory" in text or "out of memory" in text:
        return "oom"
    return "error"


def oom_kills() -> Optional[int]:
    """This process's cgroup's count of OOM kills (cgroup v2), or None where unknown."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
        events = Path("/sys/fs/cgroup") / line.split("::", 1)[1].lstrip("/") / "memory.events"
        for row in events.read_text().splitlines():
            name, _, value = row.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, IndexError, ValueError):
        pass
    return None


def of_exit(status: int, oom_before: Optional[int]) -> str:
    """The class of a job process that died before reporting a result."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return "error"
    after = oom_kills()
    if -code == signal.SIGKILL and oom_before is not None and after is not None:
        if after > oom_before:
            return "oom"
    return "killed"


def of_stop(signum: Optional[int]) -> str:
    """Why a stopped worker gave its job back: SLURM's time-limit warning, or preemption."""
    return "timeout" if signum == signal.SIGUSR2 else "preempted"


def retry_after(
    policy: Mapping[str, int], failure: str, earlier: int, backoff_s: float
) -> Optional[float]:
    """Seconds to wait before a retry, or None when ``policy`` retries no more failures of
    this class (``earlier``: how many of them the job has had already)."""
    if earlier >= int(policy.get(failure, 0)):
        return None
    return min(BACKOFF_MAX_S, backoff_s * 2**earlier)
