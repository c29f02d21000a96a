"""The worker fleet on one machine: leases, the node supervisor, crash loops, max-hours, chaos."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_app
from test_worker import jobs, wait_for

from dr_exp.db import JobDB

APP = ROOT / "tests" / "apps" / "app.py"


def queue(tmp_path: Path, *overrides: str) -> None:
    run_app(APP, "-m", *overrides, "hydra/launcher=dr_exp", "hydra.launcher.wait=false",
            "hydra.launcher.workers=0", cwd=tmp_path)  # fmt: skip


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def dr_exp(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dr_exp", *args], stderr=subprocess.PIPE,
                            text=True, **kw)  # fmt: skip


def test_sigkilled_worker_job_is_recovered_after_its_lease(tmp_path: Path, db_path: Path) -> None:
    markers = tmp_path / "m"
    queue(tmp_path, "mode=exclusive", "sleep=3", "x=1", f"marker_dir={markers}")
    first = dr_exp("worker", "--lease", "3", "--heartbeat", "0.5")
    wait_for(lambda: (markers / "1.start").exists(), what="the job to start")
    job_pid = int((markers / "1.start").read_text())
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    wait_for(lambda: not alive(job_pid), timeout=10, what="the orphaned job to die with its worker")
    (row,) = jobs(db_path)
    assert row["status"] == "running"  # nobody has noticed yet: the lease still runs
    # An idle worker sees the expired lease as work: it reaps and reruns the job.
    second = dr_exp("worker", "--lease", "3", "--heartbeat", "0.5", "--idle-timeout", "8")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    (row,) = jobs(db_path)
    assert (row["status"], row["attempts"], row["return_value"]) == ("completed", 2, 1)
    db = JobDB.open(db_path, create=False)
    history = [(a["outcome"], a["detail"] or "") for a in db.attempts(row["id"])]
    assert history[0][0] == "lost" and "stopped renewing its lease" in history[0][1]
    assert history[1][0] == "completed"
    assert not (markers / "DOUBLE").exists()
    assert len((markers / "1.done").read_text().split()) == 1  # only the second run finished


def test_supervisor_restarts_a_dead_worker_then_stops_a_crash_loop(
    tmp_path: Path, db_path: Path
) -> None:
    markers = tmp_path / "m"
    queue(tmp_path, "mode=sleep", "sleep=120", "x=1", f"marker_dir={markers}")
    sup = dr_exp("system", "launcher", "--cpu-workers", "1", "--crash-limit", "3",
                 "--crash-window", "300", "--lease", "30", "--heartbeat", "1")  # fmt: skip
    killed = []
    deadline = time.monotonic() + 120
    while sup.poll() is None and time.monotonic() < deadline:
        workers = [p for p in children(sup.pid) if p not in killed]
        if workers:
            os.kill(workers[0], signal.SIGKILL)  # a worker dies, as if OOM-killed
            killed.append(workers[0])
        time.sleep(0.2)
    _, err = sup.communicate(timeout=60)
    assert len(killed) == 3  # restarted twice after deaths, then given up
    assert sup.returncode == 1
    assert "restarting in" in err
    assert "crash-looped (3 failed exits" in err and "not restarting it" in err


def test_max_hours_stops_new_claims_before_the_budget_ends(tmp_path: Path, db_path: Path) -> None:
    queue(tmp_path, "mode=sleep", "sleep=0.5", "x=range(0,40)")
    sup = dr_exp("system", "launcher", "--cpu-workers", "1", "--max-hours", "0.002",
                 "--idle-timeout", "60")  # fmt: skip
    _, err = sup.communicate(timeout=120)  # exits by itself, long before the idle timeout
    assert sup.returncode == 0, err
    assert "max-hours: too little time left" in err
    statuses = [r["status"] for r in jobs(db_path)]
    assert statuses.count("completed") >= 1
    assert statuses.count("pending") >= 1 and "running" not in statuses


def test_supervisor_pins_cuda_visible_devices_per_worker(tmp_path: Path, db_path: Path) -> None:
    queue(tmp_path, "mode=env", "x=range(0,8)")
    sup = dr_exp("system", "launcher", "--workers-per-gpu", "2", "--idle-timeout", "1",
                 env={**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"})  # fmt: skip
    _, err = sup.communicate(timeout=120)
    assert sup.returncode == 0, err
    rows = jobs(db_path)
    assert {r["status"] for r in rows} == {"completed"}
    seen = {r["return_value"]["CUDA_VISIBLE_DEVICES"] for r in rows}
    assert seen <= {"3", "5"}
    db = JobDB.open(db_path, create=False)
    workers = db.rows("SELECT gpu FROM workers")
    assert sorted(w["gpu"] for w in workers) == ["3", "3", "5", "5"]


KINDS = ["worker", "job", "job", "node", "sigterm", "sigstop"]


def descendants(pid: int) -> list[int]:
    out = []
    for child in children(pid):
        out += [child, *descendants(child)]
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_chaos_kills_stops_and_lost_nodes_lose_nothing_and_never_run_a_job_twice_at_once(
    tmp_path: Path, db_path: Path
) -> None:
    """Faults every 0.5-2 s: kill -9 of a worker, of a job, or of a whole node (supervisor,
    workers and jobs at once, then a new supervisor); SIGTERM of a worker; SIGSTOP of a
    worker for longer than its lease.  Every job must end completed, never run twice at once
    (each holds an exclusive lock on its folder while it runs)."""
    markers = tmp_path / "m"
    n = 300
    queue(tmp_path, "mode=exclusive", "sleep=0.2", f"x=range(0,{n})", f"marker_dir={markers}",
          "hydra.launcher.max_attempts=100", "hydra.launcher.retry={killed:100}",
          "hydra.launcher.retry_backoff_s=0.1")  # fmt: skip
    supervisor_args = ["system", "launcher", "--cpu-workers", "4", "--lease", "2",
                       "--heartbeat", "0.3", "--grace", "1", "--idle-timeout", "4",
                       "--crash-limit", "100000", "--crash-window", "5"]  # fmt: skip
    log = open(tmp_path / "supervisor.log", "w")  # a pipe nobody reads would block it

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "dr_exp", *supervisor_args], stderr=log)

    sup = start()
    rng = random.Random(1234)
    faults = {"worker": 0, "job": 0, "node": 0, "sigterm": 0, "sigstop": 0}
    stopped: dict[int, float] = {}  # pid -> when to SIGCONT it
    plan: list[str] = []

    def open_jobs() -> int:
        return sum(1 for r in jobs(db_path) if r["status"] in ("pending", "running"))

    deadline = time.monotonic() + 900
    while open_jobs() and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.5, 2.0))
        for pid, when in list(stopped.items()):
            if time.monotonic() >= when:
                os.kill(pid, signal.SIGCONT)
                del stopped[pid]
        if sup.poll() is not None:  # it idled out while jobs waited on a backoff: a new node
            sup = start()
            continue
        workers = [w for w in children(sup.pid) if w not in stopped]
        # A worker's fork server and the jobs it forked, or a job forked by the worker.
        job_procs = [c for w in workers for c in descendants(w)]
        if not plan:  # each kind in turn, shuffled, so every one happens however fast it ends
            plan = rng.sample(KINDS, len(KINDS))
        kind = plan.pop()
        try:
            if kind == "node":
                for pid in [sup.pid, *descendants(sup.pid)]:
                    os.kill(pid, signal.SIGKILL)
                sup.wait(30)
                stopped.clear()
                sup = start()
            elif kind == "job" and job_procs:
                os.kill(rng.choice(job_procs), signal.SIGKILL)
            elif kind == "sigstop" and workers:
                victim = rng.choice(workers)
                os.kill(victim, signal.SIGSTOP)  # longer than its 2 s lease
                stopped[victim] = time.monotonic() + 4
            elif workers:
                sig = signal.SIGTERM if kind == "sigterm" else signal.SIGKILL
                os.kill(rng.choice(workers), sig)
                kind = "sigterm" if kind == "sigterm" else "worker"
            else:
                plan.append(kind)  # nothing to hit yet: its turn comes again
                continue
            faults[kind] += 1
        except ProcessLookupError:
            plan.append(kind)
    for pid in stopped:
        os.kill(pid, signal.SIGCONT)
    assert sup.wait(120) == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
    assert all(count >= 2 for count in faults.values()), faults
    rows = jobs(db_path)
    assert len(rows) == n and {r["status"] for r in rows} == {"completed"}, sorted(
        {r["status"] for r in rows}
    )
    assert sorted(r["return_value"] for r in rows) == list(range(n))
    assert not (markers / "DOUBLE").exists(), (markers / "DOUBLE").read_text()
    assert all((markers / f"{x}.done").exists() for x in range(n))


def test_array_sizing_follows_the_work_and_the_cluster_limit() -> None:
    from dr_exp.slurm import array_chunks, executor_parameters, tasks_needed

    assert tasks_needed(pending=20, idle_workers=0, workers_per_task=4, array_size=8) == 5
    assert tasks_needed(pending=20, idle_workers=0, workers_per_task=4, array_size=2) == 2
    assert tasks_needed(pending=3, idle_workers=3, workers_per_task=4, array_size=8) == 0
    assert tasks_needed(pending=5, idle_workers=2, workers_per_task=2, array_size=8) == 2
    # MaxArraySize=1001 allows indices 0..1000: arrays of at most 1001 tasks.
    assert array_chunks(2500, 1001) == [1001, 1001, 498]
    assert array_chunks(3, 1001) == [3]
    assert array_chunks(7, 3) == [3, 3, 1]
    # submitit_slurm keys map onto submitit's parameter names, as hydra-submitit-launcher does.
    params = executor_parameters(
        {"partition": "gpu", "gpus_per_node": 1, "timeout_min": 30, "setup": ["module load x"],
         "additional_parameters": {"constraint": "a100"}, "array_size": 4, "qos": None}
    )  # fmt: skip
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 1
    assert params["timeout_min"] == 30 and params["slurm_setup"] == ["module load x"]
    assert params["slurm_additional_parameters"] == {"constraint": "a100"}
    assert "array_size" not in params and "slurm_qos" not in params
