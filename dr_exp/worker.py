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

import json
import logging
import os
import random
import secrets
import select
import signal
import socket
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from dr_exp import allocation, defaults, failures, jobfiles, notify, paths, payload, signing
from dr_exp.context import JobContext, SweepUnavailable
from dr_exp.db import Job, JobDB, Outcome
from dr_exp.forkserver import ForkServer, Stale
from dr_exp.gpu import GpuTelemetry
from dr_exp.job_process import JobProcess
from dr_exp.jobfiles import write_error_file
from dr_exp.kinds import load_context
from dr_exp.runner import FORWARDED_SIGNALS, describe_exit
from dr_exp.signing import NotSigned
from dr_exp.sync.uploader import WorkerSync
from dr_exp.watchdog import Watchdog, fence_budget

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
        self.stopped: Optional[str] = None  # why the host breaker stopped this worker
        self.fence_s = fence_budget(lease_s, heartbeat_s)
        self.watchdog = Watchdog()
        self._server: Optional[ForkServer] = None  # the active sweep's fork server
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
        signing.keyring()  # a key that cannot be used is one clear error, before anything
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
        self.watchdog.start()  # before any thread starts: a fork with no lock held
        self.sync.start()
        try:
            self._loop()
        finally:
            self._close_server()
            self.watchdog.stop()
            if self.stopped is None:
                self._beat("exited", None, force=True)
            else:  # the registry keeps why, for `dr_exp status`
                try:
                    self.db.stop_claiming(self.worker_id, self.stopped)
                except sqlite3.Error:
                    pass
            self.sync.stop(drain=self.stop_signal is None)  # idle exit: upload what is due first
        if self.stop_signal is not None:
            log.info("stopped by %s", signal.Signals(self.stop_signal).name)
        return 0

    def _loop(self) -> None:
        finished: Optional[tuple[Job, Outcome]] = None
        idle_since = time.monotonic()
        poll = self.poll_min
        window = allocation.ClaimWindow.for_worker(self.db, self.experiment)  # time left
        while self.stop_signal is None:
            if self.max_jobs is not None and self.jobs_done >= self.max_jobs:
                break
            if self.stop_claiming_at is not None and time.time() >= self.stop_claiming_at:
                log.info("max-hours: too little time left to start another job; exiting")
                break
            why = self._host_failing(finished)
            if why is not None:  # record the outcome first, then say why this host stops
                self._record_last(finished)
                finished = None
                log.error("%s", why)
                self.stopped = why
                break
            job = None
            out_of_time: Optional[str] = None
            try:
                if finished is not None or self.db.has_work(self.experiment):
                    job = self.db.claim(
                        self.worker_id,
                        self.host,
                        self.experiment,
                        finished,
                        lease_s=self.lease_s,
                        skip_sweeps=window.skip_sweeps(),  # jobs that would outlast us
                        telemetry=self.telemetry.read(),  # and this worker busy with it
                    )
                    recorded, finished = finished, None
                    if recorded is not None:  # its sweep may have ended: a notice, once
                        notify.after_jobs(self.db, [_sweep_of(recorded[0])])
                    if job is None:
                        out_of_time = window.nothing_fits()
            except sqlite3.Error as e:  # full disk, a lock that never clears, I/O errors
                self._database_trouble(e, finished)
            if job is None and out_of_time is not None and finished is None:
                log.info("%s", out_of_time)  # the allocation goes back (or requeues itself)
                window.record_exit(self.worker_id, out_of_time)
                break
            if job is None:
                if self.idle_timeout and time.monotonic() - idle_since > self.idle_timeout:
                    if finished is None:
                        log.info("queue empty for %.0f s; exiting", self.idle_timeout)
                        break
                self._beat("idle", None)
                self._sleep(poll * (0.5 + random.random()))
                poll = min(poll * 1.5, self.poll_max)
                continue
            poll = self.poll_min
            self._last_beat = time.monotonic()  # the claim recorded this worker busy with it
            outcome = self.run_job(job)
            self.jobs_done += 1
            idle_since = time.monotonic()
            if outcome is not None:
                finished = (job, outcome)
        self._record_last(finished)

    def _host_failing(self, finished: Optional[tuple[Job, Outcome]]) -> Optional[str]:
        """The host breaker: stop claiming when most jobs fail or are lost on this host while
        other hosts complete theirs, so that one bad node cannot burn every job's attempts.
        ``dr_exp status`` shows why."""
        if finished is None or finished[1].status != "failed":
            return None
        since = time.time() - BREAKER_WINDOW_S
        try:
            record = self.db.host_record(self.host, since)
        except sqlite3.Error:
            return None
        failed = record["failed"] + 1  # the outcome this worker is about to record
        share = failed / (failed + record["completed"])
        if failed < BREAKER_FAILURES or share < BREAKER_SHARE or not record["others_completed"]:
            return None
        return (
            f"{failed} of the last {failed + record['completed']} jobs on {self.host} failed or "
            f"were lost within {BREAKER_WINDOW_S / 60:.0f} min while other hosts completed "
            f"{record['others_completed']}; this host stopped claiming"
        )

    def _database_trouble(self, error: Exception, finished: Optional[tuple[Job, Outcome]]) -> None:
        """A write that failed: keep the finished job's outcome (it is also in its folder's
        job.json) and try again after a pause, rather than crash and leave it unrecorded."""
        held = f"; job {finished[0].id}'s outcome is kept and recorded later" if finished else ""
        log.warning("database write failed (%s)%s", error, held)
        self._sleep(min(self.heartbeat_s, 5.0))

    def _record_last(self, finished: Optional[tuple[Job, Outcome]]) -> None:
        """Record the last job's outcome before exiting, retrying while the database is busy
        or full (a stop signal cuts it short: the next worker recovers the outcome from the
        job's folder instead of running the job again)."""
        while finished is not None:
            try:
                if self.db.finish(finished[0], self.worker_id, finished[1]):
                    notify.after_jobs(self.db, [_sweep_of(finished[0])])
                else:
                    log.warning("job %s: no longer ours, result dropped", finished[0].id)
                return
            except sqlite3.Error as e:
                if self.stop_signal is not None:
                    log.warning("job %s: not recorded (%s)", finished[0].id, e)
                    return
                self._database_trouble(e, finished)

    def _beat(self, state: str, job_id: Optional[int], force: bool = False) -> None:
        """Record this worker as alive (and its GPU's load) every ``heartbeat_s``."""
        now = time.monotonic()
        if force or now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            try:
                self.db.worker_heartbeat(self.worker_id, state, job_id, self.telemetry.read())
            except sqlite3.Error as e:  # only the registry misses a beat
                log.warning("worker heartbeat failed: %s", e)
            notify.retry_due(self.db)  # notices whose receiver was down

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
            job.verify()  # its overrides, identity, sweep link and folder, before anything
            ctx = self._context(sweep_id)
        except (NotSigned, SweepUnavailable) as e:
            log.error("job %s failed: %s", job.id, e)
            failure = "signature" if isinstance(e, NotSigned) else "error"
            return Outcome(status="failed", error=str(e), failure=failure)
        if self._active_sweep != sweep_id:
            ctx.activate()  # done once here, inherited by each fork
            self._active_sweep = sweep_id
        log.info("job %s: %s #%s %s", job.id, job.experiment, job.job_num, " ".join(job.overrides))
        done = finished_before(job)
        if done is not None:
            log.info("job %s: an earlier attempt completed (its folder says so); recorded", job.id)
            return done
        started = time.monotonic()
        started_at = time.time()
        outcome, sync = self._run_forked(ctx, job)
        if outcome is not None and outcome.failure is not None:
            self._apply_retry_policy(ctx, job, outcome)
        if outcome is not None:
            self.sync.after_job(sync, ctx.cwd, job, outcome.output_dir, started_at)
            log.info("job %s %s in %.1f s", job.id, outcome.status, time.monotonic() - started)
        return outcome

    def _apply_retry_policy(self, ctx: JobContext, job: Job, outcome: Outcome) -> None:
        """``hydra.launcher.retry``: a failure of a class it names goes back to the queue,
        after a backoff, until that class's retries are used up."""
        policy = ctx.settings.get("retry") or {}
        if outcome.failure in policy:
            earlier = self.db.count_failures(job.id, outcome.failure)
            backoff = float(ctx.settings.get("retry_backoff_s", 10.0))
            outcome.retry_after = failures.retry_after(policy, outcome.failure, earlier, backoff)
            if outcome.retry_after is not None:
                wait, why = outcome.retry_after, f"{outcome.failure}: {outcome.error}"
                log.info("job %s: retried in %.0f s after its failure (%s)", job.id, wait, why)

    def _run_forked(self, ctx: JobContext, job: Job) -> tuple[Optional[Outcome], list[dict]]:
        """Run the job in its own process, renewing its lease, until the process exits;
        its outcome, and the sync destinations its process reported.

        The watchdog kills the job if renewals stop succeeding for ``fence_s`` (this
        worker froze, or cannot reach the database), before its lease can expire.
        """
        oom_before = failures.oom_kills()
        proc = self._start(ctx, job)
        self.watchdog.arm(proc.pid, self.fence_s)
        frames: list[dict] = []
        stop_reason: Optional[str] = None  # a signal's name, "cancelling" or "lost"
        stop_sent_at: Optional[float] = None
        last_ok = last_try = time.monotonic()
        try:
            while not proc.exited():
                now = time.monotonic()
                if stop_reason is None and self.stop_signal is not None:
                    stop_reason = signal.Signals(self.stop_signal).name
                if stop_reason is None and now - last_try >= self.heartbeat_s:
                    last_try = now
                    state = self._renew(job)
                    if state in ("ok", "cancelling"):
                        last_ok = time.monotonic()
                        self.watchdog.renewed()
                    if state in ("cancelling", "lost"):
                        stop_reason = state
                if stop_reason is not None and stop_sent_at is None:
                    forwarded = stop_reason not in ("cancelling", "lost")
                    grace = self.grace_period
                    log.info("job %s: stopping it (%s), grace %.0f s", job.id, stop_reason, grace)
                    proc.signal(
                        self.stop_signal if forwarded and self.stop_signal else signal.SIGTERM
                    )
                    stop_sent_at = now
                if stop_sent_at is not None and now - stop_sent_at > self.grace_period:
                    proc.signal(signal.SIGKILL)
                frames += self._handle(job, proc.pump(1.0, self._wakeup_r))
                self._drain_wakeups()
        finally:
            self.watchdog.disarm()
            frames += self._handle(job, proc.finish())
        sync = next((m["sync"] for m in frames if "sync" in m), [])
        outcome = self._outcome(job, proc.status, frames, stop_reason, last_ok, oom_before)
        return outcome, sync

    def _start(self, ctx: JobContext, job: Job) -> JobProcess:
        """The job's process: a fork of its sweep's fork server (started on the sweep's
        first job here, replaced for the next sweep), or of this worker."""
        if ctx.settings.get("fork_server", True):
            if self._server is None or self._server.ctx is not ctx:
                self._close_server()
                self._server = ForkServer(ctx, self.watchdog.close_in_child)
            try:
                return self._server.fork(job)
            except Stale as e:
                log.warning("job %s: no fork server (%s); forking it from the worker", job.id, e)
                self._close_server()
        return JobProcess.fork(ctx, job, in_child=self.watchdog.close_in_child)

    def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _renew(self, job: Job) -> str:
        """Renew the lease: ``ok``, ``cancelling``, ``lost``, or ``error`` when the database
        could not be reached this time (the watchdog then counts the time)."""
        # One transaction per heartbeat: the lease, this worker's liveness and its GPU's load
        # (at 500 workers on a network filesystem, every transaction is a lock round trip).
        try:
            state = self.db.beat(
                self.worker_id, "busy", job, self.telemetry.read(), lease_s=self.lease_s
            )
        except sqlite3.Error as e:
            log.warning("job %s: lease renewal failed: %s", job.id, e)
            return "error"
        self._last_beat = time.monotonic()  # the registry's beat went with it
        notify.retry_due(self.db)  # notices whose receiver was down
        return state or "lost"

    def _handle(self, job: Job, frames: list[dict]) -> list[dict]:
        """Record the output folder as soon as the job reports it."""
        for message in frames:
            if "status" not in message and message.get("output_dir"):
                try:
                    self.db.set_output_dir(job, self.worker_id, message["output_dir"])
                except sqlite3.Error as e:  # the outcome records it again
                    log.warning("job %s: could not record its folder: %s", job.id, e)
        return frames

    def _outcome(
        self,
        job: Job,
        status: Optional[int],
        frames: list[dict],
        stop_reason: Optional[str],
        last_ok: float,
        oom_before: Optional[int],
    ) -> Optional[Outcome]:
        """How the run ended; None when there is nothing for this worker to record."""
        result = next((m for m in reversed(frames) if "status" in m), None)
        output_dir = next((m["output_dir"] for m in frames if m.get("output_dir")), None)
        if stop_reason is None and self.stop_signal is not None:
            # scancel signals the job and the worker at once: the job may be gone
            # before the loop noticed our own signal.  It was stopped, not failed.
            stop_reason = signal.Signals(self.stop_signal).name
        fenced = time.monotonic() - last_ok >= self.fence_s
        if result is None and fenced:
            why = f"no lease renewal for {self.fence_s:.0f} s"
            log.warning("job %s: fenced (%s): its process group was killed", job.id, why)
            return None
        if stop_reason == "lost":
            log.info("job %s: its lease was lost; its process was stopped", job.id)
            return None
        if result is None and stop_reason is not None:
            if stop_reason == "cancelling":
                self._confirm_cancelled(job)
            elif self.db.requeue(job, self.worker_id, False, failures.of_stop(self.stop_signal)):
                log.info("job %s: put back to pending (attempts unchanged)", job.id)
            return None
        if result is None:
            error = describe_exit(status or 0)
            write_error_file(output_dir, error + "\n")
            log.error("job %s failed: %s", job.id, error)
            failure = failures.of_exit(status or 0, oom_before)
            return Outcome(status="failed", error=error, output_dir=output_dir, failure=failure)
        error = result.get("error")
        failure = None
        if result["status"] == "failed":
            failure = failures.of_exception(*f"{error or 'Error'}:".split(":", 1))
        return kept_small(
            Outcome(
                status=result["status"],
                return_json=result.get("return_json"),
                error=error,
                output_dir=result.get("output_dir") or output_dir,
                result_blob=result.get("result_blob"),
                failure=failure,
            )
        )

    def _confirm_cancelled(self, job: Job) -> None:
        try:
            if self.db.confirm_stopped(job, self.worker_id):
                log.info("job %s: cancelled; its process is gone", job.id)
                notify.after_jobs(self.db, [_sweep_of(job)])
        except sqlite3.Error as e:  # the reaper confirms it once the lease has run out
            log.warning("job %s: could not confirm its cancellation: %s", job.id, e)


BREAKER_FAILURES = 5  # failed or lost jobs on one host within the window that stop it...
BREAKER_SHARE = 0.8  # ...when they are this share of its jobs there...
BREAKER_WINDOW_S = 600.0  # ...and other hosts completed jobs meanwhile
INLINE_RESULT_MAX = 8 << 20  # a returned object larger than this goes to a file
INLINE_JSON_MAX = 1 << 20  # a JSON return value larger than this stays in job.json only
RESULT_FILE = ".dr_exp_return.pkl"


def kept_small(outcome: Outcome) -> Outcome:
    """Sign the returned object; keep a large one in a file of the job's folder, and a large
    JSON value in its job.json, so that no size can stop the outcome from being recorded."""
    blob = outcome.result_blob
    if blob is not None:
        outcome.result_signature = payload.sign(blob)
        if len(blob) > INLINE_RESULT_MAX and outcome.output_dir:
            path = os.path.join(outcome.output_dir, RESULT_FILE)
            jobfiles.write_bytes(path, blob)
            outcome.result_blob, outcome.result_path = None, path
    if outcome.return_json is not None and len(outcome.return_json) > INLINE_JSON_MAX:
        where = os.path.join(outcome.output_dir or "", jobfiles.JOB_FILE)
        size = len(outcome.return_json)
        outcome.return_json = json.dumps(f"<a return value of {size} bytes: see {where}>")
    return outcome


def finished_before(job: Job) -> Optional[Outcome]:
    """The outcome of an earlier attempt that completed but never reached the database (its
    worker froze, or the disk was full): its folder's job.json says so.  Recording it beats
    running a finished job again."""
    info = jobfiles.read_job_file(Path(job.output_dir)) if job.output_dir else None
    if not info or info.get("id") != job.id or info.get("status") != "completed":
        return None
    path = os.path.join(job.output_dir or "", RESULT_FILE)
    blob = Path(path).read_bytes() if os.path.exists(path) else None
    return kept_small(
        Outcome(
            status="completed",
            return_json=json.dumps(info.get("return_value")),
            output_dir=job.output_dir,
            result_blob=blob,
        )
    )


def _sweep_of(job: Job) -> int:
    return job.run_sweep_id or job.sweep_id


def _slurm_job_id() -> Optional[str]:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")
