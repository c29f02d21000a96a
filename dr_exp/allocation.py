"""The time left in this allocation, and which sweeps' jobs still fit in it.

A worker in a SLURM allocation (or one given ``--max-hours``) has a deadline: the
time by which a job it claims must have ended.  The node supervisor reads the
allocation's end from SLURM once, at start (``squeue -h -j $SLURM_JOB_ID -o %e``:
Slurm 22.05 sets no ``SLURM_JOB_END_TIME``), takes off the warning signal's lead
(``--signal=USR2@signal_delay_s``: at that signal every job is stopped anyway),
and hands the result to its workers in ``$DR_EXP_DEADLINE``.

A job's expected duration is its sweep's ``hydra.launcher.expected_minutes``, else
the median of the durations of the sweep's completed jobs
(:meth:`dr_exp.db.JobDB.sweep_durations`), else unknown; an unknown duration never
stops a claim.  A worker skips the sweeps whose jobs would not end before its
deadline (:class:`ClaimWindow`), and exits when nothing it could fit is pending, so
that the allocation goes back to the cluster, or (``slurm.requeue``) requeues
itself for a fresh one.

This module imports nothing heavy: the supervisor and every worker import it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

log = logging.getLogger("dr_exp.allocation")

ENV_DEADLINE = "DR_EXP_DEADLINE"  # epoch seconds by which a job a worker claims must end
# A job fits when it would end this long before the deadline: expected * (1 + share) + s.
SAFETY_SHARE = 0.1
SAFETY_S = 10.0
REFRESH_S = 30.0  # how often a worker reads the sweeps' expected durations again
SQUEUE_TIMEOUT_S = 10.0


def fits(expected_s: Optional[float], now: float, deadline: Optional[float]) -> bool:
    """Would a job expected to take ``expected_s`` end before ``deadline``?  An unknown
    duration or deadline always fits."""
    if expected_s is None or deadline is None:
        return True
    return now + expected_s * (1 + SAFETY_SHARE) + SAFETY_S <= deadline


def parse_slurm_time(text: str) -> Optional[float]:
    """An absolute SLURM time (``2026-12-01T11:48:05``, the cluster's local time) as epoch
    seconds; None for ``N/A``, ``NONE``, ``Unknown`` and anything unreadable."""
    text = text.strip()
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def parse_slurm_duration(text: str) -> Optional[float]:
    """A SLURM duration (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in seconds;
    None for ``UNLIMITED``, ``INVALID``, ``NOT_SET`` and anything unreadable."""
    text = text.strip()
    try:
        days = 0
        if "-" in text:
            d, text = text.split("-", 1)
            days = int(d)
            parts = [int(p) for p in text.split(":")]
            parts += [0] * (3 - len(parts))  # D-HH, D-HH:MM, D-HH:MM:SS
            h, m, s = parts
        else:
            parts = [int(p) for p in text.split(":")]
            if len(parts) == 1:
                h, m, s = 0, parts[0], 0
            elif len(parts) == 2:
                h, (m, s) = 0, parts
            else:
                h, m, s = parts
    except ValueError:
        return None
    return float(((days * 24 + h) * 60 + m) * 60 + s)


def slurm_job_id(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """This allocation's job id as ``scontrol`` takes it: ``ARRAYJOB_TASK`` for an array
    task, else ``SLURM_JOB_ID``; None outside SLURM."""
    env = os.environ if env is None else env
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return env.get("SLURM_JOB_ID") or None


@dataclass
class SlurmAllocation:
    """What SLURM says about the allocation this process runs in."""

    job_id: str  # as scontrol takes it (ARRAYJOB_TASK for an array task)
    end: Optional[float]  # epoch seconds; None: no time limit
    limit_s: Optional[float]  # the whole time limit; None: unlimited or unknown
    restarts: int  # SLURM_RESTART_COUNT: how many times it was requeued

    @classmethod
    def detect(cls, env: Optional[Mapping[str, str]] = None) -> Optional[SlurmAllocation]:
        """Ask SLURM once (one ``squeue`` call, about 10 ms); None outside SLURM.  When
        SLURM cannot be asked, the end and limit are unknown (nothing is skipped)."""
        env = os.environ if env is None else env
        job_id = slurm_job_id(env)
        if job_id is None:
            return None
        restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
        end = limit = None
        if env.get("SLURM_JOB_END_TIME"):  # Slurm 23.02 and later set it
            try:
                end = float(env["SLURM_JOB_END_TIME"])
            except ValueError:
                end = None
        raw = env.get("SLURM_JOB_ID") or job_id
        try:
            out = subprocess.run(
                ["squeue", "-h", "-j", raw, "-o", "%e|%l"],
                capture_output=True,
                text=True,
                timeout=SQUEUE_TIMEOUT_S,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("cannot ask SLURM for job %s's end time (%s): it is unknown", raw, e)
            out = ""
        if "|" in out:
            end_text, limit_text = out.splitlines()[0].split("|", 1)
            end = end if end is not None else parse_slurm_time(end_text)
            limit = parse_slurm_duration(limit_text)
        return cls(job_id=job_id, end=end, limit_s=limit, restarts=restarts)


def deadline_from_env(env: Optional[Mapping[str, str]] = None) -> Optional[float]:
    env = os.environ if env is None else env
    try:
        return float(env[ENV_DEADLINE]) if env.get(ENV_DEADLINE) else None
    except ValueError:
        return None


def earliest(*times: Optional[float]) -> Optional[float]:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def worker_deadline(max_hours: Optional[float], now: Optional[float] = None) -> Optional[float]:
    """The deadline of a worker started now: ``$DR_EXP_DEADLINE`` (its supervisor's),
    ``--max-hours`` from now, and, for a worker started on its own inside a SLURM
    allocation, that allocation's end; the earliest of them."""
    now = time.time() if now is None else now
    from_env = deadline_from_env()
    budget = now + max_hours * 3600 if max_hours is not None else None
    if from_env is None and os.environ.get("SLURM_JOB_ID"):
        alloc = SlurmAllocation.detect()
        from_env = alloc.end if alloc else None
    return earliest(from_env, budget)


class ClaimWindow:
    """Which sweeps a worker must skip because their jobs would not end before its
    deadline.  Inert (no database reads at all) without a deadline.

    The sweeps' expected durations (:meth:`dr_exp.db.JobDB.sweep_durations`, one cheap
    query) are read again every ``refresh_s`` seconds, as soon as a new sweep appears,
    and before the worker concludes that nothing fits."""

    def __init__(
        self,
        db: Any,
        experiment: Optional[str],
        deadline: Optional[float],
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.db = db
        self.experiment = experiment
        self.deadline = deadline
        self.refresh_s = refresh_s
        self._durations: dict[int, Optional[float]] = {}
        self._read_at: Optional[float] = None
        self._newest_sweep: Optional[int] = None
        self._skipped: tuple[int, ...] = ()

    @classmethod
    def for_worker(cls, db: Any, experiment: Optional[str]) -> ClaimWindow:
        """The window of a worker process: its deadline is ``$DR_EXP_DEADLINE`` (set by its
        supervisor, or by ``dr_exp worker --max-hours``)."""
        return cls(db, experiment, deadline_from_env())

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        newest = self.db.rows("SELECT max(id) AS id FROM sweeps")[0]["id"]  # O(1)
        due = self._read_at is None or now - self._read_at >= self.refresh_s
        if force or due or newest != self._newest_sweep:
            self._durations = self.db.sweep_durations(self.experiment)
            self._read_at, self._newest_sweep = now, newest

    def skip_sweeps(self) -> tuple[int, ...]:
        """The pending sweeps whose jobs would not end in time: for ``JobDB.claim``."""
        if self.deadline is None:
            return ()
        self._refresh()
        now = time.time()
        self._skipped = tuple(
            sorted(s for s, d in self._durations.items() if not fits(d, now, self.deadline))
        )
        return self._skipped

    def nothing_fits(self) -> Optional[str]:
        """After a claim found nothing: why no pending job can end in time (the worker then
        exits), or None when some pending job could, or nothing is pending at all."""
        if self.deadline is None or not self._skipped:
            return None
        self._refresh(force=True)
        now = time.time()
        known = list(self._durations.values())
        if not known or any(fits(d, now, self.deadline) for d in known):
            return None
        shortest = min(d for d in known if d is not None)
        left = max(0.0, self.deadline - now)
        return (
            f"too little time left in this allocation ({left / 60:.1f} min) for any pending "
            f"job (the shortest expects {shortest / 60:.1f} min); exiting to give it back"
        )

    def record_exit(self, worker_id: str, why: str) -> None:
        """Keep why in the worker registry (``dr_exp workers list``); a failed write only
        loses the note."""
        try:
            self.db.note_worker_exit(worker_id, why)
        except sqlite3.Error as e:
            log.warning("could not record why worker %s exits: %s", worker_id, e)


def requeue_decision(
    durations: Mapping[int, Optional[float]],
    limit_s: Optional[float],
    signal_delay_s: float,
) -> tuple[bool, str]:
    """Should an allocation that ran out of time requeue itself for a fresh one?  Only if
    some pending job would fit a whole allocation: else the fresh one would find nothing
    it can run either (a requeue loop)."""
    if not durations:
        return False, "no job is pending"
    usable = None if limit_s is None else limit_s - signal_delay_s
    fitting = [s for s, d in durations.items() if d is None or fits(d, 0.0, usable)]
    if not fitting:
        longest = max(d for d in durations.values() if d is not None)
        return False, (
            f"every pending job expects longer ({longest / 60:.1f} min) than a whole "
            f"allocation gives ({(usable or 0) / 60:.1f} min); give the array a longer "
            "time limit (hydra.launcher.slurm.timeout_min)"
        )
    return True, f"pending jobs of sweep(s) {', '.join(map(str, sorted(fitting)))} fit a new one"


def requeue(job_id: str) -> bool:
    """``scontrol requeue JOB``: SLURM ends this allocation and queues the task again (it
    restarts with ``SLURM_RESTART_COUNT`` one higher).  False, logged, if SLURM refused."""
    try:
        proc = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("scontrol requeue %s failed: %s", job_id, e)
        return False
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip()
        log.error("scontrol requeue %s refused: %s", job_id, why)
        return False
    return True
