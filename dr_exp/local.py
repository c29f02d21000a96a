"""Worker processes on this machine, started for a sweep by the Hydra launcher.

They are ordinary ``dr_exp worker`` processes in their own sessions, so a
Ctrl-C in the terminal reaches only the launcher, which then stops them
cleanly (their running jobs go back to pending).  If the launcher itself is
killed, they drain the queue and exit after ``idle_timeout`` seconds of no work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import dr_exp
from dr_exp import paths
from dr_exp.gpu import visible_gpus


def worker_command(
    db_path: Path,
    experiment: Optional[str],
    idle_timeout: float,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``dr_exp worker`` command line that local pools and node supervisors start."""
    cmd = [sys.executable, "-m", "dr_exp", "worker", "--db", str(db_path)]
    if experiment:
        cmd += ["--experiment", experiment]
    return cmd + ["--idle-timeout", str(idle_timeout), *extra]


def worker_env() -> dict[str, str]:
    """The environment for a worker: ours, with this dr_exp importable first."""
    env = dict(os.environ)
    package_root = str(Path(dr_exp.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


def default_worker_count() -> int:
    """One worker per visible GPU, else one per CPU core (like joblib's n_jobs=-1)."""
    return len(visible_gpus()) or os.cpu_count() or 1


class LocalWorkers:
    def __init__(
        self,
        db_path: Path,
        experiment: str,
        count: int,
        idle_timeout: float,
        log_dir: Path,
    ) -> None:
        self.db_path = db_path
        self.experiment = experiment
        self.count = count
        self.idle_timeout = idle_timeout
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []
        self.exited: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}  # pid -> log file

    def command(self) -> list[str]:
        return worker_command(self.db_path, self.experiment, self.idle_timeout)

    def ensure_started(self) -> None:
        """Start workers up to ``count``; ones that exited (idle) are replaced."""
        self.exited = [p for p in self.processes if p.poll() is not None]
        self.processes = [p for p in self.processes if p.poll() is None]
        missing = self.count - len(self.processes)
        if missing <= 0:
            return
        shared = paths.is_shared_folder(self.log_dir.parent)  # a queue a group shares
        paths.ensure_dir(self.log_dir, shared)
        gpus = visible_gpus()
        env = worker_env()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for _ in range(missing):
            slot = len(self.processes)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            log_path = self.log_dir / f"worker-{stamp}-{os.getpid()}-{slot}.log"
            paths.create_file(log_path, shared)
            with open(log_path, "ab") as log_file:
                proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            self.processes.append(proc)
            self.logs[proc.pid] = log_path

    def failed_exits(self) -> list[tuple[int, Path]]:
        """(exit code, log) of workers that died with an error, for reporting."""
        return [
            (p.returncode, self.logs[p.pid])
            for p in self.processes
            if p.poll() is not None and p.returncode != 0
        ]

    def alive(self) -> int:
        return sum(1 for p in self.processes if p.poll() is None)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (running jobs go back to pending) and wait for them."""
        for p in self.processes:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for p in self.processes:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def log_tail(path: Optional[Path], lines: int = 5) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
