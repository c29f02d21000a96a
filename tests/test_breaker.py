"""The host breaker: a node where most jobs fail stops claiming, and status says why, so
that one bad node cannot burn every job's attempts.  The bad node is a real second host
name, given to one worker by a UTS namespace (unshare, as root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_app, run_cli
from test_worker import jobs

from dr_exp.db import JobDB

APP = ROOT / "tests" / "apps" / "app.py"


def test_a_host_that_fails_its_jobs_stops_claiming(tmp_path: Path, db_path: Path) -> None:
    if os.getuid() != 0 or shutil.which("unshare") is None:
        if os.environ.get("CI"):
            pytest.fail("the host-breaker test must run in CI (as root, with unshare)")
        pytest.skip("needs root and unshare to give a worker another host name")
    run_app(APP, "-m", "mode=badhost", "sleep=0.3", "x=range(0,30)", "hydra/launcher=dr_exp",
            "hydra.launcher.wait=false", "hydra.launcher.workers=0",
            "hydra.launcher.retry={error:3}", "hydra.launcher.retry_backoff_s=0.1",
            cwd=tmp_path)  # fmt: skip
    worker = [sys.executable, "-m", "dr_exp", "worker", "--idle-timeout", "3"]
    good = subprocess.Popen(worker, stderr=open(tmp_path / "good.log", "w"))
    bad = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", 'hostname badnode && exec "$@"', "sh", *worker],
        stderr=open(tmp_path / "bad.log", "w"),
    )
    assert bad.wait(300) == 0, (tmp_path / "bad.log").read_text()
    assert good.wait(300) == 0, (tmp_path / "good.log").read_text()
    assert "this host stopped claiming" in (tmp_path / "bad.log").read_text()
    rows = jobs(db_path)
    assert {r["status"] for r in rows} == {"completed"}  # the good host ran them all in the end
    with JobDB.open(db_path, create=False) as db:
        bad_runs = db.rows("SELECT count(*) AS n FROM attempts WHERE host = 'badnode'")[0]["n"]
        (stopped,) = db.stopped_hosts(0)
    assert bad_runs <= 8  # it stopped after a handful, not after burning every job's attempts
    assert stopped["host"] == "badnode" and "failed or were lost" in stopped["detail"]
    status = json.loads(run_cli("status", "--format", "json").stdout)
    assert any(h["host"] == "badnode" for h in status["stopped_hosts"])
    assert "badnode stopped claiming" in run_cli("status").stdout
