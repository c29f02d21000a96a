"""The job database on real SQLite files: claiming, priorities, indexes, schema."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import stat
from pathlib import Path

import pytest
import sqlite_utils

from dr_exp import db as dbmod
from dr_exp import store
from dr_exp.db import JobDB, Outcome
from dr_exp.errors import DatabaseError


def _sweep(db: JobDB, experiment: str = "exp") -> int:
    return db.add_sweep(
        experiment=experiment, app="app", cwd="/", sys_path=[], sweep_dir="d",
        config_yaml="", payload=b"p", want_returns=False,
    )  # fmt: skip


def explain(db: JobDB, sql: str, params=()) -> list[str]:
    """EXPLAIN QUERY PLAN details, to pin which index a statement uses."""
    return [r[3] for r in db.conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]


def _claimer(path: str, worker: str, out: str) -> None:
    db = JobDB.open(path, create=False)
    claimed, finished = [], None
    while True:
        job = db.claim(worker, "host", finished=finished)
        if job is None:
            break
        claimed.append(job.id)
        finished = (job, Outcome(status="completed", return_json=json.dumps(worker)))
    Path(out).write_text(json.dumps(claimed))


def test_eight_processes_never_claim_the_same_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    db = JobDB.open(path)
    sweep = _sweep(db)
    ids = db.enqueue(sweep, "exp", [(i, [f"x={i}"]) for i in range(2000)])
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_claimer, args=(str(path), f"w{i}", str(tmp_path / f"w{i}.json")))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    per_worker = {f"w{i}": json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(8)}
    claimed = [job for jobs in per_worker.values() for job in jobs]
    assert len(claimed) == len(set(claimed)) == 2000
    assert sorted(claimed) == ids
    rows = db.list_jobs()
    assert {r["status"] for r in rows} == {"completed"}
    assert all(r["attempts"] == 1 for r in rows)
    # Each job's recorded result names the worker that claimed it: completed once, by its owner.
    owner = {job: w for w, jobs in per_worker.items() for job in jobs}
    assert all(r["return_value"] == owner[r["id"]] == r["worker"] for r in rows)
    assert sum(1 for jobs in per_worker.values() if jobs) > 1  # the claims really interleaved


def test_priority_order_then_fifo(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    sweep = _sweep(db)
    low = db.enqueue(sweep, "exp", [(0, ["a=low1"]), (1, ["a=low2"])], priority=5)
    high = db.enqueue(sweep, "exp", [(2, ["a=high1"]), (3, ["a=high2"])], priority=900)
    mid = db.enqueue(sweep, "exp", [(4, ["a=mid"])], priority=500)
    zero = db.enqueue(sweep, "exp", [(5, ["a=zero"])], priority=0)
    order = []
    while (job := db.claim("w", "h")) is not None:
        order.append(job.id)
    assert order == high + mid + low + zero


def test_claim_filters_by_experiment(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    a, b = _sweep(db, "a"), _sweep(db, "b")
    db.enqueue(a, "a", [(0, [])], priority=1000)
    (b_id,) = db.enqueue(b, "b", [(0, [])], priority=1)
    job = db.claim("w", "h", experiment="b")
    assert job is not None and job.id == b_id and job.experiment == "b"
    assert db.claim("w", "h", experiment="b") is None
    assert db.has_work("a") and not db.has_work("b")


@pytest.mark.parametrize("bad", [1001, -1, "high", 3.5, True])
def test_enqueue_rejects_bad_priority_and_writes_nothing(tmp_path: Path, bad: object) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    sweep = _sweep(db)
    with pytest.raises(ValueError, match="priority"):
        db.enqueue(sweep, "exp", [(0, [])], priority=bad)  # type: ignore[arg-type]
    assert db.list_jobs() == []


def test_stale_worker_cannot_touch_a_job_it_lost(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    (job_id,) = db.enqueue(_sweep(db), "exp", [(0, [])])
    old = db.claim("old", "h")
    assert old is not None and db.requeue(old, "old", count_attempt=True)
    new = db.claim("new", "h")
    assert new is not None and new.id == job_id
    assert not db.finish(old, "old", Outcome(status="completed"))
    assert not db.requeue(old, "old")
    # The attempt number fences too: a worker's stale claim of an earlier attempt is refused.
    assert not db.finish(old, "new", Outcome(status="completed"))
    assert db.finish(new, "new", Outcome(status="completed", return_json="1"))
    (row,) = db.list_jobs()
    assert (row["status"], row["worker"], row["attempts"]) == ("completed", "new", 2)


def test_requeue_without_counting_keeps_attempts(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    (job_id,) = db.enqueue(_sweep(db), "exp", [(0, [])])
    job = db.claim("w", "h")
    assert job is not None and db.requeue(job, "w", count_attempt=False)
    (row,) = db.list_jobs()
    assert (row["status"], row["attempts"], row["worker"]) == ("pending", 0, None)


def test_claim_and_status_use_indexes(tmp_path: Path) -> None:
    """At a million rows a scan would be ruinous; pin the plans instead of timing them."""
    db = JobDB.open(tmp_path / "jobs.db")
    params = {
        "worker": "w",
        "host": "h",
        "now": 0.0,
        "experiment": "e",
        "lease_expires": 1.0,
        "keys": "[]",
        "lease_s": 1.0,
    }
    assert any(
        "USING INDEX jobs_pending" in d for d in explain(db, db._claim_sql(False, False), params)
    )
    assert any(
        "USING INDEX jobs_pending_by_experiment" in d
        for d in explain(db, db._claim_sql(True, False), params)
    )
    # Counts come from job_counts (kept by triggers), never from counting the jobs.
    plan = explain(
        db, "SELECT experiment, status, sum(n) FROM job_counts GROUP BY experiment, status"
    )
    assert not any("jobs" in d.split() for d in plan), plan
    # Lists by status read the status index in id order: LIMIT 50 reads 50 entries.
    plan = explain(db, "SELECT * FROM jobs WHERE status IN (?) ORDER BY id LIMIT 50", ("failed",))
    assert any("USING INDEX jobs_status" in d for d in plan), plan
    assert not any("TEMP B-TREE" in d for d in plan), plan


def test_claim_stays_indexed_with_many_finished_rows(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    sweep = _sweep(db)
    ids = db.enqueue(sweep, "exp", [(i, []) for i in range(20000)])
    db.conn.execute("UPDATE jobs SET status = 'completed' WHERE id < ?", (ids[-5],))
    db.conn.execute("ANALYZE")  # the planner must still choose the partial index
    params = {
        "worker": "w",
        "host": "h",
        "now": 0.0,
        "experiment": None,
        "lease_expires": 1.0,
        "keys": "[]",
        "lease_s": 1.0,
    }
    assert any(
        "USING INDEX jobs_pending" in d for d in explain(db, db._claim_sql(False, False), params)
    )
    job = db.claim("w", "h")
    assert job is not None and job.id == ids[-5]


def test_new_file_is_private_and_group_sharing_is_a_setting(tmp_path: Path) -> None:
    JobDB.open(tmp_path / "private" / "jobs.db").close()
    assert stat.S_IMODE(os.stat(tmp_path / "private" / "jobs.db").st_mode) == 0o600
    JobDB.open(tmp_path / "shared" / "jobs.db", group_shared=True).close()
    assert stat.S_IMODE(os.stat(tmp_path / "shared" / "jobs.db").st_mode) == 0o660


def test_wal_on_local_disk_and_rollback_journal_when_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = JobDB.open(tmp_path / "local.db")
    assert db.journal_mode == "wal"
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    monkeypatch.setenv("DR_EXP_JOURNAL_MODE", "delete")
    db2 = JobDB.open(tmp_path / "nfs.db")
    assert db2.conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_network_filesystems_are_detected_from_the_mount_table() -> None:
    assert store.filesystem_type(Path("/proc/self")) == "proc"
    for fs in ("nfs", "nfs4", "lustre", "gpfs", "fuse.sshfs", "fuse.glusterfs"):
        assert store.is_network_filesystem(fs), fs
    assert not store.is_network_filesystem("ext4") and not store.is_network_filesystem(None)


def test_version_1_database_is_migrated_with_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    dbmod.MIGRATIONS[0](sqlite_utils.Database(conn))  # the schema dr_exp 0.1 wrote
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO sweeps (experiment, created, cwd, payload, signature) "
        "VALUES ('e', 0, '/', x'00', 's')"
    )
    conn.execute(
        "INSERT INTO jobs (experiment, sweep_id, job_num, overrides, priority, tags, status, "
        "attempts, created) VALUES ('e', 1, 0, '[\"a=1\"]', 500, '[]', 'pending', 0, 0)"
    )
    conn.close()
    db = JobDB.open(path)
    assert db.schema_version() == dbmod.SCHEMA_VERSION
    job = db.claim("w", "h")  # the old row works with leases and attempt history
    assert job is not None and job.overrides == ["a=1"]
    assert db.list_jobs()[0]["status"] == "running"
    assert [a["worker"] for a in db.attempts(job.id)] == ["w"]


def test_older_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()  # an empty file at schema version 0
    db = JobDB.open(path)
    assert db.schema_version() == dbmod.SCHEMA_VERSION
    assert {"jobs", "sweeps", "results"} <= set(sqlite_utils.Database(db.conn).table_names())
    db.close()
    # Opening again is a no-op that keeps the data.
    db = JobDB.open(path)
    db.enqueue(_sweep(db), "exp", [(0, ["k=v"])])
    db.close()
    assert JobDB.open(path).list_jobs()[0]["overrides"] == ["k=v"]


def test_newer_database_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    JobDB.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {dbmod.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DatabaseError, match="newer than this dr_exp"):
        JobDB.open(path)


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match="not a dr_exp job database|cannot open"):
        JobDB.open(path)


def test_a_held_write_lock_delays_but_never_fails_a_claim(tmp_path: Path) -> None:
    import threading
    import time

    path = tmp_path / "jobs.db"
    db = JobDB.open(path)
    (job_id,) = db.enqueue(_sweep(db), "exp", [(0, [])])
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    holding = threading.Event()

    def release_later() -> None:
        holding.set()
        time.sleep(1.5)
        blocker.execute("COMMIT")

    t = threading.Thread(target=release_later)
    t.start()
    holding.wait()
    job = db.claim("w", "h")  # waits on the lock instead of raising "database is locked"
    t.join()
    assert job is not None and job.id == job_id


def test_expired_lease_requeues_then_fails_after_max_attempts(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    (job_id,) = db.enqueue(_sweep(db), "exp", [(0, [])], max_attempts=2)
    first = db.claim("w1", "h", lease_s=-1)  # a lease that has already run out
    assert first is not None
    job = db.claim("w2", "h", lease_s=-1)  # reaps w1's claim, then claims again
    assert job is not None and (job.id, job.attempts) == (job_id, 2)
    assert db.heartbeat(first, "w1") == "lost"  # the stale worker learns it lost the job
    assert db.claim("w3", "h") is None  # reaps w2's claim: 2 attempts used up
    (row,) = db.list_jobs()
    assert row["status"] == "failed"
    assert row["error"].startswith("lost after 2 attempts")
    history = db.attempts(job_id)
    assert [(a["worker"], a["outcome"]) for a in history] == [("w1", "lost"), ("w2", "lost")]


def test_heartbeat_renews_and_reports_cancellation(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    (job_id,) = db.enqueue(_sweep(db), "exp", [(0, [])])
    job = db.claim("w", "h", lease_s=60)
    assert job is not None and db.heartbeat(job, "w", lease_s=60) == "ok"
    assert db.reap_expired() == []  # renewed, so not reaped
    assert db.cancel([job_id]) == {"pending": [], "running": [job_id]}
    # Cancelled while running: "cancelling" until its worker confirms the process is gone.
    assert db.list_jobs()[0]["status"] == "cancelling"
    assert db.heartbeat(job, "w") == "cancelling"
    with pytest.raises(ValueError, match="still being cancelled"):
        db.retry([job_id])
    assert db.confirm_stopped(job, "w")
    assert db.list_jobs()[0]["status"] == "cancelled"
    assert db.attempts(job_id)[0]["outcome"] == "cancelled"
    assert db.retry([job_id]) == [job_id]


def test_a_cancel_that_races_a_finish_leaves_one_consistent_record(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")
    (job_id,) = db.enqueue(_sweep(db), "exp", [(0, [])])
    job = db.claim("w", "h")
    assert job is not None
    db.cancel([job_id])  # cancelling, while the job finishes on its own
    assert db.finish(job, "w", Outcome(status="completed", return_json="7"))
    assert not db.confirm_stopped(job, "w")  # the worker's late confirmation changes nothing
    (row,) = db.list_jobs()
    assert (row["status"], row["return_value"]) == ("completed", 7)
    assert [a["outcome"] for a in db.attempts(job_id)] == ["completed"]
