"""Syncing results: finished output folders go to a durable queue, then to a destination.

    job ends ──> on_job_end: SyncCallback records the folder (one insert into
                 .sync_queue.db)                     │ the worker records it too, for a
                                                     │ job whose process died first
    uploader (a thread of each worker and supervisor, or `dr_exp sync run`)
      claims a due folder under a lease ──> sends new and changed files ──>
      checks sizes at the destination ──> uploaded  (or: failing, retried with backoff)

A job never waits for its upload, and an unreachable destination never fails
a job: it shows in ``dr_exp status`` and ``dr_exp sync status``.  A folder
whose uploader is killed keeps its lease until it expires, then the next
uploader finishes it.  A folder that gets new files after its upload (a job
resumed in it, or files appended later) is uploaded again: recording it again
does that, and uploaders re-scan recently uploaded folders for changed files.

The one entry point for anything that finishes jobs (the Hydra callback, the
worker, the Python API) is :func:`record_finished`.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import stat
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.experimental.callback import Callback

from dr_exp.db import resolve_db_path
from dr_exp.sync_dest import (
    TMP_MARK,
    Control,
    Destination,
    DestinationError,
    UploadStopped,
    check_dest,
    make_destination,
)
from dr_exp.syncq import QUEUE_NAME, LeaseLost, SyncQueue, Target

log = logging.getLogger("dr_exp.sync")

# Held by a worker's upload threads around their SQLite calls, logging and process
# creation; taken around every os.fork() of that process (see _guard_forks), so a
# job's process never starts with a lock held that it needs: its own on_job_end
# opens the same queue file.
FORK_GATE = threading.Lock()
_fork_hooks = {"registered": False, "users": 0, "held": False}


def _before_fork() -> None:
    if _fork_hooks["users"]:
        FORK_GATE.acquire()  # waits for the upload thread to leave SQLite, logging, Popen
        _fork_hooks["held"] = True


def _after_fork_in_parent() -> None:
    if _fork_hooks["held"]:
        _fork_hooks["held"] = False
        FORK_GATE.release()


def _after_fork_in_child() -> None:
    _fork_hooks["users"] = 0  # the child has no upload threads: its own forks pass freely
    _after_fork_in_parent()


def _guard_forks() -> None:
    """From now on, every fork of this process waits until no upload thread holds the gate."""
    if not _fork_hooks["registered"]:
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )
        _fork_hooks["registered"] = True
    _fork_hooks["users"] += 1


BACKOFF_BASE_S = 10.0
BACKOFF_MAX_S = 600.0
DRAIN_S = 600.0  # how long an idle worker or supervisor keeps uploading before it exits
RESCAN_S = 60.0  # how often uploaded folders are re-scanned for new files
WATCH_S = 24 * 3600.0  # for how long after their upload folders are re-scanned
SETTINGS = ("dest", "queue", "base", "options", "rsync_args", "bwlimit", "background")


def default_queue_path(db_path: Optional[os.PathLike | str] = None) -> Path:
    """``$DR_EXP_SYNC_QUEUE``, else ``.sync_queue.db`` next to the job database."""
    explicit = os.environ.get("DR_EXP_SYNC_QUEUE")
    if explicit:
        return Path(os.path.abspath(os.path.expanduser(explicit)))
    return resolve_db_path(str(db_path) if db_path else None).parent / QUEUE_NAME


def backoff_s(attempts: int) -> float:
    """Exponential backoff with jitter: 10 s, 20 s, 40 s ... at most 10 minutes."""
    base = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    return base * (0.75 + random.random() / 2)


def validate_settings(raw: Any) -> dict:
    """Check ``hydra.launcher.sync.*``; returns them normalized, or {} when sync is off.

    Raises ``ValueError("<key>: <why>")``.
    """
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(SETTINGS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown setting; known: {', '.join(SETTINGS)}")
    if raw.get("dest") in (None, ""):
        return {}
    try:
        dest = check_dest(raw["dest"])
    except ValueError as e:
        raise ValueError(f"dest: {e}") from None
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"options: must be a mapping of fsspec storage options, got {options!r}")
    rsync_args = raw.get("rsync_args") or []
    if isinstance(rsync_args, str) or not all(isinstance(a, str) for a in rsync_args):
        raise ValueError(f"rsync_args: must be a list of arguments, got {rsync_args!r}")
    bwlimit = raw.get("bwlimit") or 0
    if isinstance(bwlimit, bool) or not isinstance(bwlimit, (int, float)) or bwlimit < 0:
        raise ValueError(f"bwlimit: must be 0 (unlimited) or more KiB/s, got {bwlimit!r}")
    background = raw.get("background", True)
    if not isinstance(background, bool):
        raise ValueError(f"background: must be true or false, got {background!r}")
    for key in ("queue", "base"):
        if raw.get(key) is not None and not str(raw[key]).strip():
            raise ValueError(f"{key}: must be a path or null")
    return {
        "dest": dest,
        "queue": os.path.abspath(os.path.expanduser(raw["queue"])) if raw.get("queue") else None,
        "base": os.path.abspath(os.path.expanduser(raw["base"])) if raw.get("base") else None,
        "options": options,
        "rsync_args": list(rsync_args),
        "bwlimit": float(bwlimit),
        "background": background,
    }


def relative_name(output_dir: str, base: Optional[str]) -> str:
    """Where a folder goes under the destination: its path below ``base``.

    A folder outside ``base`` keeps its whole absolute path (without the leading /).
    """
    path = os.path.abspath(output_dir)
    if base:
        base = os.path.abspath(base)
        if path == base:
            return os.path.basename(path) or "root"
        if path.startswith(base.rstrip("/") + "/"):
            return os.path.relpath(path, base)
    return path.lstrip("/") or "root"


def record_finished(
    output_dir: os.PathLike | str,
    dest: str,
    *,
    queue: Optional[os.PathLike | str] = None,
    base: Optional[os.PathLike | str] = None,
    options: Optional[dict] = None,
    rsync_args: Sequence[str] = (),
    bwlimit: float = 0.0,
    background: bool = True,
    experiment: Optional[str] = None,
    job_id: Optional[int] = None,
    since: Optional[float] = None,
) -> Optional[int]:
    """Queue a finished job's output folder for upload to ``dest``; returns its queue id.

    The folder goes to ``<dest>/<its path below base>`` (``base`` defaults to the
    current directory).  ``queue`` defaults to :func:`default_queue_path`.
    Recording a folder again uploads it again (only its new and changed files).
    With ``since``, a folder already recorded at or after that time is left as
    it is (None is returned): the worker uses it to avoid a second upload of a
    folder that the job's own callback recorded.  Cheap: one small transaction.
    """
    settings = validate_settings(
        {
            "dest": dest,
            "options": options,
            "rsync_args": list(rsync_args),
            "bwlimit": bwlimit,
            "background": background,
        }
    )
    return _record(
        output_dir, _target(settings), queue or default_queue_path(), base, experiment, job_id,
        since,
    )  # fmt: skip


def _target(settings: dict) -> Target:
    keys = ("dest", "options", "rsync_args", "bwlimit", "background")
    return Target(**{k: settings[k] for k in keys})


def _record(
    output_dir: os.PathLike | str,
    target: Target,
    queue: os.PathLike | str,
    base: Optional[os.PathLike | str],
    experiment: Optional[str],
    job_id: Optional[int],
    since: Optional[float],
) -> Optional[int]:
    path = os.path.abspath(output_dir)
    rel = relative_name(path, str(base) if base else os.getcwd())
    q = SyncQueue.open(Path(queue))
    try:
        return q.record(path, target, rel, experiment=experiment, job_id=job_id, since=since)
    finally:
        q.close()


class SyncCallback(Callback):
    """Records each finished job's output folder for upload (failed jobs too).

    Enabled by ``hydra.launcher.sync.dest=...``, or directly::

        hydra:
          callbacks:
            sync:
              _target_: dr_exp.sync.SyncCallback
              dest: s3://bucket/results

    It is built where the sweep starts and pickled with it; ``on_job_end`` runs in
    the job's process.  It never fails a job: any error is logged as a warning.
    """

    def __init__(
        self,
        dest: str,
        queue: Optional[str] = None,
        base: Optional[str] = None,
        options: Optional[dict] = None,
        rsync_args: Optional[Sequence[str]] = None,
        bwlimit: float = 0.0,
        background: bool = True,
    ) -> None:
        settings = validate_settings(
            {
                "dest": dest,
                "queue": queue,
                "base": base,
                "options": _plain(options),
                "rsync_args": _plain(rsync_args),
                "bwlimit": bwlimit,
                "background": background,
            }
        )
        self.dest: str = settings["dest"]
        # Resolved now, where the sweep starts: a job may run in another directory.
        self.queue = str(settings["queue"] or default_queue_path())
        self.base: Optional[str] = settings["base"]
        self.options: dict = settings["options"]
        self.rsync_args: list[str] = settings["rsync_args"]
        self.bwlimit: float = settings["bwlimit"]
        self.background: bool = settings["background"]

    def record(
        self,
        output_dir: str,
        base: Optional[str] = None,
        experiment: Optional[str] = None,
        job_id: Optional[int] = None,
        since: Optional[float] = None,
    ) -> Optional[int]:
        """record_finished with this callback's settings, checked once when it was built."""
        target = _target(vars(self))
        return _record(output_dir, target, self.queue, self.base or base, experiment, job_id, since)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        try:
            from omegaconf import OmegaConf

            output_dir = OmegaConf.select(config, "hydra.runtime.output_dir")
            if not output_dir:
                return
            job_id = OmegaConf.select(config, "hydra.job.id")
            self.record(
                str(output_dir),
                base=OmegaConf.select(config, "hydra.runtime.cwd"),
                experiment=OmegaConf.select(config, "hydra.job.name"),
                job_id=int(job_id) if str(job_id).isdigit() else None,  # dr_exp's job id
            )
        except Exception as e:  # never fail the job over its upload
            log.warning("dr_exp sync: could not record %s for upload: %s", config_dir(config), e)


def config_dir(config: Any) -> str:
    try:
        return str(config.hydra.runtime.output_dir)
    except Exception:
        return "the output folder"


def _plain(value: Any) -> Any:
    """Hydra hands callbacks DictConfig/ListConfig values; store plain ones."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def attach_callback(hydra_context: Any, settings: dict, db_path: Path) -> SyncCallback:
    """Add the sweep's SyncCallback to the callbacks that travel with it to the workers.

    Creates the queue file now, so that uploaders started on other nodes find it.
    """
    queue = settings.get("queue") or str(
        Path(os.environ.get("DR_EXP_SYNC_QUEUE") or db_path.parent / QUEUE_NAME)
    )
    callback = SyncCallback(**dict(settings, queue=os.path.abspath(queue)))
    if callback.base is None:
        callback.base = os.getcwd()
    SyncQueue.open(callback.queue).close()
    callbacks = getattr(hydra_context, "callbacks", None)
    if callbacks is not None and not any(
        isinstance(c, SyncCallback) and vars(c) == vars(callback) for c in callbacks.callbacks
    ):
        callbacks.callbacks.append(callback)
    return callback


def sweep_callbacks(ctx: Any) -> list[SyncCallback]:
    """The SyncCallbacks of a sweep's context (from the launcher or hydra.callbacks)."""
    callbacks = getattr(getattr(ctx, "hydra_context", None), "callbacks", None)
    return [c for c in getattr(callbacks, "callbacks", []) if isinstance(c, SyncCallback)]


# -- scanning ---------------------------------------------------------------------
def scan(folder: Path) -> dict[str, list[int]]:
    """Every regular file below ``folder``: relative name -> [size, mtime_ns]."""
    found: dict[str, list[int]] = {}
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            if TMP_MARK in name:
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:
                continue  # removed meanwhile, or a dangling link
            if stat.S_ISREG(st.st_mode):
                found[os.path.relpath(full, folder)] = [st.st_size, st.st_mtime_ns]
    return found


# -- uploading --------------------------------------------------------------------
class Uploader:
    """Claims due folders from one queue and uploads them, one at a time."""

    def __init__(
        self,
        queue_path: Path,
        *,
        lease_s: float = 60.0,
        heartbeat_s: float = 10.0,
        background_only: bool = False,
        gate: Optional[AbstractContextManager] = None,
        stop: Optional[threading.Event] = None,
        rescan_s: float = RESCAN_S,
        watch_s: float = WATCH_S,
    ) -> None:
        self.queue_path = Path(queue_path)
        self.host = socket.gethostname()
        self.owner = f"{self.host}-{os.getpid()}-{secrets.token_hex(2)}"
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.background_only = background_only
        self.gate = gate
        self.stop = stop or threading.Event()
        self.rescan_s, self.watch_s = rescan_s, watch_s
        self.q: Optional[SyncQueue] = None
        self._last_rescan = 0.0
        self._destinations: dict[tuple, Destination] = {}
        self.uploaded = self.failed = 0

    def _locked(self) -> AbstractContextManager:
        return self.gate if self.gate is not None else nullcontext()

    def _log(self, level: int, msg: str, *args: Any) -> None:
        """Log under the gate: a job forked meanwhile must not inherit a held stderr lock."""
        with self._locked():
            log.log(level, msg, *args)

    def _queue(self) -> SyncQueue:
        if self.q is None:
            with self._locked():
                self.q = SyncQueue.open(self.queue_path, create=False)
        return self.q

    def close(self) -> None:
        if self.q is not None:
            with self._locked():
                try:
                    self.q.close()
                except Exception:
                    pass
            self.q = None

    def run_once(self, rescan: bool = True, force_rescan: bool = False) -> int:
        """Upload every folder that is due now; returns how many were attempted."""
        q = self._queue()
        if rescan or force_rescan:  # first, so that changed folders go in this pass
            self._rescan(q, force_rescan)
        attempted = 0
        while not self.stop.is_set():
            with self._locked():
                due = q.due(background_only=self.background_only, host=self.host)
            folder = None
            for row in due:
                # A folder on another node's local disk is left to that node's uploaders;
                # one recorded here but gone is claimed, and fails with that reason.
                if row["host"] != self.host and not os.path.isdir(row["path"]):
                    continue
                with self._locked():
                    folder = q.claim(row["id"], self.owner, self.lease_s)
                if folder is not None:
                    break
            if folder is None:
                break
            attempted += 1
            self._upload(q, folder)
        return attempted

    def _destination(self, target: Target) -> Destination:
        key = (target.dest, repr(sorted(target.options.items())), tuple(target.rsync_args))
        if key not in self._destinations:
            self._destinations[key] = make_destination(
                target.dest, target.options, target.rsync_args
            )
        return self._destinations[key]

    def _upload(self, q: SyncQueue, folder: Any) -> None:
        local = Path(folder.path)
        progress: dict[str, list[int]] = {}
        renewed = [time.monotonic()]

        def keepalive() -> None:
            if self.stop.is_set():
                raise UploadStopped("the uploader is stopping")
            if time.monotonic() - renewed[0] >= self.heartbeat_s:
                renewed[0] = time.monotonic()
                try:
                    with self._locked():
                        q.renew(folder.id, self.owner, self.lease_s, progress)
                except LeaseLost as e:
                    raise UploadStopped(str(e)) from None

        started = time.monotonic()
        sent = {"files": 0, "bytes": 0}
        try:
            if not local.is_dir():
                raise DestinationError(f"output folder {local} is missing")
            current = scan(local)
            progress.update({f: v for f, v in folder.manifest.items() if current.get(f) == v})
            changed = sorted(f for f in current if f not in progress)
            sizes = {f: v[0] for f, v in current.items()}
            dest = self._destination(folder.target)
            ctl = Control(keepalive, folder.target.bwlimit, self.gate)

            def done(name: str, size: int, was_sent: bool) -> None:
                progress[name] = current[name]
                sizes[name] = size
                if was_sent:
                    sent["files"] += 1
                    sent["bytes"] += size

            dest.upload(local, folder.rel, changed, ctl, done)
            bad = dest.verify(local, folder.rel, {f: sizes[f] for f in progress}, ctl)
            if bad:
                for name in bad:
                    progress.pop(name, None)  # sent again on the next attempt
                raise DestinationError(
                    f"verification failed: {len(bad)} file(s) missing or different at the "
                    f"destination (first: {bad[0]}); they will be sent again"
                )
            dest.cleanup(folder.rel)
            with self._locked():
                ours = q.complete(folder.id, self.owner, progress, sent["files"], sent["bytes"])
            if ours:
                self.uploaded += 1
                self._log(
                    logging.INFO,
                    "sync: uploaded %s to %s/%s (%d of %d files sent, %d bytes, %.1f s)",
                    local,
                    folder.target.dest,
                    folder.rel,
                    sent["files"],
                    len(progress),
                    sent["bytes"],
                    time.monotonic() - started,
                )
        except UploadStopped as e:
            with self._locked():
                if self.stop.is_set():
                    q.release(folder.id, self.owner, progress)
            self._log(logging.INFO, "sync: upload of %s stopped: %s", local, e)
        except Exception as e:  # the destination failed: retry later, never crash the host
            self.failed += 1
            error = str(e) if isinstance(e, DestinationError) else f"{type(e).__name__}: {e}"
            error = error.replace("\n", " ").strip()
            with self._locked():
                q.fail(folder.id, self.owner, error, backoff_s, progress)
            self._log(logging.WARNING, "sync: upload of %s failed (will retry): %s", local, error)

    def _rescan(self, q: SyncQueue, force: bool) -> None:
        """Mark uploaded folders whose files changed since their upload as pending again."""
        now = time.time()
        if not force and now - self._last_rescan < self.rescan_s:
            return
        self._last_rescan = now
        with self._locked():
            rows = q.rescan_candidates(
                checked_before=now if force else now - self.rescan_s,
                uploaded_after=now - self.watch_s,
            )
        unchanged = []
        for row in rows:
            if not os.path.isdir(row["path"]):
                continue
            current = scan(Path(row["path"]))
            if any(row["manifest"].get(f) != v for f, v in current.items()):
                with self._locked():
                    q.mark_changed(row["id"])
                self._log(logging.INFO, "sync: %s changed since its upload; sending it again",
                          row["path"])  # fmt: skip
            else:
                unchanged.append(row["id"])
        with self._locked():
            q.mark_checked(unchanged)

    def follow(self, poll_s: float = 2.0) -> None:
        """Upload until ``stop`` is set (SIGTERM/SIGINT in ``dr_exp sync run``)."""
        while not self.stop.is_set():
            pause = poll_s
            try:
                self.run_once()
            except Exception as e:  # the queue's file system hiccups: keep following
                self._log(logging.WARNING, "sync: %s (retrying in 60 s)", e)
                self.close()
                pause = 60.0
            self.stop.wait(pause * (0.5 + random.random()))


class BackgroundUploader:
    """An Uploader in a daemon thread of a worker or node supervisor."""

    def __init__(self, queue_path: Path, poll_s: float = 2.0, gate: Any = None) -> None:
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.draining = False
        self.poll_s = poll_s
        self.uploader = Uploader(queue_path, background_only=True, gate=gate, stop=self.stop_event)
        self.thread = threading.Thread(target=self._run, name="dr_exp-sync", daemon=True)

    def start(self) -> None:
        log.info("sync: uploading in the background from %s", self.uploader.queue_path)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop_event.is_set():
                draining = self.draining
                pause = self.poll_s
                try:
                    attempted = self.uploader.run_once()
                except Exception as e:  # an unreadable queue must not take the worker down
                    self.uploader._log(logging.WARNING, "sync: %s (retrying in 60 s)", e)
                    attempted, pause = 0, 60.0
                if draining and attempted == 0:
                    break
                self.wake.wait(pause * (0.5 + random.random()))
                self.wake.clear()
        finally:
            try:
                self.uploader.close()
            except Exception:
                pass

    def stop(self, drain: bool, drain_s: float = DRAIN_S) -> None:
        """Stop; with ``drain``, first upload what is due (at most ``drain_s`` seconds)."""
        if not self.thread.is_alive():
            return
        if drain:
            self.draining = True
            self.wake.set()
            self.thread.join(drain_s)
        self.stop_event.set()  # an upload in progress gives its folder back
        self.wake.set()
        self.thread.join(10)


class WorkerSync:
    """A worker's side of syncing: record folders after jobs, upload in the background."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.uploaders: dict[str, BackgroundUploader] = {}

    def start(self) -> None:
        """Upload from the default queue if there is one: earlier sweeps may have left work."""
        queue = default_queue_path(self.db_path)
        if queue.exists():
            self._ensure(str(queue))

    def _ensure(self, queue: str) -> None:
        if queue not in self.uploaders:
            try:
                uploader = BackgroundUploader(Path(queue), gate=FORK_GATE)
                _guard_forks()  # the worker forks a process per job
                uploader.start()
                self.uploaders[queue] = uploader
            except Exception as e:
                log.warning("sync: cannot upload from %s: %s", queue, e)

    def after_job(self, ctx: Any, job: Any, output_dir: Optional[str], started: float) -> None:
        """Record the job's folder unless its on_job_end did (it did not if the job died)."""
        if not output_dir:
            return
        for cb in sweep_callbacks(ctx):
            try:
                cb.record(
                    output_dir,
                    base=getattr(ctx, "cwd", None),
                    experiment=job.experiment,
                    job_id=job.id,
                    since=started,
                )
                if cb.background:
                    self._ensure(cb.queue)
            except Exception as e:
                log.warning("sync: could not record %s for upload: %s", output_dir, e)

    def stop(self, drain: bool) -> None:
        for uploader in self.uploaders.values():
            uploader.stop(drain)


class SupervisorSync:
    """A node supervisor's uploader: starts once the queue exists, drains on idle exit."""

    def __init__(self, db_path: Path, check_s: float = 5.0) -> None:
        self.queue = default_queue_path(db_path)
        self.check_s = check_s
        self.next_check = 0.0
        self.uploader: Optional[BackgroundUploader] = None

    def poll(self) -> None:
        if self.uploader is not None or time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + self.check_s
        if self.queue.exists():
            try:
                self.uploader = BackgroundUploader(self.queue)
                self.uploader.start()
            except Exception as e:
                log.warning("sync: cannot upload from %s: %s", self.queue, e)

    def stop(self, drain: bool) -> None:
        if self.uploader is not None:
            self.uploader.stop(drain)
