"""Each failed attempt has a class, and hydra.launcher.retry retries failures by class."""

from __future__ import annotations

import json

from conftest import ROOT, run_app, run_cli
from test_fencing import history
from test_worker import jobs

from dr_exp.db import JobDB

APP = ROOT / "tests" / "apps" / "app.py"


def classes(db_path, job_id: int) -> list:
    with JobDB.open(db_path, create=False) as db:
        return [(a["outcome"], a["failure"]) for a in db.attempts(job_id)]


def test_failures_are_classified_and_retried_by_their_class(tmp_path, db_path) -> None:
    run_app(APP, "-m", "mode=fail,oom,kill", "x=1", "hydra/launcher=dr_exp",
            "hydra.launcher.workers=1", "hydra.launcher.idle_timeout=3",
            "hydra.launcher.retry={oom:1,error:2}", "hydra.launcher.retry_backoff_s=0.2",
            cwd=tmp_path, check=False)  # fmt: skip
    rows = {r["overrides"][0]: r for r in jobs(db_path)}
    assert {r["status"] for r in rows.values()} == {"failed"}
    # error: retried twice, then final; oom: retried once; killed: not in the policy.
    assert classes(db_path, rows["mode=fail"]["id"]) == [("failed", "error")] * 3
    assert classes(db_path, rows["mode=oom"]["id"]) == [("failed", "oom")] * 2
    assert classes(db_path, rows["mode=kill"]["id"]) == [("failed", "killed")]
    assert {k: r["failure"] for k, r in rows.items()} == {
        "mode=fail": "error",
        "mode=oom": "oom",
        "mode=kill": "killed",
    }
    listed = json.loads(run_cli("list", "--failure", "oom,killed", "--format", "json").stdout)
    assert sorted(j["overrides"][0] for j in listed) == ["mode=kill", "mode=oom"]
    out = run_cli("retry", "--failure", "oom").stdout
    assert out.strip() == f"moved 1 job(s) back to pending: {rows['mode=oom']['id']}"
    assert [r["status"] for r in jobs(db_path) if r["overrides"][0] == "mode=oom"] == ["pending"]


def test_a_lost_job_is_classed_lost(tmp_path, db_path) -> None:
    with JobDB.open(db_path) as db:
        sweep = db.add_sweep(experiment="e", app="a", cwd=str(tmp_path), sys_path=[],
                             sweep_dir="s", config_yaml="", payload=b"-",
                             want_returns=False)  # fmt: skip
        (job_id,) = db.enqueue(sweep, "e", [(0, [])], max_attempts=1)
        assert db.claim("gone", "h", lease_s=-1) is not None  # its worker vanished at once
        assert db.reap_expired() == [job_id]
    (row,) = jobs(db_path)
    assert (row["status"], row["failure"]) == ("failed", "lost")
    assert history(db_path, job_id) == ["lost"]


def test_an_unknown_failure_class_in_the_policy_is_a_settings_error(tmp_path, db_path) -> None:
    proc = run_app(APP, "-m", "x=1", "hydra/launcher=dr_exp", "hydra.launcher.retry={segv:1}",
                   cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 1 and "hydra.launcher.retry.segv" in proc.stderr
    assert "Traceback" not in proc.stderr and not db_path.exists()
