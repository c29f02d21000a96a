"""A fence for running jobs: a tiny process that kills a job whose lease is no longer renewed.

The worker renews its job's lease every heartbeat.  If the worker freezes
(SIGSTOP, a node stuck on NFS I/O or swapping) or cannot reach the database,
the lease runs out and another worker may take the job: the first copy must be
gone by then.  The worker's own loop cannot be trusted with that (it is what
froze), nor can a thread in the job (the job may hold the GIL), so one small
process per worker does it: the worker tells it after each successful renewal,
and when none has come for ``budget_s`` it SIGKILLs the job's process group.
``budget_s`` lies between the heartbeat and the lease, so a healthy job is never
killed and a fenced one is dead before any reaper can see its lease expire.

Messages over a pipe, one per line: ``arm <pgid> <budget_s>``, ``renew``, ``disarm``.
The watchdog ignores the signals that stop a worker (the worker decides what its
job gets) and exits when the pipe closes, killing an armed job first.
"""

from __future__ import annotations

import os
import select
import signal
import time
from typing import Optional

IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)


def fence_budget(lease_s: float, heartbeat_s: float) -> float:
    """How long a job may go without a successful renewal: halfway from heartbeat to lease."""
    return (lease_s + heartbeat_s) / 2


def reap(pid: Optional[int]) -> None:
    """Wait for a child that exits once its pipe or socket is closed (None: no child)."""
    if pid is not None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _kill_group(pgid: Optional[int]) -> None:
    if pgid is None:
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _watch(fd: int) -> None:  # pragma: no cover - runs in the forked watchdog process
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    armed: Optional[int] = None
    budget = deadline = 0.0
    pending = b""
    while True:
        timeout = max(0.0, deadline - time.monotonic()) if armed is not None else None
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:  # no renewal within the budget: fence the job
            _kill_group(armed)
            armed = None
            continue
        data = os.read(fd, 4096)
        if not data:  # the worker is gone
            _kill_group(armed)
            os._exit(0)
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            word, *args = line.decode().split()
            if word == "arm":
                armed, budget = int(args[0]), float(args[1])
                deadline = time.monotonic() + budget
            elif word == "renew":
                deadline = time.monotonic() + budget
            elif word == "disarm":
                armed = None


class Watchdog:
    """The worker's handle on its watchdog process."""

    def __init__(self) -> None:
        self.pid: Optional[int] = None
        self._fd: Optional[int] = None

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            try:
                _watch(read_fd)
            finally:
                os._exit(0)
        os.close(read_fd)
        self.pid, self._fd = pid, write_fd

    def _send(self, line: str) -> None:
        if self._fd is not None:
            os.write(self._fd, line.encode() + b"\n")

    def arm(self, pgid: int, budget_s: float) -> None:
        self._send(f"arm {pgid} {budget_s}")

    def renewed(self) -> None:
        self._send("renew")

    def disarm(self) -> None:
        self._send("disarm")

    def close_in_child(self) -> None:
        """In a job's forked process: let go of the pipe, so only the worker holds it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def stop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        reap(self.pid)
        self.pid = None
