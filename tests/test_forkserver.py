"""A sweep's fork server: loaded once, yet every job runs the project's files as they are.

A real worker runs real Hydra jobs; the test edits a module and a config file while
the sweep's first job runs, and each job reports the process it was forked from.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from conftest import run_app, run_cli
from test_fencing import FAST, worker
from test_worker import jobs, wait_for

APP = """\
import os
import time

import hydra
import helpers


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    if cfg.x == 1:  # the first job waits while the test edits the project
        open("started", "w").close()
        while not os.path.exists("go"):
            time.sleep(0.05)
    return [helpers.VALUE, cfg.y, os.getppid()]


if __name__ == "__main__":
    main()
"""

LAUNCH = ("hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0")


def write(folder: Path, value: str, y: int) -> None:
    (folder / "conf").mkdir(parents=True, exist_ok=True)
    (folder / "helpers.py").write_text(f"VALUE = {value!r}\n")
    (folder / "conf" / "config.yaml").write_text(f"x: 0\ny: {y}\n")


def make_project(tmp_path: Path) -> Path:
    """The project in ``tmp_path/proj``: APP, helpers.VALUE "v1" and y: 1 in its config."""
    project = tmp_path / "proj"
    write(project, "v1", 1)
    (project / "app.py").write_text(APP)
    return project


def test_jobs_fork_from_one_server_that_is_replaced_when_the_code_changes(
    tmp_path: Path, db_path: Path
) -> None:
    project = make_project(tmp_path)
    run_app(project / "app.py", "-m", "x=1,2,3,4", *LAUNCH, cwd=project)
    log = tmp_path / "worker.log"
    proc = worker(log, "--idle-timeout", "0")
    try:
        wait_for(lambda: (project / "started").exists(), what="job 1 to start")
        write(project, "v2-edited", 1)  # a module fixed while the sweep runs
        (project / "go").touch()
        wait_for(lambda: sum(r["status"] == "completed" for r in jobs(db_path)) == 2, what="2")
        (project / "conf" / "config.yaml").write_text("x: 0\ny: 7\n")  # then a config file
        wait_for(lambda: sum(r["status"] == "completed" for r in jobs(db_path)) == 4, what="4")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    got = [r["return_value"] for r in jobs(db_path)]
    values = [(v, y) for v, y, _ in got]
    parents = [p for _, _, p in got]
    assert values[:2] == [("v1", 1), ("v2-edited", 1)]  # the second job saw the edited module
    assert values[3] == ("v2-edited", 7)  # and the last one the edited config
    assert proc.pid not in parents  # forked from a fork server, not from the worker
    assert parents[0] != parents[1]  # the edit replaced the server...
    assert parents[1] == parents[3], log.read_text()  # ...shared later (a config is no code)
    assert "forking it from the worker" not in log.read_text()  # no fallback to a direct fork


def test_fork_server_false_forks_each_job_from_the_worker(tmp_path: Path, db_path: Path) -> None:
    project = make_project(tmp_path)
    (project / "go").touch()
    run_app(
        project / "app.py", "-m", "x=1,2", *LAUNCH, "hydra.launcher.fork_server=false", cwd=project
    )
    proc = subprocess.run(
        [sys.executable, "-m", "dr_exp", "worker", *FAST, "--idle-timeout", "1"],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = jobs(db_path)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert {r["return_value"][2] for r in rows} == {proc_pid(rows)}


def proc_pid(rows: list[dict]) -> int:
    """The worker's pid, from its id (host-pid-suffix)."""
    (worker,) = {r["worker"] for r in rows}
    return int(worker.rsplit("-", 2)[1])


def test_a_sweep_that_did_not_load_loads_again_once_its_module_is_back(
    tmp_path: Path, db_path: Path
) -> None:
    """A fork server whose sweep failed to load is not kept: after the fix, a retry runs."""
    project = make_project(tmp_path)
    (project / "go").touch()
    run_app(project / "app.py", "-m", "x=2", *LAUNCH, cwd=project)
    (project / "helpers.py").rename(project / "helpers.bak")  # the module is gone
    log = tmp_path / "worker.log"
    proc = worker(log, "--idle-timeout", "0")
    try:
        wait_for(lambda: jobs(db_path)[0]["status"] == "failed", what="the failure")
        assert "No module named 'helpers'" in jobs(db_path)[0]["error"]
        (project / "helpers.bak").rename(project / "helpers.py")  # fixed
        run_cli("retry", str(jobs(db_path)[0]["id"]))
        wait_for(lambda: jobs(db_path)[0]["status"] == "completed", what="the retry")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert jobs(db_path)[0]["return_value"][:2] == ["v1", 1]
