"""One job never runs in two places at once: a frozen worker, a failed lease renewal, a
skewed clock, and cancel-then-retry, each with real workers and real signals.

Every job here holds an exclusive lock on its folder while it runs (app.py's
mode=exclusive); a second run that finds the lock taken leaves a DOUBLE marker.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_app, run_cli
from test_fleet import alive
from test_worker import jobs, wait_for

from dr_exp.db import JobDB

APP = ROOT / "tests" / "apps" / "app.py"
FAST = ("--lease", "3", "--heartbeat", "0.5", "--grace", "1")


def queue(tmp_path: Path, *overrides: str) -> None:
    run_app(APP, "-m", *overrides, "hydra/launcher=dr_exp", "hydra.launcher.wait=false",
            "hydra.launcher.workers=0", cwd=tmp_path)  # fmt: skip


def worker(log: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "dr_exp", "worker", *FAST, *args],
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def history(db_path: Path, job_id: int) -> list[str]:
    with JobDB.open(db_path, create=False) as db:
        return [a["outcome"] for a in db.attempts(job_id)]


def runs(markers: Path, x: int) -> list[str]:
    """The pids that finished job x (app.py appends one line per finished run)."""
    done = markers / f"{x}.done"
    return done.read_text().split() if done.exists() else []


def test_a_frozen_worker_has_its_job_killed_before_another_worker_takes_it(
    tmp_path: Path, db_path: Path
) -> None:
    markers = tmp_path / "m"
    queue(tmp_path, "mode=exclusive", "sleep=8", "x=1", f"marker_dir={markers}")
    first = worker(tmp_path / "first.log", "--idle-timeout", "0")
    try:
        wait_for(lambda: (markers / "1.start").exists(), what="the job to start")
        job_pid = int((markers / "1.start").read_text())
        first.send_signal(signal.SIGSTOP)  # a node stuck on NFS, or swapping
        # Its watchdog fences the job while the worker is frozen, before the lease expires.
        wait_for(lambda: not alive(job_pid), timeout=20, what="the frozen worker's job to die")
        (markers / "1.start").unlink()
        second = worker(tmp_path / "second.log", "--idle-timeout", "3")
        assert second.wait(120) == 0, (tmp_path / "second.log").read_text()
    finally:
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGTERM)
        first.wait(60)
    (row,) = jobs(db_path)
    assert (row["status"], row["attempts"], row["return_value"]) == ("completed", 2, 1)
    assert history(db_path, row["id"]) == ["lost", "completed"]
    assert not (markers / "DOUBLE").exists(), (markers / "DOUBLE").read_text()
    assert len(runs(markers, 1)) == 1  # only the second run got to finish
    assert "fenced" in (tmp_path / "first.log").read_text()


def test_a_renewal_error_in_the_database_fences_the_job(tmp_path: Path, db_path: Path) -> None:
    markers = tmp_path / "m"
    queue(tmp_path, "mode=exclusive", "sleep=6", "x=1", f"marker_dir={markers}")
    log = tmp_path / "worker.log"
    proc = worker(log, "--idle-timeout", "5")
    wait_for(lambda: (markers / "1.start").exists(), what="the job to start")
    job_pid = int((markers / "1.start").read_text())
    # An error injected into the database: every lease renewal now fails, as on a disk
    # I/O error or a lock held past the retries.  Claims and reaps still work.
    conn = sqlite3.connect(db_path)
    conn.execute(
        "CREATE TRIGGER fail_renewals BEFORE UPDATE OF lease_gen ON jobs "
        "WHEN OLD.status = 'running' AND NEW.status = 'running' "
        "BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END"
    )
    conn.commit()
    wait_for(lambda: not alive(job_pid), timeout=20, what="the job to be fenced")
    wait_for(lambda: "fenced" in log.read_text(), timeout=20, what="the worker to say so")
    conn.execute("DROP TRIGGER fail_renewals")
    conn.commit()
    conn.close()
    assert proc.wait(120) == 0, log.read_text()
    text = log.read_text()
    assert "lease renewal failed" in text and "disk I/O error (injected)" in text
    (row,) = jobs(db_path)
    assert (row["status"], row["return_value"]) == ("completed", 1)
    assert history(db_path, row["id"]) == ["lost", "completed"]
    assert not (markers / "DOUBLE").exists()
    assert len(runs(markers, 1)) == 1


def test_a_worker_whose_clock_is_ahead_does_not_reap_a_healthy_job(
    tmp_path: Path, db_path: Path
) -> None:
    faketime = shutil.which("faketime")
    if faketime is None:
        if os.environ.get("CI"):
            pytest.fail("faketime must be installed in CI (scripts/test.sh installs it)")
        pytest.skip("faketime is not installed (apt-get install faketime)")
    markers = tmp_path / "m"
    queue(tmp_path, "mode=exclusive", "sleep=6", "x=1", f"marker_dir={markers}")
    queue(tmp_path, "mode=exclusive", "sleep=6", "x=2", f"marker_dir={markers}")
    healthy = worker(tmp_path / "healthy.log", "--idle-timeout", "1", "--max-jobs", "1")
    wait_for(lambda: (markers / "1.start").exists(), what="the first job to start")
    # A node whose clock runs 30 s ahead, looking for work the whole time the job runs.
    ahead = worker(tmp_path / "ahead.log", "--idle-timeout", "20", "--max-jobs", "1",
                   prefix=(faketime, "-f", "+30s"))  # fmt: skip
    assert healthy.wait(120) == 0, (tmp_path / "healthy.log").read_text()
    assert ahead.wait(120) == 0, (tmp_path / "ahead.log").read_text()
    rows = {r["overrides"][2]: r for r in jobs(db_path)}
    assert {r["status"] for r in rows.values()} == {"completed"}
    first = rows["x=1"]
    assert first["attempts"] == 1 and history(db_path, first["id"]) == ["completed"]
    assert first["worker"] != rows["x=2"]["worker"]  # the skewed worker ran only the other job
    assert not (markers / "DOUBLE").exists()


def test_retry_waits_until_a_cancelled_job_is_really_gone(tmp_path: Path, db_path: Path) -> None:
    markers = tmp_path / "m"
    queue(tmp_path, "mode=exclusive", "sleep=30", "x=1", f"marker_dir={markers}", "stubborn=true")
    log = tmp_path / "worker.log"
    # The job ignores SIGTERM, so its process outlives the cancel by the grace period.
    proc = worker(log, "--idle-timeout", "0", "--grace", "8")
    try:
        wait_for(lambda: (markers / "1.start").exists(), what="the job to start")
        (row,) = jobs(db_path)
        out = run_cli("cancel", str(row["id"]), "--wait", "0").stdout
        assert "cancelled 1 running job(s)" in out
        # Right away, retry would start a second copy next to the first: it refuses.
        refused = run_cli("retry", str(row["id"]), check=False)
        assert refused.returncode == 1
        assert "still being cancelled" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        wait_for(lambda: jobs(db_path)[0]["status"] == "cancelled", timeout=60,
                 what="the worker to confirm the cancel")  # fmt: skip
        assert not alive(int((markers / "1.start").read_text()))
        assert history(db_path, row["id"]) == ["cancelled"]
        run_cli("retry", str(row["id"]))
        (markers / "1.start").unlink()
        wait_for(lambda: (markers / "1.start").exists(), timeout=60, what="the retried run")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert not (markers / "DOUBLE").exists()
