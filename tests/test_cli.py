"""The dr_exp command line: its outputs, its errors, its help and its start-up cost.

Most commands run in-process through click's CliRunner, which goes through the
same ``main`` as the console script; what forks, or must start a fresh
interpreter, runs as ``python -m dr_exp``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import click
import pytest
from click.testing import CliRunner, Result
from conftest import ROOT, run_app, run_cli

from dr_exp import defaults, paths
from dr_exp.cli import cli
from dr_exp.cli import options as o
from dr_exp.cli.reference import render
from dr_exp.db import JobDB
from dr_exp.sync.queue import SyncQueue

APP = ROOT / "tests" / "apps" / "app.py"
PROJECT = ROOT / "tests" / "project"
# click < 8.2 mixes stderr into stdout unless told not to; later versions always separate them.
SEPARATE_STDERR = (
    {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}
)
HEAVY = ("hydra", "sqlite_utils", "cloudpickle", "pandas", "submitit", "pynvml")


def invoke(*args: str, cwd: Optional[Path] = None, catch: bool = False) -> Result:
    """``dr_exp ARGS`` in this process, as the console script runs it (exit codes included)."""
    with chdir(cwd or Path.cwd()):
        return CliRunner(**SEPARATE_STDERR).invoke(cli, list(args), catch_exceptions=catch)


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def ok(*args: str, cwd: Optional[Path] = None) -> str:
    result = invoke(*args, cwd=cwd)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def ok_json(*args: str, cwd: Optional[Path] = None):
    return json.loads(ok(*args, cwd=cwd))


def assert_one_line(result: Result, code: int, needle: str) -> str:
    """The error is one line on stderr, with this exit status, and no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def finished_sweep(tmp_path: Path, db_path: Path) -> Path:
    run_app(
        APP,
        "-m",
        "mode=ok,fail",
        "x=1,2",
        "hydra/launcher=dr_exp",
        "hydra.launcher.workers=2",
        "hydra.launcher.tags=[baseline,v1]",
        "hydra.launcher.priority=700",
        cwd=tmp_path,
        check=False,
    )
    run_app(
        APP,
        "-m",
        "x=5",
        "hydra/launcher=dr_exp",
        "hydra.launcher.experiment=later",
        "hydra.launcher.wait=false",
        "hydra.launcher.workers=0",
        cwd=tmp_path,
    )
    return db_path


@pytest.fixture
def empty_db(db_path: Path) -> Path:
    """An empty job database at $DR_EXP_DB: enough for every argument check."""
    JobDB.open(db_path).close()
    return db_path


def test_list_json_is_a_list_of_job_objects(finished_sweep: Path) -> None:
    jobs = ok_json("list", "--status", "all", "--format", "json")
    assert len(jobs) == 5
    for job in jobs:
        for key in (
            "id",
            "experiment",
            "status",
            "priority",
            "tags",
            "overrides",
            "output_dir",
            "return_value",
            "error",
        ):
            assert key in job
    by_overrides = {" ".join(j["overrides"]): j for j in jobs}
    ok_job = by_overrides["mode=ok x=2"]
    assert (ok_job["status"], ok_job["return_value"], ok_job["error"]) == ("completed", 4, None)
    assert ok_job["tags"] == ["baseline", "v1"] and ok_job["priority"] == 700
    assert ok_job["experiment"] == "app" and Path(ok_job["output_dir"]).is_dir()
    bad = by_overrides["mode=fail x=1"]
    assert bad["status"] == "failed" and bad["error"] == "ValueError: x=1 is not allowed"
    assert bad["return_value"] is None
    queued = by_overrides["x=5"]
    assert (queued["status"], queued["experiment"], queued["output_dir"]) == (
        "pending",
        "later",
        None,
    )


def test_list_filters_by_status_and_experiment(finished_sweep: Path) -> None:
    failed = ok_json("list", "--status", "failed", "--format", "json")
    assert sorted(" ".join(j["overrides"]) for j in failed) == ["mode=fail x=1", "mode=fail x=2"]
    later = ok_json("list", "--experiment", "later", "--format", "json")
    assert [j["overrides"] for j in later] == [["x=5"]]
    assert ok_json("list", "-e", "later", "--format", "json") == later
    table = ok("list", "--status", "completed,pending")
    assert "mode=ok x=1" in table and "x=5" in table and "mode=fail" not in table
    assert len(ok_json("list", "--limit", "2", "--format", "json")) == 2


def test_status_counts_per_experiment(finished_sweep: Path) -> None:
    status = ok_json("status", "--format", "json")
    expected = dict.fromkeys(defaults.STATUSES, 0)
    assert status["experiments"]["app"] == dict(expected, completed=2, failed=2)
    assert status["experiments"]["later"]["pending"] == 1
    assert status["running"] == [] and status["sync"] is None
    table = ok("status", "--experiment", "app")
    assert "app" in table and "later" not in table


def test_db_option_and_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without DR_EXP_DB, the launcher and the CLI both use ./.dr_exp/jobs.db.
    monkeypatch.delenv(paths.ENV_DB)
    run_app(APP, "-m", "x=3", "hydra/launcher=dr_exp", "hydra.launcher.workers=1", cwd=tmp_path)
    assert (tmp_path / ".dr_exp" / "jobs.db").exists()
    jobs = ok_json("list", "--format", "json", cwd=tmp_path)
    assert [j["return_value"] for j in jobs] == [6]
    other = tmp_path / "elsewhere"
    other.mkdir()
    moved = other / "copy.db"
    shutil.copy(tmp_path / ".dr_exp" / "jobs.db", moved)
    for args in (
        ["--db", str(moved), "list"],  # before the command
        ["list", "--db", str(moved)],  # after it
        ["--db", str(other / "wrong.db"), "list", "--db", str(moved)],  # the command's wins
        ["--base-path", str(other / "wrong"), "list", "--db", str(moved)],  # --db beats both
    ):
        jobs = ok_json(*args, "--format", "json", cwd=other)
        assert [j["return_value"] for j in jobs] == [6], args


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["list", "--status", "done"], 2, "unknown status 'done'"),
        (["list", "--format", "xml"], 2, "invalid choice: 'xml'"),
        (["list", "--limit", "0"], 2, "Invalid value for '--limit': 0 is not in the range x>=1"),
        (["frobnicate"], 2, "No such command 'frobnicate'"),
        (["worker", "--idle-timeout", "-1"], 2, "'--idle-timeout': must be 0 seconds or more"),
        (["worker", "--lease", "nan"], 2, "'--lease': 'nan' is not a finite number of seconds"),
        (["worker", "--grace", "inf"], 2, "'--grace': 'inf' is not a finite number"),
        (["worker", "--heartbeat", "0"], 2, "'--heartbeat': must be more than 0 seconds"),
        (["worker", "--max-jobs", "0"], 2, "'--max-jobs'"),
        (["worker", "--max-hours", "-2"], 2, "'--max-hours': must be more than 0 hours"),
        (["worker", "--lease", "5", "--heartbeat", "5"], 1, "--lease must be longer than"),
        (["system", "launcher", "--workers-per-gpu", "0"], 2, "'--workers-per-gpu'"),
        (["system", "launcher", "--crash-window", "x"], 2, "'x' is not a number of seconds"),
        (["system", "launcher", "--lease", "1", "--heartbeat", "2"], 1, "--lease must be"),
        (["system", "frobnicate"], 2, "No such command 'frobnicate'"),
        (["workers", "submit"], 2, "Missing option '--array'"),
        (["workers", "submit", "--array", "1", "--additional", "x"], 2, "KEY=VALUE, got 'x'"),
        (["status", "--db", "/nonexistent/dir/jobs.db"], 1, "no job database at /nonexistent"),
        (["status", "--format", "csv"], 2, "invalid choice: 'csv'"),
        (["show"], 2, "Missing argument 'ID'"),
        (["show", "abc"], 2, "bad job id 'abc'"),
        (["logs", "1", "--lines", "-1"], 2, "'--lines'"),
        (["cancel", "3-1"], 2, "bad id range '3-1'"),
        (["sync", "status", "--state", "lost"], 2, "unknown state 'lost'"),
        (["sync", "run", "--poll", "0"], 2, "'--poll': must be more than 0 seconds"),
        (["submit", "--config", "c.yaml", "--priority", "high"], 2, "got 'high'"),
        (["submit", "--config", "c.yaml", "--seed"], 2, "'--seed' requires an argument"),
        (["submit", "--config", "c.yaml"], 2, "submit needs --experiment"),
        (["priority", "1", "--set", "1", "--boost", "1"], 2, "cannot be used together"),
    ],
)
def test_bad_arguments_are_one_line_errors(empty_db: Path, args, code, needle) -> None:
    before = empty_db.read_bytes()
    assert_one_line(invoke(*args), code, needle)
    assert empty_db.read_bytes() == before


def test_usage_errors_name_the_command_and_its_help(empty_db: Path) -> None:
    line = assert_one_line(invoke("list", "--limit", "0"), 2, "--limit")
    assert line == (
        "dr_exp list: error: Invalid value for '--limit': 0 is not in the range x>=1. "
        "(see dr_exp list --help)"
    )
    line = assert_one_line(invoke("sync", "run", "--lease", "-1"), 2, "--lease")
    assert line.startswith("dr_exp sync run: error: ") and line.endswith(
        "(see dr_exp sync run --help)"
    )
    line = assert_one_line(invoke("status", "--db", "/nonexistent/jobs.db"), 1, "no job")
    assert line.startswith("dr_exp: error: no job database at /nonexistent/jobs.db")


def test_missing_database_is_not_created_by_reading_commands(tmp_path: Path, db_path: Path) -> None:
    for args in (["status"], ["list"], ["show", "1"], ["cancel", "1"], ["sync", "status"]):
        result = invoke(*args)
        assert result.exit_code == 1 and "no " in result.stderr, args
    assert not db_path.exists() and not db_path.parent.exists()


def test_a_closed_pipe_exits_quietly(empty_db: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dr_exp", "status"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # as `dr_exp status | head -0` does, before dr_exp writes
    assert proc.wait(60) == 0
    assert proc.stderr.read() == b""


def test_parameter_types_refuse_what_click_lets_through() -> None:
    for text in ("nan", "inf", "-inf", "-1", "abc", ""):
        with pytest.raises(click.BadParameter):
            o.SECONDS.convert(text, None, None)
    assert o.SECONDS.convert("0", None, None) == 0.0
    with pytest.raises(click.BadParameter):
        o.POSITIVE_SECONDS.convert("0", None, None)
    assert o.POSITIVE_SECONDS.convert("0.5", None, None) == 0.5
    assert math.isnan(click.FloatRange(min=0).convert("nan", None, None))  # why Quantity exists
    ids = o.JobIdList()
    assert ids.convert("3", None, None) == (3,)
    assert ids.convert("5,6", None, None) == (5, 6)
    assert ids.convert("7-9", None, None) == (7, 8, 9)
    for bad in ("x", "9-7", "1-", "-3"):
        with pytest.raises(click.BadParameter):
            ids.convert(bad, None, None)
    statuses = o.CommaChoice(defaults.STATUSES, "status", everything="all")
    assert statuses.convert("failed, pending", None, None) == ("failed", "pending")
    assert statuses.convert("all", None, None) is None


def test_ids_take_spaces_commas_and_ranges(db_path: Path, tmp_path: Path) -> None:
    db = JobDB.open(db_path)
    sweep = db.add_sweep(
        experiment="e",
        app="a",
        cwd=str(tmp_path),
        sys_path=[],
        sweep_dir="s",
        config_yaml="",
        payload=b"-",
        want_returns=False,
    )
    db.enqueue(sweep, "e", [(n, [f"x={n}"]) for n in range(10)])
    db.close()
    out = ok("cancel", "3", "5,6", "7-9", "3")
    assert out.strip() == "cancelled 6 pending job(s): 3 5 6 7 8 9"


def test_submit_takes_several_seeds_and_overrides_in_any_order(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    where = ("--base-path", str(project), "-e", "e")
    out = run_cli(
        *where,
        "submit",
        "--config",
        "baseline.yaml",
        "--seed",
        "0",
        "1",
        "2",
        "optim.lr=0.5",
        "--dry-run",
    ).stdout
    assert out.splitlines() == [
        f"would queue: baseline.yaml optim.lr=0.5 seed={s}" for s in (0, 1, 2)
    ]
    assert not (project / ".dr_exp").exists()


def test_the_seed_forms_run_the_real_supervisor_and_worker(empty_db: Path) -> None:
    """`dr_exp --experiment E system launcher ...` and `... system worker` as the seed wrote
    them: real processes, seen through the worker registry they write."""
    run_cli("--experiment", "E", "system", "launcher", "--workers-per-gpu", "3",
            "--max-hours", "46", "--idle-timeout", "0.5")  # fmt: skip
    run_cli("--experiment", "E", "system", "worker", "--idle-timeout", "0.5", "--max-jobs", "2")
    run_cli("-e", "F", "worker", "--idle-timeout", "0.5")
    with JobDB.open(empty_db, create=False) as db:
        workers = db.rows("SELECT experiment, supervisor, state FROM workers ORDER BY started")
    assert [w["experiment"] for w in workers] == ["E"] * 4 + ["F"]
    assert len({w["supervisor"] for w in workers[:3]}) == 1 and workers[0]["supervisor"]
    assert workers[3]["supervisor"] is None  # a lone worker
    assert {w["state"] for w in workers} == {"exited"}


def test_help_describes_every_command() -> None:
    out = ok("--help")
    for command in cli.commands.values():
        assert f"  {command.name} " in out and command.get_short_help_str(100)[:30] in out
    assert f"${paths.ENV_DB}" in out and "Examples:" in out

    def walk(group: click.Group, path: list[str]) -> None:
        for name, command in group.commands.items():
            text = ok(*path, name, "--help")
            assert text.startswith(f"Usage: dr_exp {' '.join([*path, name])} ")
            for param in command.params:
                if isinstance(param, click.Option) and not param.hidden:
                    assert param.opts[-1] in text, (name, param.opts)
                    assert param.help, f"{name} {param.opts[0]} has no help"
            if isinstance(command, click.Group):
                walk(command, [*path, name])

    walk(cli, [])
    for group in ([], ["sync"]):  # a group without its command shows its help
        result = invoke(*group)
        assert result.exit_code == 2 and result.stdout.startswith("Usage: dr_exp")
    assert "--idle-timeout" in ok("worker", "--help")


def test_docs_cli_md_is_generated_from_the_commands() -> None:
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == render(), "regenerate: python -m dr_exp.cli.reference > docs/cli.md"


def test_help_and_status_import_nothing_heavy(empty_db: Path) -> None:
    SyncQueue.open(empty_db.parent / paths.SYNC_QUEUE_NAME).close()  # status reads it too
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dr_exp", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "dr_exp.cli" in modules
    assert not {m.split(".")[0] for m in modules} & set(HEAVY), proc.stderr
    # --help lists the commands: it opens no database and reads no key.
    assert not modules & {"dr_exp.db", "dr_exp.api", "dr_exp.signing", "sqlite3", "logging"}
    code = (
        "import contextlib, io, json, sys\n"
        "from dr_exp.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        main(['status', '--db', {str(empty_db)!r}])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))\n"
        "print(json.dumps({'heavy': heavy, 'out': out.getvalue()}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *HEAVY], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert "sync: 0 pending" in seen["out"] and seen["heavy"] == []


def test_console_script_is_installed() -> None:
    exe = shutil.which("dr_exp")
    assert exe is not None, "pip install should put dr_exp on PATH"
    assert "status" in subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
