"""``JobSubmitter``: submit batches of trainer jobs, as the seed's submission scripts do.

    from dr_exp.scripts.submission.submission_utils import JobSubmitter

    submitter = JobSubmitter(
        base_path="/scratch/me/myproject",
        experiment="my_experiment",
        config_dir="configs/experiment",
        dry_run=False,
        skip_existing=True,  # a job already queued, running or completed is not queued again
    )
    submitter.submit_batch([
        {"config": "baseline.yaml", "seed": 0, "priority": 100},
        {"config": "variant.yaml", "seed": 1, "priority": 90, "tags": ["variant"]},
    ])

Keys of a job dict: ``config`` (under ``base_path/config_dir``), ``priority``,
``tags``, ``overrides`` (a dict, a list of ``key=value``, or ``"a=1,b=2"``),
``trainer``; any other key is an override (``"seed": 0`` -> ``seed=0``).
The whole batch is checked before anything is written.  ``skip_existing=True``
skips completed, pending and running jobs and queues failed and cancelled ones
again (``on_duplicate="retry_failed"``); ``False`` queues every job anew.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from dr_exp import api
from dr_exp.db import JobDB
from dr_exp.paths import job_db as db_path_for


class JobSubmitter:
    def __init__(
        self,
        base_path: Union[str, Path],
        experiment: str,
        dry_run: bool = False,
        config_dir: Optional[str] = api.DEFAULT_CONFIG_DIR,
        skip_existing: bool = True,
        project: Optional[str] = None,
        trainer: Optional[str] = None,
        db: Union[str, Path, None] = None,
        verbose: bool = True,
    ) -> None:
        self.base_path = Path(base_path).expanduser().absolute()
        self.experiment = experiment
        self.dry_run = dry_run
        self.config_dir = config_dir
        self.skip_existing = skip_existing
        self.project = project
        self.trainer = trainer
        self.db = db
        self.verbose = verbose
        self.submitted: list[dict] = []  # every result of this submitter, for print_summary

    def submit_batch(self, jobs: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Check, then queue the whole batch; one result dict per job (see api.submit_jobs)."""
        results = api.submit_jobs(
            jobs,
            experiment=self.experiment,
            project=self.project,
            base_path=self.base_path,
            config_dir=self.config_dir,
            trainer=self.trainer,
            db=self.db,
            on_duplicate="retry_failed" if self.skip_existing else "always",
            dry_run=self.dry_run,
        )
        self.submitted += results
        if self.verbose:
            for r in results:
                print(f"{r['action']:>13}  job {r['id'] or '-'}  {Path(r['config']).name} "
                      f"{' '.join(r['overrides'])}  priority {r['priority']}")  # fmt: skip
        return results

    def submit_job(
        self,
        config: str,
        seed: Optional[int] = None,
        priority: int = api.DEFAULT_PRIORITY,
        extra_overrides: Union[None, str, Mapping[str, Any], Sequence[str]] = None,
        tags: Optional[Sequence[str]] = None,
    ) -> tuple[bool, Optional[int]]:
        """One job, as the seed's scripts call it: (queued or re-queued?, job id)."""
        job: dict[str, Any] = {"config": config, "priority": priority, "tags": list(tags or [])}
        job["overrides"] = api.to_overrides(extra_overrides)
        if seed is not None:
            job["seed"] = seed
        (result,) = self.submit_batch([job])
        return result["action"] in ("queued", "requeued", "would queue"), result["id"]

    def validate_config(self, config: str) -> bool:
        """Whether ``config`` names an existing file (under base_path/config_dir or base_path)."""
        try:
            api.find_config(config, self.base_path, self.config_dir)
        except api.SubmitError:
            return False
        return True

    def check_existing_jobs(self) -> set[tuple[str, Any]]:
        """(config name, seed) of every job of this experiment, as the seed's scripts expect."""
        path = db_path_for(str(self.db) if self.db else None, str(self.base_path))
        if not path.exists():
            return set()
        db = JobDB.open(path, create=False)
        try:
            apps = {s["id"]: s["app"] for s in db.sweeps()}
            found = set()
            for job in db.list_jobs(experiment=self.experiment):
                seed = next(
                    (o.split("=", 1)[1] for o in job["overrides"] if o.startswith("seed=")), None
                )
                found.add(
                    (apps.get(job["sweep_id"]), int(seed) if seed and seed.isdigit() else seed)
                )
            return found
        finally:
            db.close()

    def print_summary(self) -> None:
        counts: dict[str, int] = {}
        for r in self.submitted:
            counts[r["action"]] = counts.get(r["action"], 0) + 1
        print(
            ", ".join(f"{n} {action}" for action, n in sorted(counts.items()))
            or "nothing submitted"
        )
