"""Shared fixtures: every test gets its own job database and signing key.

Both travel to subprocesses (Hydra apps, workers, the CLI) through the
environment, exactly as they would for a user.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Outside tmp_path: Hydra's sweep runner deletes its temp dir when a test ends.
    home = tmp_path_factory.mktemp("dr_exp")
    db = home / "queue" / "jobs.db"
    monkeypatch.setenv("DR_EXP_DB", str(db))
    monkeypatch.setenv("DR_EXP_SECRET_KEY_FILE", str(home / "secret.key"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    return db


@pytest.fixture
def db_path(isolated_env: Path) -> Path:
    return isolated_env


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: float = 120):
    """Run ``python -m dr_exp ARGS`` as a user would, returning the CompletedProcess."""
    proc = subprocess.run(
        [sys.executable, "-m", "dr_exp", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dr_exp {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def run_app(
    script: Path,
    *overrides: str,
    cwd: Path,
    check: bool = True,
    timeout: float = 300,
    env: dict | None = None,
):
    """Run a Hydra app as a subprocess through its command line.

    A multirun without a ``hydra.sweep.dir`` gets Hydra's default folder to the
    microsecond: two sweeps a test queues within one second would otherwise share
    ``multirun/<date>/<time>``, and the second one's jobs fail with FolderTaken
    (tests/test_folders.py tests that on purpose).
    """
    if ("-m" in overrides or "--multirun" in overrides) and not any(
        o.startswith("hydra.sweep.dir=") for o in overrides
    ):
        overrides = (*overrides, "hydra.sweep.dir=multirun/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}")
    proc = subprocess.run(
        [sys.executable, str(script), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script.name} {' '.join(overrides)} exited {proc.returncode}:\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    return proc
