"""A plain editable install (``pip install -e``) into a fresh venv is seen by Hydra.

Hydra finds the launcher through the ``hydra_plugins`` namespace package; this
proves that setuptools' default editable mode exposes it, with nothing found
through the current directory, PYTHONPATH or the outer test venv.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

APPS = Path(__file__).parent / "apps"


def clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """This environment without PYTHONPATH or the outer venv, with ``venv`` first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    outer = Path(sys.prefix).resolve()
    path = [
        p
        for p in env.get("PATH", "").split(os.pathsep)
        if p and not Path(p).resolve().is_relative_to(outer)
    ]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    env.update(extra)
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_plain_editable_install_is_found_by_hydra(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, pip = venv / "bin" / "python", venv / "bin" / "pip"
    env = clean_env(venv)

    # -v, not -q: pip hides the build backend's output otherwise, and with it
    # setuptools' deprecation warnings, which this test checks are gone.
    install = subprocess.run(
        [str(pip), "install", "-v", "-e", str(ROOT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = install.stdout + install.stderr
    assert install.returncode == 0, out[-5000:]
    assert "editable_mode" not in out
    assert "Compat editable installs" not in out  # setuptools' warning for editable_mode=compat
    assert "`project.license` as a TOML table is deprecated" not in out

    app_dir, run_dir = tmp_path / "app", tmp_path / "run"
    app_dir.mkdir()
    run_dir.mkdir()
    for name in ("app.py", "app.yaml"):
        shutil.copy(APPS / name, app_dir / name)
    db = tmp_path / "queue" / "jobs.db"
    env = clean_env(venv, DR_EXP_DB=str(db))

    where = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, dr_exp, hydra_plugins.dr_exp_launcher as p;"
            "print(dr_exp.__file__); print(p.__file__); print(sys.prefix)",
        ],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert Path(where[0]) == ROOT / "dr_exp" / "__init__.py"  # editable: the checkout itself
    assert Path(where[1]) == ROOT / "hydra_plugins" / "dr_exp_launcher" / "__init__.py"
    assert Path(where[2]) == venv

    sweep = subprocess.run(
        [
            str(python),
            str(app_dir / "app.py"),
            "-m",
            "x=1,2",
            "hydra/launcher=dr_exp",
            "hydra.launcher.workers=1",
            "hydra.launcher.idle_timeout=1",
        ],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr

    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT status, return_value FROM jobs ORDER BY id").fetchall()
    finally:
        conn.close()
    assert [(status, json.loads(value)) for status, value in rows] == [
        ("completed", 2),
        ("completed", 4),
    ]
