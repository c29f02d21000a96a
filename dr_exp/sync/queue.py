"""The sync queue: every SQL statement of ``.sync_queue.db``, and nothing else.

Finished output folders wait here for their upload.  The file is separate from
the job database so that recording a folder (one small insert, from inside a
job's process) never competes with claims on the job queue.

Example::

    from dr_exp.sync.queue import SyncQueue

    q = SyncQueue.open(".dr_exp/.sync_queue.db")
    q.record("/proj/multirun/x/0", target, rel="multirun/x/0")
    folder = q.claim(folder_id, "host-1-ab", lease_s=60)  # None when another was first
    q.complete(folder.id, "host-1-ab", manifest, sent_files=3, sent_bytes=1024)

The file itself (modes, journal mode, pragmas, busy retries, the ``BEGIN
IMMEDIATE`` transaction, migrations) is :class:`dr_exp.store.SQLiteStore`'s.
Every change to a folder being uploaded is guarded by ``WHERE id=? AND
status='uploading' AND owner=?``: an uploader that lost its lease (it was too
slow, or it was presumed dead) can no longer change the row.

States of a folder: ``pending`` (waiting, or failing and waiting out its
backoff when ``attempts > 0``), ``uploading`` (claimed, under a lease), and
``uploaded``.  ``generation`` counts the recordings of a folder: an upload
that ends after the folder was recorded again leaves it ``pending``, so the
files written meanwhile are sent too.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from dr_exp import signing
from dr_exp.defaults import LEASE_S
from dr_exp.paths import ENV_SYNC_QUEUE
from dr_exp.store import SQLiteStore


@dataclass
class Target:
    """Where folders go: the destination and how to reach it."""

    dest: str
    options: dict  # fsspec storage options
    rsync_args: list[str]
    bwlimit: float  # KiB/s per uploader, 0: unlimited
    background: bool  # may workers and supervisors upload it, or only `dr_exp sync run`?


@dataclass
class Folder:
    """A claimed folder: what an uploader needs to upload it."""

    id: int
    path: str
    rel: str
    host: Optional[str]
    generation: int
    target: Target
    manifest: dict[str, list[int]]  # relative file -> [size, mtime_ns] as last verified


class LeaseLost(Exception):
    """The folder is no longer ours: another uploader took it over."""


def _migrate_to_1(db: Any) -> None:
    """Targets (one per destination and options), folders, and each folder's manifest."""
    db["targets"].create(
        {
            "id": int,
            "dest": str,
            "options": str,  # JSON: storage options, rsync_args, bwlimit, background
        },
        pk="id",
        not_null={"dest", "options"},
    )
    db["targets"].create_index(["dest", "options"], unique=True, index_name="targets_unique")
    db["folders"].create(
        {
            "id": int,
            "path": str,  # the absolute local output folder
            "target_id": int,
            "rel": str,  # where it goes under the destination
            "host": str,  # where it was recorded: a node-local folder is only there
            "experiment": str,
            "job_id": int,
            "status": str,  # pending, uploading, uploaded
            "generation": int,  # bumped each time the folder is recorded again
            "claimed_generation": int,
            "owner": str,
            "lease_expires": float,
            "attempts": int,  # failed uploads in a row; > 0 while pending means failing
            "next_try": float,
            "last_error": str,
            "last_error_at": float,
            "recorded": float,
            "uploaded": float,
            "checked": float,  # last re-scan for files written after the upload
            "files": int,  # the folder at its last upload
            "bytes": int,
            "sent_files": int,  # what the last upload really sent
            "sent_bytes": int,
            "total_sent_files": int,
            "total_sent_bytes": int,
        },
        pk="id",
        not_null={"path", "target_id", "rel", "status", "generation", "attempts", "next_try"},
        defaults={
            "status": "pending",
            "generation": 1,
            "attempts": 0,
            "next_try": 0,
            "total_sent_files": 0,
            "total_sent_bytes": 0,
        },
        foreign_keys=[("target_id", "targets", "id")],
    )
    db["folders"].create_index(["path", "target_id"], unique=True, index_name="folders_unique")
    db.execute("CREATE INDEX folders_due ON folders(next_try) WHERE status = 'pending'")
    db.execute("CREATE INDEX folders_leased ON folders(lease_expires) WHERE status = 'uploading'")
    db.execute("CREATE INDEX folders_uploaded ON folders(checked) WHERE status = 'uploaded'")
    db["manifests"].create(
        {"folder_id": int, "files": str},  # JSON {relative file: [size, mtime_ns]}
        pk="folder_id",
        foreign_keys=[("folder_id", "folders", "id")],
    )


def _target_options(target: Target) -> str:
    return json.dumps(
        {
            "options": target.options,
            "rsync_args": list(target.rsync_args),
            "bwlimit": target.bwlimit,
            "background": target.background,
        },
        sort_keys=True,
    )


def _target_from_row(dest: str, options: str) -> Target:
    o = json.loads(options)
    return Target(
        dest=dest,
        options=o.get("options") or {},
        rsync_args=list(o.get("rsync_args") or []),
        bwlimit=float(o.get("bwlimit") or 0),
        background=bool(o.get("background", True)),
    )


# Claimable: waiting out no backoff, or held under a lease that ran out (its uploader died).
_DUE = (
    "(f.status = 'pending' AND f.next_try <= :now) "
    "OR (f.status = 'uploading' AND f.lease_expires < :now)"
)


NOT_SIGNED_RETRY_S = 24 * 3600.0  # an unsigned entry is looked at again only after a day


def _migrate_to_2(db: Any) -> None:
    """Signed folders: an entry names what is uploaded, where and with which rsync
    arguments, so whoever can write the file must not be able to add or change one."""
    db["folders"].add_column("key_id", str)
    db["folders"].add_column("signature", str)


def folder_signed(path: str, rel: str, dest: str, options: str, key_id: str) -> dict:
    """The fields of a folder entry that its signature covers."""
    return {"path": path, "rel": rel, "dest": dest, "options": options, "key_id": key_id}


class SyncQueue(SQLiteStore):
    """A connection to one sync queue file."""

    KIND = "sync queue"
    MIGRATIONS = [_migrate_to_1, _migrate_to_2]
    MISSING_HINT = (
        "; set hydra.launcher.sync.dest to record finished folders, "
        f"or point --queue / {ENV_SYNC_QUEUE} at one"
    )

    # -- recording -------------------------------------------------------------
    def record(
        self,
        path: str,
        target: Target,
        rel: str,
        experiment: Optional[str] = None,
        job_id: Optional[int] = None,
        host: Optional[str] = None,
        since: Optional[float] = None,
    ) -> Optional[int]:
        """Queue ``path`` for upload, or mark it to be uploaded again; returns its id.

        A folder that is waiting stays waiting (its backoff too); an uploaded
        one becomes pending; one being uploaded is sent again once that upload
        ends, because its generation no longer matches the claimed one.  With
        ``since``, a folder recorded at or after that time is left alone (None).
        """
        now = time.time()
        options = _target_options(target)
        key = signing.signing_key()
        signature = signing.sign_fields(
            "folder", folder_signed(path, rel, target.dest, options, key.id), key
        )

        def record(conn: sqlite3.Connection) -> Optional[int]:
            conn.execute(
                "INSERT OR IGNORE INTO targets (dest, options) VALUES (?, ?)",
                (target.dest, options),
            )
            target_id = conn.execute(
                "SELECT id FROM targets WHERE dest = ? AND options = ?", (target.dest, options)
            ).fetchone()[0]
            row = conn.execute(
                """
                INSERT INTO folders (path, target_id, rel, host, experiment, job_id, status,
                                     generation, attempts, next_try, recorded, key_id, signature)
                VALUES (:path, :target_id, :rel, :host, :experiment, :job_id, 'pending',
                        1, 0, 0, :now, :key_id, :signature)
                ON CONFLICT (path, target_id) DO UPDATE SET
                    generation = generation + 1,
                    rel = excluded.rel,
                    key_id = excluded.key_id,
                    signature = excluded.signature,
                    host = excluded.host,
                    recorded = excluded.recorded,
                    experiment = coalesce(excluded.experiment, experiment),
                    job_id = coalesce(excluded.job_id, job_id),
                    next_try = CASE WHEN status = 'uploaded' THEN 0 ELSE next_try END,
                    status = CASE WHEN status = 'uploaded' THEN 'pending' ELSE status END
                WHERE :since IS NULL OR coalesce(folders.recorded, 0) < :since
                RETURNING id
                """,
                {
                    "path": path,
                    "target_id": target_id,
                    "rel": rel,
                    "host": host or socket.gethostname(),
                    "experiment": experiment,
                    "job_id": job_id,
                    "now": now,
                    "since": since,
                    "key_id": key.id,
                    "signature": signature,
                },
            ).fetchone()
            return row[0] if row else None

        return self.write(record)

    # -- the uploader's side ---------------------------------------------------
    def due(
        self, background_only: bool = False, host: Optional[str] = None, limit: int = 500
    ) -> list[dict]:
        """Folders an uploader may claim now (a plain read: idle uploaders poll without locks).

        Folders recorded on ``host`` come first: another node's folders may sit on
        that node's local disk, out of this uploader's reach.
        """
        sql = (
            "SELECT f.id, f.path, f.host FROM folders f JOIN targets t ON t.id = f.target_id "
            f"WHERE ({_DUE}) AND f.key_id IN (SELECT value FROM json_each(:keys)) "
        )
        if background_only:
            sql += "AND json_extract(t.options, '$.background') = 1 "
        sql += "ORDER BY f.host IS NOT :host, f.next_try, f.id LIMIT :limit"
        keys = json.dumps(sorted(signing.keyring()))  # only folders this uploader can verify
        return self.rows(sql, {"now": time.time(), "host": host, "limit": limit, "keys": keys})

    def claim(self, folder_id: int, owner: str, lease_s: float = LEASE_S) -> Optional[Folder]:
        """Claim one due folder under a lease; None when another uploader was first.

        A folder whose lease expired (its uploader was killed) is due again: the
        next uploader takes it over and finishes the upload.  An entry whose
        signature does not verify is never used: it is left failing, with the reason.
        """

        def claim(conn: sqlite3.Connection) -> Optional[Folder]:
            now = time.time()
            row = conn.execute(
                "UPDATE folders SET status = 'uploading', owner = :owner, "
                "lease_expires = :expires, claimed_generation = generation "
                f"WHERE id = :id AND ({_DUE.replace('f.', '')}) "
                "RETURNING id, path, rel, host, generation, target_id, key_id, signature",
                {"owner": owner, "expires": now + lease_s, "id": folder_id, "now": now},
            ).fetchone()
            if row is None:
                return None
            dest, options = conn.execute(
                "SELECT dest, options FROM targets WHERE id = ?", (row[5],)
            ).fetchone()
            signed = folder_signed(row[1], row[2], dest, options, row[6])
            try:
                signing.verify_fields("folder", signed, row[7], f"sync entry {row[0]} ({row[1]})")
            except signing.NotSigned as e:  # never uploaded; shown as failing, with why
                conn.execute(
                    "UPDATE folders SET status = 'pending', owner = NULL, lease_expires = NULL, "
                    "attempts = attempts + 1, next_try = ?, last_error = ?, last_error_at = ? "
                    "WHERE id = ?",
                    (now + NOT_SIGNED_RETRY_S, str(e), now, row[0]),
                )
                return None
            manifest = conn.execute(
                "SELECT files FROM manifests WHERE folder_id = ?", (row[0],)
            ).fetchone()
            return Folder(
                id=row[0],
                path=row[1],
                rel=row[2],
                host=row[3],
                generation=row[4],
                target=_target_from_row(dest, options),
                manifest=json.loads(manifest[0]) if manifest else {},
            )

        return self.write(claim)

    @staticmethod
    def _save_manifest(conn: sqlite3.Connection, folder_id: int, manifest: dict) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO manifests (folder_id, files) VALUES (?, ?)",
            (folder_id, json.dumps(manifest, sort_keys=True)),
        )

    def renew(
        self, folder_id: int, owner: str, lease_s: float, progress: Optional[dict] = None
    ) -> None:
        """Extend our lease, saving the files verified so far; LeaseLost if it is not ours."""

        def renew(conn: sqlite3.Connection) -> None:
            changed = conn.execute(
                "UPDATE folders SET lease_expires = ? "
                "WHERE id = ? AND status = 'uploading' AND owner = ?",
                (time.time() + lease_s, folder_id, owner),
            ).rowcount
            if changed != 1:
                raise LeaseLost(f"folder {folder_id} is no longer ours")
            if progress is not None:
                self._save_manifest(conn, folder_id, progress)

        self.write(renew)

    def complete(
        self,
        folder_id: int,
        owner: str,
        manifest: dict,
        sent_files: int,
        sent_bytes: int,
    ) -> bool:
        """Record a verified upload; False when the folder was no longer ours."""

        def complete(conn: sqlite3.Connection) -> bool:
            now = time.time()
            changed = conn.execute(
                """
                UPDATE folders SET
                    status = CASE WHEN generation = claimed_generation
                                  THEN 'uploaded' ELSE 'pending' END,
                    owner = NULL, lease_expires = NULL, attempts = 0, next_try = 0,
                    last_error = NULL, last_error_at = NULL, uploaded = :now, checked = :now,
                    files = :files, bytes = :bytes, sent_files = :sent_files,
                    sent_bytes = :sent_bytes,
                    total_sent_files = total_sent_files + :sent_files,
                    total_sent_bytes = total_sent_bytes + :sent_bytes
                WHERE id = :id AND status = 'uploading' AND owner = :owner
                """,
                {
                    "now": now,
                    "files": len(manifest),
                    "bytes": sum(v[0] for v in manifest.values()),
                    "sent_files": sent_files,
                    "sent_bytes": sent_bytes,
                    "id": folder_id,
                    "owner": owner,
                },
            ).rowcount
            if changed == 1:
                self._save_manifest(conn, folder_id, manifest)
            return changed == 1

        return self.write(complete)

    def fail(
        self,
        folder_id: int,
        owner: str,
        error: str,
        backoff_s: Callable[[int], float],
        progress: Optional[dict] = None,
    ) -> bool:
        """Put a failed upload back to pending after an exponential backoff."""

        def fail(conn: sqlite3.Connection) -> bool:
            now = time.time()
            row = conn.execute(
                "SELECT attempts FROM folders WHERE id = ? AND status = 'uploading' AND owner = ?",
                (folder_id, owner),
            ).fetchone()
            if row is None:
                return False
            attempts = row[0] + 1
            conn.execute(
                "UPDATE folders SET status = 'pending', owner = NULL, lease_expires = NULL, "
                "attempts = ?, next_try = ?, last_error = ?, last_error_at = ? WHERE id = ?",
                (attempts, now + backoff_s(attempts), error[:1000], now, folder_id),
            )
            if progress is not None:
                self._save_manifest(conn, folder_id, progress)
            return True

        return self.write(fail)

    def release(self, folder_id: int, owner: str, progress: Optional[dict] = None) -> bool:
        """Give a folder back without counting a failure (the uploader is stopping)."""

        def release(conn: sqlite3.Connection) -> bool:
            changed = conn.execute(
                "UPDATE folders SET status = 'pending', owner = NULL, lease_expires = NULL "
                "WHERE id = ? AND status = 'uploading' AND owner = ?",
                (folder_id, owner),
            ).rowcount
            if changed == 1 and progress is not None:
                self._save_manifest(conn, folder_id, progress)
            return changed == 1

        return self.write(release)

    # -- re-scanning uploaded folders ---------------------------------------------
    def rescan_candidates(
        self, checked_before: float, uploaded_after: float, limit: int = 200
    ) -> list[dict]:
        """Uploaded folders to look at again for files written after their upload."""
        rows = self.rows(
            "SELECT f.id, f.path, f.host, m.files AS manifest FROM folders f "
            "JOIN manifests m ON m.folder_id = f.id "
            "WHERE f.status = 'uploaded' AND coalesce(f.checked, 0) < ? AND f.uploaded >= ? "
            "ORDER BY f.checked LIMIT ?",
            (checked_before, uploaded_after, limit),
        )
        for r in rows:
            r["manifest"] = json.loads(r["manifest"])
        return rows

    def mark_checked(self, folder_ids: Sequence[int]) -> None:
        """These uploaded folders were re-scanned and had nothing new."""
        if not folder_ids:
            return
        self.write(
            lambda conn: conn.execute(
                "UPDATE folders SET checked = ? WHERE id IN (SELECT value FROM json_each(?))",
                (time.time(), json.dumps(list(folder_ids))),
            )
        )

    def mark_changed(self, folder_id: int) -> bool:
        """An uploaded folder has new or changed files: upload it again."""
        return self.write(
            lambda conn: (
                conn.execute(
                    "UPDATE folders SET status = 'pending', generation = generation + 1, "
                    "next_try = 0 WHERE id = ? AND status = 'uploaded'",
                    (folder_id,),
                ).rowcount
                == 1
            )
        )

    def retry_now(self) -> int:
        """Make every failing folder due now (after fixing the destination)."""
        return self.write(
            lambda conn: (
                conn.execute(
                    "UPDATE folders SET next_try = 0 WHERE status = 'pending' AND attempts > 0"
                ).rowcount
            )
        )

    # -- watching ----------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Counts of pending, uploading, uploaded and failing folders, and the newest error."""
        counts: dict[str, Any] = {"pending": 0, "uploading": 0, "uploaded": 0, "failing": 0}
        for r in self.rows(
            "SELECT CASE WHEN status = 'pending' AND attempts > 0 THEN 'failing' "
            "WHEN status = 'uploading' AND lease_expires < ? THEN 'pending' "
            "ELSE status END AS state, count(*) AS n FROM folders GROUP BY state",
            (time.time(),),
        ):
            counts[r["state"]] = counts.get(r["state"], 0) + r["n"]
        last = self.rows(
            "SELECT last_error, path FROM folders WHERE status = 'pending' AND attempts > 0 "
            "ORDER BY last_error_at DESC LIMIT 1"
        )
        counts["last_error"] = last[0]["last_error"] if last else None
        return counts

    def folders(
        self, states: Optional[Sequence[str]] = None, limit: Optional[int] = None
    ) -> list[dict]:
        """One row per folder, with its derived state: pending, uploading, uploaded, failing."""
        rows = self.rows(
            "SELECT f.id, f.path, f.rel, f.host, f.experiment, f.job_id, f.status, "
            "f.generation, f.owner, f.lease_expires, f.attempts, f.next_try, f.last_error, "
            "f.last_error_at, f.recorded, f.uploaded, f.files, f.bytes, f.sent_files, "
            "f.sent_bytes, f.total_sent_files, f.total_sent_bytes, t.dest "
            "FROM folders f JOIN targets t ON t.id = f.target_id ORDER BY f.id"
        )
        now = time.time()
        out = []
        for r in rows:
            if r["status"] == "pending" and r["attempts"] > 0:
                r["state"] = "failing"
            elif r["status"] == "uploading" and (r["lease_expires"] or 0) < now:
                r["state"] = "pending"  # its uploader died; the next one takes it over
            else:
                r["state"] = r["status"]
            if not states or r["state"] in states:
                out.append(r)
        return out[:limit] if limit else out
