"""Submit trainer jobs from Python, and wait for them: the seed's API.

    import dr_exp.api as dr_exp

    job_id = dr_exp.submit_job(
        project="my_project",
        experiment="my_experiment",
        config_name="configs/experiment/baseline.yaml",
        overrides={"seed": 42, "optim.lr": 0.1},
        priority=100,  # 0-1000, higher runs first
        tags=["baseline", "lr0.1"],
    )
    jobs = dr_exp.wait([job_id], timeout=3600)  # job dicts, as `dr_exp list --format json`

The job database is ``db``, else ``<base_path>/.dr_exp/jobs.db``, else
``$DR_EXP_DB``, else ``.dr_exp/jobs.db`` in the current directory.  Job
folders go under ``<base_path>/outputs/<experiment>/<job id>`` (the base
path defaults to the current directory).  See ``dr_exp.trainer`` for how a job
names its trainer and what the worker does with it.

Submitting is idempotent: a job with the same experiment, config and
overrides as one already queued is not queued twice (``on_duplicate``, as
``hydra.launcher.on_duplicate``).  Every argument is checked before anything
is written; bad input raises ``ValueError`` (``SubmitError``) with a one-line message.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from dr_exp import jobfiles, paths, trainer
from dr_exp.db import FINAL_STATUSES, ON_DUPLICATE, JobDB, validate_priority
from dr_exp.defaults import MAX_ATTEMPTS as DEFAULT_MAX_ATTEMPTS
from dr_exp.defaults import PRIORITY as DEFAULT_PRIORITY
from dr_exp.errors import BadInput
from dr_exp.identity import job_identity
from dr_exp.paths import job_db as db_path_for
from dr_exp.utils import import_function

# Keys of a job dict that are not overrides (everything else is: {"seed": 0} -> seed=0).
RESERVED_KEYS = ("config", "config_name", "overrides", "priority", "tags", "trainer")
DEFAULT_CONFIG_DIR = paths.DEFAULT_CONFIG_DIR


class SubmitError(BadInput):
    """Bad input to a submission, reported before anything is written."""


@dataclass
class PlannedJob:
    """One job, checked and ready to queue."""

    config: Path  # absolute
    trainer: str
    overrides: list[str]
    priority: int
    tags: list[str]

    @property
    def app(self) -> str:
        return self.config.stem  # part of the job's identity, with experiment and overrides


def format_value(value: Any) -> str:
    """A Python value as a Hydra override value: 0.1, true, null, [1,2], 'two words'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if text and all(c.isalnum() or c in "._-/:@" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_overrides(overrides: Union[None, str, Mapping[str, Any], Iterable[str]]) -> list[str]:
    """``{"optim.lr": 0.1}``, ``["optim.lr=0.1"]`` or ``"optim.lr=0.1,seed=0"`` -> a list."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [o.strip() for o in overrides.split(",") if o.strip()]
    if isinstance(overrides, Mapping):
        return [f"{k}={format_value(v)}" for k, v in overrides.items()]
    return [str(o).strip() for o in overrides if str(o).strip()]


def check_overrides(overrides: list[str], what: str) -> None:
    """Parse with Hydra's grammar; a sweep (a=1,2) is not one job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        text = str(e).strip().splitlines()[0]
        raise SubmitError(f"{what}: bad override: {text}") from None
    for override in parsed:
        if override.is_sweep_override():
            raise SubmitError(
                f"{what}: {override.input_line!r} is a sweep; a submitted job takes single values"
            )


def find_config(config: str, base_path: Path, config_dir: Optional[str] = None) -> Path:
    """The config file: absolute, or under base/config_dir, base, or the current directory."""
    raw = Path(os.path.expanduser(str(config)))
    names = [raw] if raw.suffix in (".yaml", ".yml") else [raw, raw.with_name(raw.name + ".yaml")]
    if raw.is_absolute():
        candidates = names
    else:
        roots = [base_path / config_dir] if config_dir else []
        roots += [base_path, Path.cwd()]
        candidates = [root / name for root in roots for name in names]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    looked = ", ".join(dict.fromkeys(str(p.parent) for p in candidates))
    raise SubmitError(f"config file not found: {config} (looked in {looked})")


def plan(
    jobs: Sequence[Mapping[str, Any]],
    *,
    base_path: Path,
    config_dir: Optional[str] = None,
    trainer_name: Optional[str] = None,
) -> list[PlannedJob]:
    """Check every job (config file, trainer, overrides, priority, tags); write nothing."""
    if isinstance(jobs, Mapping) or not all(isinstance(j, Mapping) for j in jobs):
        raise SubmitError(
            "jobs must be a list of dicts like {'config': 'baseline.yaml', 'seed': 0}"
        )
    planned: list[PlannedJob] = []
    trainers: dict[tuple[Path, Optional[str]], str] = {}
    sys_path = [str(base_path), os.getcwd()]
    for n, job in enumerate(jobs):
        config = job.get("config") or job.get("config_name")
        what = f"job {n + 1} ({config})" if len(jobs) > 1 else str(config)
        if not config:
            raise SubmitError(f"job {n + 1}: no config (give 'config': 'baseline.yaml')")
        path = find_config(str(config), base_path, config_dir)
        explicit = job.get("trainer") or trainer_name
        key = (path, explicit)
        if key not in trainers:
            name = trainer.trainer_name(explicit, path, base_path)
            import_function(name, sys_path, "trainer")  # a typo fails here, not on a worker
            trainers[key] = name
        overrides = to_overrides(job.get("overrides"))
        overrides += [f"{k}={format_value(v)}" for k, v in job.items() if k not in RESERVED_KEYS]
        check_overrides(overrides, what)
        try:
            priority = validate_priority(job.get("priority", DEFAULT_PRIORITY))
        except ValueError as e:
            raise SubmitError(f"{what}: {e}") from None
        tags = job.get("tags") or []
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        if not all(isinstance(t, (str, int)) and str(t).strip() for t in tags):
            raise SubmitError(f"{what}: tags must be a list of non-empty names, got {tags!r}")
        planned.append(PlannedJob(path, trainers[key], overrides, priority, [str(t) for t in tags]))
    return planned


def submit_jobs(
    jobs: Sequence[Mapping[str, Any]],
    *,
    experiment: str,
    project: Optional[str] = None,
    base_path: Union[str, Path, None] = None,
    config_dir: Optional[str] = DEFAULT_CONFIG_DIR,
    trainer: Optional[str] = None,
    db: Union[str, Path, None] = None,
    on_duplicate: str = "retry_failed",
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    dry_run: bool = False,
) -> list[dict]:
    """Queue trainer jobs; returns one dict per job: id, action, config, overrides, priority.

    ``action`` is ``queued``, ``requeued`` (a failed or cancelled job queued
    again) or the status of the existing job that was skipped.  With
    ``dry_run``, nothing is written and ``id`` is the existing job's or None.
    """
    if not isinstance(experiment, str):
        raise SubmitError(f"experiment must be a non-empty name, got {experiment!r}")
    experiment = paths.check_experiment(experiment)
    if on_duplicate not in ON_DUPLICATE:
        raise SubmitError(f"on_duplicate must be one of {', '.join(ON_DUPLICATE)}")
    base = Path(os.path.expanduser(str(base_path))).absolute() if base_path else Path.cwd()
    db_path = db_path_for(str(db) if db else None, str(base) if base_path else None)
    planned = plan(jobs, base_path=base, config_dir=config_dir, trainer_name=trainer)
    if dry_run:
        return _dry_run(planned, experiment, db_path, on_duplicate)
    sweep_dir = base / "outputs" / experiment
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(planned):
        groups.setdefault((job.config, job.trainer, tuple(job.tags)), []).append(i)
    results: list[dict] = [{} for _ in planned]
    store = JobDB.open(db_path)
    try:
        for (config, trainer_fn, tags), members in groups.items():
            sweep_id = store.add_sweep(
                experiment=experiment,
                app=config.stem,
                cwd=str(base),
                sys_path=list(dict.fromkeys([str(base), os.getcwd()])),
                sweep_dir=str(sweep_dir),
                config_yaml=config.read_text(),
                payload=b"",  # nothing to unpickle: the spec says what to run
                want_returns=False,
                kind="trainer",
                spec={"config": str(config), "trainer": trainer_fn, "project": project},
            )
            done = store.enqueue_batch(
                sweep_id,
                experiment,
                [(n, planned[i].overrides) for n, i in enumerate(members)],
                priority=[planned[i].priority for i in members],
                tags=list(tags),
                max_attempts=max_attempts,
                on_duplicate=on_duplicate,
            )
            jobfiles.append_manifest(
                sweep_dir,
                [
                    {
                        "id": job_id,
                        "experiment": experiment,
                        "job_num": n,
                        "overrides": planned[i].overrides,
                        "output_dir": str(sweep_dir / str(job_id)),
                    }
                    for n, (i, job_id, action) in enumerate(zip(members, done.ids, done.actions))
                    if action == "queued"
                ],
            )
            for i, job_id, action in zip(members, done.ids, done.actions):
                results[i] = _result(planned[i], job_id, action)
    finally:
        store.close()
    return results


def _result(job: PlannedJob, job_id: Optional[int], action: str) -> dict:
    return {
        "id": job_id,
        "action": action,
        "config": str(job.config),
        "overrides": job.overrides,
        "priority": job.priority,
        "tags": job.tags,
    }


def _dry_run(
    planned: list[PlannedJob], experiment: str, db_path: Path, on_duplicate: str
) -> list[dict]:
    existing: dict[str, dict] = {}
    if db_path.exists() and on_duplicate != "always":
        store = JobDB.open(db_path, create=False)
        try:
            existing = store.existing_jobs(
                experiment, [job_identity(experiment, j.app, j.overrides) for j in planned]
            )
        finally:
            store.close()
    out = []
    for job in planned:
        old = existing.get(job_identity(experiment, job.app, job.overrides))
        if old is None:
            out.append(_result(job, None, "would queue"))
        elif on_duplicate == "retry_failed" and old["status"] in ("failed", "cancelled"):
            out.append(_result(job, old["id"], "would requeue"))
        else:
            out.append(_result(job, old["id"], old["status"]))
    return out


def submit_job(
    project: Optional[str] = None,
    experiment: Optional[str] = None,
    config_name: Optional[str] = None,
    overrides: Union[None, str, Mapping[str, Any], Iterable[str]] = None,
    priority: int = DEFAULT_PRIORITY,
    tags: Optional[Sequence[str]] = None,
    *,
    base_path: Union[str, Path, None] = None,
    trainer: Optional[str] = None,
    db: Union[str, Path, None] = None,
    on_duplicate: str = "retry_failed",
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> int:
    """Queue one trainer job; returns its id (the existing job's id for a duplicate)."""
    if not config_name:
        raise SubmitError("config_name is required, e.g. 'configs/experiment/baseline.yaml'")
    job = {"config": config_name, "overrides": overrides, "priority": priority, "tags": tags}
    where = {"project": project, "base_path": base_path, "db": db}
    how = {"trainer": trainer, "on_duplicate": on_duplicate, "max_attempts": max_attempts}
    (result,) = submit_jobs([job], experiment=experiment or "", **where, **how)
    return result["id"]


def wait(
    job_ids: Optional[Sequence[int]] = None,
    *,
    experiment: Optional[str] = None,
    timeout: Optional[float] = None,
    poll: float = 2.0,
    base_path: Union[str, Path, None] = None,
    db: Union[str, Path, None] = None,
) -> list[dict]:
    """Block until the jobs (``job_ids``, or all of ``experiment``) are completed, failed or
    cancelled; returns their job dicts.  Raises TimeoutError after ``timeout`` seconds.

    Waiting does not run anything: workers (``dr_exp worker``, a SLURM
    allocation) must be draining the queue.
    """
    if job_ids is None and not experiment:
        raise BadInput("wait needs job ids or an experiment")
    ids = None if job_ids is None else [int(i) for i in job_ids]
    path = db_path_for(str(db) if db else None, str(base_path) if base_path else None)
    deadline = None if timeout is None else time.monotonic() + timeout
    store = JobDB.open(path, create=False)
    try:
        while True:
            rows = store.list_jobs(experiment=experiment, ids=ids)
            if ids is not None and len(rows) < len(set(ids)):
                missing = sorted(set(ids) - {r["id"] for r in rows})
                raise BadInput(f"no job with id {missing[0]}")
            left = [r for r in rows if r["status"] not in FINAL_STATUSES]
            if not left:
                return rows
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(left)} of {len(rows)} jobs not finished after {timeout} s "
                    f"(first: job {left[0]['id']}, {left[0]['status']})"
                )
            time.sleep(poll)
    finally:
        store.close()


def submit_and_wait(
    jobs: Optional[Sequence[Mapping[str, Any]]] = None,
    *,
    timeout: Optional[float] = None,
    poll: float = 2.0,
    **kwargs: Any,
) -> list[dict]:
    """Submit (a list of job dicts, or one job as ``submit_job`` takes it), then ``wait``.

    For staged experiments: run a coarse sweep, wait, read ``dr_exp.results.load``,
    then submit a fine sweep around the best point.
    """
    where = {k: kwargs[k] for k in ("base_path", "db") if kwargs.get(k)}
    if jobs is None:
        ids = [submit_job(**kwargs)]
    else:
        ids = [r["id"] for r in submit_jobs(jobs, **kwargs)]
    return wait(ids, timeout=timeout, poll=poll, **where)
