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
  (which put their jobs back to pending) and waits for them.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dr_exp import defaults, paths
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


@dataclass
class Slot:
    """One worker position: a GPU (or none) and the process currently filling it."""

    index: int
    gpu: Optional[str]
    process: Optional[subprocess.Popen] = None
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
        gpus = visible_gpus()
        if gpus:
            layout = [g for g in gpus for _ in range(settings.workers_per_gpu)]
        else:
            layout = [None] * (settings.cpu_workers or settings.workers_per_gpu)
        self.slots = [Slot(index=i, gpu=g) for i, g in enumerate(layout)]
        self.sync = SupervisorSync(settings.db_path)  # uploads results once the queue exists

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def _spawn(self, slot: Slot) -> None:
        env = dict(worker_env(), **{paths.ENV_SUPERVISOR: self.id})
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        extra = [f"--lease={self.s.lease_s}", f"--heartbeat={self.s.heartbeat_s}"]
        extra.append(f"--grace={self.s.grace_s}")
        if self.stop_claiming_at:
            extra.append(f"--stop-claiming-at={self.stop_claiming_at}")
        cmd = worker_command(self.s.db_path, self.s.experiment, self.s.idle_timeout, extra)
        slot.process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        log.info(
            "slot %d: worker pid %d started (GPU %s)",
            slot.index,
            slot.process.pid,
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
        log.info(
            "supervisor %s: %d worker slot(s) on GPUs %s, db %s",
            self.id,
            len(self.slots),
            sorted({s.gpu for s in self.slots if s.gpu is not None}) or "none (CPU workers)",
            self.s.db_path,
        )
        try:
            while self.stop_signal is None:
                self.sync.poll()
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
        log.info("supervisor %s exiting", self.id)
        return 0

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
