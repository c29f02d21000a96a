"""The queue engine on real SQLite files: one transaction per heartbeat, claims that skip
sweeps, reaping that runs only when a lease can have run out, counts kept by triggers,
and signatures that stay true through the faster claim and finish."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import sqlite_utils

from dr_exp import db as dbmod
from dr_exp.db import Job, JobDB, Outcome
from dr_exp.worker import Worker


def _sweep(db: JobDB, experiment: str = "exp") -> int:
    return db.add_sweep(
        experiment=experiment, app="app", cwd="/", sys_path=[], sweep_dir="d",
        config_yaml="", payload=b"p", want_returns=False,
    )  # fmt: skip


def _writes(db: JobDB, action) -> tuple[object, list[str]]:
    """Run ``action``; what it returned and the write transactions it opened on ``db``."""
    begun: list[str] = []
    db.conn.set_trace_callback(lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
    try:
        return action(), begun
    finally:
        db.conn.set_trace_callback(None)


def _lease_gen(db: JobDB, job_id: int) -> int:
    return db.conn.execute("SELECT lease_gen FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


def _registry(db: JobDB, worker: str) -> dict:
    return db.rows("SELECT * FROM workers WHERE id = ?", (worker,))[0]


def _register(db: JobDB, worker: str) -> None:
    db.register_worker({"id": worker, "host": "h", "pid": 1})


# -- one transaction per heartbeat ----------------------------------------------------------
def test_a_beat_renews_the_lease_and_records_the_worker_in_one_transaction(
    tmp_path: Path,
) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    db.enqueue(_sweep(db), "exp", [(0, [])])
    _register(db, "w")
    job = db.claim("w", "h")
    assert job is not None
    gen, before = _lease_gen(db, job.id), _registry(db, "w")["heartbeat"]
    telemetry = {"gpu_util": 87.0, "gpu_mem_used_mb": 1000.0, "gpu_mem_total_mb": 8000.0}
    answer, begun = _writes(db, lambda: db.beat("w", "busy", job, telemetry, lease_s=60))
    assert answer == "ok"
    assert begun == ["BEGIN IMMEDIATE"]  # lease, liveness and telemetry: one write
    assert _lease_gen(db, job.id) == gen + 1
    row = _registry(db, "w")
    assert (row["state"], row["job_id"], row["gpu_util"]) == ("busy", job.id, 87.0)
    assert row["heartbeat"] >= before
    # Idle: the registry alone, still one transaction.
    answer, begun = _writes(db, lambda: db.beat("w", "idle"))
    assert answer is None and begun == ["BEGIN IMMEDIATE"]
    assert _registry(db, "w")["state"] == "idle"


def test_a_claim_records_its_worker_busy_in_the_same_transaction(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    db.enqueue(_sweep(db), "exp", [(0, []), (1, [])])
    _register(db, "w")
    job, begun = _writes(db, lambda: db.claim("w", "h", telemetry={"gpu_util": 50.0}))
    assert job is not None and len(begun) == 1
    row = _registry(db, "w")
    assert (row["state"], row["job_id"], row["gpu_util"]) == ("busy", job.id, 50.0)
    db.claim("w", "h", finished=(job, Outcome(status="completed")))  # without telemetry
    assert _registry(db, "w")["job_id"] == job.id  # the registry is left to the beats


def test_a_beat_keeps_the_fence_for_a_stale_worker(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    (job_id,) = db.enqueue(_sweep(db), "exp", [(0, [])])
    _register(db, "stale")
    _register(db, "w2")
    stale = db.claim("stale", "h", lease_s=-1)  # a lease that has already run out
    assert stale is not None
    fresh = db.claim("w2", "h")  # reaps the stale claim and claims the job again
    assert fresh is not None and fresh.id == job_id and fresh.attempts == 2
    gen = _lease_gen(db, job_id)
    answer, begun = _writes(db, lambda: db.beat("stale", "busy", stale))
    assert answer == "lost" and begun == ["BEGIN IMMEDIATE"]
    assert _lease_gen(db, job_id) == gen  # the stale worker renewed nothing
    assert _registry(db, "stale")["state"] == "busy"  # its own liveness is still recorded
    assert db.beat("w2", "busy", fresh) == "ok"
    db.cancel([job_id])
    assert db.beat("w2", "busy", fresh) == "cancelling"
    assert [a["outcome"] for a in db.attempts(job_id)] == ["lost", None]


def test_the_worker_renews_with_one_transaction_per_heartbeat(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    db.enqueue(_sweep(db), "exp", [(0, [])])
    worker = Worker(db, heartbeat_s=10.0)
    _register(db, worker.worker_id)
    job = db.claim(worker.worker_id, worker.host)
    assert job is not None
    gen = _lease_gen(db, job.id)
    for beat in range(1, 4):
        answer, begun = _writes(db, lambda: worker._renew(job))
        assert answer == "ok" and begun == ["BEGIN IMMEDIATE"], begun
        assert _lease_gen(db, job.id) == gen + beat
        row = _registry(db, worker.worker_id)
        assert (row["state"], row["job_id"]) == ("busy", job.id)
    # The registry's beat went with the renewal: the worker's own beat is not due again.
    _, begun = _writes(db, lambda: worker._beat("busy", job.id))
    assert begun == []


# -- skip_sweeps --------------------------------------------------------------------------
def test_claim_skips_the_jobs_of_given_sweeps(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    first, second = _sweep(db), _sweep(db)
    (urgent,) = db.enqueue(first, "exp", [(0, ["x=1"])], priority=900)
    (later,) = db.enqueue(second, "exp", [(0, ["x=2"])], priority=100)
    job = db.claim("w", "h", skip_sweeps=[first])
    assert job is not None and job.id == later  # the higher-priority job was left alone
    assert db.claim("w", "h", skip_sweeps=[first, second]) is None
    assert db.get_job(urgent)["status"] == "pending"
    assert db.claim("w", "h", experiment="exp", skip_sweeps=(first,)) is None
    job = db.claim("w", "h", skip_sweeps=[])  # the default: every sweep
    assert job is not None and job.id == urgent


def test_skip_sweeps_judges_a_rerun_job_by_the_sweep_that_runs_it(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    original = _sweep(db)
    (job_id,) = db.enqueue(original, "exp", [(0, ["x=1"])])
    job = db.claim("w", "h")
    assert job is not None
    db.finish(job, "w", Outcome(status="failed", error="boom"))
    rerun = _sweep(db)
    assert db.enqueue_batch(rerun, "exp", [(0, ["x=1"])]).actions == ["requeued"]
    assert db.claim("w", "h", skip_sweeps=[rerun]) is None  # its re-run's code runs it
    job = db.claim("w", "h", skip_sweeps=[original])
    assert job is not None and job.id == job_id and job.run_sweep_id == rerun
    job.verify()


# -- reaping, only when a lease can have run out ----------------------------------------------
def test_a_busy_claimer_reaps_a_lost_lease_and_never_a_renewed_one(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    db = JobDB.open(path)
    sweep = _sweep(db)
    db.enqueue(sweep, "exp", [(0, ["x=renewed"]), (1, ["x=lost"])], priority=900)
    db.enqueue(sweep, "exp", [(i, [f"x={i}"]) for i in range(2, 2000)], priority=100)
    holder = JobDB.open(path)  # another process's connection: its own lease clock
    renewed, lost = holder.claim("a", "h", lease_s=2.0), holder.claim("b", "h", lease_s=2.0)
    assert renewed is not None and lost is not None
    busy, finished, deadline = JobDB.open(path), None, time.monotonic() + 60
    while busy.attempts(lost.id)[0]["outcome"] is None and time.monotonic() < deadline:
        assert holder.beat("a", "busy", renewed, lease_s=2.0) == "ok"  # "b" never renews
        for _ in range(20):  # claim and finish, as a worker draining short jobs does
            job = busy.claim("c", "h", finished=finished)
            finished = (job, Outcome(status="completed")) if job else None
        time.sleep(0.05)
    history = [(a["worker"], a["outcome"]) for a in busy.attempts(lost.id)]
    assert history[0] == ("b", "lost"), history  # reaped, then claimed again by "c"
    assert {w for w, _ in history[1:]} <= {"c"}
    assert busy.get_job(renewed.id)["status"] == "running"  # renewed: never reaped
    assert [a["outcome"] for a in busy.attempts(renewed.id)] == [None]
    assert holder.beat("a", "busy", renewed) == "ok"


def test_reap_expired_looks_now(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    other = JobDB.open(tmp_path / "jobs.db")
    assert other.reap_expired() == []  # it has looked, and saw nothing running
    (job_id,) = db.enqueue(_sweep(db), "exp", [(0, [])])
    job = db.claim("w", "h", lease_s=-1)
    assert job is not None and job.id == job_id
    assert other.reap_expired() == [job_id]  # asked to: it looks at once
    assert [a["outcome"] for a in other.attempts(job_id)] == ["lost"]


# -- counts kept by triggers ------------------------------------------------------------------
def _counted(db: JobDB) -> dict:
    return {(r["experiment"], r["status"]): r["n"] for r in db.status_counts()}


def _truth(db: JobDB) -> dict:
    rows = db.conn.execute("SELECT experiment, status, count(*) FROM jobs GROUP BY 1, 2")
    return {(e, s): n for e, s, n in rows}


def _sweep_truth(db: JobDB) -> dict:
    rows = db.conn.execute("SELECT sweep_id, status, count(*) FROM jobs GROUP BY 1, 2")
    return {(s, st): n for s, st, n in rows}


def test_status_counts_follow_every_change(tmp_path: Path) -> None:
    rng = random.Random(7)
    db = JobDB.open(tmp_path / "jobs.db")
    sweeps = {"a": _sweep(db, "a"), "b": _sweep(db, "b")}
    for exp, sweep in sweeps.items():
        db.enqueue(sweep, exp, [(i, [f"x={i}"]) for i in range(60)])
    held: list[Job] = []
    for step in range(300):
        op = rng.random()
        if op < 0.4:
            job = db.claim(f"w{step % 3}", "h", lease_s=rng.choice([60.0, -1.0]))
            if job is not None:
                held.append(job)
        elif op < 0.7 and held:
            job = held.pop(rng.randrange(len(held)))
            db.finish(job, job_worker(db, job), Outcome(status=rng.choice(["completed", "failed"])))
        elif op < 0.8:
            ids = [r["id"] for r in db.list_jobs(statuses=["pending", "running"], limit=3)]
            if ids:
                db.cancel(ids)
        elif op < 0.9:
            ids = [r["id"] for r in db.list_jobs(statuses=["failed", "cancelled"], limit=5)]
            if ids:
                db.retry(ids)
        else:
            db.reap_expired()
        assert _counted(db) == _truth(db), step
    by_sweep = {(r["sweep_id"], r["status"]): r["n"] for r in db.sweep_counts()}
    assert by_sweep == _sweep_truth(db)
    assert db.status_counts("a") == [r for r in db.status_counts() if r["experiment"] == "a"]
    # Changes from outside dr_exp's calls are counted too (the triggers live in the file).
    conn = sqlite3.connect(db.path, isolation_level=None)
    conn.execute("DELETE FROM attempts")
    conn.execute("DELETE FROM results")
    conn.execute("DELETE FROM jobs WHERE experiment = 'b' AND status != 'running'")
    conn.execute("UPDATE jobs SET status = 'pending' WHERE status = 'failed'")
    conn.close()
    assert _counted(db) == _truth(db)


def job_worker(db: JobDB, job: Job) -> str:
    return db.get_job(job.id)["worker"] or ""


def test_an_older_file_gets_its_counts_when_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v6.db"
    conn = sqlite3.connect(path, isolation_level=None)
    old = sqlite_utils.Database(conn)
    for migrate in dbmod.MIGRATIONS[:6]:
        migrate(old)
    conn.execute("PRAGMA user_version = 6")
    conn.close()
    db = JobDB.open(path)  # migrates to the current schema
    assert db.schema_version() == dbmod.SCHEMA_VERSION
    db.close()
    # A file that had jobs before the counts existed: rebuild one at version 6 with rows.
    path2 = tmp_path / "v6-with-jobs.db"
    fresh = JobDB.open(path2)
    sweep = _sweep(fresh)
    fresh.enqueue(sweep, "exp", [(i, [f"x={i}"]) for i in range(5)])
    job = fresh.claim("w", "h")
    assert job is not None
    fresh.finish(job, "w", Outcome(status="failed"))
    fresh.close()
    conn = sqlite3.connect(path2, isolation_level=None)
    conn.executescript(
        "DROP TRIGGER job_counts_insert; DROP TRIGGER job_counts_delete; "
        "DROP TRIGGER job_counts_update; DROP TABLE job_counts; DROP INDEX jobs_status; "
        "DROP INDEX attempts_ended; PRAGMA user_version = 6;"
    )
    conn.close()
    db = JobDB.open(path2)
    assert _counted(db) == _truth(db) == {("exp", "failed"): 1, ("exp", "pending"): 4}


# -- signatures through the faster claim and finish ---------------------------------------------
def test_a_rerun_job_verifies_after_its_folder_was_recorded_and_changed(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    (job_id,) = db.enqueue(_sweep(db), "exp", [(0, ["x=1"])])
    job = db.claim("w", "h")
    assert job is not None
    assert db.set_output_dir(job, "w", "/runs/a/0")
    assert db.set_output_dir(job, "w", "/runs/a/0")  # the same folder again: still signed
    assert db.finish(job, "w", Outcome(status="failed", output_dir="/runs/a/0"))
    assert db.retry([job_id]) == [job_id]
    again = db.claim("w", "h")
    assert again is not None and again.output_dir == "/runs/a/0"
    again.verify()
    # The outcome names another folder than the one recorded: signed again at finish.
    assert db.finish(again, "w", Outcome(status="failed", output_dir="/runs/b/0"))
    db.retry([job_id])
    third = db.claim("w", "h")
    assert third is not None and third.output_dir == "/runs/b/0"
    third.verify()
    assert not db.set_output_dir(job, "w", "/elsewhere")  # a stale attempt changes nothing
    assert db.get_job(job_id)["output_dir"] == "/runs/b/0"


def test_a_lease_that_an_idle_poll_saw_expire_is_reaped_by_the_next_claim(
    tmp_path: Path,
) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    idle = JobDB.open(tmp_path / "jobs.db")
    assert not idle.has_work()  # it looked: nothing to claim, nothing running
    (job_id,) = db.enqueue(_sweep(db), "exp", [(0, [])])
    job = db.claim("gone", "h", lease_s=-1)  # its worker dies at once
    assert job is not None
    assert idle.has_work()  # the poll sees the expired lease as work...
    again = idle.claim("w", "h")  # ...and the claim right after it reaps and takes the job
    assert again is not None and (again.id, again.attempts) == (job_id, 2)
    assert [a["outcome"] for a in idle.attempts(job_id)] == ["lost", None]


def test_creating_a_database_loads_neither_pandas_nor_numpy(tmp_path: Path) -> None:
    """sqlite-utils (schema work) would import both, about 1 s, in every project's first sweep."""
    code = (
        "import sys\n"
        "from dr_exp.db import JobDB\n"
        f"JobDB.open({str(tmp_path / 'jobs.db')!r}).close()\n"
        "assert 'sqlite_utils' in sys.modules\n"
        "print(sorted({'pandas', 'numpy'} & set(sys.modules)))\n"
        "import numpy, pandas  # still importable afterwards\n"
    )
    env = dict(os.environ, DR_EXP_SECRET_KEY_FILE=str(tmp_path / "key"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
