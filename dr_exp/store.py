"""The SQLite store under the job database and the sync queue: one base for both.

It owns everything that is about the file rather than its tables:

- creating the file and its folder with their modes (0600/0700, or for a queue
  that a group shares 0660/2770; see :mod:`dr_exp.paths`);
- the journal mode, chosen from the filesystem: WAL on a local disk, the
  rollback journal on a network filesystem, where WAL's shared memory is unsafe;
- pragmas, the busy timeout, and retries while SQLite stays busy, so that
  callers never see "database is locked";
- :meth:`SQLiteStore.write`: one ``BEGIN IMMEDIATE`` transaction;
  :meth:`SQLiteStore.rows`: a read as dicts;
- schema versions (``PRAGMA user_version``) and migrations, run under the
  write lock so that two processes opening an old file migrate it once.

A subclass names its file kind, its schema version and its migrations, and
holds the SQL of its own tables (``dr_exp.db`` for jobs, ``dr_exp.sync.queue``
for uploads)::

    class JobDB(SQLiteStore):
        KIND = "job database"
        MIGRATIONS = [_migrate_to_1, _migrate_to_2]
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence, TypeVar

from dr_exp import paths
from dr_exp.defaults import BUSY_TIMEOUT_S
from dr_exp.errors import DatabaseError

T = TypeVar("T")
Migration = Callable[[Any], None]  # takes a sqlite_utils.Database

# Filesystems on which WAL's shared-memory index is unsafe (SQLite docs: WAL
# needs every process on one host).  On these, dr_exp uses the rollback journal.
NETWORK_FILESYSTEMS = frozenset(
    # kernel network and cluster filesystems
    "nfs nfs4 lustre gpfs cifs smb smb2 smb3 smbfs beegfs ceph glusterfs afs 9p panfs fhgfs "
    "wekafs weka orangefs pvfs2 gfs2 ocfs2 quobyte "
    # FUSE network filesystems, seen as fuse.<name> (or fuseblk)
    "cephfs ceph-fuse gcsfuse s3fs juicefs sshfs rclone goofys lizardfs moosefs mfs davfs2 "
    "blobfuse blobfuse2 mountpoint-s3 alluxio-fuse quobyte-fuse weka-fuse".split()
)
JOURNAL_MODES = ("wal", "delete", "truncate", "persist")
# WAL pages after which a commit checkpoints them into the database (SQLite's default is
# 1,000).  A claim and finish writes ~9 pages, mostly the same few hot ones: checkpointing
# a longer log copies each of them once and pays its two fsyncs a quarter as often
# (claims ~12% faster here, benchmarks/bench_queue.py), for a WAL file of up to 16 MB.
WAL_CHECKPOINT_PAGES = 4000


def _unescape_mount(text: str) -> str:
    r"""/proc/mounts writes some bytes of a path as octal escapes (\040 for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def filesystem_type(path: Path) -> Optional[str]:
    """The type of the mount holding ``path``, read from /proc/self/mounts (Linux)."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) >= 3]
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for mount_point, fs_type in mounts:
        mount_point = _unescape_mount(mount_point)
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


def is_network_filesystem(fs_type: Optional[str]) -> bool:
    if not fs_type:
        return False
    return fs_type in NETWORK_FILESYSTEMS or fs_type.split(".")[-1] in NETWORK_FILESYSTEMS


def choose_journal_mode(path: Path) -> str:
    """WAL on a local disk, the rollback journal on a network filesystem;
    ``$DR_EXP_JOURNAL_MODE`` overrides the choice."""
    forced = os.environ.get(paths.ENV_JOURNAL_MODE, "").strip().lower()
    if forced:
        if forced not in JOURNAL_MODES:
            raise DatabaseError(f"{paths.ENV_JOURNAL_MODE} must be wal or delete, got {forced!r}")
        return forced
    return "delete" if is_network_filesystem(filesystem_type(path.parent)) else "wal"


def is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def is_corrupt(exc: BaseException) -> bool:
    """A damaged file ("database disk image is malformed", "file is not a database")."""
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def retry_busy(fn: Callable[[], T], attempts: int = 10) -> T:
    """Run ``fn``, retrying with jittered backoff while SQLite reports busy or locked."""
    delay = 0.01
    for attempt in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not is_busy(e) or attempt == attempts - 1:
                raise
            import random  # here: only a busy database needs it, not every CLI start

            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


def _sqlite_utils() -> Any:
    """sqlite-utils, for schema work only (kept off the hot path).

    At import it loads pandas and numpy when they are installed (about 1 s here, in a
    launcher's first sweep of a project) only to map their scalar types to columns;
    dr_exp's migrations never insert such values, so they are hidden from that import
    unless something imported them already.  (Code that later inserts numpy or pandas
    scalars with sqlite-utils in the same process gets them stored without that mapping.)
    """
    if "sqlite_utils" in sys.modules:
        return sys.modules["sqlite_utils"]
    hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        import sqlite_utils
    finally:
        for name in hidden:
            del sys.modules[name]
    return sqlite_utils


class SQLiteStore:
    """One connection to one SQLite file of a given kind, migrated to its schema."""

    KIND: ClassVar[str] = "database"  # how errors name the file: "job database", "sync queue"
    MIGRATIONS: ClassVar[Sequence[Migration]] = ()  # MIGRATIONS[i] takes version i to i + 1
    MISSING_HINT: ClassVar[str] = ""  # what to do when the file does not exist

    def __init__(self, path: Path, conn: sqlite3.Connection, journal_mode: str) -> None:
        self.path = path
        self.conn = conn
        self.journal_mode = journal_mode

    @classmethod
    def schema_target(cls) -> int:
        return len(cls.MIGRATIONS)

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, path: paths.PathLike, create: bool = True, group_shared: bool = False):
        """Open the file at ``path``, creating (with ``create``) and migrating it.

        A new file is private (0600), or group-writable with ``group_shared``,
        ``$DR_EXP_DB_GROUP_SHARED=1`` or a folder already marked shared.
        """
        path = Path(path)
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except OSError as e:  # a folder we may not enter: another user's private queue
            raise DatabaseError(f"cannot open {cls.KIND} {path}: {e.strerror}") from None
        if is_dir:
            raise DatabaseError(f"{path} is a directory, not a {cls.KIND}")
        if not exists:
            if not create:
                raise DatabaseError(f"no {cls.KIND} at {path}{cls.MISSING_HINT}")
            try:
                paths.create_file(path, paths.group_shared(path, group_shared))
            except OSError as e:
                raise DatabaseError(f"cannot create {cls.KIND} {path}: {e.strerror}") from None
        journal_mode = choose_journal_mode(path)
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_S)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != journal_mode:
                retry_busy(lambda: conn.execute(f"PRAGMA journal_mode = {journal_mode}"))
            conn.execute(f"PRAGMA synchronous = {'NORMAL' if journal_mode == 'wal' else 'FULL'}")
            if journal_mode == "wal":
                conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            if "malformed" in str(e):  # a SQLite file, damaged (not some other file)
                raise DatabaseError(f"the {cls.KIND} {path} is damaged: {e}") from None
            raise DatabaseError(f"cannot open {cls.KIND} {path}: {e}") from None
        store = cls(path, conn, journal_mode)
        store._migrate()
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ----------------------------------------------------------------------
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        target = self.schema_target()
        try:
            version = self.schema_version()
        except sqlite3.DatabaseError as e:
            raise DatabaseError(f"{self.path} is not a dr_exp {self.KIND} ({e})") from None
        if version > target:
            raise DatabaseError(
                f"{self.path} has {self.KIND} schema version {version}, newer than this "
                f"dr_exp understands ({target}); upgrade dr_exp"
            )
        if version == target:
            return

        def migrate(conn: sqlite3.Connection) -> None:
            db = _sqlite_utils().Database(conn, execute_plugins=False)
            start = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under the lock
            for step in range(start, target):
                self.MIGRATIONS[step](db)
                conn.execute(f"PRAGMA user_version = {step + 1}")

        try:
            self.write(migrate)
        except sqlite3.DatabaseError as e:
            raise DatabaseError(f"{self.path} is not a dr_exp {self.KIND} ({e})") from None

    # -- transactions ------------------------------------------------------------------
    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside one ``BEGIN IMMEDIATE`` transaction, retried while busy."""

        def attempt() -> T:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self.conn)
                self.conn.execute("COMMIT")
                return result
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

        return self._undamaged(lambda: retry_busy(attempt))

    def _undamaged(self, fn: Callable[[], T]) -> T:
        """A damaged file is the user's to restore: one clear error, not a traceback."""
        try:
            return fn()
        except sqlite3.DatabaseError as e:
            if is_corrupt(e):
                raise DatabaseError(f"the {self.KIND} {self.path} is damaged: {e}") from None
            raise

    def rows(self, sql: str, params: Sequence[Any] | dict = ()) -> list[dict]:
        """The rows of a read, as dicts keyed by column name."""

        def run() -> list[dict]:
            cur = self.conn.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

        return self._undamaged(lambda: retry_busy(run))
