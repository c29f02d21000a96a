"""Running one job inside its own process, exactly as a Hydra multirun would.

The worker forks one child per job, and the child runs the job through its
sweep's :class:`dr_exp.context.JobContext` (a Hydra multirun's job, or a trainer
function).  Whatever the job does to its process (a crash, ``os._exit``, a
segfault, leaked globals) ends with that process, never with the worker.

The child talks to the worker over a pipe in length-prefixed pickle frames:
first ``{"output_dir": ...}`` once it is known, then the result.
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import struct
import sys
import traceback
from typing import TYPE_CHECKING, Any

from dr_exp import jobfiles

if TYPE_CHECKING:
    from dr_exp.context import JobContext
    from dr_exp.db import Job

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!Q")


def send_frame(fd: int, message: dict) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FrameReader:
    """Reassembles the child's frames from pipe chunks, in time linear in their size."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, chunk: bytes) -> list[dict]:
        self.buffer += chunk
        messages = []
        start = 0
        while len(self.buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self.buffer, start)
            end = start + _HEADER.size + size
            if len(self.buffer) < end:
                break
            # our own forked child wrote it
            messages.append(pickle.loads(memoryview(self.buffer)[start + _HEADER.size : end]))
            start = end
        if start:
            del self.buffer[:start]
        return messages


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the worker dies (Linux).

    A SIGKILLed worker cannot stop its job, and its lease will expire and let
    another worker run the job: the orphan must not outlive it.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(70)


def child_main(
    ctx: JobContext,
    job: Job,
    fd: int,
    parent_pid: int,
    prepared: Any = None,
    clear_atexit: bool = True,
) -> None:
    """Entry point of the forked job process; never returns.

    The job's own ``atexit`` handlers run when it ends, as they would when its
    process exits under the basic launcher (wandb and mlflow close runs there);
    the worker's handlers, inherited through the fork, do not (a fork server
    cleared them already, and keeps those its sweep's imports registered).
    """
    code = 0
    try:
        die_with_parent(parent_pid)
        os.setpgid(0, 0)  # the worker signals the whole job tree through this group
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        if clear_atexit:
            atexit._clear()
        result = ctx.run(job, lambda m: send_frame(fd, m), prepared)
        jobfiles.job_ended(result.get("output_dir"), result)
        send_frame(fd, result)
    except BaseException:  # noqa: B036 - the job process must always exit here
        traceback.print_exc()
        code = 70
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"job process killed by signal {-code} ({name})"
    return f"job process exited with code {code} before reporting a result"


def __getattr__(name: str) -> Any:
    """Sweeps queued by dr_exp 0.1 pickled ``dr_exp.runner.SweepContext``: still load them."""
    if name == "SweepContext":
        from dr_exp.hydra_sweep import SweepPayload

        return SweepPayload
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
