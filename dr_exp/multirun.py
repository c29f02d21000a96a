"""The submitting side of a sweep: what ``hydra/launcher=dr_exp`` does in the user's shell.

It stores the sweep's context once (a signed pickle), enqueues each launch
batch in one transaction without composing any config (the workers compose,
as hydra-submitit-launcher's remote side does), starts local workers, and
either waits for real ``JobReturn``s or returns right after enqueueing.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from hydra.errors import CompactHydraException

from dr_exp import config, jobfiles, notify, paths, payload, snapshot
from dr_exp.config import Backend, DrExpLauncherConf
from dr_exp.db import FINAL_STATUSES, Enqueued, JobDB, validate_priority
from dr_exp.errors import UserError
from dr_exp.hydra_sweep import SweepPayload
from dr_exp.local import LocalWorkers, default_worker_count, log_tail
from dr_exp.progress import Progress
from dr_exp.sweeper_config import SWEEPER_TARGET
from dr_exp.sync.callback import attach_callback
from dr_exp.sync.callback import validate_settings as validate_sync_settings
from dr_exp.utils import import_function

log = logging.getLogger("dr_exp")

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
LISTED_MAX = 100  # jobs of a launch batch listed one per line, as Hydra's launchers list them


class SettingsError(CompactHydraException, ValueError):
    """An invalid ``hydra.launcher.*`` value, reported before anything is written."""


def settings_from(raw: Mapping[str, Any]) -> DrExpLauncherConf:
    """The launcher's keyword arguments, typed by the one declaration in ``dr_exp.config``.

    OmegaConf checks the types and enum choices; ``dr_exp.config.check`` the ranges.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    plain = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in raw.items()
    }
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DrExpLauncherConf), plain)
        conf: DrExpLauncherConf = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        why = str(e).strip().splitlines()[0]
        raise SettingsError(f"hydra.launcher.{key}: {why}") from None
    problems = config.check(conf)
    if problems:
        raise SettingsError(f"hydra.launcher.{problems[0]}")
    conf.experiment = conf.experiment.strip()
    return conf


class Multirun:
    """One Hydra multirun as dr_exp runs it: the sweep stored once, each launch batch
    queued in one transaction, local workers or a SLURM array started, then results."""

    def __init__(
        self,
        settings: DrExpLauncherConf,
        hydra_context: Any,
        task_function: Any,
        config: Any,
    ) -> None:
        self.settings = settings
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        self.db_path = paths.job_db(settings.db)
        if settings.group_shared or paths.is_shared_folder(self.db_path.parent):
            paths.share_with_group()  # before Hydra's sweeper creates the sweep folder
        self.sweep_id: Optional[int] = None
        self.workers: Optional[LocalWorkers] = None
        sweeper = str(config.hydra.sweeper.get("_target_", BASIC_SWEEPER))
        if not settings.wait and sweeper not in (BASIC_SWEEPER, SWEEPER_TARGET):
            raise SettingsError(
                f"hydra.launcher.wait=false returns before jobs run, but {sweeper.rsplit('.', 1)[-1]} "
                "reads job results; use hydra.launcher.wait=true with it"
            )
        self.priority_fn = None
        if settings.priority_fn:
            try:
                self.priority_fn = import_function(settings.priority_fn, [os.getcwd()])
            except ValueError as e:
                raise SettingsError(f"hydra.launcher.priority_fn: {e}") from None
        try:
            self.sync: dict = validate_sync_settings(asdict(settings.sync))  # {} when off
        except ValueError as e:
            key, _, why = str(e).partition(": ")
            raise SettingsError(f"hydra.launcher.sync.{key}: {why}") from None
        self.sync_queue: Optional[str] = None
        if self.sync:  # on_job_end records each finished folder for upload
            try:
                self.sync_queue = attach_callback(
                    hydra_context, self.sync, self.db_path, group_shared=settings.group_shared
                ).queue
            except Exception as e:
                raise SettingsError(f"hydra.launcher.sync: {e}") from None

    # -- launching ---------------------------------------------------------------
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        from hydra.core.utils import configure_log, filter_overrides, setup_globals

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        numbered = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        priorities = self._priorities(numbered)  # before anything is written
        db = JobDB.open(self.db_path, group_shared=self.settings.group_shared)
        try:
            if self.sweep_id is None:
                self.sweep_id = self._store_sweep(db)
            done = db.enqueue_batch(
                self.sweep_id,
                self.settings.experiment,
                numbered,
                priority=priorities,
                tags=self.settings.tags,
                max_attempts=self.settings.max_attempts,
                on_duplicate=self.settings.on_duplicate,
            )
            ids = done.ids
            experiment = self.settings.experiment
            log.info(f"dr_exp: {_summary(done)} for experiment '{experiment}' in {db.path}")
            shown = zip(numbered[:LISTED_MAX], ids, done.actions)
            for (num, overrides), job_id, action in shown:
                note = (
                    ""
                    if action == "queued"
                    else f" ({_ACTION_NOTES.get(action, 'skipped: ' + action)}, job {job_id})"
                )
                log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}{note}")
            if len(numbered) > LISTED_MAX:
                more = len(numbered) - LISTED_MAX
                log.info(f"\t... and {more:,} more: dr_exp list --sweep {self.sweep_id}")
            jobfiles.append_manifest(
                Path(str(self.config.hydra.sweep.dir)),
                [
                    {"id": i, "experiment": self.settings.experiment, "job_num": n, "overrides": o}
                    for (n, o), i, a in zip(numbered, ids, done.actions)
                    if a == "queued"
                ],
            )
            to_run = len(
                {i for i, a in zip(ids, done.actions) if a in ("queued", "requeued", "pending")}
            )
            if to_run and self.settings.backend is Backend.slurm:
                self._submit_slurm()
            elif to_run:
                self._start_workers(to_run)
            if not self.settings.wait:
                self._print_monitor_hints(len(ids))
                return [self._queued_return(o) for _, o in numbered]
            self._wait(db, list(dict.fromkeys(ids)))
            if self.sync_queue:
                dest, queue = self.sync["dest"], self.sync_queue
                print(f"dr_exp: results upload in the background to {dest}; "
                      f"watch: dr_exp sync status --queue {queue}", file=sys.stderr)  # fmt: skip
            return self._collect(db, ids, numbered)
        finally:
            db.close()

    def _priorities(self, numbered: list) -> Union[int, list[int]]:
        """The batch's priority, or ``priority_fn`` of each job's composed config.

        The function needs each job's config, so this composes every job once
        more (about 40 ms each), and only when ``priority_fn`` is set.
        """
        if self.priority_fn is None:
            return self.settings.priority
        from omegaconf import open_dict, read_write

        name = f"hydra.launcher.priority_fn: {self.settings.priority_fn}"
        out = []
        for num, overrides in numbered:
            what = f"job #{num} ({' '.join(overrides) or 'no overrides'})"
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]  # the job's own config, as the task function sees it
            try:
                value = self.priority_fn(cfg)
            except Exception as e:
                text = f"{type(e).__name__}: {e}".replace("\n", " ")
                raise SettingsError(f"{name} raised {text} for {what}") from None
            try:
                out.append(validate_priority(value))
            except ValueError as e:
                raise SettingsError(f"{name} returned a bad priority for {what}: {e}") from None
        return out

    def _store_sweep(self, db: JobDB) -> int:
        import cloudpickle
        from hydra.core.singleton import Singleton
        from omegaconf import OmegaConf

        sys_path, hydra_context, snap = [p for p in sys.path if p], self.hydra_context, None
        if self.settings.snapshot_code:  # jobs import the project from a copy made now
            sweep_dir = str(self.config.hydra.sweep.dir)
            try:
                snap = snapshot.take(os.getcwd(), sweep_dir, self.settings.snapshot_glob)
            except UserError as e:
                raise SettingsError(str(e)) from None
            sys_path, hydra_context = snapshot.redirect(snap, sys_path, hydra_context)
        ctx = SweepPayload(
            hydra_context=hydra_context,
            task_function=self.task_function,
            config=self.config,
            singleton_state=Singleton.get_state(),
        )

        return db.add_sweep(
            experiment=self.settings.experiment,
            app=str(self.config.hydra.job.name),
            cwd=os.getcwd(),
            sys_path=sys_path,
            sweep_dir=str(self.config.hydra.sweep.dir),
            config_yaml=OmegaConf.to_yaml(self.config),
            payload=cloudpickle.dumps(ctx),  # by value from __main__; the row is signed
            want_returns=self.settings.wait,
            settings={  # dr_exp.notify reads them back, signed with the row
                "notify": self.settings.notify,
                "notify_on_failure": self.settings.notify_on_failure,
                "notify_metric": self.settings.notify_metric,
                "notify_mode": self.settings.notify_mode.value,
                "on_sweep_end": self.settings.on_sweep_end,
                "retry": dict(self.settings.retry or {}),
                "retry_backoff_s": self.settings.retry_backoff_s,
                "fork_server": self.settings.fork_server,  # dr_exp.forkserver
                "expected_minutes": self.settings.expected_minutes,  # dr_exp.allocation
                "snapshot": snap.settings() if snap else None,
            },
        )

    def _submit_slurm(self) -> None:
        from dr_exp.slurm import submit_workers

        submit_workers(
            self.db_path,
            self.settings.experiment,
            asdict(self.settings.slurm),
            workers_per_gpu=self.settings.workers_per_gpu,
            supervisor={"idle_timeout": self.settings.idle_timeout},
        )

    def _start_workers(self, n_jobs: int) -> None:
        count = self.settings.workers
        if count == 0:
            return
        if count is None:
            count = min(default_worker_count(), n_jobs)
        if self.workers is None:
            self.workers = LocalWorkers(
                db_path=self.db_path,
                experiment=self.settings.experiment,
                count=count,
                idle_timeout=self.settings.idle_timeout,
                log_dir=paths.worker_logs(self.db_path),
            )
            if self.settings.wait and not self.sync:
                # With sync on, workers outlive the sweep: they upload, then idle out.
                atexit.register(self.workers.stop)
        self.workers.count = max(self.workers.count, count)
        self.workers.ensure_started()

    # -- waiting -----------------------------------------------------------------
    def _wait(self, db: JobDB, ids: list[int]) -> None:
        bar = Progress(len(ids))
        self._waiting_ids = ids
        self._last_reap = time.monotonic()
        try:
            while True:
                counts = db.progress(ids)
                bar.show(counts)
                if sum(counts.get(s, 0) for s in FINAL_STATUSES) == len(ids):
                    notify.after_jobs(db, [self.sweep_id])  # once, whoever sees the end
                    break
                self._check_workers(db, counts)
                time.sleep(0.1)
        except KeyboardInterrupt:
            bar.close()
            self._interrupted(db, ids)
        bar.close()

    def _check_workers(self, db: JobDB, counts: dict[str, int]) -> None:
        """Reap lost jobs, replace workers that went idle; fail loudly if ours keep dying."""
        now = time.monotonic()
        if now - self._last_reap > 5:
            self._last_reap = now
            reaped = db.reap_expired()
            if reaped:
                counts = db.progress(self._waiting_ids)
                notify.after_jobs(db, db.sweeps_of_jobs(reaped))
            notify.retry_due(db)
        if self.workers is None or counts.get("pending", 0) == 0 or self.workers.alive():
            return
        crashed = self.workers.failed_exits()
        if crashed:
            code, log_path = crashed[-1]
            raise RuntimeError(
                f"dr_exp: all local workers exited (last with code {code}); "
                f"see {log_path}:\n{log_tail(log_path)}"
            )
        self.workers.ensure_started()

    def _interrupted(self, db: JobDB, ids: list[int]) -> None:
        print("\ndr_exp: interrupted; stopping local workers...", file=sys.stderr)
        if self.workers is not None:
            self.workers.stop()
        counts = db.progress(ids)
        left = counts.get("pending", 0) + counts.get("running", 0)
        print(
            f"dr_exp: {left} of {len(ids)} jobs are safe in the queue ({db.path}).\n"
            f"Resume them with: dr_exp worker --db {db.path} --experiment "
            f"{self.settings.experiment}",
            file=sys.stderr,
        )
        raise SystemExit(130)

    def _print_monitor_hints(self, n: int) -> None:
        started = self.workers.alive() if self.workers else 0
        who = f"{started} local workers started" if started else "no workers started here"
        if self.settings.backend is Backend.slurm:
            who = "SLURM workers submitted"
        print(
            f"dr_exp: {n} jobs queued for '{self.settings.experiment}' in {self.db_path} ({who}).\n"
            f"  watch:       dr_exp status --db {self.db_path}\n"
            f"  run workers: dr_exp worker --db {self.db_path} --experiment "
            f"{self.settings.experiment}",
            file=sys.stderr,
        )

    # -- returns -----------------------------------------------------------------
    @staticmethod
    def _queued_return(overrides: list[str]) -> Any:
        """What a non-waiting launch returns: a queued job, not a result."""
        from hydra.core.utils import JobReturn, JobStatus

        ret = JobReturn(overrides=overrides)
        ret.status = JobStatus.COMPLETED  # the sweeper reads return_value; UNKNOWN would assert
        ret.return_value = None
        return ret

    def _collect(self, db: JobDB, ids: list[int], numbered: list) -> list:
        """Real JobReturns in launch order; failures carry a readable JobFailed."""
        import json

        from hydra.core.utils import JobReturn, JobStatus

        rows = db.results(ids)
        returns = []
        n_failed = sum(1 for r in rows.values() if r["status"] != "completed")
        for job_id, (_, overrides) in zip(ids, numbered):
            row = rows[job_id]
            ret = None
            blob = row["result_blob"]
            if blob is None and row["result_path"] and os.path.exists(row["result_path"]):
                with open(row["result_path"], "rb") as f:  # a large result, kept in the folder
                    blob = f.read()
            if blob is not None:
                try:
                    ret = payload.loads(blob, row["result_signature"], what=f"job {job_id} result")
                except payload.SignatureMismatch as e:
                    row = dict(row, status="failed", error=str(e))
            if ret is None:
                ret = JobReturn(overrides=overrides, working_dir=row["output_dir"])
                ret.status = JobStatus.FAILED
                if row["status"] == "completed":
                    ret.status = JobStatus.COMPLETED
                    ret.return_value = json.loads(row["return_value"] or "null")
            if row["status"] != "completed":
                ret.status = JobStatus.FAILED
                ret.return_value = JobFailed.from_row(job_id, overrides, row, n_failed, len(ids))
            returns.append(ret)
        return returns


class JobFailed(CompactHydraException):  # Hydra prints these as their message alone
    """A failed job, as the sweeper re-raises it: the error and where its traceback is."""

    @classmethod
    def from_row(
        cls, job_id: int, overrides: Sequence[str], row: Mapping, n_failed: int, n_jobs: int
    ) -> JobFailed:
        lines = [
            f"dr_exp: job {job_id} ({' '.join(overrides) or 'no overrides'}) {row['status']}: "
            f"{row['error'] or 'no error recorded'}"
        ]
        if row.get("output_dir") and os.path.exists(os.path.join(row["output_dir"], "error.txt")):
            lines.append(f"  traceback: {os.path.join(row['output_dir'], 'error.txt')}")
        if n_failed > 1:
            lines.append(
                f"  {n_failed} of {n_jobs} jobs in this batch did not complete; "
                "see: dr_exp list --status failed"
            )
        return cls("\n".join(lines))


_ACTION_NOTES = {"requeued": "re-queued", "pending": "skipped: already pending"}


def _summary(done: Enqueued) -> str:
    """How a batch went into the queue: new, re-queued and skipped jobs."""
    new_ids = [i for i, a in zip(done.ids, done.actions) if a == "queued"]
    parts = [
        f"queued {done.queued} jobs" + (f" (ids {new_ids[0]}-{new_ids[-1]})" if new_ids else "")
    ]
    if done.requeued:
        parts.append(f"re-queued {done.requeued} failed or cancelled jobs")
    skipped = done.skipped()
    if skipped:
        detail = ", ".join(f"{n} {status}" for status, n in sorted(skipped.items()))
        parts.append(f"skipped {sum(skipped.values())} existing jobs ({detail})")
    return ", ".join(parts)
