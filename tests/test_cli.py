"""The dr_exp command line, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, run_app, run_cli

APP = ROOT / "tests" / "apps" / "app.py"


@pytest.fixture
def finished_sweep(tmp_path: Path, db_path: Path) -> Path:
    run_app(
        APP, "-m", "mode=ok,fail", "x=1,2", "hydra/launcher=dr_exp", "hydra.launcher.workers=2",
        "hydra.launcher.tags=[baseline,v1]", "hydra.launcher.priority=700", cwd=tmp_path,
        check=False,
    )  # fmt: skip
    run_app(
        APP, "-m", "x=5", "hydra/launcher=dr_exp", "hydra.launcher.experiment=later",
        "hydra.launcher.wait=false", "hydra.launcher.workers=0", cwd=tmp_path,
    )  # fmt: skip
    return db_path


def test_list_json_is_a_list_of_job_objects(finished_sweep: Path) -> None:
    jobs = json.loads(run_cli("list", "--status", "all", "--format", "json").stdout)
    assert len(jobs) == 5
    for job in jobs:
        for key in ("id", "experiment", "status", "priority", "tags", "overrides",
                    "output_dir", "return_value", "error"):  # fmt: skip
            assert key in job
    by_overrides = {" ".join(j["overrides"]): j for j in jobs}
    ok = by_overrides["mode=ok x=2"]
    assert (ok["status"], ok["return_value"], ok["error"]) == ("completed", 4, None)
    assert ok["tags"] == ["baseline", "v1"] and ok["priority"] == 700
    assert ok["experiment"] == "app" and Path(ok["output_dir"]).is_dir()
    bad = by_overrides["mode=fail x=1"]
    assert bad["status"] == "failed" and bad["error"] == "ValueError: x=1 is not allowed"
    assert bad["return_value"] is None
    queued = by_overrides["x=5"]
    assert (queued["status"], queued["experiment"], queued["output_dir"]) == (
        "pending", "later", None,
    )  # fmt: skip


def test_list_filters_by_status_and_experiment(finished_sweep: Path) -> None:
    failed = json.loads(run_cli("list", "--status", "failed", "--format", "json").stdout)
    assert sorted(" ".join(j["overrides"]) for j in failed) == ["mode=fail x=1", "mode=fail x=2"]
    later = json.loads(run_cli("list", "--experiment", "later", "--format", "json").stdout)
    assert [j["overrides"] for j in later] == [["x=5"]]
    table = run_cli("list", "--status", "completed,pending").stdout
    assert "mode=ok x=1" in table and "x=5" in table and "mode=fail" not in table


def test_status_counts_per_experiment(finished_sweep: Path) -> None:
    status = json.loads(run_cli("status", "--format", "json").stdout)
    assert status["experiments"]["app"] == {
        "pending": 0, "running": 0, "completed": 2, "failed": 2, "cancelled": 0,
    }  # fmt: skip
    assert status["experiments"]["later"]["pending"] == 1
    assert status["running"] == []
    table = run_cli("status", "--experiment", "app").stdout
    assert "app" in table and "later" not in table


def test_db_option_and_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without DR_EXP_DB, the launcher and the CLI both use ./.dr_exp/jobs.db.
    monkeypatch.delenv("DR_EXP_DB")
    run_app(APP, "-m", "x=3", "hydra/launcher=dr_exp", "hydra.launcher.workers=1", cwd=tmp_path)
    assert (tmp_path / ".dr_exp" / "jobs.db").exists()
    jobs = json.loads(run_cli("list", "--format", "json", cwd=tmp_path).stdout)
    assert [j["return_value"] for j in jobs] == [6]
    other = tmp_path / "elsewhere"
    other.mkdir()
    moved = other / "copy.db"
    shutil.copy(tmp_path / ".dr_exp" / "jobs.db", moved)
    jobs = json.loads(run_cli("--db", str(moved), "list", "--format", "json", cwd=other).stdout)
    assert [j["return_value"] for j in jobs] == [6]
    jobs = json.loads(run_cli("list", "--db", str(moved), "--format", "json", cwd=other).stdout)
    assert [j["return_value"] for j in jobs] == [6]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["list", "--status", "done"], "unknown status 'done'"),
        (["list", "--format", "xml"], "invalid choice: 'xml'"),
        (["list", "--limit", "0"], "--limit must be 1 or more"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["worker", "--idle-timeout", "-1"], "--idle-timeout"),
        (["status", "--db", "/nonexistent/dir/jobs.db"], "no job database at /nonexistent"),
    ],
)
def test_bad_arguments_are_one_line_errors(finished_sweep: Path, args, needle) -> None:
    before = finished_sweep.read_bytes()
    proc = run_cli(*args, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert finished_sweep.read_bytes() == before


def test_missing_database_is_not_created_by_reading_commands(tmp_path: Path, db_path: Path) -> None:
    proc = run_cli("status", check=False)
    assert proc.returncode == 1 and "no job database" in proc.stderr
    assert not db_path.exists()


def test_help_describes_every_command() -> None:
    out = run_cli("--help").stdout
    for command in ("status", "list", "worker"):
        assert command in out
    assert "DR_EXP_DB" in out
    assert "--idle-timeout" in run_cli("worker", "--help").stdout


def test_console_script_is_installed() -> None:
    exe = shutil.which("dr_exp")
    assert exe is not None, "pip install should put dr_exp on PATH"
    assert "status" in subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
