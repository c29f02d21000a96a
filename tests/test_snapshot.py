"""hydra.launcher.snapshot_code: a queued sweep runs the code and config it was submitted
with, whatever the researcher edits meanwhile."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import run_app, run_cli
from test_worker import jobs

LAUNCH = ("hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0")


def project(folder: Path, value: str, scale: int) -> None:
    (folder / "conf").mkdir(parents=True, exist_ok=True)
    (folder / "helpers.py").write_text(f"VALUE = {value!r}\n")
    (folder / "conf" / "config.yaml").write_text(f"scale: {scale}\n")
    (folder / "proj.py").write_text(
        "import hydra\nimport helpers\n\n\n"
        "@hydra.main(version_base=None, config_path='conf', config_name='config')\n"
        "def main(cfg):\n    return [helpers.VALUE, cfg.scale]\n\n\n"
        "if __name__ == '__main__':\n    main()\n"
    )


def git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=folder, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def test_a_snapshot_runs_the_code_and_config_it_was_submitted_with(
    tmp_path: Path, db_path: Path
) -> None:
    repo = tmp_path / "repo"
    project(repo, "v1", 1)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "v1")
    commit = git(repo, "rev-parse", "HEAD")
    run_app(repo / "proj.py", "-m", "+x=1", *LAUNCH, "hydra.launcher.snapshot_code=true", cwd=repo)
    run_app(repo / "proj.py", "-m", "+x=2", *LAUNCH, cwd=repo)  # no snapshot: runs what is there
    project(repo, "v2", 2)  # the researcher edits the code and the config meanwhile
    run_cli("worker", "--idle-timeout", "0.5")
    rows = {r["overrides"][0]: r for r in jobs(db_path)}
    assert rows["+x=1"]["return_value"] == ["v1", 1]
    assert rows["+x=2"]["return_value"] == ["v2", 2]
    shown = run_cli("show", str(rows["+x=1"]["id"])).stdout
    assert f"git {commit}" in shown and ".dr_exp_code" in shown
    snap = json.loads(run_cli("show", str(rows["+x=1"]["id"]), "--format", "json").stdout)
    assert snap["settings"]["snapshot"]["commit"] == commit


def test_a_glob_snapshot_without_git(tmp_path: Path, db_path: Path) -> None:
    folder = tmp_path / "plain"
    project(folder, "v1", 1)
    refused = run_app(folder / "proj.py", "-m", "+x=1", *LAUNCH,
                      "hydra.launcher.snapshot_code=true", cwd=folder, check=False)  # fmt: skip
    assert refused.returncode == 1 and "snapshot_glob" in refused.stderr
    assert "Traceback" not in refused.stderr
    run_app(folder / "proj.py", "-m", "+x=1", *LAUNCH, "hydra.launcher.snapshot_code=true",
            "hydra.launcher.snapshot_glob='**/*'", cwd=folder)  # fmt: skip
    project(folder, "v2", 2)
    run_cli("worker", "--idle-timeout", "0.5")
    assert [r["return_value"] for r in jobs(db_path)] == [["v1", 1]]
