"""Syncing results against real destinations: a local folder, rsync over ssh, S3 (moto).

The sweeps are real Hydra runs through the command line; the uploaders are the
workers' and supervisors' background threads, or `dr_exp sync run`.  The ssh
and S3 tests skip on a machine that lacks their prerequisites, except in CI
(CI=true), where a missing prerequisite is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, run_app, run_cli
from test_fleet import alive
from test_worker import jobs, wait_for

from dr_exp import paths
from dr_exp.db import JobDB
from dr_exp.sync import record_finished
from dr_exp.sync.callback import attach_callback, validate_settings
from dr_exp.sync.destinations import TMP_MARK
from dr_exp.sync.queue import LeaseLost, SyncQueue, Target

APP = ROOT / "tests" / "apps" / "sync_app.py"
SSHD_UP = ROOT / "tests" / "sync" / "sshd-up.sh"
LAUNCH = ["hydra/launcher=dr_exp", "hydra.launcher.idle_timeout=1"]


def need(problem: str | None) -> None:
    """Skip for a missing prerequisite, except in CI, where it is a failure."""
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"sync tests must run in CI: {problem}")
        pytest.skip(problem)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(*args: str) -> dict:
    return json.loads(run_cli("sync", "status", "--format", "json", *args).stdout)


def states(*args: str) -> list[str]:
    return sorted(f["state"] for f in status(*args)["folders"])


def wait_uploaded(n: int, timeout: float = 90) -> dict:
    wait_for(lambda: states().count("uploaded") == n, timeout=timeout, what=f"{n} uploads")
    return {Path(f["path"]).name: f for f in status()["folders"]}


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TMP_MARK in p.name]


def partial_size(root: Path, prefix: str) -> int:
    """The size of a temporary file being written for ``prefix``; 0 when there is none."""
    for p in temp_files(root):
        try:
            if p.name.startswith(prefix):
                return p.stat().st_size
        except FileNotFoundError:  # renamed meanwhile
            pass
    return 0


def workers_exited(db_path: Path) -> bool:
    """Every worker process is gone: no background uploader is left to race `dr_exp sync run`."""
    db = JobDB.open(db_path, create=False)
    try:
        return not any(alive(w["pid"]) for w in db.rows("SELECT pid FROM workers"))
    finally:
        db.close()


def same_tree(src: Path, dst: Path) -> None:
    """Every file of ``src`` is in ``dst`` with the same bytes."""
    for path in src.rglob("*"):
        if path.is_file():
            assert (dst / path.relative_to(src)).read_bytes() == path.read_bytes(), path


# -- the queue itself -------------------------------------------------------------
def test_claims_are_exclusive_leases_expire_and_rerecords_resend(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "0"
    folder.mkdir(parents=True)
    target = Target(
        dest=str(tmp_path / "dest"), options={}, rsync_args=[], bwlimit=0, background=True
    )
    a = SyncQueue.open(tmp_path / "q.db")
    b = SyncQueue.open(tmp_path / "q.db")
    assert a.schema_version() == len(SyncQueue.MIGRATIONS)
    fid = a.record(str(folder), target, "out/0")
    assert a.record(str(folder), target, "out/0", since=time.time() - 60) is None  # already
    got = a.claim(fid, "a", lease_s=30)
    assert got is not None and got.target == target
    assert b.claim(fid, "b", lease_s=30) is None  # two uploaders never share a folder
    with pytest.raises(LeaseLost):
        b.renew(fid, "b", 30)
    a.renew(fid, "a", 30)
    # a is killed: once its lease runs out, b takes the folder over, and a cannot touch it.
    a.renew(fid, "a", 0.05)
    time.sleep(0.1)
    assert b.claim(fid, "b", lease_s=30) is not None
    assert not a.complete(fid, "a", {}, 0, 0)
    # The job writes more while b uploads: b's upload leaves the folder pending.
    a.record(str(folder), target, "out/0")
    assert b.complete(fid, "b", {"f": [1, 2]}, 1, 1)
    (row,) = a.folders()
    assert (row["state"], row["generation"]) == ("pending", 2)
    assert b.claim(fid, "b", lease_s=30) is not None
    assert b.complete(fid, "b", {"f": [1, 2]}, 0, 0)
    assert a.summary()["uploaded"] == 1


def test_a_fork_waits_until_no_upload_thread_holds_the_gate() -> None:
    import threading

    from dr_exp.sync import uploader

    uploader._guard_forks()  # what a worker does when it starts an upload thread
    inside, released = threading.Event(), []

    def upload_step() -> None:  # an upload thread in the middle of a SQLite call
        with uploader.FORK_GATE:
            inside.set()
            time.sleep(0.3)
            released.append(True)

    thread = threading.Thread(target=upload_step)
    thread.start()
    inside.wait()
    pid = os.fork()
    if pid == 0:  # the job: the gate is free here, and its own forks are not gated
        os._exit(0 if uploader.FORK_GATE.acquire(blocking=False) else 1)
    assert released == [True]  # the fork waited for the thread to leave the gate
    assert os.waitpid(pid, 0)[1] == 0
    thread.join()


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


@pytest.mark.parametrize("how", ["setting", "environment", "private"])
def test_a_group_shared_queue_is_group_writable_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.delenv(paths.ENV_SYNC_QUEUE, raising=False)
    if how == "environment":
        monkeypatch.setenv(paths.ENV_GROUP_SHARED, "1")
    else:
        monkeypatch.delenv(paths.ENV_GROUP_SHARED, raising=False)
    shared = how != "private"
    hydra_context = SimpleNamespace(callbacks=SimpleNamespace(callbacks=[]))
    settings = validate_settings({"dest": str(tmp_path / "dest")})
    db = tmp_path / "new" / "jobs.db"
    old = os.umask(0o022)
    try:
        # What the launcher does with hydra.launcher.group_shared=true, before any job runs.
        callback = attach_callback(hydra_context, settings, db, group_shared=how == "setting")
        queue = Path(callback.queue)
        assert queue == db.parent / ".sync_queue.db"
        assert hydra_context.callbacks.callbacks == [callback]
        assert (mode(queue), mode(queue.parent)) == ((0o660, 0o2770) if shared else (0o600, 0o700))
        # A job's process creates a file there later, knowing nothing of the setting: the
        # folder's setgid mark makes it group-writable too.
        monkeypatch.delenv(paths.ENV_GROUP_SHARED, raising=False)
        (tmp_path / "out").mkdir()
        later = queue.parent / "later.db"
        record_finished(tmp_path / "out", str(tmp_path / "dest"), queue=later)
        assert mode(later) == (0o660 if shared else 0o600)
    finally:
        os.umask(old)


def test_the_launcher_and_the_cli_agree_on_the_queue_of_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(paths.ENV_SYNC_QUEUE, "~/sync.db")
    monkeypatch.chdir(tmp_path)
    hydra_context = SimpleNamespace(callbacks=SimpleNamespace(callbacks=[]))
    settings = validate_settings({"dest": str(tmp_path / "dest")})
    callback = attach_callback(hydra_context, settings, tmp_path / ".dr_exp" / "jobs.db")
    assert callback.queue == str(tmp_path / "home" / "sync.db")
    assert Path(callback.queue).is_file()
    assert status("--queue", "~/sync.db")["folders"] == []


def test_watching_and_uploading_do_not_import_hydra() -> None:
    code = (
        "import sys, dr_exp.sync, dr_exp.sync.queue, dr_exp.sync.uploader\n"
        "assert 'hydra' not in sys.modules, 'hydra imported'\n"
        "from hydra.utils import get_class\n"
        "assert get_class('dr_exp.sync.SyncCallback') is dr_exp.sync.SyncCallback\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# -- a local destination ------------------------------------------------------------
def test_every_folder_is_uploaded_failed_and_killed_jobs_too(tmp_path: Path, db_path: Path) -> None:
    dest = tmp_path / "dest"
    proc = run_app(
        APP,
        "-m",
        "mode=write,fail,kill",
        "x=1",
        *LAUNCH,
        "hydra.launcher.workers=1",
        "hydra.sweep.dir=out",
        f"hydra.launcher.sync.dest={dest}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1  # two jobs failed; the sweep reports them as usual
    assert "results upload in the background" in proc.stderr
    assert [r["status"] for r in jobs(db_path)] == ["completed", "failed", "failed"]
    folders = wait_uploaded(3)  # by the worker's background thread, after the sweep returned
    assert {f["job_id"] for f in folders.values()} == {r["id"] for r in jobs(db_path)}
    for n in ("0", "1", "2"):
        same_tree(tmp_path / "out" / n, dest / "out" / n)
        assert (dest / "out" / n / ".hydra" / "config.yaml").exists()
        assert folders[n]["generation"] == 1  # recorded once: the worker saw on_job_end did it
    assert "ValueError: x=1 is not allowed" in (dest / "out/1/error.txt").read_text()
    # The killed job never reached on_job_end: the worker recorded its folder.
    assert "killed by signal 9" in (dest / "out/2/error.txt").read_text()
    assert not temp_files(dest)


def test_a_folder_written_again_is_resent_with_only_its_new_files(
    tmp_path: Path, db_path: Path
) -> None:
    dest = tmp_path / "dest"
    sweep = [
        "-m",
        "x=5",
        *LAUNCH,
        "hydra.launcher.workers=1",
        "hydra.sweep.dir=out",
        f"hydra.launcher.sync.dest={dest}",
    ]
    run_app(APP, *sweep, cwd=tmp_path)
    first = wait_uploaded(1)["0"]
    data = dest / "out/0/data_0.bin"
    inode = data.stat().st_ino
    # The job runs again in its folder (a resumed job): it appends and adds a file.
    run_app(APP, *sweep, "extra=hello", cwd=tmp_path)
    wait_for(
        lambda: (
            status()["folders"][0]["total_sent_files"] > first["total_sent_files"]
            and states() == ["uploaded"]
        ),
        timeout=90,
        what="the second upload",
    )
    (second,) = status()["folders"]
    assert (dest / "out/0/extra.txt").read_text() == "hello"
    assert (dest / "out/0/log.txt").read_text().count("run x=5") == 2
    assert data.stat().st_ino == inode  # unchanged files are not sent again
    assert second["sent_files"] <= second["files"] - 2  # neither data file
    # A file written later, by anything: the uploader's re-scan finds it.
    (tmp_path / "out/0/notes.txt").write_text("later")
    run_cli("sync", "run", "--once")  # or the idle worker's uploader, if it is quicker
    wait_for(lambda: states() == ["uploaded"], timeout=60, what="the upload of notes.txt")
    (third,) = status()["folders"]
    assert (dest / "out/0/notes.txt").read_text() == "later"
    assert (third["state"], third["sent_files"]) == ("uploaded", 1)
    same_tree(tmp_path / "out/0", dest / "out/0")


def test_kill_9_mid_upload_is_finished_by_the_next_uploader(tmp_path: Path, db_path: Path) -> None:
    dest = tmp_path / "dest"
    size = 3_000_000  # at 750 KiB/s: 4 s to catch the upload in the middle
    run_app(
        APP,
        "-m",
        "x=3",
        "files=1",
        f"size={size}",
        *LAUNCH,
        "hydra.launcher.workers=1",
        "hydra.sweep.dir=out",
        f"hydra.launcher.sync.dest={dest}",
        "hydra.launcher.sync.background=false",
        "hydra.launcher.sync.bwlimit=750",
        cwd=tmp_path,
    )
    assert states() == ["pending"] and not dest.exists()  # background=false: workers leave it
    real = dest / "out/0/data_0.bin"
    uploader = subprocess.Popen(
        [sys.executable, "-m", "dr_exp", "sync", "run", "--lease", "3", "--heartbeat", "0.3"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: partial_size(dest, ".data_0.bin") > 0, timeout=60, what="the upload")
    finally:
        uploader.send_signal(signal.SIGKILL)
        uploader.wait()
    (partial,) = temp_files(dest)
    assert 0 < partial.stat().st_size < size
    assert not real.exists()  # never a half-written file under its real name
    assert states() in (["uploading"], ["pending"])  # pending once its lease has run out
    wait_for(lambda: states() == ["pending"], timeout=30, what="the lease to expire")
    run_cli("sync", "run", "--once")
    assert states() == ["uploaded"]
    assert real.read_bytes() == (tmp_path / "out/0/data_0.bin").read_bytes()
    assert not temp_files(dest)  # the leftover of the killed upload is gone
    same_tree(tmp_path / "out/0", dest / "out/0")


def test_sync_run_follows_until_sigterm_and_gives_its_folder_back(
    tmp_path: Path, db_path: Path
) -> None:
    dest = tmp_path / "dest"
    folder = tmp_path / "result"
    folder.mkdir()
    (folder / "big.bin").write_bytes(os.urandom(2_000_000))
    record_finished(folder, str(dest), base=tmp_path, bwlimit=250)  # 8 s: stopped midway
    uploader = subprocess.Popen(
        [sys.executable, "-m", "dr_exp", "sync", "run"], stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: partial_size(dest, ".big.bin") > 0, timeout=60, what="the upload")
    uploader.send_signal(signal.SIGTERM)
    _, err = uploader.communicate(timeout=60)
    assert uploader.returncode == 0, err
    assert "stopped: the uploader is stopping" in err
    (row,) = status()["folders"]
    assert (row["state"], row["attempts"]) == ("pending", 0)  # due at once, no failure counted
    assert not temp_files(dest) and not (dest / "result" / "big.bin").exists()


def test_unreachable_destination_never_fails_a_job_and_shows_in_status(
    tmp_path: Path, db_path: Path
) -> None:
    need(None if shutil.which("rsync") and shutil.which("ssh") else "rsync or ssh is missing")
    port = free_port()  # nothing listens there: connection refused
    ssh = f"ssh -p {port} -o BatchMode=yes -o ConnectTimeout=5"
    run_app(
        APP,
        "-m",
        "x=1,2",
        *LAUNCH,
        "hydra.launcher.workers=1",
        "hydra.launcher.sync.dest=root@127.0.0.1:/nowhere",
        f"hydra.launcher.sync.rsync_args=[-e,'{ssh}']",
        cwd=tmp_path,
    )
    assert [r["status"] for r in jobs(db_path)] == ["completed", "completed"]
    wait_for(lambda: states() == ["failing", "failing"], timeout=60, what="failed uploads")
    text = run_cli("sync", "status").stdout
    assert "2 failing" in text and "Connection refused" in text and "retry in" in text
    overview = run_cli("status").stdout
    assert "sync: 0 pending, 0 uploading, 0 uploaded, 2 failing" in overview
    assert "Connection refused" in overview
    assert json.loads(run_cli("status", "--format", "json").stdout)["sync"]["failing"] == 2
    wait_for(lambda: workers_exited(db_path), timeout=60, what="the workers to exit")
    assert run_cli("sync", "retry").stdout.startswith("2 failing folder(s)")
    again = run_cli("sync", "run", "--once", check=False)  # still unreachable: exit 1
    assert again.returncode == 1 and "2 failing" in again.stderr


# -- rsync over ssh to localhost -----------------------------------------------------
@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    problem = None
    if os.geteuid() != 0:
        problem = "starting sshd needs root (tests/sync/sshd-up.sh)"
    elif not shutil.which("ssh"):
        problem = "the ssh client is not installed"
    need(problem)
    home = tmp_path_factory.mktemp("sshd")
    port = free_port()
    proc = subprocess.run(
        ["bash", str(SSHD_UP), str(home), str(port)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"tests/sync/sshd-up.sh failed:\n{proc.stderr[-2000:]}")
    pid = int((home / "sshd.pid").read_text())
    yield (
        f"ssh -p {port} -i {home}/client_key -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
    )
    os.kill(pid, signal.SIGTERM)


def test_rsync_over_ssh(tmp_path: Path, db_path: Path, sshd: str) -> None:
    remote = tmp_path / "remote"  # on this machine, reached through sshd on 127.0.0.1
    sweep = [
        "-m",
        "x=1,2",
        *LAUNCH,
        "hydra.launcher.workers=1",
        "hydra.sweep.dir=out",
        f"hydra.launcher.sync.dest=root@127.0.0.1:{remote}",
        f"hydra.launcher.sync.rsync_args=[-e,'{sshd}']",
    ]
    run_app(APP, *sweep, cwd=tmp_path)
    first = wait_uploaded(2)
    for n in ("0", "1"):
        same_tree(tmp_path / "out" / n, remote / "out" / n)
        assert first[n]["sent_files"] == first[n]["files"]
    inode = (remote / "out/0/data_0.bin").stat().st_ino
    # Run job 0 again in its folder: only what changed goes over the wire.
    run_app(APP, "-m", "x=1", "extra=more", *sweep[2:], cwd=tmp_path)
    wait_for(
        lambda: (
            status()["folders"][0]["total_sent_files"] > first["0"]["total_sent_files"]
            and states() == ["uploaded", "uploaded"]
        ),
        timeout=90,
        what="the re-upload",
    )
    again = {Path(f["path"]).name: f for f in status()["folders"]}["0"]
    assert (remote / "out/0/extra.txt").read_text() == "more"
    assert (remote / "out/0/data_0.bin").stat().st_ino == inode
    assert again["sent_files"] <= again["files"] - 2
    same_tree(tmp_path / "out/0", remote / "out/0")


# -- S3 through fsspec, against moto's server on loopback ---------------------------------
@pytest.fixture(scope="session")
def s3_endpoint():
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        need(f"the S3 test needs the test extra (s3fs, moto[server]): {e}")
    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in creds}
    os.environ.update(creds)  # for this process and the workers it starts
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_s3_through_fsspec(tmp_path: Path, db_path: Path, s3_endpoint: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    bucket = f"drexp-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    fs.mkdir(bucket)
    sweep = [
        "-m",
        "mode=write,fail",
        "x=2",
        *LAUNCH,
        "hydra.launcher.workers=1",
        "hydra.sweep.dir=out",
        f"hydra.launcher.sync.dest=s3://{bucket}/results",
        f"hydra.launcher.sync.options={{endpoint_url:'{s3_endpoint}'}}",
    ]
    run_app(APP, *sweep, cwd=tmp_path, check=False)
    first = wait_uploaded(2)
    for n in ("0", "1"):
        local = tmp_path / "out" / n
        for path in local.rglob("*"):
            if path.is_file():
                key = f"{bucket}/results/out/{n}/{path.relative_to(local)}"
                assert fs.cat_file(key) == path.read_bytes(), key
    assert b"ValueError" in fs.cat_file(f"{bucket}/results/out/1/error.txt")
    # Appended files go up; unchanged ones are not sent again.
    (tmp_path / "out/0/notes.txt").write_text("later")
    run_cli("sync", "run", "--once")
    wait_for(lambda: states() == ["uploaded"] * 2, timeout=60, what="the upload of notes.txt")
    again = {Path(f["path"]).name: f for f in status()["folders"]}["0"]
    assert (again["state"], again["sent_files"]) == ("uploaded", 1)
    assert again["files"] == first["0"]["files"] + 1
    assert fs.cat_file(f"{bucket}/results/out/0/notes.txt") == b"later"


# -- other ways in, and bad input -------------------------------------------------------
def test_hydra_callbacks_and_the_python_api_use_the_same_queue(
    tmp_path: Path, db_path: Path
) -> None:
    dest = tmp_path / "dest"
    # Any launcher: here Hydra's basic one, with the callback configured directly.
    run_app(
        APP,
        "-m",
        "x=1,2",
        "hydra.sweep.dir=out",
        "+hydra.callbacks.sync._target_=dr_exp.sync.SyncCallback",
        f"+hydra.callbacks.sync.dest={dest}",
        cwd=tmp_path,
    )
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "result.json").write_text("{}")
    record_finished(tmp_path / "api", str(dest), base=tmp_path)
    assert states() == ["pending"] * 3  # recorded, and nobody uploads in the background here
    run_cli("sync", "run", "--once")
    assert states() == ["uploaded"] * 3
    for n in ("0", "1"):
        same_tree(tmp_path / "out" / n, dest / "out" / n)
    assert (dest / "api" / "result.json").read_text() == "{}"


def test_supervisor_uploads_in_the_background(tmp_path: Path, db_path: Path) -> None:
    dest = tmp_path / "dest"
    run_app(
        APP,
        "-m",
        "x=1,2",
        *LAUNCH,
        "hydra.launcher.workers=0",
        "hydra.launcher.wait=false",
        "hydra.sweep.dir=out",
        f"hydra.launcher.sync.dest={dest}",
        cwd=tmp_path,
    )
    assert (db_path.parent / ".sync_queue.db").exists()  # created by the launcher
    sup = subprocess.run(
        [
            sys.executable,
            "-m",
            "dr_exp",
            "system",
            "launcher",
            "--cpu-workers",
            "1",
            "--idle-timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sup.returncode == 0, sup.stderr
    assert states() == ["uploaded", "uploaded"]  # before the supervisor and its worker exited
    for n in ("0", "1"):
        same_tree(tmp_path / "out" / n, dest / "out" / n)


def test_bad_input_is_a_one_line_error_and_leaves_the_queue_unchanged(
    tmp_path: Path, db_path: Path
) -> None:
    (tmp_path / "f").mkdir()
    queue = db_path.parent / ".sync_queue.db"
    proc = run_cli("sync", "status", check=False)
    assert proc.returncode == 1 and "no sync queue at" in proc.stderr
    assert "Traceback" not in proc.stderr and not queue.exists()
    record_finished(tmp_path / "f", str(tmp_path / "dest"))
    before = queue.read_bytes()
    for override, needle in [
        ("hydra.launcher.sync.bwlimit=-1", "hydra.launcher.sync.bwlimit"),
        ("hydra.launcher.sync.dest=gopher://x/y", "unknown destination protocol"),
        ("hydra.launcher.sync.options=[a]", "hydra.launcher"),
    ]:
        proc = run_app(
            APP,
            "-m",
            "x=1",
            "hydra/launcher=dr_exp",
            "hydra.launcher.sync.dest=d",
            override,
            cwd=tmp_path,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not db_path.exists()
    for args, code, needle in [
        (["sync", "run", "--lease", "1", "--heartbeat", "5"], 1, "--lease must be longer"),
        (["sync", "status", "--state", "lost"], 2, "unknown state 'lost'"),  # a usage error
        (["sync", "run", "--once", "--queue", str(tmp_path / "nope.db")], 1, "no sync queue at"),
    ]:
        proc = run_cli(*args, check=False)
        assert proc.returncode == code and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert queue.read_bytes() == before
    assert states() == ["pending"]
