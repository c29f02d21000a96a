"""Results read from output folders (with and without a database), and structured logs."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_app, run_cli
from manage_helpers import MANAGED, assert_one_line_error

from dr_exp import results

QUEUE_ONLY = ("hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0")


@pytest.fixture
def finished(tmp_path: Path, db_path: Path) -> Path:
    """A 2x3 grid (completed), a failed job and a pending one, in three sweep folders."""
    broken = tmp_path / "broken"
    (broken / "5").mkdir(parents=True)
    run_app(MANAGED, "-m", "seed=0,1,2", "lr=0.01,0.1", "hydra/launcher=dr_exp",
            "hydra.launcher.workers=2", "hydra.sweep.dir=grid", cwd=tmp_path)  # fmt: skip
    run_app(MANAGED, "-m", "seed=5", "lr=0.5", f"fail_if={broken}", "hydra/launcher=dr_exp",
            "hydra.launcher.workers=1", "hydra.sweep.dir=fail", "hydra.launcher.tags=[bad]",
            cwd=tmp_path, check=False)  # fmt: skip
    run_app(MANAGED, "-m", "seed=7", *QUEUE_ONLY, "hydra.sweep.dir=later", cwd=tmp_path)
    return tmp_path


def test_results_from_the_database_keep_failed_and_pending_jobs(finished: Path) -> None:
    table = json.loads(run_cli("results", "--experiment", "managed", "--format", "json").stdout)
    assert len(table) == 8
    by_key = {(r["seed"], r["lr"]): r for r in table}
    for seed in (0, 1, 2):
        for lr in (0.01, 0.1):
            row = by_key[(seed, lr)]
            assert row["status"] == "completed"
            assert row["acc"] == pytest.approx(lr * 10 + seed)
            assert row["loss"] == pytest.approx(1 - lr)
    failed, pending = by_key[(5, 0.5)], by_key[(7, None)]
    assert (failed["status"], failed["acc"]) == ("failed", None)
    assert (pending["status"], pending["acc"], pending["output_dir"]) == ("pending", None, None)
    assert {r["experiment"] for r in table} == {"managed"}

    grouped = json.loads(
        run_cli("results", "--group-by", "lr", "--format", "json", cwd=finished).stdout
    )
    stats = {g["lr"]: g for g in grouped}
    for lr in (0.01, 0.1):
        assert (stats[lr]["jobs"], stats[lr]["completed"], stats[lr]["acc_count"]) == (3, 3, 3)
        assert stats[lr]["acc_mean"] == pytest.approx(lr * 10 + 1)
        assert stats[lr]["acc_std"] == pytest.approx(1.0)
    assert (stats[0.5]["jobs"], stats[0.5]["completed"], stats[0.5]["acc_count"]) == (1, 0, 0)
    text = run_cli("results", "--group-by", "lr,seed").stdout
    assert "acc_mean" in text.splitlines()[0] and "seed" in text.splitlines()[0]
    rows = list(csv.DictReader(io.StringIO(run_cli("results", "--format", "csv").stdout)))
    assert len(rows) == 8 and rows[0]["job_id"] == "1"
    tagged = json.loads(run_cli("results", "--tag", "bad", "--format", "json").stdout)
    assert [(r["seed"], r["status"]) for r in tagged] == [(5, "failed")]


def test_results_from_a_synced_copy_with_no_database(
    finished: Path, db_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    copy = tmp_path_factory.mktemp("synced") / "grid"
    shutil.copytree(finished / "grid", copy)
    shutil.rmtree(copy / "3")  # a job whose folder never arrived
    db_path.unlink()
    text = run_cli("results", "--sweep", str(copy), "--format", "csv", cwd=copy.parent).stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["job_id"] for r in table] == ["1", "2", "3", "4", "5", "6"]
    assert [r["status"] for r in table].count("missing") == 1
    missing = next(r for r in table if r["status"] == "missing")
    assert (missing["seed"], missing["lr"], missing["acc"]) == ("1", "0.1", "")
    done = [r for r in table if r["status"] == "completed"]
    assert all(float(r["acc"]) == pytest.approx(float(r["lr"]) * 10 + int(r["seed"])) for r in done)
    df = results.load(sweep_dir=copy, group_by=["lr"])
    assert sorted(df["jobs"]) == [3, 3] and sorted(df["completed"]) == [2, 3]
    failed = results.load(sweep_dir=finished / "fail")
    assert list(failed["status"]) == ["failed"]


def test_results_bad_input(finished: Path, db_path: Path) -> None:
    before = db_path.read_bytes()
    assert_one_line_error(run_cli("results", "--group-by", "nope", check=False),
                          "cannot group by 'nope'")  # fmt: skip
    assert_one_line_error(run_cli("results", "--sweep", "/no/such/sweep", check=False),
                          "no sweep folder at /no/such/sweep")  # fmt: skip
    assert_one_line_error(run_cli("results", "--format", "xml", check=False), "invalid choice")
    assert_one_line_error(run_cli("results", "--db", str(db_path.parent / "none.db"), check=False),
                          "no job database")  # fmt: skip
    assert db_path.read_bytes() == before


def test_structured_logger_outside_a_worker(tmp_path: Path) -> None:
    code = (
        "from dr_exp.utils import StructuredLogger\n"
        "log = StructuredLogger('local-1')\n"
        "log.log_event('epoch_complete', {'epoch': 0, 'val_acc': 0.5})\n"
        "log.log_event('done')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert (first["job_id"], first["event"], first["data"]) == (
        "local-1", "epoch_complete", {"epoch": 0, "val_acc": 0.5},
    )  # fmt: skip
    assert second["event"] == "done" and second["ts"] >= first["ts"] and "T" in first["time"]
    # Under plain Hydra (no dr_exp), events land in the run's output folder.
    run_app(MANAGED, "hydra.run.dir=plain", cwd=tmp_path)
    events = (tmp_path / "plain" / "events.jsonl").read_text().splitlines()
    assert [json.loads(e)["event"] for e in events] == ["epoch_complete"] * 2
