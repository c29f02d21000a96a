"""The worker loop: claim a job, run it in a child process, record how it ended.

    claim ──> fork child ──> child composes config, calls Hydra's run_job
      ^                          │ frames over a pipe: output_dir, then result
      └── record outcome <───────┘ (recorded in the same transaction as the next claim)

On SIGTERM, SIGINT, SIGUSR1 or SIGUSR2 (scancel, preemption, Ctrl-C, SLURM's
time-limit warning) the worker forwards the signal to its job, waits a grace
period, puts the job back to pending without counting an attempt, and exits 0.

While a job runs, the worker (never the job) renews the job's lease every
``heartbeat_s``.  If the job was cancelled, or its lease was lost to another
worker, the renewal says so and the worker stops the job: one job never runs
in two places at once.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import select
import signal
import socket
import sys
import time
from collections import OrderedDict
from typing import Optional

from dr_exp import defaults, paths, payload
from dr_exp.context import JobContext, SweepUnavailable
from dr_exp.db import Job, JobDB, Outcome
from dr_exp.gpu import GpuTelemetry
from dr_exp.jobfiles import write_error_file
from dr_exp.kinds import load_context
from dr_exp.runner import FORWARDED_SIGNALS, FrameReader, child_main, describe_exit
from dr_exp.sync.uploader import WorkerSync

log = logging.getLogger("dr_exp.worker")


def make_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Worker:
    def __init__(
        self,
        db: JobDB,
        experiment: Optional[str] = None,
        idle_timeout: float = defaults.WORKER_IDLE_TIMEOUT_S,
        grace_period: float = defaults.GRACE_S,
        poll_min: float = 0.05,
        poll_max: float = 1.0,
        max_jobs: Optional[int] = None,
        lease_s: float = defaults.LEASE_S,
        heartbeat_s: float = defaults.HEARTBEAT_S,
        stop_claiming_at: Optional[float] = None,
        supervisor: Optional[str] = None,
    ) -> None:
        self.db = db
        self.experiment = experiment
        self.idle_timeout = idle_timeout  # 0: never exit for lack of work
        self.grace_period = grace_period
        self.poll_min, self.poll_max = poll_min, poll_max
        self.max_jobs = max_jobs
        self.worker_id = make_worker_id()
        self.host = socket.gethostname()
        self.stop_signal: Optional[int] = None
        self._contexts: OrderedDict[int, JobContext] = OrderedDict()
        self._active_sweep: Optional[int] = None
        self._wakeup_r, self._wakeup_w = os.pipe()
        self.jobs_done = 0
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.stop_claiming_at = stop_claiming_at  # wall-clock time (max-hours budget)
        self.supervisor = supervisor
        self.telemetry = GpuTelemetry()
        self._last_beat = 0.0
        self.sync = WorkerSync(db.path)  # records finished folders, uploads in the background

    # -- signals ----------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def _install_signal_handlers(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        signal.set_wakeup_fd(self._wakeup_w)  # wakes select() the moment a signal lands
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    # -- the loop ---------------------------------------------------------------
    def run(self) -> int:
        self._install_signal_handlers()
        if paths.is_shared_folder(self.db.path.parent):
            paths.share_with_group()  # a group's queue: its members write the job folders too
        os.environ[paths.ENV_WORKER_ID] = self.worker_id  # job processes inherit it
        self.db.register_worker(
            {
                "id": self.worker_id,
                "host": self.host,
                "pid": os.getpid(),
                "experiment": self.experiment,
                "supervisor": self.supervisor,
                "slurm_job_id": _slurm_job_id(),
                "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
            }
        )
        log.info(
            "worker %s started (db %s, experiment %s, GPU %s)",
            self.worker_id,
            self.db.path,
            self.experiment or "any",
            os.environ.get("CUDA_VISIBLE_DEVICES", "none"),
        )
        self.sync.start()
        try:
            self._loop()
        finally:
            self.db.worker_heartbeat(self.worker_id, "exited", None)
            self.sync.stop(drain=self.stop_signal is None)  # idle exit: upload what is due first
        if self.stop_signal is not None:
            log.info("stopped by %s", signal.Signals(self.stop_signal).name)
        return 0

    def _loop(self) -> None:
        finished: Optional[tuple[int, Outcome]] = None
        idle_since = time.monotonic()
        poll = self.poll_min
        while self.stop_signal is None:
            if self.max_jobs is not None and self.jobs_done >= self.max_jobs:
                break
            if self.stop_claiming_at is not None and time.time() >= self.stop_claiming_at:
                log.info("max-hours: too little time left to start another job; exiting")
                break
            job = None
            if finished is not None or self.db.has_work(self.experiment):
                job = self.db.claim(
                    self.worker_id, self.host, self.experiment, finished, lease_s=self.lease_s
                )
                finished = None
            if job is None:
                if self.idle_timeout and time.monotonic() - idle_since > self.idle_timeout:
                    log.info("queue empty for %.0f s; exiting", self.idle_timeout)
                    break
                self._beat("idle", None)
                self._sleep(poll * (0.5 + random.random()))
                poll = min(poll * 1.5, self.poll_max)
                continue
            poll = self.poll_min
            self._beat("busy", job.id, force=True)
            outcome = self.run_job(job)
            self.jobs_done += 1
            idle_since = time.monotonic()
            if outcome is not None:
                finished = (job.id, outcome)
        if finished is not None and not self.db.finish(finished[0], self.worker_id, finished[1]):
            log.warning("job %s: no longer ours, result dropped", finished[0])

    def _beat(self, state: str, job_id: Optional[int], force: bool = False) -> None:
        """Record this worker as alive (and its GPU's load) every ``heartbeat_s``."""
        now = time.monotonic()
        if force or now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            self.db.worker_heartbeat(self.worker_id, state, job_id, self.telemetry.read())

    def _sleep(self, seconds: float) -> None:
        select.select([self._wakeup_r], [], [], seconds)
        self._drain_wakeups()

    # -- one job ----------------------------------------------------------------
    def _context(self, sweep_id: int) -> JobContext:
        """The sweep's context, loaded once (the last few are kept); SweepUnavailable if its
        jobs cannot run.  A failure is not cached: a fixed sweep row loads next time."""
        if sweep_id in self._contexts:
            self._contexts.move_to_end(sweep_id)
            return self._contexts[sweep_id]
        sweep = self.db.get_sweep(sweep_id)
        if sweep is None:
            raise SweepUnavailable(f"sweep {sweep_id} is missing from the database")
        ctx = self._contexts[sweep_id] = load_context(sweep)
        if len(self._contexts) > 8:
            self._contexts.popitem(last=False)
        return ctx

    def run_job(self, job: Job) -> Optional[Outcome]:
        """Run ``job`` to an outcome; None when it was put back to pending."""
        sweep_id = job.run_sweep_id or job.sweep_id  # a re-queued job runs with its new sweep
        try:
            ctx = self._context(sweep_id)
        except SweepUnavailable as e:
            log.error("job %s failed: %s", job.id, e)
            return Outcome(status="failed", error=str(e))
        if self._active_sweep != sweep_id:
            ctx.activate()  # done once here, inherited by each fork
            self._active_sweep = sweep_id
        log.info("job %s: %s #%s %s", job.id, job.experiment, job.job_num, " ".join(job.overrides))
        started = time.monotonic()
        started_at = time.time()
        outcome = self._run_forked(ctx, job)
        if outcome is not None:
            self.sync.after_job(ctx, job, outcome.output_dir, started_at)
            log.info("job %s %s in %.1f s", job.id, outcome.status, time.monotonic() - started)
        return outcome

    def _run_forked(self, ctx: JobContext, job: Job) -> Optional[Outcome]:
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the job process
            os.close(read_fd)
            child_main(ctx, job, write_fd, parent_pid)
        os.close(write_fd)
        try:
            os.setpgid(pid, pid)  # also here, so a signal sent right away reaches the group
        except OSError:
            pass
        reader = FrameReader()
        result: Optional[dict] = None
        output_dir: Optional[str] = None
        stop_reason: Optional[str] = None  # a signal's name, "cancelled" or "lost"
        stop_sent_at: Optional[float] = None
        last_renewal = time.monotonic()
        try:
            while True:
                if stop_reason is None and self.stop_signal is not None:
                    stop_reason = signal.Signals(self.stop_signal).name
                if stop_reason is None and time.monotonic() - last_renewal >= self.heartbeat_s:
                    last_renewal = time.monotonic()
                    state = self.db.heartbeat(job.id, self.worker_id, self.lease_s)
                    self._beat("busy", job.id)
                    if state != "ok":
                        stop_reason = state
                if stop_reason is not None and stop_sent_at is None:
                    sig = self.stop_signal if stop_reason not in ("cancelled", "lost") else None
                    log.info(
                        "job %s: stopping it (%s), grace %.0f s",
                        job.id,
                        stop_reason,
                        self.grace_period,
                    )
                    self._signal_job(pid, sig or signal.SIGTERM)
                    stop_sent_at = time.monotonic()
                if stop_sent_at is not None and time.monotonic() - stop_sent_at > self.grace_period:
                    self._signal_job(pid, signal.SIGKILL)
                ready, _, _ = select.select([read_fd, self._wakeup_r], [], [], 1.0)
                self._drain_wakeups()
                if read_fd not in ready:
                    continue
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break
                for message in reader.feed(chunk):
                    if "status" in message:
                        result = message
                    elif message.get("output_dir"):
                        output_dir = message["output_dir"]
                        self.db.set_output_dir(job.id, self.worker_id, output_dir)
        finally:
            os.close(read_fd)
            _, status = os.waitpid(pid, 0)
        if stop_reason is None and self.stop_signal is not None:
            # scancel signals the job and the worker at once: the job may be gone
            # before this loop noticed our own signal.  It was stopped, not failed.
            stop_reason = signal.Signals(self.stop_signal).name

        if stop_reason in ("cancelled", "lost"):
            log.info("job %s: %s while running; its process was stopped", job.id, stop_reason)
            return None
        if result is None and stop_reason is not None:
            if self.db.requeue(job.id, self.worker_id, count_attempt=False):
                log.info("job %s: put back to pending (attempts unchanged)", job.id)
            return None
        if result is None:
            error = describe_exit(status)
            write_error_file(output_dir, error + "\n")
            log.error("job %s failed: %s", job.id, error)
            return Outcome(status="failed", error=error, output_dir=output_dir)
        blob = result.get("result_blob")
        return Outcome(
            status=result["status"],
            return_json=result.get("return_json"),
            error=result.get("error"),
            output_dir=result.get("output_dir") or output_dir,
            result_blob=blob,
            result_signature=payload.sign(blob) if blob is not None else None,
        )

    @staticmethod
    def _signal_job(pid: int, signum: int) -> None:
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _slurm_job_id() -> Optional[str]:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")
