"""Two sweeps that resolve to one ``${now:...}`` output folder: the first job's results stay.

Two sweeps queued within one second share Hydra's default ``${now:...}`` folder: a job
whose folder holds another job's ``job.json`` fails (FolderTaken) and changes nothing
there.  Here the folder is ``${now:%Y}``, which is the same case without depending on the
clock.  A folder the user chose (a fixed ``hydra.sweep.dir``) behaves as under the basic
launcher: a changed job run in it again (to resume it) writes there.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from conftest import run_app, run_cli
from test_worker import APP, by_x, jobs

from dr_exp.db import Job
from dr_exp.jobfiles import FolderTaken, job_started

QUEUE = ("hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0")


def folder_state(folder: Path) -> dict[str, str]:
    """Every file in the job folders below ``folder`` (but job.json's timestamps) and its
    text.  The sweep's own files are not compared: Hydra's sweeper writes multirun.yaml
    anew for each sweep, and dr_exp's manifest gets the second sweep's lines."""
    state = {}
    for path in sorted(folder.glob("*/**/*")):
        if path.is_file():
            text = path.read_text()
            if path.name == "job.json":
                text = json.dumps({k: v for k, v in json.loads(text).items() if k != "started"})
            state[str(path.relative_to(folder))] = text
    return state


NOW_DIR = "hydra.sweep.dir=shared/${now:%Y}"


def test_a_second_sweep_in_the_same_now_folder_leaves_the_first_ones_results(
    tmp_path: Path, db_path: Path
) -> None:
    run_app(APP, "-m", "x=1,2", NOW_DIR, *QUEUE, cwd=tmp_path)
    assert run_cli("worker", "--idle-timeout", "0.5").returncode == 0
    first = by_x(jobs(db_path))
    assert {x: (r["status"], r["return_value"]) for x, r in first.items()} == {
        "x=1": ("completed", 2),
        "x=2": ("completed", 4),
    }
    (shared,) = (tmp_path / "shared").iterdir()  # shared/<this year>
    before = folder_state(shared)
    assert "x=1" in (shared / "0" / ".hydra" / "overrides.yaml").read_text()

    run_app(APP, "-m", "x=7,8", NOW_DIR, *QUEUE, cwd=tmp_path)
    assert run_cli("worker", "--idle-timeout", "0.5").returncode == 0
    rows = by_x(jobs(db_path))
    for x, num in (("x=7", 0), ("x=8", 1)):
        assert rows[x]["status"] == "failed"
        assert rows[x]["output_dir"] is None  # it never had a folder
        error = rows[x]["error"]
        assert error.startswith("FolderTaken: ") and str(shared / str(num)) in error
        assert f"holds job {first[f'x={num + 1}']['id']}'s results (x={num + 1})" in error
    assert folder_state(shared) == before  # not one file written, removed or changed
    shown = run_cli("show", str(rows["x=7"]["id"])).stdout
    assert "resolved to the same ${now:...} folder" in shown


def test_a_changed_job_run_again_in_a_folder_the_user_chose_writes_there(
    tmp_path: Path, db_path: Path
) -> None:
    """A fixed hydra.sweep.dir: as under the basic launcher (a job resumed with a changed
    override, into its folder)."""
    run_app(APP, "-m", "x=1", "hydra.sweep.dir=out", *QUEUE, cwd=tmp_path)
    run_cli("worker", "--idle-timeout", "0.5")
    run_app(APP, "-m", "x=1", "+extra=1", "hydra.sweep.dir=out", *QUEUE, cwd=tmp_path)
    run_cli("worker", "--idle-timeout", "0.5")
    assert {r["status"] for r in jobs(db_path)} == {"completed"}
    info = json.loads((tmp_path / "out" / "0" / "job.json").read_text())
    assert info["overrides"] == ["x=1", "+extra=1"]


def test_the_same_jobs_queued_anew_take_their_folders_over(tmp_path: Path, db_path: Path) -> None:
    """on_duplicate=always: new rows for the same overrides run again where they ran."""
    run_app(APP, "-m", "x=1,2", NOW_DIR, *QUEUE, cwd=tmp_path)
    run_cli("worker", "--idle-timeout", "0.5")
    run_app(APP, "-m", "x=1,2", NOW_DIR, "hydra.launcher.on_duplicate=always",
            *QUEUE, cwd=tmp_path)  # fmt: skip
    run_cli("worker", "--idle-timeout", "0.5")
    rows = jobs(db_path)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    newest = {json.dumps(r["overrides"]): r for r in sorted(rows, key=lambda r: r["id"])}
    for num in (0, 1):
        (folder,) = (tmp_path / "shared").iterdir()
        info = json.loads((folder / str(num) / "job.json").read_text())
        assert info["id"] == newest[json.dumps(info["overrides"])]["id"]  # the new row's


def _start(folder: str, job: Job, barrier, results) -> None:
    barrier.wait()
    try:
        job_started(folder, job, exclusive=True)
        results.put(job.id)
    except FolderTaken:
        results.put(-job.id)


@pytest.mark.parametrize("round_", range(20))
def test_two_jobs_starting_together_in_one_folder_take_it_once(tmp_path: Path, round_: int) -> None:
    """The folder is taken by linking job.json into place: of two jobs of different
    overrides starting at the same moment, exactly one gets it."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    a = Job(1, "exp", 1, 0, ["x=1"], 1)
    b = Job(2, "exp", 2, 0, ["x=2"], 1)
    procs = [ctx.Process(target=_start, args=(str(tmp_path), j, barrier, results)) for j in (a, b)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    got = sorted(results.get(timeout=5) for _ in procs)
    assert got in ([-2, 1], [-1, 2]), got
    winner = max(got)
    assert json.loads((tmp_path / "job.json").read_text())["id"] == winner
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"]  # no temporary file left
