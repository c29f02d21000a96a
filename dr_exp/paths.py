"""Where dr_exp keeps its files, which environment variables move them, and their modes.

Every command, the launcher, workers and uploaders find every file through
these functions, so that they all agree:

- the job database: ``--db`` / ``hydra.launcher.db``, else
  ``<--base-path>/.dr_exp/jobs.db``, else ``$DR_EXP_DB``, else
  ``.dr_exp/jobs.db`` under the current directory (:func:`job_db`);
- the sync queue: ``--queue`` / ``hydra.launcher.sync.queue``, else
  ``$DR_EXP_SYNC_QUEUE``, else ``.sync_queue.db`` next to the job database
  (:func:`sync_queue`);
- local workers' logs: ``logs/`` next to the job database (:func:`worker_logs`);
- the signing key: ``$DR_EXP_SECRET_KEY_FILE``, else
  ``$XDG_CONFIG_HOME/dr_exp/secret.key`` (:func:`secret_key_file`).

Modes: files are 0600 and folders 0700, or, for a queue a group shares
(``hydra.launcher.group_shared``, ``$DR_EXP_DB_GROUP_SHARED=1``), 0660 and
2770: the setgid bit gives every file created later the folder's group, and
marks the folder as shared, so that whoever creates a file in it later (a
worker of another user, an uploader) creates it group-writable too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

# -- environment variables: always these constants, never bare strings ---------------
ENV_DB = "DR_EXP_DB"
ENV_SYNC_QUEUE = "DR_EXP_SYNC_QUEUE"
ENV_SECRET_KEY_FILE = "DR_EXP_SECRET_KEY_FILE"
ENV_SHARED_KEY_FILE = "DR_EXP_SHARED_KEY_FILE"  # a key a group shares, opted in to
ENV_GROUP_SHARED = "DR_EXP_DB_GROUP_SHARED"
ENV_JOURNAL_MODE = "DR_EXP_JOURNAL_MODE"
# Set by dr_exp for the processes it starts:
ENV_SUPERVISOR = "DR_EXP_SUPERVISOR"  # a node supervisor's id, for its workers
ENV_WORKER_ID = "DR_EXP_WORKER_ID"  # the worker's id, for its jobs
ENV_JOB_ID = "DR_EXP_JOB_ID"  # in a job's process
ENV_OUTPUT_DIR = "DR_EXP_OUTPUT_DIR"
ENV_EXPERIMENT = "DR_EXP_EXPERIMENT"

DB_DIR = ".dr_exp"
DB_NAME = "jobs.db"
SYNC_QUEUE_NAME = ".sync_queue.db"
LOGS_DIR = "logs"


def _absolute(path: PathLike, cwd: Optional[PathLike] = None) -> Path:
    p = Path(os.path.expanduser(os.fspath(path)))
    return p if p.is_absolute() else Path(cwd or os.getcwd()) / p


def job_db(
    db: Optional[PathLike] = None,
    base_path: Optional[PathLike] = None,
    cwd: Optional[PathLike] = None,
) -> Path:
    """The job database: ``db``, else ``<base_path>/.dr_exp/jobs.db``, else ``$DR_EXP_DB``,
    else ``.dr_exp/jobs.db`` under ``cwd`` (the current directory)."""
    if db:
        return _absolute(db, cwd)
    if base_path:
        return _absolute(base_path, cwd) / DB_DIR / DB_NAME
    return _absolute(os.environ.get(ENV_DB) or os.path.join(DB_DIR, DB_NAME), cwd)


def sync_queue(
    queue: Optional[PathLike] = None,
    db: Optional[PathLike] = None,
    base_path: Optional[PathLike] = None,
) -> Path:
    """The sync queue: ``queue``, else ``$DR_EXP_SYNC_QUEUE``, else ``.sync_queue.db``
    next to the job database that ``db`` and ``base_path`` name (see :func:`job_db`)."""
    if queue:
        return _absolute(queue)
    if os.environ.get(ENV_SYNC_QUEUE):
        return _absolute(os.environ[ENV_SYNC_QUEUE])
    return job_db(db, base_path).parent / SYNC_QUEUE_NAME


def worker_logs(db_path: PathLike) -> Path:
    """Where the local workers a sweep starts write their logs."""
    return Path(db_path).parent / LOGS_DIR


def secret_key_file() -> Path:
    """The signing key: ``$DR_EXP_SECRET_KEY_FILE``, else ``$XDG_CONFIG_HOME/dr_exp/secret.key``."""
    explicit = os.environ.get(ENV_SECRET_KEY_FILE)
    if explicit:
        return Path(explicit).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
        os.path.expanduser("~"), ".config"
    )
    return Path(config_home) / "dr_exp" / "secret.key"


# -- names that become folders -------------------------------------------------------
DEFAULT_CONFIG_DIR = "configs/experiment"  # `dr_exp submit --config NAME` looks here
EXPERIMENT_MAX = 128  # characters


def check_experiment(name: str) -> str:
    """An experiment names a folder (``outputs/<experiment>`` for trainer jobs): a plain name
    that stays inside it.  Returns it stripped; BadInput otherwise, before anything is written."""
    from dr_exp.errors import BadInput

    name = str(name).strip()
    if not name:
        raise BadInput("the experiment must be a non-empty name")
    if len(name) > EXPERIMENT_MAX:
        raise BadInput(f"the experiment name has {len(name)} characters; at most {EXPERIMENT_MAX}")
    if any(c in name for c in "/\\\0") or name.startswith("."):
        raise BadInput(
            f"the experiment {name!r} must be a plain name (no '/', no leading '.'): "
            "it names a folder under outputs/"
        )
    return name


# -- modes ------------------------------------------------------------------------------
def is_shared_folder(folder: PathLike) -> bool:
    """A folder marked for group sharing: setgid and group-writable, not world-writable."""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return False
    return bool(mode & stat.S_ISGID and mode & stat.S_IWGRP and not mode & stat.S_IWOTH)


def group_shared(path: PathLike, setting: bool = False) -> bool:
    """Should a new file at ``path`` be group-writable?  The setting, ``$DR_EXP_DB_GROUP_SHARED``,
    or a parent folder already marked shared."""
    return setting or os.environ.get(ENV_GROUP_SHARED) == "1" or is_shared_folder(Path(path).parent)


def ensure_dir(folder: PathLike, shared: bool = False) -> Path:
    """Create ``folder`` (and its parents) as 0700, or 2770 when shared, whatever the umask.

    Only folders created here get a mode; an existing folder is left as it is,
    except that one being shared gains the shared mode if it is ours.  A shared
    folder takes its parent's group when we belong to it (the project's group),
    rather than our own primary group.
    """
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    mode = 0o2770 if shared else 0o700
    for created in reversed(missing):
        try:
            if shared:
                group = created.parent.stat().st_gid
                if group in os.getgroups() or group == os.getgid():
                    os.chown(created, -1, group)
            os.chmod(created, mode)
        except OSError:
            pass
    if shared and not missing and folder.stat().st_uid == os.getuid():
        os.chmod(folder, folder.stat().st_mode | 0o2770)
    return folder


def share_with_group() -> None:
    """From now on, files and folders this process creates are group-writable (umask 002
    instead of 022): for the launcher and workers of a queue a group shares, so that
    every member can write the sweep and job folders too."""
    os.umask(os.umask(0) & ~0o070)


def create_file(path: PathLike, shared: bool = False) -> bool:
    """Create an empty file (and its folder) as 0600, or 0660 when shared, whatever the
    umask; True if this call created it."""
    path = Path(path)
    ensure_dir(path.parent, shared)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    os.chmod(path, 0o660 if shared else 0o600)
    return True
