"""The worker fleet on a real SLURM cluster (tests/slurm/slurm-up.sh starts one).

These tests skip on a machine without our test cluster, except in CI, where a
missing cluster is an error: .ci/run starts it before the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, run_app, run_cli
from test_worker import jobs, wait_for

from dr_exp.db import JobDB

APP = ROOT / "tests" / "apps" / "app.py"
JOB_NAME = "dr_exp_tests"  # every array these tests submit; teardown cancels by this name


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (run tests/slurm/slurm-up.sh as root)"
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scontrol failed: {e}"
    if "drexp" not in out.stdout:
        # Never submit test arrays to a real cluster by accident.
        return "the SLURM cluster is not dr_exp's test cluster (ClusterName=drexp)"
    return None


def require_cluster() -> None:
    """Skip without dr_exp's test cluster, except in CI, where that is a failure."""
    problem = _cluster_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM tests must run in CI: {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="module")
def slurm() -> None:
    require_cluster()


@pytest.fixture(autouse=True)
def cancel_leftovers(slurm):
    yield
    cancel_arrays(JOB_NAME)


def cancel_arrays(name: str) -> None:
    """Cancel every array named ``name`` and wait until they have left the queue."""
    subprocess.run(["scancel", f"--name={name}"], capture_output=True)
    wait_for(lambda: not squeue(name), timeout=60, what="test arrays to leave the queue")


def squeue(name: str = JOB_NAME) -> list[str]:
    """The tasks of the arrays named ``name`` in the queue: "<job id> <state>" each."""
    out = subprocess.run(["squeue", "-h", f"--name={name}", "-o", "%i %T"],
                         capture_output=True, text=True).stdout  # fmt: skip
    return [line for line in out.splitlines() if line.strip()]


SLURM_OVERRIDES = [
    "hydra/launcher=dr_exp",
    "hydra.launcher.backend=slurm",
    "hydra.launcher.workers_per_gpu=2",
    "hydra.launcher.slurm.gpus_per_node=1",
    "hydra.launcher.slurm.array_size=2",
    "hydra.launcher.slurm.timeout_min=60",
    f"hydra.launcher.slurm.name={JOB_NAME}",
    "hydra.launcher.idle_timeout=3",
]


def test_a_sweep_is_drained_by_a_two_task_array_with_pinned_gpus(
    tmp_path: Path, db_path: Path
) -> None:
    run_app(APP, "-m", "mode=env", "x=range(0,24)", *SLURM_OVERRIDES, cwd=tmp_path, timeout=600)
    rows = jobs(db_path)
    assert len(rows) == 24 and {r["status"] for r in rows} == {"completed"}
    envs = [r["return_value"] for r in rows]
    # Two array tasks of one submission did the work, each with two workers.
    tasks = {e["SLURM_ARRAY_TASK_ID"] for e in envs}
    assert tasks <= {"0", "1"} and len({e["SLURM_ARRAY_JOB_ID"] for e in envs}) == 1
    db = JobDB.open(db_path, create=False)
    workers = db.rows("SELECT slurm_job_id, gpu FROM workers")
    assert len(workers) == 4
    # Each job saw the GPU that SLURM gave its array task, and the tasks got different GPUs.
    for e in envs:
        assert e["CUDA_VISIBLE_DEVICES"] in ("0", "1")
        assert e["CUDA_VISIBLE_DEVICES"] == (e["SLURM_STEP_GPUS"] or e["SLURM_JOB_GPUS"])
    by_task = {t: {w["gpu"] for w in workers if w["slurm_job_id"].endswith(f"_{t}")}
               for t in ("0", "1")}  # fmt: skip
    assert all(len(g) == 1 for g in by_task.values()) and by_task["0"] != by_task["1"]


def test_wait_false_returns_after_submitting(tmp_path: Path, db_path: Path) -> None:
    proc = run_app(APP, "-m", "mode=ok", "x=range(0,4)", *SLURM_OVERRIDES,
                   "hydra.launcher.wait=false", cwd=tmp_path)  # fmt: skip
    assert "SLURM workers submitted" in proc.stderr
    assert squeue(), "an array was submitted"
    wait_for(lambda: {r["status"] for r in jobs(db_path)} == {"completed"}, timeout=300,
             what="the array to drain the queue")  # fmt: skip


def test_no_new_array_when_idle_live_workers_cover_the_queue(tmp_path: Path, db_path: Path) -> None:
    markers = tmp_path / "m"
    run_app(APP, "-m", "mode=sleep", "sleep=120", "x=1", f"marker_dir={markers}",
            *SLURM_OVERRIDES, "hydra.launcher.wait=false", "hydra.launcher.idle_timeout=120",
            cwd=tmp_path)  # fmt: skip
    # One pending job: an array of one task (two workers), not array_size tasks.
    assert len(squeue()) == 1
    db = JobDB.open(db_path, create=False)
    wait_for(lambda: len(db.live_workers(60)) == 2 and (markers / "1.start").exists(),
             timeout=120, what="the job to run, beside an idle worker")  # fmt: skip
    wait_for(lambda: [w["state"] for w in db.live_workers(60)].count("idle") == 1, timeout=60,
             what="the second worker to report itself idle")  # fmt: skip
    before = squeue()
    run_app(APP, "-m", "mode=ok", "x=7", *SLURM_OVERRIDES, "hydra.launcher.wait=false",
            cwd=tmp_path)  # fmt: skip
    assert squeue() == before  # the idle live worker covers the one new job
    wait_for(lambda: any(r["return_value"] == 14 for r in jobs(db_path)), timeout=120,
             what="the idle live worker to take the new job")  # fmt: skip
    # With every live worker busy, new work does get a new array.
    run_app(APP, "-m", "mode=sleep", "sleep=120", "x=2", f"marker_dir={markers}",
            *SLURM_OVERRIDES, "hydra.launcher.wait=false", cwd=tmp_path)  # fmt: skip
    wait_for(lambda: (markers / "2.start").exists(), timeout=120, what="x=2 to start")
    run_app(APP, "-m", "mode=ok", "x=8", *SLURM_OVERRIDES, "hydra.launcher.wait=false",
            cwd=tmp_path)  # fmt: skip
    assert len(squeue()) > len(before)
    wait_for(lambda: any(r["return_value"] == 16 for r in jobs(db_path)), timeout=120,
             what="the new array to take the new job")  # fmt: skip
    (markers / "release").write_text("")


def test_scancel_of_one_task_requeues_its_jobs_for_the_other(tmp_path: Path, db_path: Path) -> None:
    markers = tmp_path / "m"
    run_app(APP, "-m", "mode=exclusive", "sleep=4", "x=range(0,12)", f"marker_dir={markers}",
            "hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0",
            cwd=tmp_path)  # fmt: skip
    out = run_cli("workers", "submit", "--array", "2", "--workers-per-gpu", "2",
                  "--gpus-per-node", "1", "--grace", "2", "--heartbeat", "0.5", "--lease", "5",
                  "--idle-timeout", "3", "--name", JOB_NAME,
                  "--folder", str(tmp_path / "slurm" / "%j")).stdout  # fmt: skip
    array_id = out.split("job(s) ")[1].split(":")[0]
    db = JobDB.open(db_path, create=False)

    def busy_in_task(task: str) -> list[dict]:
        return [w for w in db.rows("SELECT * FROM workers WHERE state = 'busy'")
                if (w["slurm_job_id"] or "").endswith(f"_{task}")]  # fmt: skip

    wait_for(lambda: busy_in_task("0") and busy_in_task("1"), timeout=180,
             what="both array tasks to run jobs")  # fmt: skip
    running_in_0 = {w["job_id"] for w in busy_in_task("0")}
    subprocess.run(["scancel", f"{array_id}_0"], check=True)
    wait_for(lambda: {r["status"] for r in jobs(db_path)} == {"completed"}, timeout=300,
             what="task 1 to finish every job")  # fmt: skip
    rows = jobs(db_path)
    assert len(rows) == 12
    assert not (markers / "DOUBLE").exists()  # never two runs of one job at once
    outcomes = {}
    for job_id in running_in_0:
        outcomes[job_id] = [a["outcome"] for a in db.attempts(job_id)]
        assert outcomes[job_id][-1] == "completed"
    # The cancelled task's jobs went back to the queue without counting an attempt.
    assert any("requeued" in o for o in outcomes.values()), outcomes
    requeued = [r for r in rows if "requeued" in outcomes.get(r["id"], [])]
    assert all(r["attempts"] == 1 for r in requeued)
    # ... and the other task finished them.
    task1 = {w["id"] for w in db.rows("SELECT id, slurm_job_id FROM workers")
             if w["slurm_job_id"].endswith("_1")}  # fmt: skip
    for job_id in running_in_0:
        (done,) = [a for a in db.attempts(job_id) if a["outcome"] == "completed"]
        assert done["worker"] in task1


def test_status_shows_slurm_workers_and_their_gpus(tmp_path: Path, db_path: Path) -> None:
    markers = tmp_path / "m"
    run_app(APP, "-m", "mode=sleep", "sleep=120", "x=1", f"marker_dir={markers}",
            *SLURM_OVERRIDES, "hydra.launcher.wait=false", cwd=tmp_path)  # fmt: skip
    wait_for(lambda: (markers / "1.start").exists(), timeout=120, what="the job to start")
    status = json.loads(run_cli("status", "--format", "json").stdout)
    workers = status["workers"]
    assert workers and all(w["slurm_job_id"] and w["gpu"] in ("0", "1") for w in workers)
    assert any(w["state"] == "busy" for w in workers)
    # The fake GPUs have no NVML behind them, so telemetry is absent rather than made up.
    assert all(w["gpu_util"] is None for w in workers)
    (markers / "release").write_text("")
