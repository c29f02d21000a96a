"""Allocations that fit their work: time-limit-aware claims, and self-requeue on SLURM.

A job's expected duration is its sweep's ``hydra.launcher.expected_minutes``, else the
median of its completed jobs; a worker does not claim a job that would outlast its
allocation (SLURM's end, or ``--max-hours``), and exits when nothing that fits is left.
With ``hydra.launcher.slurm.requeue=true`` an array task that runs out of time while
work remains requeues itself.

The SLURM tests need our test cluster (tests/slurm/slurm-up.sh); they skip without it,
except in CI, where a missing cluster is an error.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_app, run_cli
from test_slurm import cancel_arrays, require_cluster, squeue
from test_worker import jobs, wait_for

from dr_exp import allocation
from dr_exp.db import JobDB

APP = ROOT / "tests" / "apps" / "app.py"
JOB_NAME = "dr_exp_tests_alloc"  # every array these tests submit; teardown cancels by name
LOCAL = ["hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0"]


# -- the policy, without SLURM ------------------------------------------------------------
def test_slurm_times_and_durations_parse() -> None:
    assert allocation.parse_slurm_duration("3:00") == 180
    assert allocation.parse_slurm_duration("1:02:03") == 3723
    assert allocation.parse_slurm_duration("2-00:00:00") == 2 * 86400
    assert allocation.parse_slurm_duration("1-12") == 36 * 3600
    assert allocation.parse_slurm_duration("45") == 45 * 60
    assert allocation.parse_slurm_duration("UNLIMITED") is None
    end = allocation.parse_slurm_time("2026-12-01T11:48:05")
    assert end == time.mktime((2026, 12, 1, 11, 48, 5, 0, 0, -1))
    assert allocation.parse_slurm_time("NONE") is None
    assert allocation.slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    env = {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1"}
    assert allocation.slurm_job_id(env) == "7_1"
    assert allocation.slurm_job_id({}) is None


def test_what_fits_and_when_an_allocation_requeues() -> None:
    assert allocation.fits(None, 0, 100)  # an unknown duration never blocks a claim
    assert allocation.fits(500, 0, None)  # nor does an allocation without an end
    assert allocation.fits(60, 0, 100) and not allocation.fits(90, 0, 100)
    # Requeue only for pending work that a whole allocation could hold.
    assert allocation.requeue_decision({1: 600.0, 2: None}, 3600, 120)[0]
    assert allocation.requeue_decision({1: 600.0}, 3600, 120)[0]
    ok, why = allocation.requeue_decision({1: 4000.0}, 3600, 120)
    assert not ok and "timeout_min" in why
    assert not allocation.requeue_decision({}, 3600, 120)[0]


def _sweep(db: JobDB, n: int, settings: dict | None = None, experiment: str = "e") -> int:
    sweep = db.add_sweep(experiment=experiment, app="a", cwd="/", sys_path=[], sweep_dir="d",
                         config_yaml="", payload=b"x", want_returns=False,
                         settings=settings)  # fmt: skip
    db.enqueue_batch(sweep, experiment, [(i, [f"x={i}"]) for i in range(n)], priority=500,
                     tags=[], max_attempts=3, on_duplicate="always")  # fmt: skip
    return sweep


def _complete(db: JobDB, sweep: int, seconds: list[float]) -> None:
    """Mark the sweep's first jobs completed, each after ``seconds[i]``."""
    ids = db.sweep_job_ids(sweep)[: len(seconds)]
    now = time.time()
    db.write(lambda conn: conn.executemany(
        "UPDATE jobs SET status = 'completed', started = ?, ended = ? WHERE id = ?",
        [(now - s, now, i) for s, i in zip(seconds, ids)]))  # fmt: skip


def test_sweep_durations_are_the_setting_else_the_median_else_unknown(db_path: Path) -> None:
    db = JobDB.open(db_path)
    declared = _sweep(db, 3, {"expected_minutes": 5})
    learned = _sweep(db, 4)
    _complete(db, learned, [10.0, 30.0, 600.0])  # median 30 s; one job still pending
    unknown = _sweep(db, 2)
    finished = _sweep(db, 1)
    _complete(db, finished, [1.0])  # nothing pending: not listed
    other = _sweep(db, 1, {"expected_minutes": 1}, experiment="other")
    durations = db.sweep_durations()
    assert durations[declared] == 300.0
    assert abs(durations[learned] - 30.0) < 1.0
    assert durations[unknown] is None
    assert finished not in durations and durations[other] == 60.0
    assert other not in db.sweep_durations("e")
    # A worker whose allocation ends in 2 minutes skips the 5-minute sweep only.
    window = allocation.ClaimWindow(db, "e", deadline=time.time() + 120)
    assert window.skip_sweeps() == (declared,)
    assert window.nothing_fits() is None  # the learned and unknown sweeps still fit
    short = allocation.ClaimWindow(db, "e", deadline=time.time() + 20)
    assert short.skip_sweeps() == (declared, learned)
    assert short.nothing_fits() is None  # the unknown sweep still may
    db.close()


def test_launcher_settings_check_expected_minutes_and_the_requeue_warning() -> None:
    from dr_exp.config import DrExpLauncherConf, DrExpSlurmConf, check

    def problems(**kw) -> list[str]:
        slurm = DrExpSlurmConf(**kw.pop("slurm", {}))
        return check(DrExpLauncherConf(experiment="e", slurm=slurm, **kw))

    assert problems(expected_minutes=2.5) == []
    assert problems(expected_minutes=0) == [
        "expected_minutes: must be more than 0 minutes, or null, got 0"
    ]
    assert problems(expected_minutes=float("nan"))
    # With requeue, SLURM's warning must come after the allocation starts.
    (why,) = problems(slurm={"requeue": True, "timeout_min": 2, "signal_delay_s": 120})
    assert why.startswith("slurm.signal_delay_s:")
    assert problems(slurm={"requeue": True, "timeout_min": 3, "signal_delay_s": 120}) == []


def test_a_worker_with_max_hours_skips_a_sweep_whose_median_outlasts_it(
    tmp_path: Path, db_path: Path
) -> None:
    run_app(APP, "-m", "mode=ok", "x=range(0,4)", *LOCAL, cwd=tmp_path)
    db = JobDB.open(db_path, create=False)
    (long_sweep,) = {r["sweep_id"] for r in jobs(db_path)}
    _complete(db, long_sweep, [3600.0, 3500.0])  # jobs of this sweep take an hour
    run_app(APP, "-m", "mode=ok", "x=10,11", *LOCAL, cwd=tmp_path)  # a new sweep: unknown
    # 6 minutes of budget, and an idle timeout that would keep it for a minute.
    proc = run_cli("worker", "--max-hours", "0.1", "--idle-timeout", "60")
    rows = {r["overrides"][-1]: r for r in jobs(db_path)}
    assert rows["x=10"]["status"] == rows["x=11"]["status"] == "completed"
    assert rows["x=2"]["status"] == rows["x=3"]["status"] == "pending"
    assert rows["x=2"]["attempts"] == 0 and rows["x=3"]["attempts"] == 0
    assert "too little time left in this allocation" in proc.stderr
    assert "queue empty" not in proc.stderr  # it left for lack of time, not of work
    (worker,) = db.rows("SELECT state, detail FROM workers")
    assert worker["state"] == "exited" and "too little time left" in worker["detail"]
    # Without a budget, the same queue is drained: the skip was the budget's doing.
    run_cli("worker", "--idle-timeout", "0.5")
    assert {r["status"] for r in jobs(db_path)} == {"completed"}
    db.close()


# -- on the SLURM test cluster ----------------------------------------------------------
@pytest.fixture
def slurm() -> None:
    require_cluster()
    yield
    cancel_arrays(JOB_NAME)


def sacct_states(job_id: str) -> list[str]:
    """Every run of a job, requeued ones too (-D), by state."""
    out = subprocess.run(["sacct", "-n", "-X", "-D", "-j", job_id, "-o", "State%20"],
                         capture_output=True, text=True).stdout  # fmt: skip
    return [line.strip() for line in out.splitlines() if line.strip()]


def slurm_args(tmp_path: Path, timeout_min: int, *extra: str) -> list[str]:
    return [
        "hydra/launcher=dr_exp",
        "hydra.launcher.backend=slurm",
        "hydra.launcher.workers_per_gpu=2",
        "hydra.launcher.slurm.gpus_per_node=1",
        "hydra.launcher.slurm.array_size=1",
        f"hydra.launcher.slurm.timeout_min={timeout_min}",
        f"hydra.launcher.slurm.name={JOB_NAME}",
        f"hydra.launcher.slurm.submitit_folder={tmp_path}/slurm/%j",
        *extra,
    ]


def slurm_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (tmp_path / "slurm").rglob("*.err"))


@pytest.mark.slow
def test_a_task_skips_jobs_longer_than_its_time_left_and_gives_the_allocation_back(
    slurm: None, tmp_path: Path, db_path: Path
) -> None:
    """A 30-minute sweep on 5-minute array tasks is never claimed; the 1-minute one beside
    it is, and then the task exits (its idle timeout is 10 minutes) without requeueing,
    since no allocation of this size could run what is left."""
    run_app(APP, "-m", "mode=ok", "x=range(0,3)", "hydra.launcher.expected_minutes=1", *LOCAL,
            cwd=tmp_path)  # fmt: skip
    run_app(APP, "-m", "mode=ok", "x=range(10,13)", *slurm_args(
        tmp_path, 5, "hydra.launcher.expected_minutes=30", "hydra.launcher.slurm.requeue=true",
        "hydra.launcher.wait=false", "hydra.launcher.idle_timeout=600"), cwd=tmp_path)  # fmt: skip
    (array,) = [line.split()[0].split("_")[0] for line in squeue(JOB_NAME)]
    wait_for(lambda: not squeue(JOB_NAME), timeout=150, what="the array task to give its node back")
    rows = {r["overrides"][-1]: r for r in jobs(db_path)}
    for x in range(3):
        assert rows[f"x={x}"]["status"] == "completed"
    for x in range(10, 13):  # never claimed: not one attempt
        assert (rows[f"x={x}"]["status"], rows[f"x={x}"]["attempts"]) == ("pending", 0)
    logs = slurm_logs(tmp_path)
    assert "too little time left in this allocation" in logs
    assert "not requeueing: every pending job expects longer" in logs
    assert "REQUEUED" not in sacct_states(array)
    db = JobDB.open(db_path, create=False)
    workers = db.rows("SELECT slurm_job_id, detail FROM workers")
    assert workers and all(w["slurm_job_id"].split("_")[0] == array for w in workers)
    assert all("too little time left" in (w["detail"] or "") for w in workers)
    db.close()


def _ran_once_each(markers: Path, xs: range) -> None:
    """Each job's body ran to its end exactly once, and never beside another run of it."""
    assert not (markers / "DOUBLE").exists(), (markers / "DOUBLE").read_text()
    for x in xs:
        assert len((markers / f"{x}.done").read_text().split()) == 1, x


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_task_out_of_time_for_the_next_job_requeues_itself_until_the_sweep_is_done(
    slurm: None, tmp_path: Path, db_path: Path
) -> None:
    """Jobs expected to take 1 minute on 2-minute tasks (SLURM warns 30 s before the end):
    a task fits its first few jobs, then no next one, so it requeues itself; the fresh
    allocation goes on, until every job has completed once.  A worker may start a job only
    in the first 14 s of an allocation (90 s left, 1.1 x 60 s + 10 s needed), so 2 workers
    start at most 6 jobs of 5 s there, however fast they start: 10 jobs need a requeue."""
    markers = tmp_path / "m"
    xs = range(0, 10)
    run_app(APP, "-m", "mode=exclusive", "sleep=5", f"x=range(0,{len(xs)})",
            f"marker_dir={markers}", *slurm_args(
                tmp_path, 2, "hydra.launcher.expected_minutes=1",
                "hydra.launcher.slurm.requeue=true", "hydra.launcher.slurm.signal_delay_s=30",
                "hydra.launcher.idle_timeout=60"), cwd=tmp_path, timeout=540)  # fmt: skip
    rows = jobs(db_path)
    assert len(rows) == len(xs) and {r["status"] for r in rows} == {"completed"}
    _ran_once_each(markers, xs)
    db = JobDB.open(db_path, create=False)
    (task,) = {w["slurm_job_id"] for w in db.rows("SELECT slurm_job_id FROM workers")}
    states = sacct_states(task.split("_")[0])
    assert states.count("REQUEUED") >= 1, states
    assert "SLURM job" in slurm_logs(tmp_path) and "requeueing it" in slurm_logs(tmp_path)
    # More than one allocation ran the jobs: the supervisors of the task's runs differ.
    supervisors = {w["supervisor"] for w in db.rows("SELECT supervisor FROM workers")}
    assert len(supervisors) >= 2
    db.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_slurms_time_limit_warning_puts_jobs_back_and_requeues_the_task(
    slurm: None, tmp_path: Path, db_path: Path
) -> None:
    """USR2 (what --signal=USR2@N sends before the time limit; here sent at once with
    scancel --signal) stops the running jobs, puts them back without counting an attempt,
    and requeues the task, whose next run completes every job, each once."""
    markers = tmp_path / "m"
    xs = range(0, 4)
    run_app(APP, "-m", "mode=exclusive", "sleep=8", f"x=range(0,{len(xs)})",
            f"marker_dir={markers}", *slurm_args(
                tmp_path, 60, "hydra.launcher.slurm.requeue=true", "hydra.launcher.wait=false",
                "hydra.launcher.idle_timeout=5"), cwd=tmp_path)  # fmt: skip
    (task,) = [line.split()[0] for line in squeue(JOB_NAME)]
    wait_for(lambda: len(list(markers.glob("*.start"))) == 2, timeout=120,
             what="two jobs to start")  # fmt: skip
    subprocess.run(["scancel", "--signal=USR2", task], check=True)
    wait_for(lambda: {r["status"] for r in jobs(db_path)} == {"completed"}, timeout=240,
             what="the requeued task to finish the sweep")  # fmt: skip
    _ran_once_each(markers, xs)
    wait_for(lambda: "REQUEUED" in sacct_states(task), timeout=60, what="sacct to say REQUEUED")
    db = JobDB.open(db_path, create=False)
    outcomes = [a["outcome"] for r in jobs(db_path) for a in db.attempts(r["id"])]
    assert outcomes.count("requeued") == 2 and outcomes.count("completed") == len(xs)
    assert all(r["attempts"] == 1 for r in jobs(db_path))  # a requeue counts no attempt
    db.close()
