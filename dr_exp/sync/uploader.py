"""Uploaders: claim due folders from a sync queue, send them, check them, record the outcome.

- :class:`Uploader` claims one folder at a time under a lease, renews it while
  it sends, and sends only new and changed files (`dr_exp sync run` runs one);
- :class:`BackgroundUploader` runs one in a daemon thread;
- :class:`WorkerSync` and :class:`SupervisorSync` are what a worker and a node
  supervisor hold: the worker also records the folder of a job whose process
  died before its ``on_job_end``.

This module does not import Hydra: `dr_exp sync run` must start quickly.
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
from typing import Any, Optional

from dr_exp import paths
from dr_exp.defaults import HEARTBEAT_S, LEASE_S, SYNC_POLL_S
from dr_exp.sync.destinations import (
    TMP_MARK,
    Control,
    Destination,
    DestinationError,
    UploadStopped,
    make_destination,
)
from dr_exp.sync.folders import record_folder
from dr_exp.sync.queue import Folder, LeaseLost, SyncQueue, Target

log = logging.getLogger("dr_exp.sync")

BACKOFF_BASE_S = 10.0  # the first retry of a failed upload
BACKOFF_MAX_S = 600.0  # the longest wait between retries
DRAIN_S = 600.0  # how long an idle worker or supervisor keeps uploading before it exits
RESCAN_S = 60.0  # how often uploaded folders are re-scanned for new files
WATCH_S = 24 * 3600.0  # for how long after their upload folders are re-scanned
QUEUE_RETRY_S = 60.0  # after the queue itself failed (its file system hiccuped)
QUEUE_CHECK_S = 5.0  # how often a supervisor looks for a queue to appear
STOP_JOIN_S = 10.0  # how long stopping waits for an upload to give its folder back

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


def backoff_s(attempts: int) -> float:
    """Exponential backoff with jitter: 10 s, 20 s, 40 s ... at most 10 minutes."""
    base = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    return base * (0.75 + random.random() / 2)


def _pause(poll_s: float, attempted: Optional[int]) -> float:
    """Until the next pass, jittered: the uploaders of many workers poll one file."""
    return (poll_s if attempted is not None else QUEUE_RETRY_S) * (0.5 + random.random())


def scan(folder: Path) -> dict[str, list[int]]:
    """Every regular file below ``folder``: relative name -> [size, mtime_ns].

    Symbolic links are never followed (os.walk does not descend into linked folders,
    and a linked file is left out): a link must not carry a file from outside the job's
    folder, such as ``~/.ssh/id_rsa``, to the destination.
    """
    found: dict[str, list[int]] = {}
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            if TMP_MARK in name:
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue  # removed meanwhile
            if stat.S_ISREG(st.st_mode):
                found[os.path.relpath(full, folder)] = [st.st_size, st.st_mtime_ns]
    return found


class Uploader:
    """Claims due folders from one queue and uploads them, one at a time."""

    def __init__(
        self,
        queue_path: Path,
        *,
        lease_s: float = LEASE_S,
        heartbeat_s: float = HEARTBEAT_S,
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
            folder = self._claim_next(q)
            if folder is None:
                break
            attempted += 1
            self._upload(q, folder)
        return attempted

    def _claim_next(self, q: SyncQueue) -> Optional[Folder]:
        with self._locked():
            due = q.due(background_only=self.background_only, host=self.host)
        for row in due:
            # A folder on another node's local disk is left to that node's uploaders;
            # one recorded here but gone is claimed, and fails with that reason.
            if row["host"] != self.host and not os.path.isdir(row["path"]):
                continue
            with self._locked():
                folder = q.claim(row["id"], self.owner, self.lease_s)
            if folder is not None:
                return folder
        return None

    def _destination(self, target: Target) -> Destination:
        key = (target.dest, repr(sorted(target.options.items())), tuple(target.rsync_args))
        if key not in self._destinations:
            self._destinations[key] = make_destination(
                target.dest, target.options, target.rsync_args
            )
        return self._destinations[key]

    def _upload(self, q: SyncQueue, folder: Folder) -> None:
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
                self._log(
                    logging.INFO, "sync: %s changed since its upload; sending it again", row["path"]
                )
            else:
                unchanged.append(row["id"])
        with self._locked():
            q.mark_checked(unchanged)

    def run_guarded(self) -> Optional[int]:
        """One pass that never raises: how many folders it attempted, None if the queue failed.

        An unreadable queue (its file system hiccups) must not take its host down.
        """
        try:
            return self.run_once()
        except Exception as e:
            self._log(logging.WARNING, "sync: %s (retrying in %.0f s)", e, QUEUE_RETRY_S)
            self.close()
            return None

    def follow(self, poll_s: float = SYNC_POLL_S) -> None:
        """Upload until ``stop`` is set (SIGTERM/SIGINT in ``dr_exp sync run``)."""
        while not self.stop.is_set():
            attempted = self.run_guarded()
            self.stop.wait(_pause(poll_s, attempted))


class BackgroundUploader:
    """An Uploader in a daemon thread of a worker or node supervisor."""

    def __init__(
        self, queue_path: Path, poll_s: float = SYNC_POLL_S, gate: Optional[Any] = None
    ) -> None:
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
                attempted = self.uploader.run_guarded()
                if draining and not attempted:
                    break
                self.wake.wait(_pause(self.poll_s, attempted))
                self.wake.clear()
        finally:
            self.uploader.close()

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
        self.thread.join(STOP_JOIN_S)


class WorkerSync:
    """A worker's side of syncing: record folders after jobs, upload in the background."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.uploaders: dict[str, BackgroundUploader] = {}

    def start(self) -> None:
        """Upload from the default queue if there is one: earlier sweeps may have left work."""
        queue = paths.sync_queue(db=self.db_path)
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

    def after_job(
        self, sync: list[dict], base: str, job: Any, output_dir: Optional[str], started: float
    ) -> None:
        """Record the job's folder unless its on_job_end did (it did not if the job died).

        ``sync`` holds the settings of the sweep's SyncCallbacks, as the job's process
        reported them (``dr_exp.sync.callback.sync_settings``); ``base`` is the sweep's cwd.
        """
        if not output_dir:
            return
        for settings in sync:
            try:
                queue, where = settings["queue"], settings.get("base") or base
                record_folder(queue, settings, output_dir, where, job.experiment, job.id, started)
                if settings.get("background", True):
                    self._ensure(settings["queue"])
            except Exception as e:
                log.warning("sync: could not record %s for upload: %s", output_dir, e)

    def stop(self, drain: bool) -> None:
        for uploader in self.uploaders.values():
            uploader.stop(drain)


class SupervisorSync:
    """A node supervisor's uploader: starts once the queue exists, drains on idle exit."""

    def __init__(self, db_path: Path, check_s: float = QUEUE_CHECK_S) -> None:
        self.queue = paths.sync_queue(db=db_path)
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
