"""SLURM job arrays of node supervisors, submitted through submitit.

Instead of one scheduler job per training run (hydra-submitit-launcher), a
sweep gets a few long-lived array tasks; each runs a node supervisor that keeps
``workers_per_gpu`` workers per GPU draining the queue.  The resource keys are
hydra-submitit-launcher's ``submitit_slurm`` keys, so an existing config ports.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping, Optional

from dr_exp import defaults
from dr_exp.config import SUBMITIT_BASE_KEYS
from dr_exp.db import JobDB
from dr_exp.supervisor import SupervisorSettings, run_supervisor

log = logging.getLogger("dr_exp.slurm")

# Keys that configure dr_exp or the executor itself, not sbatch.
OWN_KEYS = {"submitit_folder", "array_size", "max_num_timeout", "array_parallelism", "requeue"}
SUBMITIT_SIGNAL_DELAY_S = 90  # submitit's --signal=USR2@90 when signal_delay_s is not given


def max_array_size() -> int:
    """The cluster's MaxArraySize (task indices must stay below it); SLURM's default is 1001."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 1001
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else 1001


def tasks_needed(pending: int, idle_workers: int, workers_per_task: int, array_size: int) -> int:
    """Size the array to the work: no task beyond what the pending jobs can keep busy,
    once the live workers that are idle now have taken their share."""
    uncovered = pending - idle_workers
    if uncovered <= 0:
        return 0
    return min(array_size, math.ceil(uncovered / max(workers_per_task, 1)))


def array_chunks(n_tasks: int, max_array_size: int) -> list[int]:
    """Split ``n_tasks`` into arrays whose indices (0..k-1) stay below MaxArraySize.

    SLURM's highest allowed index is MaxArraySize - 1; submitit writes
    ``--array=0-{k-1}`` and never splits (submitit #1624).
    """
    limit = max(max_array_size, 1)
    return [min(limit, n_tasks - start) for start in range(0, n_tasks, limit)]


def executor_parameters(slurm: Mapping[str, Any]) -> dict[str, Any]:
    """Map submitit_slurm-style keys to ``AutoExecutor.update_parameters`` names."""
    params: dict[str, Any] = {}
    for key, value in slurm.items():
        if key in OWN_KEYS or value is None:
            continue
        if key == "setup":
            params["slurm_setup"] = list(value)
        elif key in SUBMITIT_BASE_KEYS:
            params[key] = value
        else:
            params[f"slurm_{key}"] = value
    params["slurm_array_parallelism"] = slurm.get("array_parallelism") or defaults.ARRAY_PARALLELISM
    if slurm.get("requeue"):  # scontrol requeue needs a requeueable job (JobRequeue may be 0)
        params["slurm_additional_parameters"] = dict(
            params.get("slurm_additional_parameters") or {}, requeue=True
        )
    return params


def submit_workers(
    db_path: Path,
    experiment: Optional[str],
    slurm: Mapping[str, Any],
    workers_per_gpu: int = 1,
    supervisor: Optional[Mapping[str, Any]] = None,
    array_size: Optional[int] = None,
    force_tasks: Optional[int] = None,
) -> list[str]:
    """Submit arrays of node supervisors for the pending work; returns SLURM job ids.

    ``force_tasks`` submits exactly that many tasks (``dr_exp workers submit
    --array N``); otherwise the array is sized to the pending jobs that live
    workers do not already cover, and capped at ``array_size``.
    """
    import submitit  # heavy; only when a SLURM submission really happens

    size_cap = int(array_size or slurm.get("array_size") or 1)
    gpus = int(slurm.get("gpus_per_node") or 0)
    per_task = workers_per_gpu * max(gpus, 1) * int(slurm.get("tasks_per_node") or 1)
    sup = dict(supervisor or {})
    if force_tasks is not None:
        n_tasks = force_tasks
    else:
        db = JobDB.open(db_path, create=False)
        try:
            pending = sum(r["n"] for r in db.status_counts(experiment) if r["status"] == "pending")
            live = db.live_workers(
                3 * float(sup.get("heartbeat_s", defaults.HEARTBEAT_S)), experiment
            )
        finally:
            db.close()
        idle = sum(1 for w in live if w["state"] == "idle")
        n_tasks = tasks_needed(pending, idle, per_task, size_cap)
        if n_tasks == 0:
            log.info(
                "dr_exp: %d idle live workers already cover the %d pending jobs; no new array",
                idle,
                pending,
            )
            return []
    folder = str(slurm.get("submitit_folder") or (db_path.parent / "slurm" / "%j"))
    executor = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=slurm.get("max_num_timeout") or 0
    )
    params = executor_parameters(slurm)
    if "name" not in params:
        params["name"] = f"dr_exp-{experiment or 'workers'}"
    executor.update_parameters(**params)
    if slurm.get("timeout_min") and "max_hours" not in sup:
        sup["max_hours"] = float(slurm["timeout_min"]) / 60.0
    delay = slurm.get("signal_delay_s")
    sup.setdefault("signal_delay_s", float(SUBMITIT_SIGNAL_DELAY_S if delay is None else delay))
    sup.setdefault("requeue", bool(slurm.get("requeue")))
    settings = SupervisorSettings(
        db_path=db_path, experiment=experiment, workers_per_gpu=workers_per_gpu, **sup
    )
    job_ids: list[str] = []
    for chunk in array_chunks(n_tasks, max_array_size()):
        jobs = executor.map_array(run_supervisor, [settings] * chunk)
        job_ids.append(str(jobs[0].job_id).split("_")[0])
    log.info(
        "dr_exp: submitted %d SLURM array task(s) of %d worker(s) each: job(s) %s",
        n_tasks,
        per_task,
        ", ".join(job_ids),
    )
    return job_ids
