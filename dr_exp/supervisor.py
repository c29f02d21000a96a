"""The node supervisor: keeps N workers per GPU alive on one node.

This is the seed's "launcher" (``dr_exp system launcher``), renamed so that it
is not confused with Hydra's Launcher.  One runs per node or SLURM array task:

- it finds the GPUs it may use (``CUDA_VISIBLE_DEVICES``, else NVML) and starts
  ``workers_per_gpu`` workers pinned to each; with no GPU, CPU workers;
- it restarts a worker that dies, with exponential backoff, and gives up on a
  slot that crash-loops, saying why;
- with ``max_hours`` its workers stop taking new jobs when too little time is
  left (``reserve_minutes``); workers that find the queue empty for
  ``idle_timeout`` exit, and the supervisor exits when all of its workers have;
- on SIGTERM/SIGINT/SIGUSR1/SIGUSR2 it forwards the signal to its workers
  (which put their jobs back to pending) and waits for them;
- in a SLURM allocation it reads the allocation's end once, at start, and hands its
  workers the deadline their jobs must end by (``$DR_EXP_DEADLINE``, less the lead
  of SLURM's warning signal): they claim only jobs expected to end by then, and
  exit when none is left (dr_exp.allocation);
- with ``requeue`` (``hydra.launcher.slurm.requeue``), an allocation that ran out
  of time (SLURM's USR2 warning, or its workers found no pending job that fits the
  time left) while pending jobs would fit a whole allocation requeues itself
  (``scontrol requeue``) once its jobs are back in the queue.

Workers start fast: the supervisor imports the worker's modules once and forks each
worker from itself (a few ms, against about 0.5 s of imports for each fresh
``python -m dr_exp worker``), unless it runs threads by then (an uploader), when it
starts them as subprocesses.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import runpy
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Optional, Sequence, Union

from dr_exp import allocation, defaults, paths
from dr_exp.gpu import visible_gpus
from dr_exp.local import worker_command, worker_env
from dr_exp.sync.uploader import SupervisorSync

log = logging.getLogger("dr_exp.supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class SupervisorSettings:
    db_path: Path
    experiment: Optional[str] = None
    workers_per_gpu: int = 1
    cpu_workers: Optional[int] = None  # with no GPU; default: workers_per_gpu
    max_hours: Optional[float] = None
    reserve_minutes: float = 0.0
    idle_timeout: float = defaults.WORKER_IDLE_TIMEOUT_S
    lease_s: float = defaults.LEASE_S
    heartbeat_s: float = defaults.HEARTBEAT_S
    grace_s: float = defaults.GRACE_S
    crash_limit: int = defaults.CRASH_LIMIT  # failed exits within crash_window_s: give up
    crash_window_s: float = defaults.CRASH_WINDOW_S
    backoff_max_s: float = defaults.RESTART_BACKOFF_MAX_S
    # SLURM's warning signal comes this long before the time limit (--signal=USR2@N).
    signal_delay_s: float = 0.0
    # hydra.launcher.slurm.requeue: requeue this array task when it runs out of time.
    requeue: bool = False
    fork_workers: bool = True  # false: every worker is a fresh `python -m dr_exp worker`


class ForkedWorker:
    """A worker forked from the supervisor, with the part of ``subprocess.Popen``'s
    interface that the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is gone
                self.returncode = 1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# The supervisor runs the CLI's worker command (``python -m dr_exp worker ...``) in each
# fork.  It names the CLI as an entry point, as console scripts do, rather than importing it:
# the CLI drives the supervisor, and the layers stay one-way.
CLI = "dr_exp.cli"


def preload_worker() -> bool:
    """Import what every worker imports (the CLI, the worker, Hydra's sweep context), once
    here, so that forked workers start without it; False if that failed."""
    try:
        importlib.import_module(CLI)
        import dr_exp.worker  # noqa: F401
        from dr_exp import kinds

        kinds.KINDS["hydra"]()  # dr_exp.hydra_sweep: Hydra, OmegaConf
    except Exception as e:  # a worker started from scratch reports it properly
        log.warning("could not preload the worker's modules (%s); starting subprocesses", e)
        return False
    return True


def _forked_worker_main(argv: Sequence[str], env: dict[str, str]) -> NoReturn:
    """A forked worker: as ``python -m dr_exp ARGV`` would be, without the imports."""
    code = 1
    try:
        for sig in (*STOP_SIGNALS, signal.SIGCONT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)  # the supervisor's (or submitit's) handlers
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.environ.update(env)
        random.seed()
        sys.argv = ["dr_exp", *argv]
        try:
            runpy.run_module("dr_exp", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


@dataclass
class Slot:
    """One worker position: a GPU (or none) and the process currently filling it."""

    index: int
    gpu: Optional[str]
    process: Optional[Union[subprocess.Popen, ForkedWorker]] = None
    crashes: deque = field(default_factory=deque)  # monotonic times of failed exits
    restart_at: float = 0.0
    done: bool = False  # exited cleanly (idle or out of time): not restarted
    gave_up: bool = False


class NodeSupervisor:
    def __init__(self, settings: SupervisorSettings) -> None:
        self.s = settings
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.stop_signal: Optional[int] = None
        self.started = time.time()
        self.stop_claiming_at: Optional[float] = None
        if settings.max_hours is not None:
            self.stop_claiming_at = (
                self.started + settings.max_hours * 3600 - settings.reserve_minutes * 60
            )
        # The allocation's end, read once (one squeue call); None outside SLURM.
        self.slurm = allocation.SlurmAllocation.detect()
        budget_end = self.started + settings.max_hours * 3600 if settings.max_hours else None
        slurm_end = self.slurm.end if self.slurm else None
        if slurm_end is not None:  # at SLURM's warning signal every job stops anyway
            slurm_end -= settings.signal_delay_s
        self.deadline = allocation.earliest(slurm_end, budget_end)
        gpus = visible_gpus()
        if gpus:
            layout = [g for g in gpus for _ in range(settings.workers_per_gpu)]
        else:
            layout = [None] * (settings.cpu_workers or settings.workers_per_gpu)
        self.slots = [Slot(index=i, gpu=g) for i, g in enumerate(layout)]
        self.sync = SupervisorSync(settings.db_path)  # uploads results once the queue exists
        self.forking = False  # set in run(), once the worker's modules are imported

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def _spawn(self, slot: Slot) -> None:
        env = dict(worker_env(), **{paths.ENV_SUPERVISOR: self.id})
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        if self.deadline is not None:
            env[allocation.ENV_DEADLINE] = repr(self.deadline)
        extra = [f"--lease={self.s.lease_s}", f"--heartbeat={self.s.heartbeat_s}"]
        extra.append(f"--grace={self.s.grace_s}")
        if self.stop_claiming_at:
            extra.append(f"--stop-claiming-at={self.stop_claiming_at}")
        cmd = worker_command(self.s.db_path, self.s.experiment, self.s.idle_timeout, extra)
        how = "started"
        if self.forking and threading.active_count() == 1:  # a fork with no lock held
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _forked_worker_main(cmd[3:], env)  # cmd: python -m dr_exp worker ...
            slot.process = ForkedWorker(pid)
            how = "forked"
        else:
            slot.process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        log.info(
            "slot %d: worker pid %d %s (GPU %s)",
            slot.index,
            slot.process.pid,
            how,
            slot.gpu if slot.gpu is not None else "none",
        )

    def _reap(self, slot: Slot, now: float) -> None:
        """Handle a worker that exited: done, restart later, or give up."""
        assert slot.process is not None
        code = slot.process.returncode
        slot.process = None
        if code == 0:
            slot.done = True
            log.info("slot %d: worker exited cleanly", slot.index)
            return
        slot.crashes.append(now)
        while slot.crashes and now - slot.crashes[0] > self.s.crash_window_s:
            slot.crashes.popleft()
        how = f"signal {-code}" if code < 0 else f"code {code}"
        if len(slot.crashes) >= self.s.crash_limit:
            slot.gave_up = True
            log.error(
                "slot %d: worker crash-looped (%d failed exits within %.0f s, last with %s); "
                "not restarting it",
                slot.index,
                len(slot.crashes),
                self.s.crash_window_s,
                how,
            )
            return
        backoff = min(self.s.backoff_max_s, 2 ** (len(slot.crashes) - 1))
        slot.restart_at = now + backoff
        log.warning("slot %d: worker died with %s; restarting in %.0f s", slot.index, how, backoff)

    def run(self) -> int:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        self.forking = self.s.fork_workers and preload_worker()
        log.info(
            "supervisor %s: %d worker slot(s) on GPUs %s, db %s%s",
            self.id,
            len(self.slots),
            sorted({s.gpu for s in self.slots if s.gpu is not None}) or "none (CPU workers)",
            self.s.db_path,
            f"; jobs must end by {time.strftime('%H:%M:%S', time.localtime(self.deadline))}"
            if self.deadline
            else "",
        )
        first = True
        try:
            while self.stop_signal is None:
                if not first:  # workers first: the uploader's thread would stop the forks
                    self.sync.poll()
                first = False
                now = time.monotonic()
                for slot in self.slots:
                    if slot.process is not None and slot.process.poll() is not None:
                        self._reap(slot, now)
                    if (
                        slot.process is None
                        and not (slot.done or slot.gave_up)
                        and now >= slot.restart_at
                    ):
                        if self.stop_claiming_at and time.time() >= self.stop_claiming_at:
                            slot.done = True  # no time left for a new worker's first job
                            continue
                        self._spawn(slot)
                if all(slot.done or slot.gave_up for slot in self.slots):
                    break
                time.sleep(0.2)
        finally:
            self._stop_workers()
            self.sync.stop(drain=self.stop_signal is None)
        if all(slot.gave_up for slot in self.slots):
            log.error("every worker slot crash-looped; supervisor exiting with an error")
            return 1
        if self.s.requeue and self.slurm is not None:
            self._requeue_if_work_remains()
        log.info("supervisor %s exiting", self.id)
        return 0

    def _requeue_if_work_remains(self) -> None:
        """``slurm.requeue``: when this allocation ran out of time (SLURM's USR2 warning,
        or its workers found no pending job that fits the time left) and pending jobs would
        fit a whole allocation, requeue this array task for a fresh one.  Never twice in a
        row without completing a job (a requeue loop)."""
        assert self.slurm is not None
        if self.stop_signal not in (None, signal.SIGUSR2):
            return  # scancel or a preemption: SLURM (or the user) decides what comes next
        from dr_exp.db import JobDB

        try:
            db = JobDB.open(self.s.db_path, create=False)
            try:
                durations = db.sweep_durations(self.s.experiment)
                completed = db.completed_by_supervisor(self.id, socket.gethostname(), self.started)
            finally:
                db.close()
        except sqlite3.Error as e:
            log.error("not requeueing: cannot read the queue (%s)", e)
            return
        now = time.time()
        timed_out = (
            self.stop_signal == signal.SIGUSR2
            or (self.stop_claiming_at is not None and now >= self.stop_claiming_at)
            or any(not allocation.fits(d, now, self.deadline) for d in durations.values())
        )
        if not timed_out:
            return  # the workers ran out of work, not of time
        ok, why = allocation.requeue_decision(durations, self.slurm.limit_s, self.s.signal_delay_s)
        if ok and self.slurm.restarts > 0 and completed == 0:
            ok, why = False, "this allocation, itself a requeue, completed no job"
        if not ok:
            log.warning("SLURM job %s ran out of time; not requeueing: %s", self.slurm.job_id, why)
            return
        log.info(
            "SLURM job %s ran out of time (%d job(s) completed here); requeueing it: %s",
            self.slurm.job_id,
            completed,
            why,
        )
        allocation.requeue(self.slurm.job_id)

    def _stop_workers(self) -> None:
        alive = [
            s.process for s in self.slots if s.process is not None and s.process.poll() is None
        ]
        if not alive:
            return
        sig = self.stop_signal or signal.SIGTERM
        log.info("forwarding %s to %d worker(s)", signal.Signals(sig).name, len(alive))
        for p in alive:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.s.grace_s + 10
        for p in alive:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_supervisor(settings: SupervisorSettings) -> int:
    """Entry point for SLURM array tasks (pickled by reference through submitit)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s")
    return NodeSupervisor(settings).run()
