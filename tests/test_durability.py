"""No result is lost, and each job runs the code it should: real workers, real faults.

Faults are injected into the database through plain sqlite3 (a trigger that fails
the write, as a full disk or a lock that never clears would), and workers are
really SIGKILLed.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

from conftest import ROOT, run_app, run_cli
from test_fencing import history, queue, runs, worker
from test_fleet import alive
from test_worker import jobs, wait_for

from dr_exp.db import JobDB

APP = ROOT / "tests" / "apps" / "app.py"
FULL_DISK = (
    "CREATE TRIGGER full_disk BEFORE UPDATE OF status ON jobs WHEN NEW.status = 'completed' "
    "BEGIN SELECT RAISE(ABORT, 'database or disk is full (injected)'); END"
)


def sql(db_path: Path, statement: str) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(statement)
    conn.commit()
    conn.close()


def test_a_result_that_cannot_be_recorded_is_kept_until_it_can(
    tmp_path: Path, db_path: Path
) -> None:
    markers = tmp_path / "m"
    queue(tmp_path, "mode=exclusive", "sleep=1", "x=1", f"marker_dir={markers}")
    sql(db_path, FULL_DISK)
    log = tmp_path / "worker.log"
    proc = worker(log, "--idle-timeout", "3")
    wait_for(lambda: "database write failed" in log.read_text(), what="a failed write")
    assert proc.poll() is None  # the worker keeps going
    sql(db_path, "DROP TRIGGER full_disk")
    assert proc.wait(120) == 0, log.read_text()
    assert "outcome is kept" in log.read_text()
    (row,) = jobs(db_path)
    assert (row["status"], row["attempts"], row["return_value"]) == ("completed", 1, 1)
    assert history(db_path, row["id"]) == ["completed"]
    assert len(runs(markers, 1)) == 1


def test_a_finished_job_whose_worker_died_unrecorded_is_not_run_again(
    tmp_path: Path, db_path: Path
) -> None:
    markers = tmp_path / "m"
    queue(tmp_path, "mode=exclusive", "sleep=1", "x=1", f"marker_dir={markers}")
    sql(db_path, FULL_DISK)
    log = tmp_path / "first.log"
    first = worker(log, "--idle-timeout", "0")
    wait_for(lambda: "database write failed" in log.read_text(), what="a failed write")
    first.send_signal(signal.SIGKILL)  # the outcome it held is gone with it
    first.wait(30)
    sql(db_path, "DROP TRIGGER full_disk")
    second = worker(tmp_path / "second.log", "--idle-timeout", "5")
    assert second.wait(120) == 0, (tmp_path / "second.log").read_text()
    (row,) = jobs(db_path)
    assert (row["status"], row["return_value"]) == ("completed", 1)
    assert history(db_path, row["id"]) == ["lost", "completed"]
    assert len(runs(markers, 1)) == 1  # recovered from its folder, not run a second time
    assert "an earlier attempt completed" in (tmp_path / "second.log").read_text()


def test_a_large_return_value_goes_to_a_file_and_still_reaches_the_launcher(
    tmp_path: Path, db_path: Path
) -> None:
    size = 20_000_000  # beyond what dr_exp keeps in the database row
    run_app(APP, "-m", "mode=big", f"size={size}", "x=1", "hydra/launcher=dr_exp",
            "hydra.launcher.workers=1", "hydra.launcher.idle_timeout=1", cwd=tmp_path)  # fmt: skip
    (row,) = jobs(db_path)
    assert row["status"] == "completed"
    assert "a return value of" in row["return_value"]  # the row keeps a reference
    with JobDB.open(db_path, create=False) as db:
        stored = db.results([row["id"]])[row["id"]]
    assert stored["result_blob"] is None and Path(stored["result_path"]).is_file()
    from dr_exp import payload

    ret = payload.loads(Path(stored["result_path"]).read_bytes(), stored["result_signature"])
    assert ret.return_value == b"x" * size


def test_the_job_ends_when_its_process_exits_whatever_it_left_running(
    tmp_path: Path, db_path: Path
) -> None:
    markers = tmp_path / "m"
    queue(tmp_path, "mode=helper", "x=1", f"marker_dir={markers}")
    proc = worker(tmp_path / "worker.log", "--idle-timeout", "0")
    try:
        # The helper holds the result pipe open for 120 s; the job is recorded long before.
        wait_for(lambda: jobs(db_path)[0]["status"] == "completed", timeout=60,
                 what="the job to be recorded")  # fmt: skip
        helper = int((markers / "1.helper").read_text())
        wait_for(lambda: not alive(helper), timeout=10, what="the leftover helper to be killed")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert jobs(db_path)[0]["return_value"] == 1


def test_a_jobs_atexit_handlers_run(tmp_path: Path, db_path: Path) -> None:
    markers = tmp_path / "m"
    run_app(APP, "-m", "mode=atexit", "x=1,2", f"marker_dir={markers}", "hydra/launcher=dr_exp",
            "hydra.launcher.workers=1", "hydra.launcher.idle_timeout=1", cwd=tmp_path)  # fmt: skip
    assert (markers / "1.atexit").read_text() == "ran"
    assert (markers / "2.atexit").read_text() == "ran"


def test_json_output_never_holds_nan_or_infinity(tmp_path: Path, db_path: Path) -> None:
    run_app(APP, "-m", "mode=nonfinite", "x=1", "hydra/launcher=dr_exp", "hydra.launcher.workers=1",
            "hydra.launcher.idle_timeout=1", cwd=tmp_path)  # fmt: skip

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))

    (job,) = strict(run_cli("list", "--format", "json").stdout)
    assert job["return_value"] == {"loss": None, "best": None, "x": 1}
    strict(run_cli("show", str(job["id"]), "--format", "json").stdout)


def write_project(folder: Path, value: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "helpers.py").write_text(f"VALUE = {value!r}\n")
    (folder / "proj.py").write_text(
        "import hydra\n"
        "import helpers\n\n\n"
        "@hydra.main(version_base=None, config_path=None)\n"
        "def main(cfg):\n"
        "    return helpers.VALUE\n\n\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )


def test_each_job_imports_the_projects_code_as_it_is_on_disk(tmp_path: Path, db_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_project(a, "a1")
    write_project(b, "b1")
    launch = ("hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0")
    run_app(a / "proj.py", "-m", "+x=1", *launch, cwd=a)
    log = tmp_path / "worker.log"
    proc = worker(log, "--idle-timeout", "0")
    try:
        done = lambda n: sum(r["status"] == "completed" for r in jobs(db_path)) == n  # noqa: E731
        wait_for(lambda: done(1), what="project a's first job")
        # another project, whose module has the same name
        run_app(b / "proj.py", "-m", "+x=1", *launch, "hydra.launcher.experiment=b", cwd=b)
        wait_for(lambda: done(2), what="project b's job")
        write_project(a, "a2")  # the researcher fixes helpers.py and submits again
        run_app(a / "proj.py", "-m", "+x=2", *launch, cwd=a)
        wait_for(lambda: done(3), what="project a's second job")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    rows = jobs(db_path)
    assert [r["return_value"] for r in rows] == ["a1", "b1", "a2"]
    assert len({r["worker"] for r in rows}) == 1  # one long-lived worker ran them all


def test_a_large_result_is_read_from_the_pipe_in_one_growing_buffer() -> None:
    """Reading the pipe is linear: chunks are appended to one buffer, which is never copied
    whole per chunk (the old reader rebuilt a bytes object each time: 64 MiB took 24 s)."""
    import pickle
    import struct

    from dr_exp.runner import FrameReader

    value = {"status": "completed", "blob": b"x" * (16 << 20)}
    data = pickle.dumps(value)
    frame = struct.pack("!Q", len(data)) + data
    reader = FrameReader()
    buffer, got = reader.buffer, []
    for start in range(0, len(frame), 1 << 16):
        got += reader.feed(frame[start : start + (1 << 16)])
        assert reader.buffer is buffer  # grown and consumed in place
    assert got == [value] and len(reader.buffer) == 0
