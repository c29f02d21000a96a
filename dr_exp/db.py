"""The job database: every SQL statement of the job queue's tables, and nothing else.

Example::

    from dr_exp.db import JobDB

    db = JobDB.open(".dr_exp/jobs.db")
    sweep = db.add_sweep(experiment="train", app="train", cwd="/proj", sys_path=[],
                         sweep_dir="multirun/x", config_yaml="...", payload=b"...",
                         signature="...", want_returns=True)
    ids = db.enqueue(sweep, "train", [(0, ["seed=0"]), (1, ["seed=1"])], priority=500, tags=[])
    job = db.claim(worker="host-1-ab", host="host")      # highest priority, then FIFO
    db.finish(job.id, "host-1-ab", Outcome(status="completed", return_json="0.93"))

The file itself (modes, journal mode, pragmas, busy retries, the ``BEGIN
IMMEDIATE`` transaction, schema migrations) is :class:`dr_exp.store.SQLiteStore`'s.
What a job queue backend must provide is written down in :mod:`dr_exp.backend`;
this is its SQLite implementation.  Every change to a running job is guarded
by ``WHERE id=? AND status='running' AND worker=?``, which makes a stale worker
harmless.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

from dr_exp.defaults import (
    FINAL_STATUSES,
    LEASE_S,
    MAX_ATTEMPTS,
    PRIORITY,
    PRIORITY_MAX,
    PRIORITY_MIN,
    STATUSES,
)
from dr_exp.errors import BadInput
from dr_exp.identity import job_identity
from dr_exp.store import SQLiteStore

__all__ = ["JobDB", "Job", "Outcome", "Enqueued", "SweepRow", "STATUSES", "FINAL_STATUSES"]

# What a submission does with a job that already exists (same experiment, app and overrides):
# skip: leave every existing job alone; retry_failed: skip completed, pending and running
# jobs but queue failed and cancelled ones again; always: insert a new job every time.
ON_DUPLICATE = ("skip", "retry_failed", "always")


def validate_priority(value: Any, what: str = "priority") -> int:
    """Priorities are whole numbers in 0-1000; anything else is a user error."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{what} must be an integer from 0 to 1000, got {value!r}")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise BadInput(f"{what} must be from 0 to 1000 (higher runs first), got {value}")
    return value


def validate_status(value: str) -> str:
    if value not in STATUSES:
        raise BadInput(f"unknown status {value!r}; choose from {', '.join(STATUSES)}")
    return value


def validate_attempts(value: Any, what: str = "attempts") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(f"{what} must be a whole number of 1 or more, got {value!r}")
    return value


@dataclass
class Job:
    """A claimed job: what a worker needs to run it."""

    id: int
    experiment: str
    sweep_id: int
    job_num: int
    overrides: list[str]
    attempts: int
    # Set when a later submission re-queued this job: that sweep's code and
    # settings run it, while ``sweep_dir`` and ``sweep_subdir`` keep its output
    # folder where it was (the folder it ran in, else its first sweep's folder).
    run_sweep_id: Optional[int] = None
    sweep_dir: Optional[str] = None
    sweep_subdir: Optional[str] = None


@dataclass
class Enqueued:
    """What one submission did: an id per submitted job, in order, and why."""

    ids: list[int]
    # "queued" (a new row), "requeued" (a failed or cancelled job queued again),
    # or the status of the existing job that was skipped.
    actions: list[str]

    @property
    def queued(self) -> int:
        return self.actions.count("queued")

    @property
    def requeued(self) -> int:
        return self.actions.count("requeued")

    def skipped(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for action in self.actions:
            if action not in ("queued", "requeued"):
                out[action] = out.get(action, 0) + 1
        return out


@dataclass
class Outcome:
    """How a run ended, as the worker records it."""

    status: str  # completed or failed
    return_json: Optional[str] = None
    error: Optional[str] = None
    output_dir: Optional[str] = None
    result_blob: Optional[bytes] = None
    result_signature: Optional[str] = None


@dataclass
class SweepRow:
    """A sweep as stored: what runs its jobs, and where."""

    id: int
    experiment: str
    cwd: str
    sys_path: list[str]
    payload: bytes
    signature: str
    want_returns: bool
    extra: dict = field(default_factory=dict)
    kind: str = "hydra"  # hydra: a pickled Hydra sweep; trainer: a trainer function (spec)
    spec: Optional[dict] = None
    app: Optional[str] = None
    sweep_dir: Optional[str] = None


def _migrate_to_1(db: Any) -> None:
    """The first schema: sweeps (one pickled payload each), jobs, and returned objects."""
    db["sweeps"].create(
        {
            "id": int,
            "experiment": str,
            "app": str,
            "created": float,
            "cwd": str,
            "sys_path": str,  # JSON list, so a worker can import what the app imported
            "sweep_dir": str,
            "config": str,  # the master config as YAML: readable without unpickling
            "want_returns": int,
            "payload": bytes,  # cloudpickle of task function, config loader, Hydra state
            "signature": str,  # HMAC-SHA256 of payload
        },
        pk="id",
        not_null={"experiment", "created", "cwd", "payload", "signature"},
    )
    db["jobs"].create(
        {
            "id": int,
            "experiment": str,
            "sweep_id": int,
            "job_num": int,
            "overrides": str,  # JSON list of "key=value" strings
            "priority": int,
            "tags": str,  # JSON list
            "status": str,
            "attempts": int,
            "worker": str,
            "host": str,
            "created": float,
            "started": float,
            "ended": float,
            "output_dir": str,
            "return_value": str,  # JSON
            "error": str,  # one-line summary; the traceback is in <output_dir>/error.txt
        },
        pk="id",
        not_null={"experiment", "overrides", "priority", "tags", "status", "attempts", "created"},
        defaults={"status": "pending", "attempts": 0, "tags": "[]"},
        foreign_keys=[("sweep_id", "sweeps", "id")],
    )
    # Claims read pending rows only, in priority order: partial indexes keep that
    # O(log n) at a million rows, and stay small as jobs finish.
    db.execute("CREATE INDEX jobs_pending ON jobs(priority DESC, id) WHERE status = 'pending'")
    db.execute(
        "CREATE INDEX jobs_pending_by_experiment ON jobs(experiment, priority DESC, id) "
        "WHERE status = 'pending'"
    )
    db["jobs"].create_index(["experiment", "status"], index_name="jobs_experiment_status")
    db["jobs"].create_index(["sweep_id", "job_num"], index_name="jobs_sweep")
    db["results"].create(
        {"job_id": int, "payload": bytes, "signature": str},
        pk="job_id",
        foreign_keys=[("job_id", "jobs", "id")],
    )


def _migrate_to_2(db: Any) -> None:
    """Leases, a history of attempts, and a registry of workers (the worker fleet)."""
    db["jobs"].add_column("lease_expires", float)
    db["jobs"].add_column("max_attempts", int, not_null_default=MAX_ATTEMPTS)
    # Reaping expired leases reads running rows by expiry only.
    db.execute("CREATE INDEX jobs_running_lease ON jobs(lease_expires) WHERE status = 'running'")
    db["attempts"].create(
        {
            "id": int,
            "job_id": int,
            "attempt": int,
            "worker": str,
            "host": str,
            "started": float,
            "ended": float,
            "outcome": str,  # completed, failed, requeued, lost, cancelled
            "detail": str,
        },
        pk="id",
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db["attempts"].create_index(["job_id"], index_name="attempts_job")
    db["workers"].create(
        {
            "id": str,
            "host": str,
            "pid": int,
            "experiment": str,
            "supervisor": str,
            "slurm_job_id": str,
            "gpu": str,  # CUDA_VISIBLE_DEVICES as the worker saw it
            "started": float,
            "heartbeat": float,
            "state": str,  # idle, busy, exited
            "job_id": int,
            "gpu_util": float,  # percent, from NVML; null on a CPU-only machine
            "gpu_mem_used_mb": float,
            "gpu_mem_total_mb": float,
        },
        pk="id",
    )


def _migrate_to_3(db: Any) -> None:
    """Job identity (resume by re-running), sweep kinds (trainer jobs), re-run contexts."""
    db["jobs"].add_column("identity", str)
    db["jobs"].add_column("run_sweep_id", int)
    db["sweeps"].add_column("kind", str, not_null_default="hydra")
    db["sweeps"].add_column("spec", str)  # JSON, for kind 'trainer': config file, trainer
    apps = dict(db.execute("SELECT id, app FROM sweeps").fetchall())
    rows = db.execute("SELECT id, experiment, sweep_id, overrides FROM jobs").fetchall()
    db.conn.executemany(
        "UPDATE jobs SET identity = ? WHERE id = ?",
        [
            (job_identity(exp, apps.get(sweep_id), json.loads(overrides or "[]")), job_id)
            for job_id, exp, sweep_id, overrides in rows
        ],
    )
    db["jobs"].create_index(["experiment", "identity"], index_name="jobs_identity")


# MIGRATIONS[i] takes a database at schema version i to version i + 1.
MIGRATIONS: list[Callable[[Any], None]] = [
    _migrate_to_1,
    _migrate_to_2,
    _migrate_to_3,
]
SCHEMA_VERSION = len(MIGRATIONS)


class JobDB(SQLiteStore):
    """A connection to one job database file."""

    KIND = "job database"
    MIGRATIONS = MIGRATIONS
    MISSING_HINT = (
        "; run a sweep with hydra/launcher=dr_exp first, or point --db / DR_EXP_DB at one"
    )

    # -- sweeps ----------------------------------------------------------------
    def add_sweep(
        self,
        *,
        experiment: str,
        app: str,
        cwd: str,
        sys_path: list[str],
        sweep_dir: str,
        config_yaml: str,
        payload: bytes,
        signature: str,
        want_returns: bool,
        kind: str = "hydra",
        spec: Optional[dict] = None,
    ) -> int:
        """A sweep: a signed Hydra payload, or (kind 'trainer') a JSON spec of what to run."""
        row = {
            "experiment": experiment,
            "app": app,
            "created": time.time(),
            "cwd": cwd,
            "sys_path": json.dumps(sys_path),
            "sweep_dir": sweep_dir,
            "config": config_yaml,
            "want_returns": int(want_returns),
            "payload": payload,
            "signature": signature,
            "kind": kind,
            "spec": json.dumps(spec, sort_keys=True) if spec is not None else None,
        }
        return self.write(lambda conn: _insert(conn, "sweeps", [row]))

    def get_sweep(self, sweep_id: int) -> Optional[SweepRow]:
        rows = self.rows(
            "SELECT id, experiment, cwd, sys_path, payload, signature, want_returns, "
            "kind, spec, app, sweep_dir FROM sweeps WHERE id = ?",
            (sweep_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return SweepRow(
            id=r["id"],
            experiment=r["experiment"],
            cwd=r["cwd"],
            sys_path=json.loads(r["sys_path"] or "[]"),
            payload=r["payload"],
            signature=r["signature"],
            want_returns=bool(r["want_returns"]),
            kind=r["kind"] or "hydra",
            spec=json.loads(r["spec"]) if r["spec"] else None,
            app=r["app"],
            sweep_dir=r["sweep_dir"],
        )

    # -- enqueueing ------------------------------------------------------------
    def enqueue(
        self,
        sweep_id: int,
        experiment: str,
        jobs: Sequence[tuple[int, Sequence[str]]],
        priority: int = PRIORITY,
        tags: Sequence[str] = (),
        max_attempts: int = MAX_ATTEMPTS,
    ) -> list[int]:
        """Insert a whole launch batch in one transaction; returns the new job ids in order."""
        return self.enqueue_batch(
            sweep_id, experiment, jobs, priority, tags, max_attempts, on_duplicate="always"
        ).ids

    def enqueue_batch(
        self,
        sweep_id: int,
        experiment: str,
        jobs: Sequence[tuple[int, Sequence[str]]],
        priority: int | Sequence[int] = PRIORITY,
        tags: Sequence[str] = (),
        max_attempts: int = MAX_ATTEMPTS,
        on_duplicate: str = "retry_failed",
    ) -> Enqueued:
        """Submit a batch in one transaction, matching each job against the jobs already queued.

        ``priority`` is one value for the batch or one per job.  A job whose
        identity exists is skipped or re-queued as ``on_duplicate`` says (see
        ON_DUPLICATE); a re-queued job keeps its row (id, job number, attempt
        history and output folder) and takes this batch's priority and tags,
        and this sweep's code runs it.
        """
        on_duplicate = str(getattr(on_duplicate, "value", on_duplicate))  # an OnDuplicate enum
        if on_duplicate not in ON_DUPLICATE:
            raise BadInput(
                f"on_duplicate must be one of {', '.join(ON_DUPLICATE)}, got {on_duplicate!r}"
            )
        if isinstance(priority, (list, tuple)):
            if len(priority) != len(jobs):
                raise BadInput(f"got {len(priority)} priorities for {len(jobs)} jobs")
            priorities = [validate_priority(p) for p in priority]
        else:
            priorities = [validate_priority(priority)] * len(jobs)
        validate_attempts(max_attempts, "max_attempts")
        now = time.time()
        tags_json = json.dumps(list(tags))

        def insert(conn: sqlite3.Connection) -> Enqueued:
            app = conn.execute("SELECT app FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
            if app is None:
                raise BadInput(f"no sweep with id {sweep_id}")
            identities = [job_identity(experiment, app[0], o) for _, o in jobs]
            existing = (
                self._existing(conn, experiment, identities, sweep_id)
                if on_duplicate != "always"
                else {}
            )
            ids: list[Optional[int]] = [None] * len(jobs)
            actions = [""] * len(jobs)
            rows = []
            for i, ((num, overrides), identity) in enumerate(zip(jobs, identities)):
                old = existing.get(identity)
                if old is None:
                    actions[i] = "queued"
                    rows.append(
                        {
                            "experiment": experiment,
                            "sweep_id": sweep_id,
                            "job_num": num,
                            "overrides": json.dumps(list(overrides)),
                            "identity": identity,
                            "priority": priorities[i],
                            "tags": tags_json,
                            "status": "pending",
                            "attempts": 0,
                            "max_attempts": max_attempts,
                            "created": now,
                        }
                    )
                    continue
                ids[i] = old["id"]
                if old["status"] in ("failed", "cancelled") and on_duplicate == "retry_failed":
                    if self._requeue_finished(
                        conn, old["id"], max_attempts, priorities[i], tags_json, sweep_id
                    ):
                        old["status"] = "pending"  # a second ask in this batch finds it pending
                        actions[i] = "requeued"
                        continue
                actions[i] = old["status"]
            if rows:
                first = _insert(conn, "jobs", rows)
                # We hold the write lock, so the batch got consecutive ids.
                new_ids = iter(range(first, first + len(rows)))
                for i, action in enumerate(actions):
                    if action == "queued":
                        ids[i] = next(new_ids)
            assert all(i is not None for i in ids), "enqueue: inserted rows went missing"
            return Enqueued(ids=ids, actions=actions)  # type: ignore[arg-type]

        return self.write(insert)

    def _existing(
        self,
        conn: sqlite3.Connection,
        experiment: str,
        identities: Sequence[str],
        sweep_id: Optional[int] = None,
    ) -> dict[str, dict]:
        """The newest job per identity that an earlier submission queued.

        Jobs of ``sweep_id`` itself (queued or re-queued by it) do not count:
        when one sweep asks for the same job twice (an optimizer's repeated
        trial, ``x=1,1``), it runs twice, as under Hydra's basic launcher.
        """
        found: dict[str, dict] = {}
        for job_id, identity, status in conn.execute(
            "SELECT id, identity, status FROM jobs WHERE experiment = ? "
            "AND identity IN (SELECT value FROM json_each(?)) "
            "AND sweep_id IS NOT ? AND coalesce(run_sweep_id, -1) IS NOT ? ORDER BY id",
            (experiment, json.dumps(list(set(identities))), sweep_id, sweep_id),
        ):
            found[identity] = {"id": job_id, "status": status}
        return found

    def existing_jobs(self, experiment: str, identities: Sequence[str]) -> dict[str, dict]:
        """Read-only: which of ``identities`` already have a job (for dry runs)."""
        return self._existing(self.conn, experiment, identities)

    def _requeue_finished(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        attempts_left: int,
        priority: Optional[int] = None,
        tags_json: Optional[str] = None,
        run_sweep_id: Optional[int] = None,
    ) -> bool:
        """A failed or cancelled job back to pending: same row, history kept, fresh attempts."""
        changed = conn.execute(
            "UPDATE jobs SET status = 'pending', worker = NULL, host = NULL, started = NULL, "
            "ended = NULL, lease_expires = NULL, error = NULL, return_value = NULL, "
            "max_attempts = attempts + ?, priority = coalesce(?, priority), "
            "tags = coalesce(?, tags), "
            "run_sweep_id = CASE WHEN ? IS NULL THEN run_sweep_id "
            "WHEN ? = sweep_id THEN NULL ELSE ? END "
            "WHERE id = ? AND status IN ('failed', 'cancelled')",
            (attempts_left, priority, tags_json, run_sweep_id, run_sweep_id, run_sweep_id, job_id),
        ).rowcount
        if changed:
            conn.execute("DELETE FROM results WHERE job_id = ?", (job_id,))  # a stale return
        return changed == 1

    # -- the worker's side -----------------------------------------------------
    CLAIM_SQL = """
        UPDATE jobs
           SET status = 'running', worker = :worker, host = :host, started = :now,
               ended = NULL, attempts = attempts + 1, lease_expires = :lease_expires
         WHERE id = (SELECT id FROM jobs
                      WHERE status = 'pending' {experiment_filter}
                      ORDER BY priority DESC, id LIMIT 1)
        RETURNING id, experiment, sweep_id, job_num, overrides, attempts, run_sweep_id
    """

    def claim(
        self,
        worker: str,
        host: str,
        experiment: Optional[str] = None,
        finished: Optional[tuple[int, Outcome]] = None,
        lease_s: float = LEASE_S,
    ) -> Optional[Job]:
        """Claim the next pending job: highest priority first, FIFO within a priority.

        The same transaction records the worker's previous job (``finished``,
        one commit per job instead of two) and first reaps jobs whose lease
        expired, so lost jobs go back to the queue without a separate janitor.
        """
        sql = self.CLAIM_SQL.format(
            experiment_filter="AND experiment = :experiment" if experiment else ""
        )

        def claim(conn: sqlite3.Connection) -> Optional[Job]:
            now = time.time()
            if finished is not None:
                self._finish(conn, finished[0], worker, finished[1])
            self._reap(conn, now)
            params = {
                "worker": worker,
                "host": host,
                "now": now,
                "experiment": experiment,
                "lease_expires": now + lease_s,
            }
            row = conn.execute(sql, params).fetchone()
            if row is None:
                return None
            conn.execute(
                "INSERT INTO attempts (job_id, attempt, worker, host, started) VALUES (?, ?, ?, ?, ?)",
                (row[0], row[5], worker, host, now),
            )
            job = Job(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])
            if job.run_sweep_id is not None:
                job.sweep_dir, job.sweep_subdir = self._first_folder(conn, job.id, job.sweep_id)
            return job

        return self.write(claim)

    @staticmethod
    def _first_folder(
        conn: sqlite3.Connection, job_id: int, sweep_id: int
    ) -> tuple[Optional[str], Optional[str]]:
        """Where a re-queued job writes again: the folder it ran in before, split into
        (sweep dir, subdir); else its first sweep's folder (absolute) and no subdir."""
        ran_in = conn.execute("SELECT output_dir FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if ran_in and ran_in[0]:
            return os.path.dirname(ran_in[0]), os.path.basename(ran_in[0])
        row = conn.execute("SELECT cwd, sweep_dir FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None or not row[1]:
            return None, None
        return os.path.join(row[0], row[1]), None

    def _end_attempt(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        worker: Optional[str],
        outcome: str,
        detail: Optional[str] = None,
    ) -> None:
        conn.execute(
            "UPDATE attempts SET ended = ?, outcome = ?, detail = ? "
            "WHERE job_id = ? AND ended IS NULL AND (? IS NULL OR worker = ?)",
            (time.time(), outcome, detail, job_id, worker, worker),
        )

    def _reap(self, conn: sqlite3.Connection, now: float) -> list[int]:
        """Requeue (or fail, past max_attempts) running jobs whose lease expired."""
        expired = conn.execute(
            "SELECT id, attempts, max_attempts, worker FROM jobs "
            "WHERE status = 'running' AND lease_expires < ?",
            (now,),
        ).fetchall()
        for job_id, attempts, max_attempts, worker in expired:
            detail = f"worker {worker} stopped renewing its lease"
            if attempts >= (max_attempts or MAX_ATTEMPTS):
                conn.execute(
                    "UPDATE jobs SET status = 'failed', ended = ?, lease_expires = NULL, "
                    "error = ? WHERE id = ? AND status = 'running' AND lease_expires < ?",
                    (now, f"lost after {attempts} attempts ({detail})", job_id, now),
                )
            else:
                conn.execute(
                    "UPDATE jobs SET status = 'pending', worker = NULL, host = NULL, "
                    "started = NULL, lease_expires = NULL "
                    "WHERE id = ? AND status = 'running' AND lease_expires < ?",
                    (job_id, now),
                )
            self._end_attempt(conn, job_id, worker, "lost", detail)
        return [row[0] for row in expired]

    def reap_expired(self) -> list[int]:
        """Reap expired leases now (claims do this too); returns the reaped job ids."""
        return self.write(lambda conn: self._reap(conn, time.time()))

    def heartbeat(self, job_id: int, worker: str, lease_s: float = LEASE_S) -> str:
        """Renew the lease on a running job: ``ok``, or ``cancelled``/``lost`` if it is not ours."""

        def renew(conn: sqlite3.Connection) -> str:
            changed = conn.execute(
                "UPDATE jobs SET lease_expires = ? "
                "WHERE id = ? AND status = 'running' AND worker = ?",
                (time.time() + lease_s, job_id, worker),
            ).rowcount
            if changed == 1:
                return "ok"
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            outcome = "cancelled" if row and row[0] == "cancelled" else "lost"
            self._end_attempt(conn, job_id, worker, outcome)
            return outcome

        return self.write(renew)

    def has_work(self, experiment: Optional[str] = None) -> bool:
        """Anything to claim or reap?  A plain read: idle workers poll without the write lock."""
        if experiment:
            sql, params = (
                "SELECT 1 FROM jobs WHERE status = 'pending' AND experiment = ? LIMIT 1",
                (experiment,),
            )
        else:
            sql, params = "SELECT 1 FROM jobs WHERE status = 'pending' LIMIT 1", ()
        if self.rows(sql, params):
            return True
        return bool(
            self.rows(
                "SELECT 1 FROM jobs WHERE status = 'running' AND lease_expires < ? LIMIT 1",
                (time.time(),),
            )
        )

    def set_output_dir(self, job_id: int, worker: str, output_dir: str) -> bool:
        return self.write(
            lambda conn: (
                conn.execute(
                    "UPDATE jobs SET output_dir = ? WHERE id = ? AND status = 'running' AND worker = ?",
                    (output_dir, job_id, worker),
                ).rowcount
                == 1
            )
        )

    def _finish(self, conn: sqlite3.Connection, job_id: int, worker: str, outcome: Outcome) -> bool:
        if outcome.status not in ("completed", "failed"):
            raise BadInput(f"a run ends completed or failed, not {outcome.status!r}")
        changed = conn.execute(
            "UPDATE jobs SET status = ?, ended = ?, return_value = ?, error = ?, "
            "output_dir = coalesce(?, output_dir), lease_expires = NULL "
            "WHERE id = ? AND status = 'running' AND worker = ?",
            (
                outcome.status,
                time.time(),
                outcome.return_json,
                outcome.error,
                outcome.output_dir,
                job_id,
                worker,
            ),
        ).rowcount
        if changed == 1:
            self._end_attempt(conn, job_id, worker, outcome.status, outcome.error)
        if changed == 1 and outcome.result_blob is not None:
            conn.execute(
                "INSERT OR REPLACE INTO results (job_id, payload, signature) VALUES (?, ?, ?)",
                (job_id, outcome.result_blob, outcome.result_signature),
            )
        return changed == 1

    def finish(self, job_id: int, worker: str, outcome: Outcome) -> bool:
        """Record how a run ended; False when this worker no longer owns the job."""
        return self.write(lambda conn: self._finish(conn, job_id, worker, outcome))

    def requeue(self, job_id: int, worker: str, count_attempt: bool = False) -> bool:
        """Put a running job back to pending (a preempted job does not count an attempt)."""

        def requeue(conn: sqlite3.Connection) -> bool:
            changed = conn.execute(
                "UPDATE jobs SET status = 'pending', worker = NULL, host = NULL, "
                "started = NULL, lease_expires = NULL, attempts = attempts - ? "
                "WHERE id = ? AND status = 'running' AND worker = ?",
                (0 if count_attempt else 1, job_id, worker),
            ).rowcount
            if changed == 1:
                self._end_attempt(conn, job_id, worker, "requeued")
            return changed == 1

        return self.write(requeue)

    # -- the worker registry ------------------------------------------------------
    def register_worker(self, info: dict) -> None:
        row = dict(info, started=time.time(), heartbeat=time.time(), state="idle")
        self.write(lambda conn: _insert(conn, "workers", [row], replace=True))

    def worker_heartbeat(
        self, worker: str, state: str, job_id: Optional[int], telemetry: Optional[dict] = None
    ) -> None:
        t = telemetry or {}
        self.write(
            lambda conn: conn.execute(
                "UPDATE workers SET heartbeat = ?, state = ?, job_id = ?, gpu_util = ?, "
                "gpu_mem_used_mb = ?, gpu_mem_total_mb = ? WHERE id = ?",
                (
                    time.time(),
                    state,
                    job_id,
                    t.get("gpu_util"),
                    t.get("gpu_mem_used_mb"),
                    t.get("gpu_mem_total_mb"),
                    worker,
                ),
            )
        )

    def live_workers(self, max_age_s: float, experiment: Optional[str] = None) -> list[dict]:
        """Workers that are not exited and have beaten within ``max_age_s`` seconds."""
        sql = "SELECT * FROM workers WHERE state != 'exited' AND heartbeat > ?"
        params: list[Any] = [time.time() - max_age_s]
        if experiment:
            sql += " AND (experiment IS NULL OR experiment = ?)"
            params.append(experiment)
        return self.rows(sql + " ORDER BY started", params)

    def attempts(self, job_id: int) -> list[dict]:
        return self.rows(
            "SELECT attempt, worker, host, started, ended, outcome, detail FROM attempts "
            "WHERE job_id = ? ORDER BY id",
            (job_id,),
        )

    # -- watching --------------------------------------------------------------
    def progress(self, job_ids: Iterable[int]) -> dict[str, int]:
        rows = self.rows(
            "SELECT status, count(*) AS n FROM jobs "
            "WHERE id IN (SELECT value FROM json_each(?)) GROUP BY status",
            (json.dumps(list(job_ids)),),
        )
        return {r["status"]: r["n"] for r in rows}

    def results(self, job_ids: Sequence[int]) -> dict[int, dict]:
        """The rows of ``job_ids`` with their stored result objects, keyed by id."""
        rows = self.rows(
            "SELECT j.id, j.status, j.overrides, j.output_dir, j.return_value, j.error, "
            "r.payload AS result_blob, r.signature AS result_signature "
            "FROM jobs j LEFT JOIN results r ON r.job_id = j.id "
            "WHERE j.id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(job_ids)),),
        )
        return {r["id"]: r for r in rows}

    def status_counts(self, experiment: Optional[str] = None) -> list[dict]:
        where, params = ("WHERE experiment = ?", (experiment,)) if experiment else ("", ())
        return self.rows(
            f"SELECT experiment, status, count(*) AS n FROM jobs {where} "
            "GROUP BY experiment, status ORDER BY experiment, status",
            params,
        )

    def list_jobs(
        self,
        statuses: Optional[Sequence[str]] = None,
        experiment: Optional[str] = None,
        limit: Optional[int] = None,
        ids: Optional[Sequence[int]] = None,
        tags: Optional[Sequence[str]] = None,
        sweep_ids: Optional[Sequence[int]] = None,
    ) -> list[dict]:
        """Jobs matching every filter given; ``tags``: jobs that carry all of them."""
        clauses, params = [], []
        if ids is not None:
            clauses.append("id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([int(i) for i in ids]))
        if sweep_ids is not None:
            clauses.append("sweep_id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([int(i) for i in sweep_ids]))
        for tag in tags or ():
            clauses.append("EXISTS (SELECT 1 FROM json_each(jobs.tags) WHERE value = ?)")
            params.append(tag)
        if statuses:
            for s in statuses:
                validate_status(s)
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            params += list(statuses)
        if experiment:
            clauses.append("experiment = ?")
            params.append(experiment)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        tail = f" LIMIT {int(limit)}" if limit else ""
        rows = self.rows(
            "SELECT id, experiment, sweep_id, job_num, status, priority, tags, overrides, "
            "attempts, worker, host, created, started, ended, output_dir, return_value, error "
            f"FROM jobs {where} ORDER BY id{tail}",
            params,
        )
        for r in rows:
            r["tags"] = json.loads(r["tags"] or "[]")
            r["overrides"] = json.loads(r["overrides"] or "[]")
            r["return_value"] = json.loads(r["return_value"]) if r["return_value"] else None
        return rows

    # -- managing jobs (the CLI's cancel, retry and priority) ------------------------
    @staticmethod
    def _statuses_of(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, sqlite3.Row]:
        """id -> (status, worker, lease_expires, priority); every id must exist."""
        rows = conn.execute(
            "SELECT id, status, worker, lease_expires, priority FROM jobs "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps([int(i) for i in ids]),),
        ).fetchall()
        found = {r[0]: r for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise BadInput(f"no job with id {missing[0]}")
        return found

    def cancel(self, ids: Sequence[int], strict: bool = True) -> dict[str, list[int]]:
        """Cancel pending and running jobs in one transaction.

        A pending job simply becomes cancelled.  A running job is marked
        cancelled here, and its worker stops the job's process at its next
        heartbeat, ending the attempt with outcome ``cancelled`` (see
        ``last_attempts``).  A running job whose worker is gone (lease expired)
        has its attempt ended here, since no worker will.  With ``strict``, a
        job that is neither pending nor running is an error and nothing changes.
        """

        def cancel(conn: sqlite3.Connection) -> dict[str, list[int]]:
            found = self._statuses_of(conn, ids)
            if strict:
                for job_id in ids:
                    status = found[job_id][1]
                    if status not in ("pending", "running"):
                        raise BadInput(
                            f"job {job_id} is {status}; only pending or running jobs "
                            "can be cancelled"
                        )
            now = time.time()
            done: dict[str, list[int]] = {"pending": [], "running": []}
            for job_id, status, worker, lease_expires, _ in found.values():
                if status not in ("pending", "running"):
                    continue
                changed = conn.execute(
                    "UPDATE jobs SET status = 'cancelled', ended = ?, lease_expires = NULL "
                    "WHERE id = ? AND status = ?",
                    (now, job_id, status),
                ).rowcount
                if not changed:
                    continue
                done[status].append(job_id)
                if status == "running" and (lease_expires or 0) < now:
                    self._end_attempt(
                        conn, job_id, worker, "cancelled", "cancelled after its worker was gone"
                    )
            return done

        return self.write(cancel)

    def retry(
        self, ids: Sequence[int], attempts: int = MAX_ATTEMPTS, strict: bool = True
    ) -> list[int]:
        """Move failed or cancelled jobs back to pending, keeping their attempt history.

        Each gets ``attempts`` more attempts.  With ``strict``, any other status
        (a running job above all) is an error and nothing changes.
        """
        validate_attempts(attempts)

        def retry(conn: sqlite3.Connection) -> list[int]:
            found = self._statuses_of(conn, ids)
            if strict:
                for job_id in ids:
                    status = found[job_id][1]
                    if status == "running":
                        raise BadInput(f"job {job_id} is running; cancel it first, then retry it")
                    if status not in ("failed", "cancelled"):
                        raise BadInput(
                            f"job {job_id} is {status}; only failed or cancelled jobs "
                            "can be retried"
                        )
            return [
                job_id for job_id in sorted(found) if self._requeue_finished(conn, job_id, attempts)
            ]

        return self.write(retry)

    def set_priority(
        self, ids: Sequence[int], value: Optional[int] = None, boost: Optional[int] = None
    ) -> list[tuple[int, int, int]]:
        """Set (``value``) or shift (``boost``) priorities; returns (id, old, new) per job.

        Every new priority is validated before any is written.
        """
        if (value is None) == (boost is None):
            raise BadInput("give either a priority to set or a boost")
        if value is not None:
            value = validate_priority(value)
        if boost is not None and (isinstance(boost, bool) or not isinstance(boost, int)):
            raise BadInput(f"boost must be a whole number, got {boost!r}")

        def update(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
            found = self._statuses_of(conn, ids)
            changes = []
            for job_id in sorted(found):
                old = found[job_id][4]
                new = value if value is not None else old + boost  # type: ignore[operator]
                validate_priority(
                    new, what=f"job {job_id}'s priority ({old} {boost:+d})" if boost else "priority"
                )
                changes.append((job_id, old, new))
            conn.executemany(
                "UPDATE jobs SET priority = ? WHERE id = ?", [(n, i) for i, _, n in changes]
            )
            return changes

        return self.write(update)

    def last_attempts(self, ids: Sequence[int]) -> dict[int, dict]:
        """The latest attempt of each job (how ``cancel`` sees its worker's acknowledgement)."""
        rows = self.rows(
            "SELECT job_id, attempt, worker, host, started, ended, outcome, detail FROM attempts "
            "WHERE id IN (SELECT max(id) FROM attempts "
            "WHERE job_id IN (SELECT value FROM json_each(?)) GROUP BY job_id)",
            (json.dumps([int(i) for i in ids]),),
        )
        return {r["job_id"]: r for r in rows}

    def get_job(self, job_id: int) -> Optional[dict]:
        """One job with its sweep's app, kind and folder (for ``show`` and ``logs``)."""
        rows = self.list_jobs(ids=[job_id])
        if not rows:
            return None
        extra = self.rows(
            "SELECT j.identity, j.max_attempts, j.run_sweep_id, s.app, s.kind, s.cwd, "
            "s.sweep_dir, s.spec FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE j.id = ?",
            (job_id,),
        )
        job = rows[0]
        if extra:
            job.update(extra[0])
            job["spec"] = json.loads(job["spec"]) if job["spec"] else None
        return job

    def sweeps(self) -> list[dict]:
        """Every sweep's id, experiment, app, kind and folder (small: one row per sweep)."""
        return self.rows(
            "SELECT id, experiment, app, kind, cwd, sweep_dir, created FROM sweeps ORDER BY id"
        )


def _insert(conn: sqlite3.Connection, table: str, rows: list[dict], replace: bool = False) -> int:
    """Insert ``rows`` (dicts with the same keys); returns the first new rowid."""
    columns = list(rows[0])
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    conn.executemany(
        f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [tuple(r[c] for c in columns) for r in rows],
    )
    return conn.execute("SELECT last_insert_rowid()").fetchone()[0] - len(rows) + 1
