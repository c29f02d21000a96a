"""Workers and the launcher end to end: real Hydra apps, real worker processes, real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_app, run_cli

from dr_exp.db import JobDB

APP = ROOT / "tests" / "apps" / "app.py"


def jobs(db_path: Path) -> list[dict]:
    db = JobDB.open(db_path, create=False)
    try:
        return db.list_jobs()
    finally:
        db.close()


def by_x(rows: list[dict]) -> dict[str, dict]:
    return {next(o for o in r["overrides"] if o.startswith("x=")): r for r in rows}


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_failure_is_recorded_and_reported(tmp_path: Path, db_path: Path) -> None:
    proc = run_app(
        APP, "-m", "mode=ok,fail", "x=7", "hydra/launcher=dr_exp", "hydra.launcher.workers=2",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "failed: ValueError: x=7 is not allowed" in proc.stderr
    assert "Traceback" not in proc.stderr  # the traceback is in error.txt, named here
    rows = {r["overrides"][0]: r for r in jobs(db_path)}
    ok, bad = rows["mode=ok"], rows["mode=fail"]
    assert ok["status"] == "completed" and ok["return_value"] == 14
    assert bad["status"] == "failed"
    assert bad["error"] == "ValueError: x=7 is not allowed"
    error_txt = (Path(bad["output_dir"]) / "error.txt").read_text()
    assert "Traceback" in error_txt and "ValueError: x=7 is not allowed" in error_txt
    assert (Path(bad["output_dir"]) / ".hydra" / "config.yaml").exists()
    assert not (Path(ok["output_dir"]) / "error.txt").exists()
    assert str(Path(bad["output_dir"]) / "error.txt") in proc.stderr


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("exit", "exited with code 3"),
        ("kill", "killed by signal 9 (SIGKILL)"),
        ("segv", "killed by signal 11 (SIGSEGV)"),
        ("sysexit", "SystemExit: 4"),
    ],
)
def test_job_that_kills_its_process_leaves_the_worker_alive(
    tmp_path: Path, db_path: Path, mode: str, expected: str
) -> None:
    # One worker runs the deadly job first (priority), then the healthy ones.
    run_app(
        APP, "-m", f"mode={mode}", "x=0", "hydra/launcher=dr_exp", "hydra.launcher.wait=false",
        "hydra.launcher.workers=0", "hydra.launcher.priority=900", "hydra.sweep.dir=deadly",
        cwd=tmp_path,
    )  # fmt: skip
    # Its own sweep folder: two sweeps queued in the same second would share Hydra's
    # default one, and the healthy job 0 would clear the deadly job 0's error.txt.
    run_app(
        APP, "-m", "x=1,2", "hydra/launcher=dr_exp", "hydra.launcher.wait=false",
        "hydra.launcher.workers=0", "hydra.sweep.dir=healthy", cwd=tmp_path,
    )  # fmt: skip
    worker = run_cli("worker", "--idle-timeout", "0.5")
    assert worker.returncode == 0
    rows = by_x(jobs(db_path))
    assert rows["x=0"]["status"] == "failed"
    assert expected in rows["x=0"]["error"]
    assert expected in (Path(rows["x=0"]["output_dir"]) / "error.txt").read_text()
    assert (rows["x=1"]["status"], rows["x=1"]["return_value"]) == ("completed", 2)
    assert (rows["x=2"]["status"], rows["x=2"]["return_value"]) == ("completed", 4)
    # One worker process ran all three jobs.
    assert len({r["worker"] for r in rows.values()}) == 1


def test_global_state_does_not_leak_between_jobs(tmp_path: Path, db_path: Path) -> None:
    run_app(
        APP, "-m", "mode=leak", "x=1,2,3,4", "hydra/launcher=dr_exp", "hydra.launcher.workers=1",
        cwd=tmp_path,
    )  # fmt: skip
    rows = jobs(db_path)
    assert len(rows) == 4 and len({r["worker"] for r in rows}) == 1
    assert all(r["return_value"] == {"seen": 0, "env": None} for r in rows)


def test_tampered_payload_is_refused(tmp_path: Path, db_path: Path) -> None:
    marker = tmp_path / "pwned"
    run_app(
        APP, "-m", "x=1,2", "hydra/launcher=dr_exp", "hydra.launcher.wait=false",
        "hydra.launcher.workers=0", cwd=tmp_path,
    )  # fmt: skip
    # An attacker who can write the database swaps in a pickle that runs a command.
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE sweeps SET payload = ?", (pickle.dumps(Evil()),))
    conn.commit()
    conn.close()
    run_cli("worker", "--idle-timeout", "0.5")
    rows = jobs(db_path)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("not signed by a key this worker holds" in r["error"] for r in rows)
    assert not marker.exists()


def test_invalid_priority_is_rejected_with_nothing_written(tmp_path: Path, db_path: Path) -> None:
    run_app(APP, "-m", "x=1", "hydra/launcher=dr_exp", "hydra.launcher.workers=1", cwd=tmp_path)
    before = db_path.read_bytes()
    for bad in ("1001", "-5", "abc"):
        proc = run_app(
            APP, "-m", "x=2,3", "hydra/launcher=dr_exp", f"hydra.launcher.priority={bad}",
            cwd=tmp_path, check=False,
        )  # fmt: skip
        assert proc.returncode == 1
        assert "priority" in proc.stderr and "Traceback" not in proc.stderr
    assert "from 0 to 1000" in proc.stderr or "priority" in proc.stderr
    assert db_path.read_bytes() == before
    assert [r["overrides"] for r in jobs(db_path)] == [["x=1"]]


def test_bad_launcher_settings_are_one_line_errors(tmp_path: Path, db_path: Path) -> None:
    for override, needle in [
        ("hydra.launcher.workers=-1", "hydra.launcher.workers"),
        ("hydra.launcher.experiment=' '", "hydra.launcher.experiment"),
        ("hydra.launcher.idle_timeout=-3", "hydra.launcher.idle_timeout"),
    ]:
        proc = run_app(APP, "-m", "x=1", "hydra/launcher=dr_exp", override, cwd=tmp_path,
                       check=False)  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not db_path.exists()


def test_wait_false_returns_at_once_and_keeps_numbering_across_batches(
    tmp_path: Path, db_path: Path
) -> None:
    proc = run_app(
        APP, "-m", "x=0,1,2,3,4", "hydra/launcher=dr_exp", "hydra.launcher.wait=false",
        "hydra.launcher.workers=0", "hydra.sweeper.max_batch_size=2",
        "hydra.sweep.dir=out", cwd=tmp_path,
    )  # fmt: skip
    assert "dr_exp status" in proc.stderr  # says how to monitor
    rows = jobs(db_path)
    assert [r["status"] for r in rows] == ["pending"] * 5
    assert [r["job_num"] for r in rows] == [0, 1, 2, 3, 4]
    assert len({r["sweep_id"] for r in rows}) == 1
    run_cli("worker", "--idle-timeout", "0.5")
    rows = jobs(db_path)
    assert [r["status"] for r in rows] == ["completed"] * 5
    assert [r["return_value"] for r in rows] == [0, 2, 4, 6, 8]
    for r in rows:
        assert Path(r["output_dir"]) == tmp_path / "out" / str(r["job_num"])
        hydra_cfg = (Path(r["output_dir"]) / ".hydra" / "hydra.yaml").read_text()
        assert f"num: {r['job_num']}" in hydra_cfg and "mode: MULTIRUN" in hydra_cfg


def test_wait_false_is_refused_for_an_optimizing_sweeper(tmp_path: Path, db_path: Path) -> None:
    proc = run_app(
        APP, "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "x=range(1,5)",
        "hydra/launcher=dr_exp", "hydra.launcher.wait=false", cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "wait=true" in proc.stderr and "Traceback" not in proc.stderr
    assert not db_path.exists()


def test_optuna_receives_real_float_returns(tmp_path: Path, db_path: Path) -> None:
    proc = run_app(
        APP, "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.direction=minimize", "hydra.sweeper.sampler.seed=1", "x=range(1,10)",
        "hydra/launcher=dr_exp", "hydra.launcher.workers=2", "hydra.sweep.dir=opt",
        cwd=tmp_path,
    )  # fmt: skip
    rows = jobs(db_path)
    assert len(rows) == 6 and all(r["status"] == "completed" for r in rows)
    # Optuna saw each trial's real value: its best is the smallest returned value.
    best = (tmp_path / "opt" / "optimization_results.yaml").read_text()
    assert f"best_value: {min(r['return_value'] for r in rows)}" in best
    assert proc.returncode == 0


def test_sigterm_puts_the_running_job_back_without_counting(tmp_path: Path, db_path: Path) -> None:
    markers = tmp_path / "markers"
    run_app(
        APP, "-m", "mode=sleep", "sleep=60", "x=1", f"marker_dir={markers}",
        "hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0",
        cwd=tmp_path,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "dr_exp", "worker", "--grace", "2"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: (markers / "1.start").exists(), what="the job to start")
    job_pid = int((markers / "1.start").read_text())
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    (row,) = jobs(db_path)
    assert (row["status"], row["attempts"], row["worker"]) == ("pending", 0, None)
    assert "put back to pending" in err
    with pytest.raises(ProcessLookupError):
        os.kill(job_pid, 0)  # the job process is gone too


def test_ctrl_c_leaves_jobs_safe_and_says_how_to_resume(tmp_path: Path, db_path: Path) -> None:
    markers = tmp_path / "markers"
    app = subprocess.Popen(
        [sys.executable, str(APP), "-m", "mode=sleep", "sleep=120", "x=1,2,3",
         f"marker_dir={markers}", "hydra/launcher=dr_exp", "hydra.launcher.workers=1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: (markers / "1.start").exists(), what="the first job to start")
    app.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    _, err = app.communicate(timeout=90)
    assert app.returncode == 130
    assert "3 of 3 jobs are safe" in err and "dr_exp worker" in err
    assert "Traceback" not in err
    rows = jobs(db_path)
    assert [r["status"] for r in rows] == ["pending"] * 3
    assert all(r["attempts"] == 0 for r in rows)
    # Resuming with the printed command finishes them.
    (markers / "release").write_text("")
    worker = run_cli("worker", "--experiment", "app", "--idle-timeout", "0.5", timeout=200)
    assert worker.returncode == 0
    rows = jobs(db_path)
    assert [r["status"] for r in rows] == ["completed"] * 3
    assert [r["return_value"] for r in rows] == [1, 2, 3]


def test_priority_order_through_a_real_worker(tmp_path: Path, db_path: Path) -> None:
    for xs, prio in (("1,2", 10), ("3,4", 900), ("5", 500)):
        run_app(
            APP, "-m", f"x={xs}", "hydra/launcher=dr_exp", "hydra.launcher.wait=false",
            "hydra.launcher.workers=0", f"hydra.launcher.priority={prio}", cwd=tmp_path,
        )  # fmt: skip
    run_cli("worker", "--idle-timeout", "0.5")
    rows = sorted(jobs(db_path), key=lambda r: r["started"])
    assert [r["overrides"] for r in rows] == [["x=3"], ["x=4"], ["x=5"], ["x=1"], ["x=2"]]


def test_demo_sweep_of_the_example_app(tmp_path: Path, db_path: Path) -> None:
    run_app(
        ROOT / "examples" / "train.py", "-m", "optim.lr=0.01,0.1", "seed=0,1,2",
        "train.epochs=3", "hydra/launcher=dr_exp", cwd=tmp_path,
    )  # fmt: skip
    rows = jobs(db_path)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"completed"}
    for r in rows:
        assert 0.0 <= r["return_value"]["val_acc"] <= 1.0
        saved = json.loads((Path(r["output_dir"]) / "metrics.json").read_text())
        assert saved["val_acc"] == r["return_value"]["val_acc"]
    status = run_cli("status", "--format", "json", cwd=tmp_path)
    assert json.loads(status.stdout)["experiments"]["train"]["completed"] == 6


def test_hydra_callbacks_run_on_the_worker(tmp_path: Path, db_path: Path) -> None:
    proc = run_app(
        APP, "-m", "x=1,2", "+hydra.callbacks.record._target_=callbacks.RecordPid",
        "hydra/launcher=dr_exp", "hydra.launcher.workers=1", "hydra.launcher.wait=false",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0
    worker = subprocess.Popen([sys.executable, "-m", "dr_exp", "worker", "--idle-timeout", "0.5"])
    assert worker.wait(120) == 0
    for row in jobs(db_path):
        out = Path(row["output_dir"])
        start_pid = int((out / "on_job_start.pid").read_text())
        end_pid, status, value = (out / "on_job_end.txt").read_text().split()
        assert start_pid == int(end_pid) != worker.pid  # in the job's own process
        assert (status, int(value)) == ("COMPLETED", row["return_value"])


def test_signing_key_is_private(tmp_path: Path, db_path: Path) -> None:
    run_app(APP, "-m", "x=1", "hydra/launcher=dr_exp", "hydra.launcher.workers=1", cwd=tmp_path)
    key = Path(os.environ["DR_EXP_SECRET_KEY_FILE"])
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600


def test_shipped_launcher_presets_work_from_an_app_config_dir(
    tmp_path: Path, db_path: Path
) -> None:
    app_dir = tmp_path / "app"
    shutil.copytree(APP.parent, app_dir)
    shutil.copytree(ROOT / "conf" / "hydra", app_dir / "hydra")
    run_app(app_dir / "app.py", "-m", "x=1,2", "hydra/launcher=dr_exp_queue_only", cwd=tmp_path)
    rows = jobs(db_path)
    assert [r["status"] for r in rows] == ["pending", "pending"]
    run_app(app_dir / "app.py", "-m", "x=3", "hydra/launcher=dr_exp_background",
            "hydra.launcher.idle_timeout=1", cwd=tmp_path)  # fmt: skip
    wait_for(
        lambda: {r["status"] for r in jobs(db_path)} == {"completed"}, what="background workers"
    )
    assert sorted(r["return_value"] for r in jobs(db_path)) == [2, 4, 6]
