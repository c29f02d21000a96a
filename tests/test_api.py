"""Trainer jobs: the seed's Python API, JobSubmitter and `dr_exp submit`, run by real workers."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from manage_helpers import PROJECT, assert_one_line_error, cli_json, rows, start_worker

import dr_exp.api as dr_exp
from dr_exp import results
from dr_exp.scripts.submission.submission_utils import JobSubmitter


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of tests/project: configs/experiment/*.yaml, dr_exp.yaml, my_trainer.py."""
    path = tmp_path / "myproject"
    shutil.copytree(PROJECT, path)
    return path


def test_cli_submit_runs_the_trainer_in_a_hydra_style_folder(project: Path) -> None:
    where = ("--base-path", str(project), "--experiment", "my_exp")
    out = run_cli(*where, "submit", "--config", "baseline.yaml", "--seed", "0",
                  "--priority", "100").stdout  # fmt: skip
    assert out.strip() == "queued job 1: baseline.yaml seed=0 (priority 100)"
    again = run_cli(*where, "submit", "--config", "baseline.yaml", "--seed", "0", "--priority", "7")
    assert "skipped: job 1 exists (pending)" in again.stdout
    assert (project / ".dr_exp" / "jobs.db").exists()
    run_cli(*where, "worker", "--idle-timeout", "1")

    (job,) = cli_json(*where, "list", "--status", "all", "--format", "json")
    assert (job["status"], job["priority"], job["overrides"]) == ("completed", 100, ["seed=0"])
    folder = project / "outputs" / "my_exp" / "1"
    assert job["output_dir"] == str(folder)
    assert job["return_value"]["metrics"] == {"val_acc": 1.0, "val_loss": 0.9}
    artifacts = job["return_value"]["artifacts"]
    assert artifacts["checkpoint"] == str(folder / "model.ckpt")
    assert "trainer" not in artifacts["config_seen"] and "optim" in artifacts["config_seen"]
    assert json.loads((folder / "model.ckpt").read_text())["worker"] == job["worker"]
    assert json.loads((folder / "metrics.json").read_text()) == {"val_acc": 1.0, "val_loss": 0.9}
    config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    assert config["seed"] == 0 and config["optim"]["lr"] == 0.1
    assert yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) == ["seed=0"]
    record = json.loads((folder / "job.json").read_text())
    assert (record["id"], record["status"]) == (1, "completed")
    assert record["return_value"] == job["return_value"]
    shown = cli_json(*where, "show", "1", "--format", "json")
    assert [e["event"] for e in shown["events"]] == ["epoch_complete", "epoch_complete"]
    assert list(shown["logs"]) == [str(folder / "train.log")]
    status = cli_json(*where, "status", "--format", "json")
    assert status["experiments"]["my_exp"]["completed"] == 1


def test_python_api_submit_wait_and_staged_results(project: Path, tmp_path: Path) -> None:
    job_id = dr_exp.submit_job(
        project="my_project",
        experiment="my_experiment",
        config_name="configs/experiment/baseline.yaml",
        overrides={"seed": 42, "optim.lr": 0.1, "optim.weight_decay": 1e-4},
        priority=100,
        tags=["baseline", "lr0.1"],
        base_path=project,
    )
    assert dr_exp.submit_job(
        project="my_project", experiment="my_experiment",
        config_name="configs/experiment/baseline.yaml", priority=300, base_path=project,
        overrides={"optim.weight_decay": 1e-4, "optim.lr": 0.1, "seed": 42},
    ) == job_id  # fmt: skip
    with pytest.raises(TimeoutError, match="1 of 1 jobs not finished"):
        dr_exp.wait([job_id], timeout=0.3, poll=0.1, base_path=project)
    worker = start_worker("--base-path", str(project), "worker", "--idle-timeout", "0",
                          log=tmp_path / "worker.log")  # fmt: skip
    try:
        (job,) = dr_exp.wait([job_id], timeout=120, poll=0.2, base_path=project)
        assert (job["status"], job["priority"], job["tags"]) == (
            "completed", 100, ["baseline", "lr0.1"],
        )  # fmt: skip
        assert job["return_value"]["metrics"]["val_acc"] == pytest.approx(43.0)
        # Stage 2: a fine sweep, submitted and waited for in one call.
        stage = [{"config": "baseline.yaml", "seed": s, "optim.lr": 0.3} for s in range(3)]
        done = dr_exp.submit_and_wait(
            stage, experiment="my_experiment", base_path=project, timeout=120, poll=0.2
        )
        assert [j["status"] for j in done] == ["completed"] * 3
        waited = dr_exp.wait(experiment="my_experiment", base_path=project, timeout=10)
        assert len(waited) == 4
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    df = results.load(experiment="my_experiment", base_path=project, group_by="optim.lr")
    row = df[df["optim.lr"] == 0.3].iloc[0]
    assert (row["jobs"], row["completed"], row["val_acc_count"]) == (3, 3, 3)
    assert row["val_acc_mean"] == pytest.approx(4.0) and row["val_acc_std"] == pytest.approx(1.0)


def test_job_submitter_dry_run_skip_existing_and_seed_helpers(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    batch = [
        {"config": "baseline.yaml", "seed": 0, "priority": 100},
        {"config": "variant.yaml", "seed": 1, "priority": 90, "tags": ["variant"]},
    ]
    db_file = project / ".dr_exp" / "jobs.db"
    dry = JobSubmitter(base_path=project, experiment="e", config_dir="configs/experiment",
                       dry_run=True, skip_existing=True)  # fmt: skip
    assert [r["action"] for r in dry.submit_batch(batch)] == ["would queue", "would queue"]
    assert not db_file.exists()  # a dry run writes nothing

    submitter = JobSubmitter(base_path=project, experiment="e", config_dir="configs/experiment",
                             dry_run=False, skip_existing=True)  # fmt: skip
    first = submitter.submit_batch(batch)
    assert [r["action"] for r in first] == ["queued", "queued"]
    assert [r["action"] for r in submitter.submit_batch(batch)] == ["pending", "pending"]
    assert [r["action"] for r in dry.submit_batch(batch)] == ["pending", "pending"]
    assert [(r["priority"], r["tags"]) for r in rows(db_file)] == [(100, []), (90, ["variant"])]
    assert submitter.check_existing_jobs() == {("baseline", 0), ("variant", 1)}
    assert submitter.validate_config("baseline.yaml") and not submitter.validate_config("x.yaml")
    ok, new_id = submitter.submit_job("baseline.yaml", 5, 100, extra_overrides="epochs=1",
                                      tags=["t"])  # fmt: skip
    assert ok and rows(db_file, ids=[new_id])[0]["overrides"] == ["epochs=1", "seed=5"]
    again = JobSubmitter(project, "e", False, skip_existing=False).submit_batch(batch[:1])
    assert again[0]["action"] == "queued" and again[0]["id"] not in {r["id"] for r in first}
    submitter.print_summary()
    assert "pending" in capsys.readouterr().out
    # The variant config names no trainer: dr_exp.yaml in the base path does.
    run_cli("--base-path", str(project), "worker", "--idle-timeout", "1")
    by_id = {r["id"]: r for r in rows(db_file)}
    variant = by_id[first[1]["id"]]
    assert variant["status"] == "completed"
    assert variant["return_value"]["metrics"]["val_acc"] == pytest.approx(6.0)  # lr 0.5 * 10 + 1


def test_a_failing_trainer_records_its_error(project: Path) -> None:
    where = ("--base-path", str(project), "--experiment", "e")
    run_cli(*where, "submit", "--config", "baseline.yaml", "fail=true")
    run_cli(*where, "worker", "--idle-timeout", "1")
    (job,) = cli_json(*where, "list", "--format", "json")
    assert job["status"] == "failed"
    assert job["error"] == "RuntimeError: job 1 was told to fail"
    folder = Path(job["output_dir"])
    assert "Traceback" in (folder / "error.txt").read_text()
    assert json.loads((folder / "job.json").read_text())["status"] == "failed"
    assert not (folder / "metrics.json").exists()
    # A folder-only view agrees, with no database at all.
    (project / ".dr_exp" / "jobs.db").rename(project / "elsewhere.db")
    (row,) = json.loads(
        run_cli("results", "--sweep", str(folder.parent), "--format", "json").stdout
    )
    assert (row["job_id"], row["status"], row["fail"]) == (1, "failed", True)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--config", "nope.yaml"], "config file not found: nope.yaml"),
        (["--config", "baseline.yaml", "--trainer", "no_such_module:train"],
         "cannot import trainer 'no_such_module:train': ModuleNotFoundError"),
        (["--config", "baseline.yaml", "--trainer", "my_trainer:nope"], "my_trainer has no 'nope'"),
        (["--config", "baseline.yaml", "--trainer", "my_trainer:NOT_CALLABLE"], "not a function"),
        (["--config", "baseline.yaml", "--trainer", "bad_trainer:train"], "RuntimeError: boom"),
        (["--config", "baseline.yaml", "--trainer", "nocolon"], "must look like pkg.module"),
        (["--config", "plain.yaml"], "no trainer for plain.yaml"),
        (["--config", "baseline.yaml", "--priority", "1001"], "got 1001"),
        (["--config", "baseline.yaml", "--seed", "1", "--priority", "high"], "got 'high'"),
        (["--config", "baseline.yaml", "optim.lr=[0.1"], "bad override"),
        (["--config", "baseline.yaml", "optim.lr=0.1,0.2"], "is a sweep"),
        (["--config", "baseline.yaml", "--on-duplicate", "maybe"], "invalid choice: 'maybe'"),
    ],
)  # fmt: skip
def test_bad_submissions_are_one_line_errors_and_write_nothing(
    project: Path, args: list[str], needle: str
) -> None:
    (project / "bad_trainer.py").write_text("raise RuntimeError('boom')\n")
    (project / "configs" / "experiment" / "plain.yaml").write_text("seed: 0\n")
    (project / "dr_exp.yaml").unlink()
    where = ("--base-path", str(project), "--experiment", "e")
    run_cli(*where, "submit", "--config", "baseline.yaml")
    db_file = project / ".dr_exp" / "jobs.db"
    before = db_file.read_bytes()
    assert_one_line_error(run_cli(*where, "submit", *args, check=False), needle)
    assert db_file.read_bytes() == before


def test_api_bad_input_raises_one_line_errors_and_writes_nothing(project: Path) -> None:
    db_file = project / ".dr_exp" / "jobs.db"
    ok = {"project": "p", "experiment": "e", "base_path": project}
    dr_exp.submit_job(config_name="baseline.yaml", **ok)
    before = db_file.read_bytes()
    for kwargs, needle in [
        ({"config_name": "configs/experiment/missing.yaml"}, "config file not found"),
        ({"config_name": "baseline.yaml", "priority": 1001}, "got 1001"),
        ({"config_name": "baseline.yaml", "trainer": "nope.nope:fn"}, "cannot import trainer"),
        ({"config_name": "baseline.yaml", "tags": [""]}, "tags must be"),
        ({"config_name": "baseline.yaml", "on_duplicate": "x"}, "on_duplicate must be"),
    ]:
        with pytest.raises(ValueError, match=needle) as info:
            dr_exp.submit_job(**ok, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="experiment must be"):
        dr_exp.submit_job(config_name="baseline.yaml", base_path=project)
    with pytest.raises(ValueError, match="no job with id 99"):
        dr_exp.wait([99], base_path=project, timeout=1)
    with pytest.raises(ValueError, match="job ids or an experiment"):
        dr_exp.wait(base_path=project)
    assert db_file.read_bytes() == before
