"""One queue, shared by a group: end to end, with real Unix users.

The promise (README, launcher setting ``group_shared``): with
``hydra.launcher.group_shared=true`` (or ``DR_EXP_DB_GROUP_SHARED=1`` for files
the CLI creates), ``.dr_exp`` is created 2770 (setgid + group rwx), ``jobs.db``
and ``.sync_queue.db`` 0660, SQLite's -wal/-shm follow the database's mode, and
anything created later in the folder, by any user, is group-writable too, all
under the usual umask 022.  Without it every file is 0600 and every folder 0700.
A group member can then submit, run workers, cancel and sync.

These tests create a group ``drexp_lab`` and two users in it, ``drexp_alice``
and ``drexp_bob``, and run the app and the CLI as them (``runuser``, else
``setpriv``), with a clean environment and umask 022.  They need root: without
it they skip, except under CI, where they fail.

The other users must be able to run the test interpreter and import dr_exp.
When the interpreter itself lives somewhere they cannot enter (a pyenv build
under a 0700 /root, say) but the checkout is reachable, the tests build a small
venv under /tmp from a world-executable Python of the same version that loads
the checkout's site-packages, and say so; a checkout they cannot reach fails.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
GROUP = "drexp_lab"
ALICE = "drexp_alice"
BOB = "drexp_bob"
TIMEOUT = 120  # seconds per command
LOCK = "/tmp/drexp_shared_queue_users.lock"
BAD_OUTPUT = re.compile(r"Traceback \(most recent call last\)|readonly database", re.IGNORECASE)


# -- helpers ----------------------------------------------------------------------------
def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def fmt(path: Path) -> str:
    st = os.stat(path)
    owner = pwd.getpwuid(st.st_uid).pw_name
    group = grp.getgrgid(st.st_gid).gr_name
    return f"{path} is {oct(stat.S_IMODE(st.st_mode))} {owner}:{group}"


def _run_root(args: List[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _exists(kind: str, name: str) -> bool:
    return _run_root(["getent", kind, name], check=False).returncode == 0


def _switch_user_prefix(user: str) -> List[str]:
    if shutil.which("runuser"):
        return [shutil.which("runuser"), "-u", user, "--"]
    return [shutil.which("setpriv"), f"--reuid={user}", f"--regid={GROUP}", "--init-groups", "--"]


@dataclass
class Lab:
    """The group, its users, and the interpreter they run."""

    python: Path  # an interpreter every user of the group can run, with dr_exp importable
    shim: Optional[Path]  # the /tmp venv built when the test interpreter was out of reach
    note: str  # how the interpreter was chosen
    homes: dict = field(default_factory=dict)  # user -> HOME, set per test
    key: Optional[Path] = None  # the shared signing key, set per test
    outputs: list = field(default_factory=list)  # (who, command, rc, stdout, stderr)

    def env(self, user: str) -> List[str]:
        home = self.homes[user]
        path = f"{self.python.parent}:/usr/local/bin:/usr/bin:/bin"
        return [
            "env", "-i", f"PATH={path}", f"HOME={home}", f"USER={user}", f"LOGNAME={user}",
            "LANG=C.UTF-8", f"DR_EXP_SHARED_KEY_FILE={self.key}", "HYDRA_FULL_ERROR=0",
        ]  # fmt: skip

    def command(self, user: str, args: List[str]) -> List[str]:
        return [*_switch_user_prefix(user), *self.env(user),
                "sh", "-c", 'umask 022; exec "$@"', "sh", *args]  # fmt: skip

    def run(
        self, user: str, *args: str, cwd: Path, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run ``args`` as ``user`` in ``cwd`` (``python`` is the lab's interpreter)."""
        argv = [str(self.python) if a == "python" else a for a in args]
        proc = subprocess.run(self.command(user, argv), cwd=cwd, capture_output=True, text=True,
                              timeout=TIMEOUT)  # fmt: skip
        shown = " ".join(args)
        self.outputs.append((user, shown, proc.returncode, proc.stdout, proc.stderr))
        if check and proc.returncode != 0:
            raise AssertionError(
                f"as {user}: {shown} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def assert_clean_outputs(self) -> None:
        bad = [o for o in self.outputs if BAD_OUTPUT.search(o[3] + o[4])]
        assert not bad, "\n\n".join(
            f"as {u}: {c} (exit {rc}) printed a traceback or 'readonly database':\n{out}\n{err}"
            for u, c, rc, out, err in bad
        )


def _unreachable_folder(user: str, target: Path) -> Optional[str]:
    """The first folder on the way to ``target`` (and to its real path) that ``user``
    cannot enter, described with its mode and owner."""
    chains = [Path(os.path.abspath(target)), Path(os.path.realpath(target))]
    for t in chains:
        for folder in reversed(t.parents):
            probe = [*_switch_user_prefix(user), "test", "-x", str(folder)]
            if subprocess.run(probe, capture_output=True).returncode != 0:
                return fmt(folder)
    return None


def _import_check(user: str, python: Path) -> subprocess.CompletedProcess:
    code = "import dr_exp, hydra_plugins.dr_exp_launcher, sqlite_utils; print(dr_exp.__file__)"
    argv = [*_switch_user_prefix(user), "env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp",
            str(python), "-c", code]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd="/")


def _build_shim(python_version: str) -> Path:
    """A venv under /tmp, from a world-executable interpreter of the same X.Y, that
    loads this interpreter's site-packages (and so the editable dr_exp)."""
    base = shutil.which(f"python{python_version}", path="/usr/local/bin:/usr/bin:/bin")
    if not base:
        raise FileNotFoundError(f"no python{python_version} in /usr/local/bin, /usr/bin or /bin")
    shim = Path(tempfile.mkdtemp(prefix="drexp_shared_python_", dir="/tmp"))
    os.chmod(shim, 0o755)
    _run_root([base, "-m", "venv", "--without-pip", str(shim / "venv")])
    site = Path(_run_root([str(shim / "venv" / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                          ).stdout.strip())  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    (site / "_drexp_test_checkout.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    for p in [shim, *shim.rglob("*")]:
        os.chmod(p, os.stat(p).st_mode | (0o755 if p.is_dir() else 0o644))
    return shim / "venv" / "bin" / "python"


# -- fixtures ---------------------------------------------------------------------------
def _lab_problem() -> Optional[str]:
    if os.geteuid() != 0:
        return "the shared-queue tests need root (useradd, chown, runuser)"
    for tool in ("useradd", "groupadd", "userdel", "getent"):
        if not shutil.which(tool):
            return f"the shared-queue tests need {tool}"
    if not (shutil.which("runuser") or shutil.which("setpriv")):
        return "the shared-queue tests need runuser or setpriv (util-linux)"
    return None


def _create_lab() -> tuple:
    """Create the group and users that are missing; what was created."""
    created_users, created_group = [], False
    if not _exists("group", GROUP):
        _run_root(["groupadd", GROUP])
        created_group = True
    for user in (ALICE, BOB):
        if _run_root(["id", user], check=False).returncode != 0:
            _run_root(
                ["useradd", "-M", "-N", "-g", GROUP, "-d", "/nonexistent", "-s", "/bin/sh", user]
            )
            created_users.append(user)
        assert grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name == GROUP, f"{user} not in {GROUP}"
    return created_group, created_users


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    problem = _lab_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"shared-queue tests must run in CI: {problem}")
        pytest.skip(problem)

    # Sessions may run these tests at once: each holds a shared lock while it uses the
    # users; the last one out (an exclusive lock) removes the users it created.
    in_use = open(LOCK, "a")  # held until the module ends
    fcntl.flock(in_use, fcntl.LOCK_SH)
    with open(f"{LOCK}.create", "a") as creating:
        fcntl.flock(creating, fcntl.LOCK_EX)
        created_group, created_users = _create_lab()

    shim_dir: Optional[Path] = None
    try:
        python = Path(sys.executable)
        blocked_checkout = _unreachable_folder(ALICE, ROOT / "dr_exp" / "__init__.py")
        if blocked_checkout:
            pytest.fail(
                f"{ALICE} cannot reach the checkout {ROOT}: {blocked_checkout}. "
                "Other users must be able to enter every folder above it (chmod o+x)."
            )
        check = _import_check(ALICE, python)
        note = f"{python}"
        shim = None
        if check.returncode != 0:
            blocked = _unreachable_folder(ALICE, python)
            why = (f"the folder {blocked} is not traversable" if blocked
                   else check.stderr.strip()[-500:])  # fmt: skip
            try:
                shim = _build_shim(f"{sys.version_info[0]}.{sys.version_info[1]}")
            except (OSError, AssertionError) as e:
                pytest.fail(f"{ALICE} cannot run {python} ({os.path.realpath(python)}): {why}; "
                            f"and no stand-in interpreter could be built: {e}")  # fmt: skip
            shim_dir = shim.parent.parent.parent
            check = _import_check(ALICE, shim)
            if check.returncode != 0:
                pytest.fail(f"{ALICE} cannot run {python} ({os.path.realpath(python)}): {why}; "
                            f"the stand-in {shim} fails too:\n{check.stderr}")  # fmt: skip
            note = (f"{ALICE} cannot run {python} -> {os.path.realpath(python)} ({why}); "
                    f"using the stand-in {shim} -> {os.path.realpath(shim)}")  # fmt: skip
            warnings.warn(note, stacklevel=2)
            python = shim
        print(f"shared-queue interpreter: {note}")
        yield Lab(python=python, shim=shim, note=note)
    finally:
        if shim_dir:
            shutil.rmtree(shim_dir, ignore_errors=True)
        try:
            fcntl.flock(in_use, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else uses them
        except BlockingIOError:
            created_users, created_group = [], False  # another session still runs: leave them
        for user in created_users:
            subprocess.run(["userdel", user], capture_output=True)
        if created_group:
            subprocess.run(["groupdel", GROUP], capture_output=True)
        in_use.close()


@dataclass
class Project:
    base: Path  # the per-test tmp folder (homes, key, dest live here)
    dir: Path  # the shared project folder: 0775, group drexp_lab, with the app
    dest: Path  # the sync destination, writable by the group

    @property
    def dr_exp(self) -> Path:
        return self.dir / ".dr_exp"


@pytest.fixture
def project(lab: Lab) -> Iterator[Project]:
    gid = grp.getgrnam(GROUP).gr_gid
    alice = pwd.getpwnam(ALICE).pw_uid
    base = Path(tempfile.mkdtemp(prefix="drexp_shared_", dir="/tmp"))
    os.chmod(base, 0o755)
    proj = base / "project"
    proj.mkdir()
    for name in ("app.py", "app.yaml"):
        shutil.copy(APPS / name, proj / name)
        os.chown(proj / name, alice, gid)
        os.chmod(proj / name, 0o664)
    os.chown(proj, alice, gid)
    os.chmod(proj, 0o775)
    dest = base / "dest"
    dest.mkdir()
    os.chown(dest, alice, gid)
    os.chmod(dest, 0o2775)
    key = base / "secret.key"
    key.write_text(os.urandom(32).hex() + "\n")
    os.chown(key, alice, gid)
    os.chmod(key, 0o640)
    lab.key = key
    lab.homes = {}
    for user in (ALICE, BOB):
        home = base / "home" / user
        home.mkdir(parents=True)
        os.chown(home, pwd.getpwnam(user).pw_uid, gid)
        os.chmod(home, 0o700)
        lab.homes[user] = home
    os.chmod(base / "home", 0o755)
    lab.outputs = []
    try:
        yield Project(base=base, dir=proj, dest=dest)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- reading the queue as root, without touching it ---------------------------------------
def jobs(db: Path) -> List[dict]:
    """Every row of ``jobs``, read from a copy (so that root creates no -wal/-shm there)."""
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal"):
            if Path(f"{db}{suffix}").exists():
                shutil.copy(f"{db}{suffix}", Path(tmp) / f"jobs.db{suffix}")
        conn = sqlite3.connect(Path(tmp) / "jobs.db")
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
        finally:
            conn.close()


def show_jobs(rows: List[dict]) -> str:
    keys = ("id", "status", "overrides", "output_dir", "error")
    return "\n".join(str({k: r.get(k) for k in keys}) for r in rows)


@contextmanager
def held_open(lab: Lab, user: str, db: Path, cwd: Path) -> Iterator[None]:
    """``user`` holds ``db`` open (a read in WAL mode creates -wal and -shm) while the block runs."""
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "print(c.execute('PRAGMA journal_mode').fetchone()[0], "
            "c.execute('SELECT count(*) FROM jobs').fetchone()[0], flush=True); sys.stdin.read()")  # fmt: skip
    proc = subprocess.Popen(lab.command(user, [str(lab.python), "-c", code, str(db)]), cwd=cwd,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        if not line.strip():
            proc.stdin.close()
            raise AssertionError(f"as {user}: could not open {db}: {proc.stderr.read()}")
        print(f"{user} holds {db} open: journal mode, job count = {line.strip()}")
        yield
    finally:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(timeout=TIMEOUT)


def walk(folder: Path) -> Iterator[Path]:
    yield folder
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            yield Path(dirpath) / name


def sweep(*overrides: str) -> List[str]:
    return ["python", "app.py", "-m", *overrides, "hydra/launcher=dr_exp"]


# -- the tests --------------------------------------------------------------------------
def test_group_shares_one_queue(lab: Lab, project: Project) -> None:
    db = project.dr_exp / "jobs.db"
    syncq = project.dr_exp / ".sync_queue.db"
    dest_opt = f"hydra.launcher.sync.dest={project.dest}"

    # alice creates the queue, shared
    lab.run(ALICE, *sweep("x=1,2", "hydra.launcher.group_shared=true", "hydra.launcher.wait=false",
                          "hydra.launcher.workers=0", dest_opt), cwd=project.dir)  # fmt: skip
    assert project.dr_exp.is_dir(), f"no {project.dr_exp}: {lab.outputs[-1]}"
    problems = []
    if mode(project.dr_exp) != 0o2770:
        problems.append(f"{fmt(project.dr_exp)}, want 0o2770")
    for f in (db, syncq):
        if not f.exists():
            problems.append(f"{f} does not exist after the sweep")
        elif mode(f) != 0o660:
            problems.append(f"{fmt(f)}, want 0o660")
    for suffix in ("-wal", "-shm"):
        extra = Path(f"{db}{suffix}")
        if extra.exists() and mode(extra) != 0o660:
            problems.append(f"{fmt(extra)}, want 0o660")
    # bob (same group) holds the database open: SQLite's -wal/-shm follow its mode
    with held_open(lab, BOB, db, project.dir):
        for suffix in ("-wal", "-shm"):
            extra = Path(f"{db}{suffix}")
            if extra.exists() and mode(extra) != 0o660:
                problems.append(f"{fmt(extra)} (created by {BOB} reading), want 0o660")
            elif extra.exists():
                print(f"ok: {fmt(extra)}")
    assert not problems, "after alice's group_shared sweep:\n" + "\n".join(problems)

    # bob submits without group_shared: the shared folder makes it work anyway
    lab.run(BOB, *sweep("x=3", "hydra.launcher.wait=false", "hydra.launcher.workers=0"),
            cwd=project.dir)  # fmt: skip
    rows = jobs(db)
    assert len(rows) == 3 and all(r["status"] == "pending" for r in rows), show_jobs(rows)

    # bob runs a worker: it completes alice's jobs and his own
    lab.run(BOB, "python", "-m", "dr_exp", "worker", "--idle-timeout", "1", cwd=project.dir)
    rows = jobs(db)
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows), (
        f"after {BOB}'s worker:\n{show_jobs(rows)}\n--- worker stderr\n{lab.outputs[-1][4]}"
    )
    for r in rows:
        out = Path(r["output_dir"]) if r["output_dir"] else None
        if out is not None and not out.is_absolute():
            out = project.dir / out
        assert out is not None and (out / ".hydra" / "overrides.yaml").is_file(), (
            f"job {r['id']} has no output folder: {show_jobs([r])}"
        )

    # alice queues one more; bob cancels it
    lab.run(ALICE, *sweep("x=4", "hydra.launcher.wait=false", "hydra.launcher.workers=0"),
            cwd=project.dir)  # fmt: skip
    pending = [r for r in jobs(db) if r["status"] == "pending"]
    assert len(pending) == 1, show_jobs(jobs(db))
    job_id = str(pending[0]["id"])
    lab.run(BOB, "python", "-m", "dr_exp", "cancel", job_id, cwd=project.dir)
    status = {str(r["id"]): r["status"] for r in jobs(db)}
    assert status[job_id] == "cancelled", show_jobs(jobs(db))

    # bob uploads what is due; the destination gets alice's job folders (x=1, x=2)
    lab.run(BOB, "python", "-m", "dr_exp", "sync", "run", "--once", cwd=project.dir)
    uploaded = sorted(p.read_text().strip() for p in project.dest.rglob("overrides.yaml"))
    assert any("x=1" in t for t in uploaded) and any("x=2" in t for t in uploaded), (
        f"{project.dest} holds overrides {uploaded}; files: "
        f"{sorted(str(p.relative_to(project.dest)) for p in project.dest.rglob('*'))}"
    )

    # bob starts local workers from a sweep: logs/ appears in the shared folder, as bob
    lab.run(BOB, *sweep("x=5", "hydra.launcher.workers=1"), cwd=project.dir)

    # everything created under .dr_exp, by anyone, is group-writable
    bad = []
    for p in walk(project.dr_exp):
        m = mode(p)
        if p.is_dir() and m != 0o2770:
            bad.append(f"{fmt(p)}, want 0o2770")
        elif not p.is_dir() and m & 0o060 != 0o060:
            bad.append(f"{fmt(p)}, want group read+write (0o660)")
        elif os.stat(p).st_gid != grp.getgrnam(GROUP).gr_gid:
            bad.append(f"{fmt(p)}, want group {GROUP}")
    listing = "\n".join(fmt(p) for p in walk(project.dr_exp))
    assert not bad, "not shared under .dr_exp:\n" + "\n".join(bad) + f"\n--- all:\n{listing}"
    lab.assert_clean_outputs()


def test_private_queue_stays_private(lab: Lab, project: Project) -> None:
    db = project.dr_exp / "jobs.db"
    syncq = project.dr_exp / ".sync_queue.db"
    lab.run(ALICE, *sweep("x=1,2", "hydra.launcher.wait=false", "hydra.launcher.workers=0",
                          f"hydra.launcher.sync.dest={project.dest}"), cwd=project.dir)  # fmt: skip
    problems = []
    if mode(project.dr_exp) != 0o700:
        problems.append(f"{fmt(project.dr_exp)}, want 0o700")
    for f in (db, syncq):
        if not f.exists():
            problems.append(f"{f} does not exist after the sweep")
        elif mode(f) != 0o600:
            problems.append(f"{fmt(f)}, want 0o600")
    with held_open(lab, ALICE, db, project.dir):
        for suffix in ("-wal", "-shm"):
            extra = Path(f"{db}{suffix}")
            if extra.exists() and mode(extra) != 0o600:
                problems.append(f"{fmt(extra)}, want 0o600")
    assert not problems, "after alice's private sweep:\n" + "\n".join(problems)

    # local workers: their logs are private too
    lab.run(ALICE, *sweep("x=3", "hydra.launcher.workers=1"), cwd=project.dir)
    bad = []
    for p in walk(project.dr_exp):
        want = 0o700 if p.is_dir() else 0o600
        if mode(p) != want:
            bad.append(f"{fmt(p)}, want {oct(want)}")
    listing = "\n".join(fmt(p) for p in walk(project.dr_exp))
    assert not bad, "not private under .dr_exp:\n" + "\n".join(bad) + f"\n--- all:\n{listing}"
    assert (project.dr_exp / "logs").is_dir(), f"no logs folder; .dr_exp holds:\n{listing}"

    # bob cannot read it, and is told so in one line
    proc = lab.run(BOB, "python", "-m", "dr_exp", "status", cwd=project.dir, check=False)
    err = proc.stderr.strip()
    assert proc.returncode != 0, f"{BOB} read alice's private queue:\n{proc.stdout}"
    assert err and len(err.splitlines()) == 1 and "Traceback" not in err, (
        f"{BOB}'s `dr_exp status` (exit {proc.returncode}) should fail in one line:\n{err}"
    )
    print(f"{BOB}'s `dr_exp status` (exit {proc.returncode}): {err}")
    lab.assert_clean_outputs()
