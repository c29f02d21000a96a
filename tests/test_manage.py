"""The management CLI (list filters, show, cancel, retry, priority, logs) with real workers."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_app, run_cli
from manage_helpers import (
    FAST_WORKER,
    MANAGED,
    attempts,
    by_override,
    cli_json,
    rows,
    start_worker,
    wait_for,
)
from test_cli import assert_one_line, invoke, ok

from dr_exp.db import JobDB, Outcome

QUEUE_ONLY = ("hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0")


@pytest.fixture
def queued(tmp_path: Path, db_path: Path) -> Path:
    """Six grid jobs (sweep folder 'grid') and one high-priority probe, all pending."""
    run_app(MANAGED, "-m", "seed=0,1,2", "lr=0.01,0.1", *QUEUE_ONLY, "hydra.sweep.dir=grid",
            "hydra.launcher.tags=[grid]", cwd=tmp_path)  # fmt: skip
    run_app(MANAGED, "-m", "seed=9", *QUEUE_ONLY, "hydra.sweep.dir=probe",
            "hydra.launcher.tags=[probe,extra]", "hydra.launcher.priority=900", cwd=tmp_path)  # fmt: skip
    return db_path


def test_list_filters_by_tag_and_sweep_and_prints_csv(tmp_path: Path, queued: Path) -> None:
    probe = cli_json("list", "--tag", "probe", "--format", "json")
    assert [j["overrides"] for j in probe] == [["seed=9"]]
    assert cli_json("list", "--tag", "probe", "--tag", "extra", "--format", "json") == probe
    assert cli_json("list", "--tag", "probe", "--tag", "grid", "--format", "json") == []
    text = run_cli("list", "--tag", "grid", "--status", "pending", "--format", "csv").stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == 6 and {r["tags"] for r in table} == {"grid"}
    assert {r["overrides"] for r in table} == {
        f"seed={s} lr={lr}" for s in (0, 1, 2) for lr in (0.01, 0.1)
    }
    grid = cli_json("list", "--sweep", "grid", "--format", "json", cwd=tmp_path)
    assert len(grid) == 6 and {j["sweep_id"] for j in grid} == {int(table[0]["sweep_id"])}
    by_id = cli_json("list", "--sweep", str(probe[0]["sweep_id"]), "--format", "json")
    assert by_id == probe
    assert "seed=9" in run_cli("list", "--tag", "probe").stdout  # the table form too


def test_priority_set_and_boost_with_selectors(queued: Path) -> None:
    out = run_cli("priority", "--tag", "probe", "--set", "50").stdout
    probe = by_override(rows(queued), "seed=")["seed=9"]
    assert probe["priority"] == 50 and f"job {probe['id']}: priority 900 -> 50" in out
    run_cli("priority", "--tag", "grid", "--status", "pending", "--boost", "100")
    assert sorted({r["priority"] for r in rows(queued)}) == [50, 600]
    first = rows(queued)[0]["id"]
    run_cli("priority", str(first), "--boost", "-600")
    assert rows(queued)[0]["priority"] == 0
    # The highest priority runs first through a real worker.
    run_cli("priority", f"{first + 2}-{first + 3}", "--set", "1000")
    run_cli("worker", "--max-jobs", "2", "--idle-timeout", "1")
    done = [r["id"] for r in rows(queued) if r["status"] == "completed"]
    assert done == [first + 2, first + 3]


def test_cancel_pending_by_tag_then_retry_by_status(queued: Path) -> None:
    out = run_cli("cancel", "--tag", "probe").stdout
    assert "cancelled 1 pending job(s)" in out
    statuses = {" ".join(r["overrides"]): r["status"] for r in rows(queued)}
    assert statuses.pop("seed=9") == "cancelled" and set(statuses.values()) == {"pending"}
    out = run_cli("retry", "--status", "cancelled").stdout
    assert "moved 1 job(s) back to pending" in out
    assert {r["status"] for r in rows(queued)} == {"pending"}
    out = run_cli("cancel", "--status", "pending", "--experiment", "nope").stdout
    assert "nothing cancelled" in out


def test_show_retry_and_logs_after_a_real_failure(tmp_path: Path, db_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    run_app(MANAGED, "-m", "seed=0,1", f"fail_if={broken}", *QUEUE_ONLY, cwd=tmp_path)
    run_cli("worker", "--idle-timeout", "1")
    jobs = by_override(rows(db_path), "seed=")
    failed, ok = jobs["seed=1"], jobs["seed=0"]
    assert (failed["status"], ok["status"]) == ("failed", "completed")

    shown = cli_json("show", str(failed["id"]), "--format", "json")
    assert shown["status"] == "failed" and shown["overrides"] == ["seed=1", f"fail_if={broken}"]
    assert [a["outcome"] for a in shown["attempts"]] == ["failed"]
    assert shown["attempts"][0]["worker"] == failed["worker"] and shown["attempts"][0]["host"]
    assert "seed: 1" in shown["config"]
    assert shown["error_tail"][-1] == "RuntimeError: seed 1 is told to fail"
    ((log_path, log_lines),) = shown["logs"].items()
    assert log_path == str(Path(failed["output_dir"]) / "managed.log")
    assert any("epoch 1 of seed 1" in line for line in log_lines)
    assert [e["event"] for e in shown["events"]] == ["epoch_complete"] * 2
    assert shown["events"][1]["data"] == {"epoch": 1, "loss": 0.5}
    assert shown["events"][0]["job_id"] == str(failed["id"])
    text = run_cli("show", str(failed["id"])).stdout
    for needle in ("status:     failed", "attempts:", "error.txt (last", "RuntimeError: seed 1",
                   "managed.log", "epoch_complete  epoch=1 loss=0.5", failed["output_dir"]):  # fmt: skip
        assert needle in text, needle

    logs = run_cli("logs", str(failed["id"])).stdout
    assert "epoch 0 of seed 1" in logs and "epoch_complete  epoch=0 loss=1.0" in logs

    (broken / "1").rmdir()
    assert "moved 1 job(s) back to pending" in run_cli("retry", str(failed["id"])).stdout
    run_cli("worker", "--idle-timeout", "1")
    again = by_override(rows(db_path), "seed=")["seed=1"]
    assert (again["id"], again["status"], again["output_dir"]) == (
        failed["id"], "completed", failed["output_dir"],
    )  # fmt: skip
    assert [a["outcome"] for a in attempts(db_path, failed["id"])] == ["failed", "completed"]
    assert not (Path(failed["output_dir"]) / "error.txt").exists()
    assert len(rows(db_path)) == 2


def test_cancel_stops_a_running_job_and_logs_follow(tmp_path: Path, db_path: Path) -> None:
    markers = tmp_path / "markers"
    run_app(MANAGED, "-m", "seed=0", "sleep=120", f"marker_dir={markers}", *QUEUE_ONLY,
            cwd=tmp_path)  # fmt: skip
    worker = start_worker("worker", "--idle-timeout", "0", *FAST_WORKER, log=tmp_path / "w.log")
    try:
        wait_for(lambda: (markers / "0.start").exists(), what="the job to start")
        job_pid = int((markers / "0.start").read_text())
        (job,) = rows(db_path)
        assert job["status"] == "running"
        out = run_cli("cancel", str(job["id"]), "--wait", "60").stdout
        assert f"job {job['id']}: stopped by worker {job['worker']} (cancelled)" in out

        def job_gone() -> bool:
            try:
                os.kill(job_pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(job_gone, what="the cancelled job's process to end")
        (job,) = rows(db_path)
        assert job["status"] == "cancelled"
        assert [a["outcome"] for a in attempts(db_path, job["id"])] == ["cancelled"]
        assert not (markers / "0.end").exists()

        # The worker lives on: the next job runs, and `logs -f` follows it to its end.
        run_app(MANAGED, "-m", "seed=1", "sleep=1", *QUEUE_ONLY, cwd=tmp_path)
        new_id = max(r["id"] for r in rows(db_path))
        follow = subprocess.run(
            [sys.executable, "-m", "dr_exp", "logs", str(new_id), "-f"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert follow.returncode == 0, follow.stderr
        assert "epoch 1 of seed 1" in follow.stdout and "done" in follow.stdout
        assert "epoch_complete" in follow.stdout
        assert by_override(rows(db_path), "seed=")["seed=1"]["status"] == "completed"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


@pytest.fixture
def three_states(tmp_path: Path, db_path: Path) -> dict[str, int]:
    """A pending, a running (claimed by a worker that holds it) and a completed job.

    Built through JobDB (no app needs to run for these commands), which keeps
    the many bad-input cases below fast.
    """
    db = JobDB.open(db_path)
    sweep = db.add_sweep(experiment="managed", app="managed", cwd=str(tmp_path), sys_path=[],
                         sweep_dir="multirun/x", config_yaml="", payload=b"-",
                         want_returns=False)  # fmt: skip
    db.enqueue(sweep, "managed", [(n, [f"seed={n}"]) for n in range(3)])
    done = db.claim("w-1", "host", lease_s=3600)
    db.finish(done, "w-1", Outcome(status="completed", return_json="1"))
    running = db.claim("w-2", "host", lease_s=3600)
    db.close()  # checkpoints the WAL: the file's bytes are now stable
    (pending,) = [r["id"] for r in rows(db_path) if r["status"] == "pending"]
    return {"pending": pending, "running": running.id, "completed": done.id}


@pytest.mark.parametrize(
    "args, code, needle",
    [  # usage errors exit 2, states to fix (no such job, a running job) exit 1
        (["show", "999"], 1, "no job with id 999"),
        (["logs", "999"], 1, "no job with id 999"),
        (["cancel", "999"], 1, "no job with id 999"),
        (["retry", "{pending}", "999"], 1, "no job with id 999"),
        (["priority", "999", "--set", "5"], 1, "no job with id 999"),
        (["show", "abc"], 2, "bad job id 'abc'"),
        (["cancel", "--status", "done"], 2, "unknown status 'done'"),
        (["retry", "--status", "finished"], 2, "unknown status 'finished'"),
        (["priority", "--status", "runing", "--set", "1"], 2, "unknown status 'runing'"),
        (["cancel", "--status", "completed"], 2, "cannot cancel completed jobs"),
        (["retry", "--status", "pending"], 2, "cannot retry pending jobs"),
        (["priority", "{pending}", "--set", "1001"], 2, "from 0 to 1000"),
        (["priority", "{completed}", "--boost", "501"], 1, "got 1001"),
        (["priority", "--tag", "x"], 2, "one of the options --set N, --boost N is required"),
        (["retry", "{running}"], 1, "is running; cancel it first"),
        (["retry", "{completed}"], 1, "only failed or cancelled jobs can be retried"),
        (["cancel", "{completed}", "{pending}"], 1, "only pending or running jobs can be"),
        (["cancel"], 2, "say which jobs to cancel"),
        (["cancel", "{pending}", "--wait", "-1"], 2, "'--wait': must be 0 seconds or more, got -1"),
        (["list", "--sweep", "77"], 1, "no sweep with id 77"),
        (["list", "--sweep", "/no/such/folder"], 1, "no sweep with folder"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    db_path: Path, three_states: dict[str, int], args: list[str], code: int, needle: str
) -> None:
    before = db_path.read_bytes()
    assert_one_line(invoke(*[a.format(**three_states) for a in args]), code, needle)
    assert db_path.read_bytes() == before


def test_global_base_path_and_experiment_options(tmp_path: Path, db_path: Path) -> None:
    project = tmp_path / "project"
    run_app(MANAGED, "-m", "seed=0,1", *QUEUE_ONLY, f"hydra.launcher.db={project}/.dr_exp/jobs.db",
            "hydra.launcher.experiment=exp_a", cwd=tmp_path)  # fmt: skip
    listed = cli_json("--base-path", str(project), "--experiment", "exp_a", "list", "--status",
                      "all", "--format", "json")  # fmt: skip
    assert [j["overrides"] for j in listed] == [["seed=0"], ["seed=1"]]
    assert cli_json("--base-path", str(project), "--experiment", "exp_a", "list", "--status",
                    "failed", "--format", "json") == []  # fmt: skip
    status = cli_json("--base-path", str(project), "--experiment", "exp_a", "status",
                      "--format", "json")  # fmt: skip
    assert status["experiments"]["exp_a"]["pending"] == 2
    assert status["db"] == str(project / ".dr_exp" / "jobs.db")
    assert not db_path.exists()  # $DR_EXP_DB was not used
    run_cli("--base-path", str(project), "cancel", "--status", "pending")
    assert {j["status"] for j in cli_json("list", "--base-path", str(project), "--format",
                                          "json")} == {"cancelled"}  # fmt: skip


def test_help_lists_the_management_commands() -> None:
    out = ok("--help")
    for command in ("show", "cancel", "retry", "priority", "logs", "results", "submit"):
        assert command in out
    assert "--base-path" in out
    assert "--wait" in ok("cancel", "--help")
    assert "--boost" in ok("priority", "--help")
