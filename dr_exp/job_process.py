"""One job's forked process, as its worker watches it: the frames it sends, and its exit.

The job ends when its process exits, not when its pipe closes: a helper the job
forked and left behind may hold the pipe open for ever.  Once the process has
exited, what is left in the pipe is read without waiting, and whatever is left
of the job's process group is killed.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from typing import TYPE_CHECKING, Callable, Optional

from dr_exp.runner import FrameReader, child_main

if TYPE_CHECKING:
    from dr_exp.context import JobContext
    from dr_exp.db import Job

CHUNK = 1 << 20


class JobProcess:
    def __init__(self, pid: int, read_fd: int) -> None:
        self.pid = pid
        self.status: Optional[int] = None  # os.waitpid's status, once exited
        self._fd: Optional[int] = read_fd
        self._reader = FrameReader()
        try:  # readable when the process exits (Linux 5.3+); else poll its exit
            self._pidfd: Optional[int] = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = None

    @classmethod
    def fork(cls, ctx: JobContext, job: Job, in_child: Callable[[], None]) -> JobProcess:
        """Fork the job's process; ``in_child`` runs there first (to close the worker's fds)."""
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            in_child()
            child_main(ctx, job, write_fd, parent_pid)  # never returns
        os.close(write_fd)
        try:
            os.setpgid(pid, pid)  # also here, so a signal sent right away reaches the group
        except OSError:
            pass
        return cls(pid, read_fd)

    def exited(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is not None

    def pump(self, timeout: float, wakeup_fd: int) -> list[dict]:
        """Wait up to ``timeout`` for frames, the process's exit or ``wakeup_fd``; the frames."""
        watch = [fd for fd in (self._fd, self._pidfd, wakeup_fd) if fd is not None]
        if self._pidfd is None:
            timeout = min(timeout, 0.05)
        ready, _, _ = select.select(watch, [], [], timeout)
        if self._fd is not None and self._fd in ready:
            return self._read()
        return []

    def _read(self) -> list[dict]:
        assert self._fd is not None
        chunk = os.read(self._fd, CHUNK)
        if not chunk:  # every writer is gone
            os.close(self._fd)
            self._fd = None
            return []
        return self._reader.feed(chunk)

    def signal(self, signum: int) -> None:
        """Signal the job's whole process group (its own children too)."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def finish(self) -> list[dict]:
        """After the exit (or to give up on it): the frames still in the pipe; then close,
        reap, and kill what the job left running in its process group."""
        frames: list[dict] = []
        if self._fd is not None:
            os.set_blocking(self._fd, False)
            try:
                while self._fd is not None:
                    frames += self._read()
            except BlockingIOError:  # a leftover helper holds the pipe: nothing more is coming
                pass
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        self._wait()
        self.signal(signal.SIGKILL)  # helpers the job forked and left behind
        return frames

    def _wait(self) -> None:
        """Block until the process has exited and its status is known."""
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
