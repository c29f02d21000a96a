"""The smaller holes: symlinks out of a job folder, network filesystems, huge id ranges,
non-finite durations, absurd numbers, damaged databases and names that leave outputs/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ROOT, run_app, run_cli
from manage_helpers import PROJECT, assert_one_line_error

from dr_exp import store
from dr_exp.sync import record_finished

APP = ROOT / "tests" / "apps" / "app.py"


def queue(tmp_path: Path, *overrides: str) -> None:
    run_app(APP, "-m", *overrides, "hydra/launcher=dr_exp", "hydra.launcher.wait=false",
            "hydra.launcher.workers=0", cwd=tmp_path)  # fmt: skip


def test_the_uploader_never_follows_a_symlink_out_of_the_job_folder(
    tmp_path: Path, db_path: Path
) -> None:
    private = tmp_path / "home" / ".ssh"
    private.mkdir(parents=True)
    (private / "id_rsa").write_text("PRIVATE KEY")
    folder = tmp_path / "out" / "0"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "key").symlink_to(private / "id_rsa")  # a job (or its library) left these
    (folder / "ssh").symlink_to(private)
    dest = tmp_path / "dest"
    record_finished(folder, str(dest), base=tmp_path)
    run_cli("sync", "run", "--once")
    sent = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert sent == ["out/0/metrics.json"]
    assert not any("PRIVATE" in p.read_text() for p in dest.rglob("*") if p.is_file())


def test_network_filesystems_are_recognized_and_mount_paths_unescaped() -> None:
    for fs in ("gfs2", "ocfs2", "quobyte", "wekafs", "nfs4", "lustre", "fuse.cephfs",
               "fuse.ceph-fuse", "fuse.gcsfuse", "fuse.s3fs", "fuse.juicefs", "fuse.sshfs",
               "fuse.rclone"):  # fmt: skip
        assert store.is_network_filesystem(fs), fs
    for fs in ("ext4", "xfs", "btrfs", "tmpfs", "overlay", "fuse.portal"):
        assert not store.is_network_filesystem(fs), fs
    assert store._unescape_mount(r"/mnt/a\040b\011c\012d\134e") == "/mnt/a b\tc\nd\\e"


def test_a_huge_id_range_is_refused_without_being_materialized(
    tmp_path: Path, db_path: Path
) -> None:
    queue(tmp_path, "x=1")
    before = db_path.read_bytes()
    proc = run_cli("cancel", "1-1000000000", check=False)
    assert_one_line_error(proc, "at most 100000 at once")
    assert db_path.read_bytes() == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["worker", "--lease", "nan"], "--lease"),
        (["worker", "--heartbeat", "inf"], "--heartbeat"),
        (["worker", "--grace", "-inf"], "--grace"),
        (["cancel", "1", "--wait", "nan"], "--wait"),
        (["sync", "run", "--poll", "inf"], "--poll"),
        (["system", "launcher", "--crash-window", "nan"], "--crash-window"),
        (["list", "--limit", "1e23"], "--limit"),
        (["retry", "1", "--attempts", "1e20"], "--attempts"),
    ],
)
def test_non_finite_and_absurd_numbers_are_one_line_errors(
    tmp_path: Path, db_path: Path, args: list, needle: str
) -> None:
    queue(tmp_path, "x=1")
    before = db_path.read_bytes()
    assert_one_line_error(run_cli(*args, check=False), needle)
    assert db_path.read_bytes() == before


def test_a_non_finite_launcher_duration_writes_nothing(tmp_path: Path, db_path: Path) -> None:
    proc = run_app(APP, "-m", "x=1", "hydra/launcher=dr_exp", "hydra.launcher.idle_timeout=nan",
                   cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 1 and "idle_timeout" in proc.stderr
    assert "Traceback" not in proc.stderr and not db_path.exists()


def test_a_damaged_database_is_one_line_for_workers_and_commands(
    tmp_path: Path, db_path: Path
) -> None:
    queue(tmp_path, "x=range(0,200)")
    data = bytearray(db_path.read_bytes())
    page = 4096
    for start in range(page, len(data), page):  # every page but the header's
        data[start + 8 : start + 64] = b"\xff" * 56
    db_path.write_bytes(bytes(data))
    for args in (["list"], ["status"]):
        assert_one_line_error(run_cli(*args, check=False), "is damaged")
    # A worker's stderr is its log: it ends with the one-line error, and no traceback.
    worker = run_cli("worker", "--idle-timeout", "0.5", check=False)
    assert worker.returncode == 1 and "Traceback" not in worker.stderr
    assert worker.stderr.strip().splitlines()[-1].startswith("dr_exp: error: the job database")


@pytest.mark.parametrize("name", ["../../..", "a/b", ".hidden", "x" * 200])
def test_an_experiment_name_must_stay_a_plain_folder_name(
    tmp_path: Path, db_path: Path, name: str
) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    proc = run_cli("--base-path", str(project), "--experiment", name, "submit", "--config",
                   "baseline.yaml", check=False)  # fmt: skip
    assert_one_line_error(proc, "experiment")
    assert not (project / ".dr_exp").exists() and not (project / "outputs").exists()
    launched = run_app(APP, "-m", "x=1", "hydra/launcher=dr_exp",
                       f"hydra.launcher.experiment='{name}'", cwd=tmp_path, check=False)  # fmt: skip
    assert launched.returncode == 1 and "hydra.launcher.experiment" in launched.stderr
    assert "Traceback" not in launched.stderr and not db_path.exists()
