"""Helpers shared by the management tests (resume, CLI, API, results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_cli
from test_worker import wait_for  # noqa: F401 - shared with the management tests

from dr_exp.db import JobDB

MANAGED = ROOT / "tests" / "apps" / "managed.py"
PROJECT = ROOT / "tests" / "project"
# Workers in these tests renew leases fast, so cancellation lands quickly.
FAST_WORKER = ("--heartbeat", "0.5", "--lease", "5", "--grace", "2")


def rows(db_path: Path, **filters) -> list[dict]:
    db = JobDB.open(db_path, create=False)
    try:
        return db.list_jobs(**filters)
    finally:
        db.close()


def attempts(db_path: Path, job_id: int) -> list[dict]:
    db = JobDB.open(db_path, create=False)
    try:
        return db.attempts(job_id)
    finally:
        db.close()


def cli_json(*args: str, cwd: Path | None = None):
    return json.loads(run_cli(*args, cwd=cwd).stdout)


def start_worker(*args: str, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """A real `python -m dr_exp ...worker` in the background, logging to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dr_exp", *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def by_override(jobs: list[dict], prefix: str) -> dict[str, dict]:
    return {next(o for o in j["overrides"] if o.startswith(prefix)): j for j in jobs}
