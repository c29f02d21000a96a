"""Resume by re-running: job identity, on_duplicate, stable numbering, priority_fn.

Real Hydra apps run as subprocesses, real local workers, a real SQLite file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils
from conftest import ROOT, run_app, run_cli
from manage_helpers import MANAGED, attempts, by_override, rows
from test_db import explain

from dr_exp import db as dbmod
from dr_exp.db import JobDB
from dr_exp.identity import job_identity

APP = ROOT / "tests" / "apps" / "app.py"
QUEUE_ONLY = ("hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0")


def hydra_error_line(proc) -> str:
    """Hydra prints an error's message, then a hint about HYDRA_FULL_ERROR."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[0]


def test_rerun_skips_finished_jobs_and_requeues_failed_and_cancelled_in_place(
    tmp_path: Path, db_path: Path
) -> None:
    broken = tmp_path / "broken"
    (broken / "2").mkdir(parents=True)  # seed 2 fails until this goes away
    sweep = ("-m", "seed=0,1,2", f"fail_if={broken}", "hydra/launcher=dr_exp",
             "hydra.launcher.workers=2")  # fmt: skip
    first = run_app(MANAGED, *sweep, cwd=tmp_path, check=False)
    assert first.returncode == 1 and "seed 2 is told to fail" in first.stderr
    # A job queued by another command, then cancelled before it ran.
    run_app(MANAGED, "-m", "seed=3", f"fail_if={broken}", *QUEUE_ONLY,
            "hydra.sweep.dir=queued_only", cwd=tmp_path)  # fmt: skip
    seed3 = by_override(rows(db_path), "seed=")["seed=3"]
    run_cli("cancel", str(seed3["id"]))
    before = by_override(rows(db_path), "seed=")
    assert [before[f"seed={s}"]["status"] for s in range(4)] == [
        "completed", "completed", "failed", "cancelled",
    ]  # fmt: skip

    (broken / "2").rmdir()  # the "fix"; now run the same sweep again, seed 3 included
    # A new subdir pattern does not move the job that ran before (seed 2), while the
    # job that never ran (seed 3) takes it, in its own first sweep's folder.
    again = run_app(MANAGED, "-m", "seed=0,1,2,3", *sweep[2:], "hydra.sweep.subdir=s${hydra.job.num}",
                    cwd=tmp_path)  # fmt: skip
    out = again.stdout + again.stderr
    assert "queued 0 jobs" in out
    assert "re-queued 2 failed or cancelled jobs" in out
    assert "skipped 2 existing jobs (2 completed)" in out

    after = by_override(rows(db_path), "seed=")
    assert len(rows(db_path)) == 4  # no duplicates
    assert {k: v["status"] for k, v in after.items()} == {
        f"seed={s}": "completed" for s in range(4)
    }
    for key in ("seed=0", "seed=1", "seed=2"):  # same rows, numbers and folders as before
        for field in ("id", "job_num", "sweep_id", "output_dir"):
            assert after[key][field] == before[key][field], (key, field)
    assert [a["outcome"] for a in attempts(db_path, after["seed=2"]["id"])] == [
        "failed", "completed",
    ]  # fmt: skip
    assert after["seed=0"]["attempts"] == 1  # skipped jobs did not run again
    # The re-queued job ran in its first folder, numbered as before, with a clean slate.
    out2 = Path(after["seed=2"]["output_dir"])
    assert not (out2 / "error.txt").exists()
    assert f"num: {before['seed=2']['job_num']}" in (out2 / ".hydra" / "hydra.yaml").read_text()
    # The job that never ran went to its own sweep's folder, under its own number.
    assert Path(after["seed=3"]["output_dir"]) == tmp_path / "queued_only" / "s0"

    third = run_app(MANAGED, "-m", "seed=0,1,2,3", *sweep[2:], cwd=tmp_path)
    assert "skipped 4 existing jobs (4 completed)" in third.stdout + third.stderr
    assert len(rows(db_path)) == 4


def test_optimizing_sweeper_rerun_gets_the_stored_results_in_order(
    tmp_path: Path, db_path: Path
) -> None:
    sweep = ("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
             "hydra.sweeper.direction=minimize", "hydra.sweeper.sampler.seed=3", "x=range(1,30)",
             "hydra/launcher=dr_exp", "hydra.launcher.workers=2")  # fmt: skip
    run_app(APP, *sweep, "hydra.sweep.dir=opt1", cwd=tmp_path)
    first = rows(db_path)
    again = run_app(APP, *sweep, "hydra.sweep.dir=opt2", cwd=tmp_path)
    assert (again.stdout + again.stderr).count("skipped 2 existing jobs (2 completed)") == 2
    assert rows(db_path) == first  # nothing ran again: optuna got every value from the queue
    best = "best_value: " + str(min(r["return_value"] for r in first))
    assert best in (tmp_path / "opt1" / "optimization_results.yaml").read_text()
    assert best in (tmp_path / "opt2" / "optimization_results.yaml").read_text()


def test_on_duplicate_policies(tmp_path: Path, db_path: Path) -> None:
    sweep = ("-m", "seed=0,1", "lr=0.1", *QUEUE_ONLY)
    run_app(MANAGED, *sweep, cwd=tmp_path)
    ids = [r["id"] for r in rows(db_path)]
    # Same jobs, overrides reordered, new priority and tags: identity ignores all three.
    proc = run_app(MANAGED, "-m", "lr=0.1", "seed=0,1", *QUEUE_ONLY, "hydra.launcher.priority=900",
                   "hydra.launcher.tags=[again]", cwd=tmp_path)  # fmt: skip
    assert "skipped 2 existing jobs (2 pending)" in proc.stdout + proc.stderr
    assert [(r["id"], r["priority"], r["tags"]) for r in rows(db_path)] == [
        (ids[0], 500, []), (ids[1], 500, []),
    ]  # fmt: skip

    run_cli("cancel", str(ids[0]))
    proc = run_app(MANAGED, *sweep, "hydra.launcher.on_duplicate=skip", cwd=tmp_path)
    assert "skipped 2 existing jobs (1 cancelled, 1 pending)" in proc.stdout + proc.stderr
    assert [r["status"] for r in rows(db_path)] == ["cancelled", "pending"]

    proc = run_app(MANAGED, *sweep, "hydra.launcher.priority=700", cwd=tmp_path)  # retry_failed
    assert "re-queued 1 failed or cancelled jobs" in proc.stdout + proc.stderr
    assert [(r["status"], r["priority"]) for r in rows(db_path)] == [("pending", 700),
                                                                     ("pending", 500)]  # fmt: skip

    run_app(MANAGED, *sweep, "hydra.launcher.on_duplicate=always", cwd=tmp_path)
    assert len(rows(db_path)) == 4

    before = db_path.read_bytes()
    proc = run_app(MANAGED, *sweep, "hydra.launcher.on_duplicate=never", cwd=tmp_path, check=False)
    assert "hydra.launcher.on_duplicate" in hydra_error_line(proc)
    assert db_path.read_bytes() == before


def test_priority_fn_sets_each_jobs_priority_from_its_config(tmp_path: Path, db_path: Path) -> None:
    sweep = ("-m", "lr=0.01,0.1", "seed=0,1", *QUEUE_ONLY)
    run_app(MANAGED, *sweep, "hydra.launcher.priority_fn=priorities:by_lr", cwd=tmp_path)
    got = {" ".join(r["overrides"]): r["priority"] for r in rows(db_path)}
    assert got == {"lr=0.01 seed=0": 100, "lr=0.01 seed=1": 101,
                   "lr=0.1 seed=0": 900, "lr=0.1 seed=1": 901}  # fmt: skip

    before = db_path.read_bytes()
    for fn, needle in [
        ("priorities:too_high", "returned a bad priority for job #0 (lr=0.01 seed=0)"),
        ("priorities:broken", "raised KeyError"),
        ("no_such_module:fn", "cannot import function 'no_such_module:fn'"),
        ("priorities:missing", "priorities has no 'missing'"),
        ("not-a-name", "must look like pkg.module:function"),
    ]:
        proc = run_app(MANAGED, "-m", "lr=0.01,0.2", "seed=0", *QUEUE_ONLY,
                       f"hydra.launcher.priority_fn={fn}", cwd=tmp_path, check=False)  # fmt: skip
        line = hydra_error_line(proc)
        assert "hydra.launcher.priority_fn" in line and needle in line, line
    assert db_path.read_bytes() == before


def test_identity_is_backfilled_when_a_version_2_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for migrate in dbmod.MIGRATIONS[:2]:
        migrate(sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO sweeps (experiment, app, created, cwd, payload, signature) "
        "VALUES ('e', 'train', 0, '/', x'00', 's')"
    )
    conn.execute(
        "INSERT INTO jobs (experiment, sweep_id, job_num, overrides, priority, tags, status, "
        "attempts, created) VALUES ('e', 1, 0, '[\"b=2\", \"a=1\"]', 500, '[]', 'failed', 1, 0)"
    )
    conn.close()
    db = JobDB.open(path)
    (job,) = db.list_jobs()
    stored = db.conn.execute("SELECT identity FROM jobs").fetchone()[0]
    assert stored == job_identity("e", "train", ["a=1", "b=2"])
    sweep = db.conn.execute("SELECT kind FROM sweeps").fetchone()[0]
    assert sweep == "hydra"
    # Re-submitting the old job finds it: the failed job is queued again, not duplicated.
    rerun = db.add_sweep(experiment="e", app="train", cwd="/", sys_path=[], sweep_dir="d",
                         config_yaml="", payload=b"p", want_returns=False)  # fmt: skip
    done = db.enqueue_batch(rerun, "e", [(5, ["a=1", "b=2"]), (6, ["a=1", "b=3"])])
    assert done.actions == ["requeued", "queued"] and done.ids[0] == job["id"]
    assert [(r["status"], r["job_num"]) for r in db.list_jobs()] == [("pending", 0), ("pending", 6)]


def test_enqueue_batch_in_one_transaction(tmp_path: Path) -> None:
    db = JobDB.open(tmp_path / "jobs.db")

    def new_sweep() -> int:
        return db.add_sweep(experiment="e", app="a", cwd="/", sys_path=[], sweep_dir="d",
                            config_yaml="", payload=b"p", want_returns=False)  # fmt: skip

    first = new_sweep()
    done = db.enqueue_batch(
        first, "e", [(0, ["x=1"]), (1, ["x=2"]), (2, ["x=1"])], priority=[1, 2, 3]
    )
    # One sweep asking for the same job twice (an optimizer's repeated trial) runs it twice.
    assert done.actions == ["queued"] * 3 and len(set(done.ids)) == 3
    assert [r["priority"] for r in db.list_jobs()] == [1, 2, 3]
    again = db.enqueue_batch(new_sweep(), "e", [(0, ["x=2"]), (1, ["x=1"]), (2, ["x=3"])])
    assert again.actions == ["pending", "pending", "queued"]
    assert again.ids[:2] == [done.ids[1], done.ids[2]]  # the newest job with that identity
    second = new_sweep()
    with pytest.raises(ValueError, match="priority"):
        db.enqueue_batch(second, "e", [(0, ["x=9"]), (1, ["x=8"])], priority=[5, 1001])
    with pytest.raises(ValueError, match="on_duplicate"):
        db.enqueue_batch(second, "e", [(0, ["x=9"])], on_duplicate="sometimes")
    assert len(db.list_jobs()) == 4
    # Another experiment is another job, even with the same overrides.
    other = db.enqueue_batch(second, "f", [(0, ["x=1"])])
    assert other.actions == ["queued"]
    plan = explain(
        db,
        "SELECT id FROM jobs WHERE experiment = ? AND identity IN (SELECT value FROM json_each(?))",
        ("e", "[]"),
    )
    assert any("jobs_identity" in step for step in plan), plan
