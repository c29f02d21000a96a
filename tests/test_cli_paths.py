"""Every command finds the job database and the sync queue by the same rule (dr_exp.paths).

These run from a directory that holds neither file, with $DR_EXP_DB unset, so
that only --db / --base-path can lead a command to them.  They call the
console script's ``main`` in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dr_exp import paths
from dr_exp.cli import main
from dr_exp.db import JobDB
from dr_exp.sync.queue import SyncQueue, Target


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """P/.dr_exp/jobs.db and P/.dr_exp/.sync_queue.db with one folder waiting for upload."""
    monkeypatch.delenv(paths.ENV_DB, raising=False)
    monkeypatch.delenv(paths.ENV_SYNC_QUEUE, raising=False)
    project = tmp_path / "project"
    JobDB.open(project / ".dr_exp" / "jobs.db").close()
    folder = project / "outputs" / "0"
    folder.mkdir(parents=True)
    target = Target(
        dest=str(tmp_path / "dest"), options={}, rsync_args=[], bwlimit=0, background=True
    )
    q = SyncQueue.open(project / ".dr_exp" / ".sync_queue.db")
    q.record(str(folder), target, "outputs/0")
    q.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return project


def dr_exp(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``dr_exp ARGS``."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out.out, out.err


def test_status_shows_the_sync_line_of_the_base_paths_queue(project: Path, capsys) -> None:
    code, out, err = dr_exp(capsys, "--base-path", str(project), "status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"database: {project / '.dr_exp' / 'jobs.db'}"
    assert lines[1] == "sync: 1 pending, 0 uploading, 0 uploaded, 0 failing; see dr_exp sync status"
    code, out, err = dr_exp(capsys, "status", "--base-path", str(project), "--format", "json")
    assert code == 0, err
    sync = json.loads(out)["sync"]
    assert sync["queue"] == str(project / ".dr_exp" / ".sync_queue.db") and sync["pending"] == 1


@pytest.mark.parametrize(
    "where",
    [
        ["--base-path", "{p}", "sync", "status"],  # before the command
        ["sync", "status", "--base-path", "{p}"],  # after it
        ["--base-path", "{p}/nowhere", "sync", "status", "--base-path", "{p}"],  # the command wins
        ["--db", "{p}/.dr_exp/jobs.db", "sync", "status"],  # next to --db
        ["sync", "status", "--db", "{p}/.dr_exp/jobs.db"],
    ],
)
def test_sync_status_finds_the_queue_next_to_the_job_database(
    project: Path, capsys, where: list[str]
) -> None:
    code, out, err = dr_exp(capsys, *[w.format(p=project) for w in where], "--format", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["queue"] == str(project / ".dr_exp" / ".sync_queue.db")
    assert [f["path"] for f in shown["folders"]] == [str(project / "outputs" / "0")]


def test_sync_retry_and_run_use_the_base_path_too(project: Path, capsys) -> None:
    code, out, err = dr_exp(capsys, "--base-path", str(project), "sync", "retry")
    assert (code, out.strip()) == (0, "0 failing folder(s) will be retried by the next uploader")
    code, out, err = dr_exp(capsys, "--base-path", str(project), "sync", "status")
    assert code == 0 and out.startswith(f"sync queue: {project / '.dr_exp' / '.sync_queue.db'}")


def test_queue_option_and_variable_come_first(
    project: Path, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.db"
    SyncQueue.open(other).close()
    for args in (["--queue", str(other)], []):
        if not args:
            monkeypatch.setenv(paths.ENV_SYNC_QUEUE, str(other))
        code, out, err = dr_exp(
            capsys, "--base-path", str(project), "sync", "status", *args, "--format", "json"
        )
        assert code == 0, err
        assert json.loads(out)["queue"] == str(other) and json.loads(out)["folders"] == []


def test_without_a_base_path_the_current_directory_is_used(project: Path, capsys) -> None:
    code, out, err = dr_exp(capsys, "sync", "status")
    here = Path.cwd() / ".dr_exp" / ".sync_queue.db"
    assert code == 1 and err.startswith(f"dr_exp: error: no sync queue at {here}"), err
    code, out, err = dr_exp(capsys, "status")
    assert code == 1 and "no job database at" in err and str(Path.cwd()) in err
    code, out, err = dr_exp(capsys, "-e", "x", "status", "--base-path", str(project))
    assert code == 0 and "no jobs for experiment 'x'" in out and "sync: 1 pending" in out
