"""A sweep's fork server: the process that loads a sweep once and forks each of its jobs.

Without one, each job's process is forked from the worker and unpickles its
sweep, imports the project's code and composes its config from nothing.  The
fork server does the first two once per sweep (``JobContext.load``) and what
jobs share of the third once per choice of config groups
(``JobContext.prepare``, see :mod:`dr_exp.compose`); each job's process is
then a fork of it, with a pristine copy of that state.

The worker never imports the sweep's code: the server is the worker's child,
and is replaced when the worker moves to another sweep.  Before each fork the
server checks the files of the project modules it imported; when one changed
it answers ``stale`` and exits, and the worker starts a fresh server, so each
job still runs the code as it is on disk when the job starts.

    worker ──(job, write end of the job's pipe)──> server ── fork ──> job process
       <──── {"pid": pid} then {"exited": status} ──┘           frames ──> worker

The server ignores the signals that stop a worker (the worker decides what its
job gets), dies with the worker (``PR_SET_PDEATHSIG``), and its jobs die with it.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import pickle
import select
import signal
import socket
import sys
import sysconfig
from typing import TYPE_CHECKING, Callable, Optional

from dr_exp.job_process import JobProcess
from dr_exp.runner import FORWARDED_SIGNALS, FrameReader, child_main, die_with_parent
from dr_exp.watchdog import reap

if TYPE_CHECKING:
    from dr_exp.context import JobContext
    from dr_exp.db import Job

log = logging.getLogger("dr_exp.worker")
MESSAGE_MAX = 1 << 20
KILLED = signal.SIGKILL  # the wait status of a job whose server vanished


class Stale(Exception):
    """The server's copy of the project's code changed on disk: start a fresh server."""


class ForkServer:
    """The worker's handle on the fork server of one sweep."""

    def __init__(self, ctx: JobContext, in_child: Callable[[], None]) -> None:
        self.ctx = ctx
        self.sock: Optional[socket.socket] = None
        self.pid: Optional[int] = None
        self._in_child = in_child

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        worker_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            ours.close()
            self._in_child()
            _serve(self.ctx, theirs, worker_pid)  # never returns
        theirs.close()
        self.sock, self.pid = ours, pid

    def fork(self, job: Job) -> ServedJob:
        """Start ``job`` in a fork of the server; a stale server is replaced, once."""
        for _ in range(2):
            if self.sock is None:
                self.start()
            try:
                return self._fork(job)
            except Stale as e:
                log.info("job %s: %s; a fresh fork server loads the sweep", job.id, e)
                self.close()
        return self._fork(job)

    def _fork(self, job: Job) -> ServedJob:
        assert self.sock is not None
        read_fd, write_fd = os.pipe()
        try:
            socket.send_fds(self.sock, [pickle.dumps(job)], [write_fd])
            reply = _receive(self.sock)
        except OSError:
            reply = None
        finally:
            os.close(write_fd)
        if reply is None or "stale" in reply:
            os.close(read_fd)
            raise Stale(reply["stale"] if reply else "the fork server is gone")
        return ServedJob(reply["pid"], read_fd, self.sock)

    def close(self) -> None:
        """Stop the server (it exits when its socket closes) and reap it."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        reap(self.pid)
        self.pid = None


class ServedJob(JobProcess):
    """A job's process forked by the server: not this process's child, so its exit comes
    as the server's message rather than from ``waitpid``."""

    def __init__(self, pid: int, read_fd: int, control: socket.socket) -> None:
        self.pid = pid
        self.status: Optional[int] = None
        self._fd: Optional[int] = read_fd
        self._pidfd: Optional[int] = None
        self._control = control
        self._reader = FrameReader()

    def _take_exit(self, timeout: Optional[float]) -> None:
        if self.status is None and select.select([self._control], [], [], timeout)[0]:
            reply = _receive(self._control)
            self.status = KILLED if reply is None else reply["exited"]

    def exited(self) -> bool:
        self._take_exit(0)
        return self.status is not None

    def pump(self, timeout: float, wakeup_fd: int) -> list[dict]:
        watch = [fd for fd in (self._fd, self._control.fileno(), wakeup_fd) if fd is not None]
        ready, _, _ = select.select(watch, [], [], timeout)
        if self._fd is not None and self._fd in ready:
            return self._read()
        return []

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def _wait(self) -> None:
        self._take_exit(None)


def _receive(sock: socket.socket) -> Optional[dict]:
    try:
        data = sock.recv(MESSAGE_MAX)
    except OSError:
        return None
    return pickle.loads(data) if data else None  # our own child or parent wrote it


def _send(sock: socket.socket, message: dict) -> None:
    sock.send(pickle.dumps(message))


# -- the server process ----------------------------------------------------------------
def _serve(ctx: JobContext, sock: socket.socket, worker_pid: int) -> None:  # pragma: no cover
    code = 0
    try:
        die_with_parent(worker_pid)
        for sig in (*FORWARDED_SIGNALS, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        atexit._clear()  # the worker's; the project's own, registered by load, stay
        before = set(sys.modules)
        reusable = ctx.load()
        watched = _project_files(set(sys.modules) - before)
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, MESSAGE_MAX, 1)
            except OSError:
                break
            if not data:
                break  # the worker closed: this sweep is done here
            job, write_fd = pickle.loads(data), fds[0]
            changed = _changed(watched)
            if changed:
                os.close(write_fd)
                _send(sock, {"stale": f"{changed} changed"})
                break
            prepared = ctx.prepare(job)
            # What the job inherits is never collected there: a collection in the job's
            # process would touch every inherited object and copy the pages it lies on.
            gc.freeze()
            server_pid = os.getpid()
            pid = os.fork()
            if pid == 0:
                sock.close()
                child_main(ctx, job, write_fd, server_pid, prepared, clear_atexit=False)
            os.close(write_fd)
            try:
                os.setpgid(pid, pid)  # before the worker may signal the group
            except OSError:
                pass
            _send(sock, {"pid": pid})
            _, status = os.waitpid(pid, 0)
            _send(sock, {"exited": status})
            if not reusable:
                break  # the sweep did not load: the next job's server tries again
    except BaseException:  # noqa: B036 - the server must always exit here
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def _project_files(modules: set[str]) -> dict[str, tuple[int, int]]:
    """The source files of the modules a sweep imported, outside Python and its packages."""
    skip = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    files: dict[str, tuple[int, int]] = {}
    for name in modules:
        path = getattr(sys.modules.get(name), "__file__", None)
        if not path or any(path.startswith(prefix + os.sep) for prefix in skip):
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        files[path] = (st.st_size, st.st_mtime_ns)
    return files


def _changed(files: dict[str, tuple[int, int]]) -> Optional[str]:
    for path, seen in files.items():
        try:
            st = os.stat(path)
        except OSError:
            return path
        if (st.st_size, st.st_mtime_ns) != seen:
            return path
    return None
