"""The job database: every SQL statement of the job queue's tables, and nothing else.

Example::

    from dr_exp.db import JobDB

    db = JobDB.open(".dr_exp/jobs.db")
    sweep = db.add_sweep(experiment="train", app="train", cwd="/proj", sys_path=[],
                         sweep_dir="multirun/x", config_yaml="...", payload=b"...",
                         want_returns=True)
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
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from dr_exp import paths, signing
from dr_exp.defaults import (
    FINAL_STATUSES,
    LEASE_S,
    MAX_ATTEMPTS,
    ON_DUPLICATE,
    PRIORITY,
    PRIORITY_MAX,
    PRIORITY_MIN,
    STATUSES,
)
from dr_exp.errors import BadInput
from dr_exp.identity import job_identity
from dr_exp.store import SQLiteStore, retry_busy

__all__ = ["JobDB", "Job", "Outcome", "Enqueued", "SweepRow", "STATUSES", "FINAL_STATUSES"]

# What a submission does with a job that already exists (same experiment, app and overrides):
# skip: leave every existing job alone; retry_failed: skip completed, pending and running
# jobs but queue failed and cancelled ones again; always: insert a new job every time.


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
    output_dir: Optional[str] = None  # where an earlier attempt ran, if one did
    signed: dict = field(default_factory=dict)  # the stored fields its signature covers
    signature: Optional[str] = None

    def verify(self) -> None:
        """NotSigned unless a key this process holds signed this row as it is."""
        signing.verify_fields("job", self.signed, self.signature, f"job {self.id}")


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
    result_path: Optional[str] = None  # a large result_blob, kept in the job's folder instead
    failure: Optional[str] = None  # a failed run's class: see dr_exp.failures
    retry_after: Optional[float] = None  # a failure its retry policy retries: in this many s


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
    settings: dict = field(default_factory=dict)  # what workers apply to its jobs (JSON)
    signed: dict = field(default_factory=dict)  # the stored fields its signature covers


# What decides what runs, and so is signed (signing.py): a sweep's whole row, and each
# job's overrides, identity, sweep link and folder.  Priority, tags and status are not:
# any member of a group sharing a queue may reorder or retry its jobs.
SWEEP_SIGNED = tuple(
    "experiment app kind cwd sys_path sweep_dir config want_returns spec settings key_id "
    "payload_sha256".split()
)
JOB_SIGNED = tuple(
    "id experiment sweep_id run_sweep_id job_num overrides identity output_dir key_id".split()
)
_JOB_SIGNED_SQL = ", ".join(JOB_SIGNED)


# How often a process that keeps claiming looks for expired leases at the latest, even when
# no lease it knows of can have run out yet: it must see a job's lease generation once to
# start that job's clock (see JobDB._expired), so this bounds how late it notices new jobs.
REAP_SCAN_S = 1.0

_held: dict[tuple, tuple[dict[str, signing.Key], str]] = {}


def _keyring() -> tuple[dict[str, signing.Key], str]:
    """``signing.keyring()``, and its key ids as the JSON list that claims filter on.

    The keyring resolves the key files from the environment and reads them (once: signing
    keeps each key by path); claims ask for it thousands of times a second, so the answer
    is kept per value of the environment that decides which files those are.
    """
    env = os.environ
    where = (
        env.get(paths.ENV_SECRET_KEY_FILE),
        env.get(paths.ENV_SHARED_KEY_FILE),
        env.get("XDG_CONFIG_HOME"),
        env.get("HOME"),
    )
    held = _held.get(where)
    if held is None:
        ring = signing.keyring()
        held = _held[where] = (ring, json.dumps(sorted(ring)))
    return held


def _job_signature(fields: dict) -> str:
    key = _keyring()[0].get(fields["key_id"]) or signing.signing_key()
    return signing.sign_fields("job", {k: fields[k] for k in JOB_SIGNED}, key)


def _resign_job(conn: sqlite3.Connection, job_id: int) -> None:
    """Sign a job row again after a signed field changed (its folder, its sweep link)."""
    row = conn.execute(
        f"SELECT {_JOB_SIGNED_SQL}, signature FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    if row is not None:
        _resign_row(conn, row)


def _resign_row(conn: sqlite3.Connection, row: Sequence[Any]) -> Optional[str]:
    """Given a job row's JOB_SIGNED fields and then its stored signature (as read, or as
    an UPDATE ... RETURNING gave them), store the signature those fields need now, unless it
    is already there; returns the row's signature (None: signed by a key not held here)."""
    fields = dict(zip(JOB_SIGNED, row))
    if fields["key_id"] not in _keyring()[0]:
        return None
    signature = _job_signature(fields)
    if signature != row[len(JOB_SIGNED)]:
        conn.execute("UPDATE jobs SET signature = ? WHERE id = ?", (signature, fields["id"]))
    return signature


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


def _migrate_to_4(db: Any) -> None:
    """Leases judged by generations (no cross-host clock), the cancelling state, and
    returned objects kept in files."""
    db["jobs"].add_column("lease_gen", int, not_null_default=0)
    db["jobs"].add_column("lease_s", float)
    db.execute("DROP INDEX IF EXISTS jobs_running_lease")
    # A large returned object lives in a file of the job's folder; the row points at it.
    db["results"].add_column("path", str)
    # Reapers read every live job's lease generation: a small covering partial index.
    db.execute(
        "CREATE INDEX jobs_live ON jobs(id, lease_gen, lease_s) "
        "WHERE status IN ('running', 'cancelling')"
    )


def _migrate_to_5(db: Any) -> None:
    """Signed rows: each sweep and job carries its signature and its key's id; sweeps carry
    the settings their workers apply.  Failed attempts carry a class, and retries a time."""
    db["sweeps"].add_column("key_id", str)
    db["sweeps"].add_column("settings", str)  # JSON
    db["jobs"].add_column("key_id", str)
    db["jobs"].add_column("signature", str)
    # Failure classes (error, oom, killed, lost, preempted, timeout, signature) and retries.
    db["jobs"].add_column("failure", str)
    db["jobs"].add_column("next_try", float)  # a retried failure waits out its backoff
    db["attempts"].add_column("failure", str)
    db["workers"].add_column("detail", str)  # why a worker stopped claiming
    db["attempts"].create_index(["host", "ended"], index_name="attempts_host_ended")
    # Per-sweep counts (the dashboard's overview, sweep ends) from the index alone.
    db["jobs"].create_index(["sweep_id", "status"], index_name="jobs_sweep_status")
    _sign_legacy_rows(db.conn)


def _sign_legacy_rows(conn: sqlite3.Connection) -> None:
    """Rows written by dr_exp before version 5 were unsigned (jobs, trainer sweeps) or signed
    in their payload alone.  The first dr_exp to open the file signs them with its key, so
    that queued work survives the upgrade; a Hydra sweep only if its payload's old
    signature verifies under that key (else its jobs fail as not signed)."""
    import hmac

    if conn.execute("SELECT 1 FROM sweeps UNION ALL SELECT 1 FROM jobs LIMIT 1").fetchone() is None:
        return  # a new file: nothing to sign, and no key needed to create it
    key = signing.signing_key()
    legacy = signing.Key(key.id, signing.private_key().secret, key.path)
    sweeps = conn.execute(
        "SELECT id, experiment, app, kind, cwd, sys_path, sweep_dir, config, want_returns, spec, "
        "payload, signature FROM sweeps"
    ).fetchall()
    for sid, exp, app, kind, cwd, sys_path, sweep_dir, config, want, spec, data, old in sweeps:
        if (kind or "hydra") == "hydra":
            expected = signing.sign_bytes(legacy, data or b"").partition(":")[2]
            if not hmac.compare_digest(expected, old or ""):
                continue
        values = (exp, app, kind or "hydra", cwd, sys_path, sweep_dir, config, want, spec, "{}")
        fields = dict(zip(SWEEP_SIGNED, (*values, key.id, signing.digest(data or b""))))
        conn.execute(
            "UPDATE sweeps SET settings = '{}', key_id = ?, signature = ? WHERE id = ?",
            (key.id, signing.sign_fields("sweep", fields, key), sid),
        )
    conn.execute("UPDATE jobs SET key_id = ?", (key.id,))
    for (job_id,) in conn.execute("SELECT id FROM jobs").fetchall():
        _resign_job(conn, job_id)


def _migrate_to_6(db: Any) -> None:
    """Notices (dr_exp.notify): one row per sweep and kind, claimed by one process under a
    lease, sent once, retried with backoff; and the jobs a re-run sweep took over, by sweep."""
    db["notices"].create(
        {
            "id": int,
            "sweep_id": int,
            "kind": str,  # end, failure (hydra.launcher.notify) or hook (on_sweep_end)
            "state": str,  # pending, sending, sent, failed (gave up)
            "attempts": int,
            "max_attempts": int,
            "created": float,
            "next_try": float,
            "last_error": str,
            "claimed_by": str,  # the process that sends it (or waits to retry it)
            "lease_until": float,  # wall clock; after it, any process may take it over
            "sent": float,
        },
        pk="id",
        not_null={"sweep_id", "kind", "state", "attempts", "max_attempts", "created", "next_try"},
        defaults={"state": "pending", "attempts": 0},
        foreign_keys=[("sweep_id", "sweeps", "id")],
    )
    # One row per sweep and kind: INSERT OR IGNORE makes exactly one process its creator.
    db["notices"].create_index(["sweep_id", "kind"], unique=True, index_name="notices_sweep_kind")
    db.execute(
        "CREATE INDEX notices_open ON notices(next_try) WHERE state IN ('pending', 'sending')"
    )
    db.execute("CREATE INDEX jobs_run_sweep ON jobs(run_sweep_id) WHERE run_sweep_id IS NOT NULL")


_COUNT_KEY = "experiment = {row}.experiment AND sweep_id = coalesce({row}.sweep_id, 0) AND status = {row}.status"
_COUNT_ADD = (
    "INSERT INTO job_counts (experiment, sweep_id, status, n) "
    "VALUES (NEW.experiment, coalesce(NEW.sweep_id, 0), NEW.status, 1) "
    "ON CONFLICT DO UPDATE SET n = n + 1;"
)
_COUNT_REMOVE = f"UPDATE job_counts SET n = n - 1 WHERE {_COUNT_KEY.format(row='OLD')};"


def _migrate_to_7(db: Any) -> None:
    """Fewer index pages per claim, and counts that cost nothing to read.

    Every claim rewrites each index that holds a job's status, and at thousands of claims
    a second the pages each commit writes are the queue's cost.  Three such indexes become
    one on status alone, which lists by status read in id order (``list --status failed
    --limit 50``) and the reapers range over for live jobs.  The jobs per experiment,
    sweep and status (``status``, the dashboard) live in ``job_counts``, kept by triggers
    in the same transaction as every change, so reading them no longer counts a million
    index entries.  Ended attempts are indexed by end time alone (the host breaker's
    question); a running attempt enters that index when it ends.
    """
    for name in ("jobs_experiment_status", "jobs_sweep_status", "jobs_live", "attempts_host_ended"):
        db.execute(f"DROP INDEX IF EXISTS {name}")
    db.execute("CREATE INDEX jobs_status ON jobs(status)")
    db.execute(
        "CREATE INDEX attempts_ended ON attempts(ended, outcome, host) WHERE ended IS NOT NULL"
    )
    db.execute(
        "CREATE TABLE job_counts (experiment TEXT NOT NULL, sweep_id INTEGER NOT NULL, "
        "status TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (experiment, sweep_id, status)) "
        "WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO job_counts (experiment, sweep_id, status, n) "
        "SELECT experiment, coalesce(sweep_id, 0), status, count(*) FROM jobs "
        "GROUP BY experiment, coalesce(sweep_id, 0), status"
    )
    db.execute(f"CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN {_COUNT_ADD} END")
    db.execute(f"CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN {_COUNT_REMOVE} END")
    db.execute(
        "CREATE TRIGGER job_counts_update AFTER UPDATE OF status, experiment, sweep_id ON jobs "
        "WHEN OLD.status IS NOT NEW.status OR OLD.experiment IS NOT NEW.experiment "
        f"OR OLD.sweep_id IS NOT NEW.sweep_id BEGIN {_COUNT_REMOVE} {_COUNT_ADD} END"
    )


# MIGRATIONS[i] takes a database at schema version i to version i + 1.
MIGRATIONS: list[Callable[[Any], None]] = [
    _migrate_to_1,
    _migrate_to_2,
    _migrate_to_3,
    _migrate_to_4,
    _migrate_to_5,
    _migrate_to_6,
    _migrate_to_7,
]
SCHEMA_VERSION = len(MIGRATIONS)


class JobDB(SQLiteStore):
    """A connection to one job database file."""

    KIND = "job database"
    MIGRATIONS = MIGRATIONS
    MISSING_HINT = (
        "; run a sweep with hydra/launcher=dr_exp first, or point --db / DR_EXP_DB at one"
    )

    def __init__(self, path: Any, conn: sqlite3.Connection, journal_mode: str) -> None:
        super().__init__(path, conn, journal_mode)
        # job id -> (lease generation, when this process first saw it): see _expired
        self._seen: dict[int, tuple[int, float]] = {}
        self._next_scan = 0.0  # when a lease this process knows of could run out (monotonic)
        self._claim_sqls: dict[tuple[bool, bool], str] = {}

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
        want_returns: bool,
        kind: str = "hydra",
        spec: Optional[dict] = None,
        settings: Optional[dict] = None,
    ) -> int:
        """A sweep: a Hydra payload, or (kind 'trainer') a JSON spec of what to run.  The
        whole row is signed, the payload by its digest."""
        key = signing.signing_key()
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
            "kind": kind,
            "spec": json.dumps(spec, sort_keys=True) if spec is not None else None,
            "settings": json.dumps(settings or {}, sort_keys=True),
            "key_id": key.id,
        }
        fields = {k: row[k] for k in SWEEP_SIGNED if k in row}
        fields["payload_sha256"] = signing.digest(payload)
        row["signature"] = signing.sign_fields("sweep", fields, key)
        return self.write(lambda conn: _insert(conn, "sweeps", [row]))

    def get_sweep(self, sweep_id: int) -> Optional[SweepRow]:
        rows = self.rows(
            "SELECT id, experiment, cwd, sys_path, payload, signature, want_returns, kind, spec, "
            "app, sweep_dir, config, settings, key_id FROM sweeps WHERE id = ?",
            (sweep_id,),
        )
        if not rows:
            return None
        r = rows[0]
        signed = {k: r[k] for k in SWEEP_SIGNED if k in r}
        signed["payload_sha256"] = signing.digest(r["payload"] or b"")
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
            settings=json.loads(r["settings"]) if r["settings"] else {},
            signed=signed,
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
        key = signing.signing_key()

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
            # We hold the write lock: the new rows' ids are known before they are inserted,
            # and each row is signed with its id.
            next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM jobs").fetchone()[0]
            for i, ((num, overrides), identity) in enumerate(zip(jobs, identities)):
                old = existing.get(identity)
                if old is None:
                    actions[i] = "queued"
                    ids[i] = next_id
                    next_id += 1
                    rows.append(
                        {
                            "id": ids[i],
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
                            "run_sweep_id": None,
                            "output_dir": None,
                            "key_id": key.id,
                        }
                    )
                    rows[-1]["signature"] = _job_signature(rows[-1])
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
                _insert(conn, "jobs", rows)
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
            "ended = NULL, lease_expires = NULL, error = NULL, return_value = NULL, next_try = NULL, "
            "max_attempts = attempts + ?, priority = coalesce(?, priority), "
            "tags = coalesce(?, tags), "
            "run_sweep_id = CASE WHEN ? IS NULL THEN run_sweep_id "
            "WHEN ? = sweep_id THEN NULL ELSE ? END "
            "WHERE id = ? AND status IN ('failed', 'cancelled')",
            (attempts_left, priority, tags_json, run_sweep_id, run_sweep_id, run_sweep_id, job_id),
        ).rowcount
        if changed:
            conn.execute("DELETE FROM results WHERE job_id = ?", (job_id,))  # a stale return
            if run_sweep_id is not None:  # a re-run's code runs it now: signed by its submitter
                conn.execute(
                    "UPDATE jobs SET key_id = ? WHERE id = ?", (signing.signing_key().id, job_id)
                )
                _resign_job(conn, job_id)
        return changed == 1

    # -- the worker's side -----------------------------------------------------
    CLAIM_SQL = """
        UPDATE jobs
           SET status = 'running', worker = :worker, host = :host, started = :now,
               ended = NULL, attempts = attempts + 1, lease_expires = :lease_expires,
               lease_s = :lease_s, lease_gen = coalesce(lease_gen, 0) + 1
         WHERE id = (SELECT id FROM jobs INDEXED BY {index}
                      WHERE status = 'pending' {experiment_filter}
                        AND key_id IN (SELECT value FROM json_each(:keys))
                        AND (next_try IS NULL OR next_try <= :now)
                      ORDER BY priority DESC, id LIMIT 1)
        RETURNING {signed}, signature, attempts, lease_gen
    """
    # Jobs whose sweep (the one that runs them: a re-run's, else their own) is to be left alone.
    _SKIP_SWEEPS = (
        "AND coalesce(run_sweep_id, sweep_id) NOT IN (SELECT value FROM json_each(:skip))"
    )
    # A change to a running job: only by the worker that holds it, for the attempt it claimed.
    _MINE = "id = :id AND status IN ('running', 'cancelling') AND worker = :worker AND attempts = :attempt"

    def _claim_sql(self, experiment: bool, skip: bool) -> str:
        key = (experiment, skip)
        sql = self._claim_sqls.get(key)
        if sql is None:
            where = ("AND experiment = :experiment " if experiment else "") + (
                self._SKIP_SWEEPS if skip else ""
            )
            # Pinned: another index on status must never win the planner's guess (the claim
            # then sorts every pending row: 13 claims a second at 100,000 rows).
            index = "jobs_pending_by_experiment" if experiment else "jobs_pending"
            sql = self.CLAIM_SQL.format(
                experiment_filter=where, index=index, signed=_JOB_SIGNED_SQL
            )
            self._claim_sqls[key] = sql
        return sql

    def claim(
        self,
        worker: str,
        host: str,
        experiment: Optional[str] = None,
        finished: Optional[tuple[Job, Outcome]] = None,
        lease_s: float = LEASE_S,
        skip_sweeps: Sequence[int] = (),
        telemetry: Optional[dict] = None,
    ) -> Optional[Job]:
        """Claim the next pending job: highest priority first, FIFO within a priority.

        The same transaction records the worker's previous job (``finished``,
        one commit per job instead of two) and reaps jobs whose lease expired
        (whenever one could have: see ``_reap``), so lost jobs go back to the
        queue without a separate janitor.  Jobs of the sweeps in ``skip_sweeps``
        (the sweep that runs them) stay pending for other workers.  Given
        ``telemetry``, a claim also records the worker busy with its job (its
        heartbeat, as ``beat`` would), so that starting a job costs one commit.
        """
        sql = self._claim_sql(bool(experiment), bool(skip_sweeps))
        params = {
            "worker": worker,
            "host": host,
            "experiment": experiment,
            "lease_s": lease_s,
            "keys": _keyring()[1],  # only jobs we can verify
        }
        if skip_sweeps:
            params["skip"] = json.dumps([int(s) for s in skip_sweeps])

        def claim(conn: sqlite3.Connection) -> Optional[Job]:
            if finished is not None:
                self._finish(conn, finished[0], worker, finished[1])
            self._reap(conn)
            now = params["now"] = time.time()
            params["lease_expires"] = now + lease_s
            row = conn.execute(sql, params).fetchone()
            if row is None:
                return None
            signed = dict(zip(JOB_SIGNED, row))
            signature, attempts, lease_gen = row[len(JOB_SIGNED) :]
            conn.execute(
                "INSERT INTO attempts (job_id, attempt, worker, host, started) VALUES (?, ?, ?, ?, ?)",
                (signed["id"], attempts, worker, host, now),
            )
            self._saw_claim(signed["id"], lease_gen, lease_s)
            job = Job(
                signed["id"],
                signed["experiment"],
                signed["sweep_id"],
                signed["job_num"],
                json.loads(signed["overrides"]),
                attempts,
                signed["run_sweep_id"],
                output_dir=signed["output_dir"],
                signed=signed,
                signature=signature,
            )
            if job.run_sweep_id is not None:
                job.sweep_dir, job.sweep_subdir = self._first_folder(
                    conn, job.output_dir, job.sweep_id
                )
            if telemetry is not None:
                self._worker_beat(conn, worker, "busy", job.id, telemetry)
            return job

        return self.write(claim)

    @staticmethod
    def _first_folder(
        conn: sqlite3.Connection, ran_in: Optional[str], sweep_id: int
    ) -> tuple[Optional[str], Optional[str]]:
        """Where a re-queued job writes again: the folder it ran in before (``ran_in``),
        split into (sweep dir, subdir); else its first sweep's folder (absolute), no subdir."""
        if ran_in:
            return os.path.dirname(ran_in), os.path.basename(ran_in)
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
        failure: Optional[str] = None,
    ) -> None:
        conn.execute(
            "UPDATE attempts SET ended = ?, outcome = ?, detail = ?, failure = ? "
            "WHERE job_id = ? AND ended IS NULL AND (? IS NULL OR worker = ?)",
            (time.time(), outcome, detail, failure, job_id, worker, worker),
        )

    # -- leases, judged on this process's own clock ----------------------------------
    def _expired(self, conn: sqlite3.Connection) -> list[tuple]:
        """Running jobs whose lease generation this process has seen unchanged for longer
        than their lease, by its own monotonic clock.

        A worker bumps ``lease_gen`` at every renewal.  Comparing wall clocks across
        hosts would let a node whose clock is ahead reap a healthy job; a generation
        that stood still for ``lease_s`` here means its worker really stopped renewing.
        A process that has just started therefore waits one lease before it reaps.

        Each look also says when the next one is worth taking (``_next_scan``): when the
        first lease seen could run out, and at the latest after ``REAP_SCAN_S``, which
        bounds how late this process first sees a generation.  Looking less often only
        ever reaps later, never earlier: a job is reaped when two looks at least its lease
        apart found the same generation.
        """
        now = time.monotonic()
        rows = conn.execute(
            "SELECT id, lease_gen, lease_s, attempts, max_attempts, worker, status FROM jobs "
            "WHERE status IN ('running', 'cancelling')"
        ).fetchall()
        seen, self._seen = self._seen, {}
        expired = []
        next_scan = now + REAP_SCAN_S
        for row in rows:
            job_id, gen, lease_s = row[0], row[1], row[2] or LEASE_S
            first = seen.get(job_id)
            since = first[1] if first is not None and first[0] == gen else now
            self._seen[job_id] = (gen, since)
            if now - since >= lease_s:
                expired.append(row)
            next_scan = min(next_scan, since + lease_s)  # past for an expired one: due now
        self._next_scan = next_scan
        return expired

    def _saw_claim(self, job_id: int, gen: int, lease_s: float) -> None:
        """This process claimed the job at generation ``gen``: a sighting of it, now."""
        now = time.monotonic()
        self._seen[job_id] = (gen, now)
        self._next_scan = min(self._next_scan, now + (lease_s or LEASE_S))

    def _reap(self, conn: sqlite3.Connection, force: bool = False) -> list[int]:
        """Requeue (or fail, past max_attempts) running jobs whose lease expired; a job
        being cancelled whose worker is gone becomes cancelled.  Unless ``force``d, only
        when a lease could have run out since the last look (see ``_expired``)."""
        if not force and time.monotonic() < self._next_scan:
            return []
        now = time.time()
        reaped = []
        for job_id, gen, _, attempts, max_attempts, worker, status in self._expired(conn):
            detail = f"worker {worker} stopped renewing its lease"
            where = "WHERE id = ? AND status = ? AND lease_gen IS ?"
            if status == "cancelling":
                sql = (
                    f"UPDATE jobs SET status = 'cancelled', ended = ?, lease_expires = NULL {where}"
                )
                params: tuple = (now, job_id, status, gen)
                outcome, detail = "cancelled", "cancelled after its worker was gone"
            elif attempts >= (max_attempts or MAX_ATTEMPTS):
                sql = (
                    "UPDATE jobs SET status = 'failed', ended = ?, lease_expires = NULL, "
                    f"failure = 'lost', error = ? {where}"
                )
                params = (now, f"lost after {attempts} attempts ({detail})", job_id, status, gen)
                outcome = "lost"
            else:
                sql = (
                    "UPDATE jobs SET status = 'pending', worker = NULL, host = NULL, "
                    f"started = NULL, lease_expires = NULL {where}"
                )
                params = (job_id, status, gen)
                outcome = "lost"
            if conn.execute(sql, params).rowcount == 1:
                failure = "lost" if outcome == "lost" else None
                self._end_attempt(conn, job_id, worker, outcome, detail, failure)
                self._seen.pop(job_id, None)
                reaped.append(job_id)
        return reaped

    def reap_expired(self) -> list[int]:
        """Reap expired leases now (claims do this too); returns the reaped job ids."""
        return self.write(lambda conn: self._reap(conn, force=True))

    def _renew(self, conn: sqlite3.Connection, job: Job, worker: str, lease_s: float) -> str:
        mine = {"id": job.id, "worker": worker, "attempt": job.attempts}
        row = conn.execute(
            "UPDATE jobs SET lease_gen = lease_gen + 1, lease_expires = :expires "
            f"WHERE {self._MINE} RETURNING status",
            dict(mine, expires=time.time() + lease_s),
        ).fetchone()
        if row is not None:
            return "ok" if row[0] == "running" else "cancelling"
        self._end_attempt(conn, job.id, worker, "lost")
        return "lost"

    def heartbeat(self, job: Job, worker: str, lease_s: float = LEASE_S) -> str:
        """Renew the lease on a running job: ``ok``; ``cancelling`` when the job is to be
        stopped (cancelled); ``lost`` when it is no longer ours."""
        return self.write(lambda conn: self._renew(conn, job, worker, lease_s))

    def beat(
        self,
        worker: str,
        state: str,
        job: Optional[Job] = None,
        telemetry: Optional[dict] = None,
        lease_s: float = LEASE_S,
    ) -> Optional[str]:
        """A worker's whole heartbeat in one transaction: its liveness, state and GPU
        telemetry in the registry, and (given its running ``job``) the job's lease renewed
        exactly as ``heartbeat`` does it, whose answer it returns (None without a job)."""

        def beat(conn: sqlite3.Connection) -> Optional[str]:
            answer = self._renew(conn, job, worker, lease_s) if job is not None else None
            self._worker_beat(conn, worker, state, job.id if job is not None else None, telemetry)
            return answer

        return self.write(beat)

    def has_work(self, experiment: Optional[str] = None) -> bool:
        """Anything to claim or reap?  Plain reads: idle workers poll without the write lock."""
        sql = (
            "SELECT 1 FROM jobs WHERE status = 'pending' "
            "AND key_id IN (SELECT value FROM json_each(?))"
        )
        params: tuple = (_keyring()[1],)
        if experiment:
            sql, params = sql + " AND experiment = ?", params + (experiment,)
        if self.rows(sql + " LIMIT 1", params):
            return True
        return bool(self._undamaged(lambda: retry_busy(lambda: self._expired(self.conn))))

    def set_output_dir(self, job: Job, worker: str, output_dir: str) -> bool:
        """Record the job's folder (fenced); re-signs the row only when the folder changed."""
        mine = {"id": job.id, "worker": worker, "attempt": job.attempts, "dir": output_dir}
        sql = (
            f"UPDATE jobs SET output_dir = :dir WHERE {self._MINE} "
            f"RETURNING {_JOB_SIGNED_SQL}, signature"
        )

        def update(conn: sqlite3.Connection) -> bool:
            row = conn.execute(sql, mine).fetchone()
            if row is None:
                return False
            signature = _resign_row(conn, row)  # the folder decides where a re-run writes
            if signature is not None:  # the job's copy of its signed fields stays true
                job.signed, job.signature = dict(job.signed, output_dir=output_dir), signature
            return True

        return self.write(update)

    _FINISH_SQL = (
        "UPDATE jobs SET status = :status, ended = :ended, return_value = :ret, "
        "error = :error, failure = :failure, next_try = :next_try, "
        "output_dir = coalesce(:dir, output_dir), lease_expires = NULL, "
        "worker = CASE WHEN :retry THEN NULL ELSE worker END, "
        "host = CASE WHEN :retry THEN NULL ELSE host END "
        f"WHERE {_MINE} RETURNING {_JOB_SIGNED_SQL}, signature"
    )

    def _finish(self, conn: sqlite3.Connection, job: Job, worker: str, outcome: Outcome) -> bool:
        """Record how a run ended.  A job being cancelled that finished first is recorded
        as it finished: the record matches what happened."""
        if outcome.status not in ("completed", "failed"):
            raise BadInput(f"a run ends completed or failed, not {outcome.status!r}")
        now = time.time()
        retry = outcome.status == "failed" and outcome.retry_after is not None
        row = conn.execute(
            self._FINISH_SQL,
            {
                "status": "pending" if retry else outcome.status,
                "ended": None if retry else now,
                "ret": outcome.return_json,
                "error": outcome.error,
                "failure": outcome.failure,
                "next_try": now + (outcome.retry_after or 0.0) if retry else None,
                "retry": retry,
                "dir": outcome.output_dir,
                "id": job.id,
                "worker": worker,
                "attempt": job.attempts,
            },
        ).fetchone()
        if row is None:
            return False
        self._end_attempt(conn, job.id, worker, outcome.status, outcome.error, outcome.failure)
        if outcome.output_dir and outcome.output_dir != job.signed.get("output_dir"):
            _resign_row(conn, row)  # the folder is signed: sign the row again
        if outcome.result_signature is not None:
            conn.execute(
                "INSERT OR REPLACE INTO results (job_id, payload, signature, path) "
                "VALUES (?, ?, ?, ?)",
                (job.id, outcome.result_blob, outcome.result_signature, outcome.result_path),
            )
        return True

    def finish(self, job: Job, worker: str, outcome: Outcome) -> bool:
        """Record how a run ended; False when this worker no longer owns the job."""
        return self.write(lambda conn: self._finish(conn, job, worker, outcome))

    def requeue(
        self, job: Job, worker: str, count_attempt: bool = False, failure: str = "preempted"
    ) -> bool:
        """Put a running job back to pending (a preempted job does not count an attempt).
        A job being cancelled becomes cancelled instead: its stop is confirmed."""

        def requeue(conn: sqlite3.Connection) -> bool:
            mine = {"id": job.id, "worker": worker, "attempt": job.attempts}
            row = conn.execute(
                "UPDATE jobs SET status = CASE status WHEN 'cancelling' THEN 'cancelled' "
                "ELSE 'pending' END, ended = CASE status WHEN 'cancelling' THEN :now END, "
                "worker = CASE status WHEN 'cancelling' THEN worker END, "
                "host = CASE status WHEN 'cancelling' THEN host END, "
                "started = CASE status WHEN 'cancelling' THEN started END, "
                "lease_expires = NULL, attempts = attempts - :uncount "
                f"WHERE {self._MINE} RETURNING status",
                dict(mine, now=time.time(), uncount=0 if count_attempt else 1),
            ).fetchone()
            if row is not None:
                requeued = row[0] == "pending"
                outcome = "requeued" if requeued else row[0]
                self._end_attempt(
                    conn, job.id, worker, outcome, None, failure if requeued else None
                )
            return row is not None and row[0] == "pending"

        return self.write(requeue)

    def confirm_stopped(self, job: Job, worker: str) -> bool:
        """The worker's word that a job being cancelled has no process left: now cancelled."""

        def confirm(conn: sqlite3.Connection) -> bool:
            mine = {"id": job.id, "worker": worker, "attempt": job.attempts, "now": time.time()}
            changed = conn.execute(
                "UPDATE jobs SET status = 'cancelled', ended = :now, lease_expires = NULL "
                f"WHERE {self._MINE} AND status = 'cancelling'",
                mine,
            ).rowcount
            if changed == 1:
                self._end_attempt(conn, job.id, worker, "cancelled")
            return changed == 1

        return self.write(confirm)

    # -- the worker registry ------------------------------------------------------
    def register_worker(self, info: dict) -> None:
        row = dict(info, started=time.time(), heartbeat=time.time(), state="idle")
        self.write(lambda conn: _insert(conn, "workers", [row], replace=True))

    def worker_heartbeat(
        self, worker: str, state: str, job_id: Optional[int], telemetry: Optional[dict] = None
    ) -> None:
        """The registry's part of a heartbeat alone (``beat`` renews a lease with it)."""
        self.write(lambda conn: self._worker_beat(conn, worker, state, job_id, telemetry))

    @staticmethod
    def _worker_beat(
        conn: sqlite3.Connection,
        worker: str,
        state: str,
        job_id: Optional[int],
        telemetry: Optional[dict],
    ) -> None:
        t = telemetry or {}
        conn.execute(
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

    def host_record(self, host: str, since: float) -> dict[str, int]:
        """Attempts that ended since ``since``: this host's failed or lost ones and completed
        ones, and the completed ones of every other host (the host breaker weighs them)."""
        rows = self.rows(
            "SELECT host = ? AS here, outcome, count(*) AS n FROM attempts "
            "WHERE ended >= ? AND outcome IN ('completed', 'failed', 'lost') "
            "GROUP BY here, outcome",
            (host, since),
        )
        out = {"failed": 0, "completed": 0, "others_completed": 0}
        for r in rows:
            if r["here"] and r["outcome"] in ("failed", "lost"):
                out["failed"] += r["n"]
            elif r["here"]:
                out["completed"] += r["n"]
            elif r["outcome"] == "completed":
                out["others_completed"] += r["n"]
        return out

    def stop_claiming(self, worker: str, why: str) -> None:
        """This worker's host stopped claiming (the host breaker): say so in the registry."""
        self.write(
            lambda conn: conn.execute(
                "UPDATE workers SET state = 'stopped', detail = ?, heartbeat = ? WHERE id = ?",
                (why, time.time(), worker),
            )
        )

    def stopped_hosts(self, since: float) -> list[dict]:
        """Hosts whose workers stopped claiming since ``since``, and why (newest first)."""
        return self.rows(
            "SELECT host, detail, max(heartbeat) AS at FROM workers "
            "WHERE state = 'stopped' AND heartbeat >= ? GROUP BY host ORDER BY at DESC",
            (since,),
        )

    def live_workers(self, max_age_s: float, experiment: Optional[str] = None) -> list[dict]:
        """Workers that are not exited and have beaten within ``max_age_s`` seconds."""
        sql = "SELECT * FROM workers WHERE state != 'exited' AND heartbeat > ?"
        params: list[Any] = [time.time() - max_age_s]
        if experiment:
            sql += " AND (experiment IS NULL OR experiment = ?)"
            params.append(experiment)
        return self.rows(sql + " ORDER BY started", params)

    def count_failures(self, job_id: int, failure: str) -> int:
        """How many of the job's attempts failed with this class (for its retry policy)."""
        rows = self.rows(
            "SELECT count(*) AS n FROM attempts WHERE job_id = ? AND failure = ?",
            (job_id, failure),
        )
        return rows[0]["n"]

    def attempts(self, job_id: int) -> list[dict]:
        return self.rows(
            "SELECT attempt, worker, host, started, ended, outcome, failure, detail FROM attempts "
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
            "r.payload AS result_blob, r.signature AS result_signature, r.path AS result_path "
            "FROM jobs j LEFT JOIN results r ON r.job_id = j.id "
            "WHERE j.id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(job_ids)),),
        )
        return {r["id"]: r for r in rows}

    def status_counts(self, experiment: Optional[str] = None) -> list[dict]:
        """Jobs per experiment and status, from ``job_counts`` (a few rows per sweep)."""
        where, params = ("WHERE experiment = ?", (experiment,)) if experiment else ("", ())
        return self.rows(
            f"SELECT experiment, status, sum(n) AS n FROM job_counts {where} "
            "GROUP BY experiment, status HAVING sum(n) > 0 ORDER BY experiment, status",
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
        failures: Optional[Sequence[str]] = None,
    ) -> list[dict]:
        """Jobs matching every filter given; ``tags``: jobs that carry all of them;
        ``failures``: jobs whose last failure was of one of these classes."""
        clauses, params = [], []
        if failures:
            clauses.append("failure IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(failures)))
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
        # By status alone the status index reads in id order (LIMIT n reads n entries); the
        # planner would rather guess the experiment's index and read all its rows.
        by = " INDEXED BY jobs_status" if statuses and ids is None and sweep_ids is None else ""
        rows = self.rows(
            "SELECT id, experiment, sweep_id, job_num, status, priority, tags, overrides, "
            "attempts, worker, host, created, started, ended, output_dir, return_value, error, "
            f"failure FROM jobs{by} {where} ORDER BY id{tail}",
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

        A pending job simply becomes cancelled.  A running job becomes
        ``cancelling``: its worker stops the job's process group at its next
        heartbeat and, once the process is gone, marks it ``cancelled`` and ends
        the attempt (see ``last_attempts``).  If that worker is gone, the next
        reaper does it once the lease has run out.  With ``strict``, a job that
        is neither pending nor running is an error and nothing changes.
        """

        def cancel(conn: sqlite3.Connection) -> dict[str, list[int]]:
            found = self._statuses_of(conn, ids)
            if strict:
                for job_id in ids:
                    status = found[job_id][1]
                    if status not in ("pending", "running", "cancelling"):
                        raise BadInput(
                            f"job {job_id} is {status}; only pending or running jobs "
                            "can be cancelled"
                        )
            now = time.time()
            done: dict[str, list[int]] = {"pending": [], "running": []}
            for job_id, status, *_ in found.values():
                if status == "pending":
                    sql = "UPDATE jobs SET status = 'cancelled', ended = ? WHERE id = ? AND status = ?"
                    params: tuple = (now, job_id, status)
                elif status in ("running", "cancelling"):
                    sql = "UPDATE jobs SET status = 'cancelling' WHERE id = ? AND status = ?"
                    params = (job_id, status)
                else:
                    continue
                if conn.execute(sql, params).rowcount:
                    done["pending" if status == "pending" else "running"].append(job_id)
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
                    if status == "cancelling":
                        raise BadInput(
                            f"job {job_id} is still being cancelled: its worker has not "
                            "confirmed that its process is gone; retry it once it is cancelled "
                            f"(dr_exp cancel {job_id} waits for that)"
                        )
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
            "SELECT j.identity, j.max_attempts, j.run_sweep_id, j.failure, s.app, s.kind, s.cwd, "
            "s.sweep_dir, s.spec, s.settings FROM jobs j "
            "JOIN sweeps s ON s.id = j.sweep_id WHERE j.id = ?",
            (job_id,),
        )
        job = rows[0]
        if extra:
            job.update(extra[0])
            job["spec"] = json.loads(job["spec"]) if job["spec"] else None
            job["settings"] = json.loads(job["settings"]) if job["settings"] else {}
        return job

    def sweeps_named(self, value: str) -> list[int]:
        """A sweep named by its id or by its folder (as Hydra printed it); BadInput if none."""
        sweeps = self.sweeps()
        if value.strip().isdigit():
            if not any(s["id"] == int(value) for s in sweeps):
                raise BadInput(f"no sweep with id {value}")
            return [int(value)]
        wanted = Path(value).expanduser().resolve()
        found = [
            s["id"]
            for s in sweeps
            if s["sweep_dir"] and Path(s["cwd"], s["sweep_dir"]).resolve() == wanted
        ]
        if not found:
            raise BadInput(f"no sweep with folder {value}")
        return found

    def sweeps(self) -> list[dict]:
        """Every sweep's id, experiment, app, kind and folder (small: one row per sweep)."""
        return self.rows(
            "SELECT id, experiment, app, kind, cwd, sweep_dir, created FROM sweeps ORDER BY id"
        )

    # -- views for the dashboard and the report ---
    # Read-only queries for ``dr_exp ui`` (dr_exp/ui/): none of them writes.
    VIEW_SORTS = (
        "id",
        "experiment",
        "status",
        "priority",
        "attempts",
        "created",
        "started",
        "ended",
    )

    def sweep_counts(self, experiment: Optional[str] = None) -> list[dict]:
        """Jobs per sweep and status: the progress of each sweep on the overview page."""
        return self.rows(
            "SELECT nullif(sweep_id, 0) AS sweep_id, status, sum(n) AS n FROM job_counts "
            "WHERE :experiment IS NULL OR experiment = :experiment GROUP BY sweep_id, status "
            "HAVING sum(n) > 0",
            {"experiment": experiment},
        )

    def jobs_page(
        self,
        *,
        statuses: Optional[Sequence[str]] = None,
        experiment: Optional[str] = None,
        tags: Sequence[str] = (),
        sweep_ids: Optional[Sequence[int]] = None,
        error: Optional[str] = None,
        failures: Optional[Sequence[str]] = None,
        sort: str = "id",
        descending: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict], int]:
        """One page of the jobs that match every filter, and how many match in all.

        ``error`` matches the failure summary, case-insensitively; ``failures`` are
        classes of the last failure (oom, timeout, ...).  The page is
        chosen on ids alone (LIMIT/OFFSET over a narrow sort), then only its rows
        are read, so a page stays cheap at 100,000 jobs.
        """
        if sort not in self.VIEW_SORTS:
            raise BadInput(
                f"cannot sort jobs by {sort!r}; choose from {', '.join(self.VIEW_SORTS)}"
            )
        for status in statuses or ():
            validate_status(status)
        filters = {
            "experiment = :experiment": ("experiment", experiment or None),
            "status IN (SELECT value FROM json_each(:statuses))": (
                "statuses",
                json.dumps(list(statuses)) if statuses else None,
            ),
            "sweep_id IN (SELECT value FROM json_each(:sweeps))": (
                "sweeps",
                None if sweep_ids is None else json.dumps([int(i) for i in sweep_ids]),
            ),
            "instr(lower(error), lower(:error)) > 0": ("error", error or None),
            "failure IN (SELECT value FROM json_each(:failures))": (
                "failures",
                json.dumps(list(failures)) if failures else None,
            ),
        }
        params: dict[str, Any] = {"limit": int(limit), "offset": int(offset)}
        clauses = []
        for clause, (name, value) in filters.items():
            if value is not None:
                clauses.append(clause)
                params[name] = value
        for n, tag in enumerate(tags):  # instr() first: json_each only for likely rows
            clauses.append(
                f"instr(tags, json_quote(:tag{n})) > 0 AND "
                f"EXISTS (SELECT 1 FROM json_each(jobs.tags) WHERE value = :tag{n})"
            )
            params[f"tag{n}"] = tag
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        way = "DESC" if descending else "ASC"
        order = f"id {way}" if sort == "id" else f"{sort} {way}, id {way}"
        by = " INDEXED BY jobs_status" if statuses and sweep_ids is None else ""  # see list_jobs
        rows = self.rows(
            "SELECT id, experiment, sweep_id, job_num, status, priority, tags, overrides, "
            "attempts, worker, host, created, started, ended, output_dir, return_value, error, "
            f"failure FROM jobs WHERE id IN (SELECT id FROM jobs{by} {where} ORDER BY {order} "
            f"LIMIT :limit OFFSET :offset) ORDER BY {order}",
            params,
        )
        total = self.rows(f"SELECT count(*) AS n FROM jobs{by} {where}", params)[0]["n"]
        for r in rows:
            r["tags"] = json.loads(r["tags"] or "[]")
            r["overrides"] = json.loads(r["overrides"] or "[]")
            r["return_value"] = json.loads(r["return_value"]) if r["return_value"] else None
        return rows, total

    def attempts_timeline(
        self,
        experiment: Optional[str] = None,
        sweep_ids: Optional[Sequence[int]] = None,
        limit: int = 2000,
    ) -> list[dict]:
        """The latest ``limit`` attempts (who ran which job, where and when), newest first,
        with their job's experiment, sweep, overrides and status."""
        return self.rows(
            "SELECT a.job_id, a.attempt, a.worker, a.host, a.started, a.ended, a.outcome, "
            "a.detail, j.experiment, j.sweep_id, j.overrides, j.status "
            "FROM attempts a JOIN jobs j ON j.id = a.job_id "
            "WHERE (:experiment IS NULL OR j.experiment = :experiment) AND (:sweeps IS NULL "
            "OR j.sweep_id IN (SELECT value FROM json_each(:sweeps))) "
            "ORDER BY a.id DESC LIMIT :limit",
            {
                "experiment": experiment,
                "sweeps": None if sweep_ids is None else json.dumps([int(i) for i in sweep_ids]),
                "limit": int(limit),
            },
        )

    def workers_by_id(self, ids: Sequence[str]) -> dict[str, dict]:
        """Workers by id, exited ones too, with their host, GPU and last telemetry."""
        rows = self.rows(
            "SELECT id, host, gpu, state, started, heartbeat, job_id, gpu_util, gpu_mem_used_mb, "
            "gpu_mem_total_mb, slurm_job_id FROM workers "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(ids)),),
        )
        return {r["id"]: r for r in rows}

    # -- sweep ends and notices ---
    # For dr_exp.notify (a notice and the on_sweep_end hook once a sweep ends) and the live
    # view of ``dr_exp status --watch``.  A job that a re-run took over (run_sweep_id)
    # belongs to the re-run.  A notice is claimed under a wall-clock lease: whoever holds it
    # sends it; once the lease runs out, any process may take it over.
    _IN_SWEEP = "((sweep_id = :sweep AND run_sweep_id IS NULL) OR run_sweep_id = :sweep)"
    _NOTICE_DUE = "state IN ('pending', 'sending') AND next_try <= :now AND attempts < max_attempts"
    _NOTICE_FREE = f"{_NOTICE_DUE} AND (claimed_by IS NULL OR lease_until < :now)"

    def sweeps_to_notify(self, sweep_ids: Optional[Sequence[int]] = None) -> list[dict]:
        """The sweeps (of ``sweep_ids``, else all) whose settings ask for a notice or an
        on_sweep_end hook and whose end has no notice yet: their id and settings."""
        where = "s.id IN (SELECT value FROM json_each(:ids))" if sweep_ids is not None else "1"
        rows = self.rows(
            f"SELECT s.id, s.settings FROM sweeps s WHERE {where} "
            "AND (json_extract(s.settings, '$.notify') IS NOT NULL "
            "OR json_extract(s.settings, '$.on_sweep_end') IS NOT NULL) "
            "AND NOT EXISTS (SELECT 1 FROM notices n WHERE n.sweep_id = s.id "
            "AND n.kind IN ('end', 'hook')) ORDER BY s.id",
            {"ids": json.dumps([int(i) for i in sweep_ids or ()])},
        )
        for r in rows:
            r["settings"] = json.loads(r["settings"] or "{}")
        return rows

    def sweep_progress(self, sweep_id: int) -> dict:
        """A sweep's jobs by status, when the first was created and started, the last ended."""
        rows = self.rows(
            "SELECT status, count(*) AS n, min(created) AS created, min(started) AS started, "
            f"max(ended) AS ended FROM jobs WHERE {self._IN_SWEEP} GROUP BY status",
            {"sweep": int(sweep_id)},
        )

        def first(key: str, pick: Callable[..., Any]) -> Optional[float]:
            values = [r[key] for r in rows if r[key] is not None]
            return pick(values) if values else None

        return {
            "counts": {r["status"]: r["n"] for r in rows},
            "created": first("created", min),
            "started": first("started", min),
            "ended": first("ended", max),
        }

    def sweeps_of_jobs(self, job_ids: Sequence[int]) -> list[int]:
        """The sweeps that ``job_ids`` belong to (for notices after a reap or a cancel)."""
        rows = self.rows(
            "SELECT DISTINCT coalesce(run_sweep_id, sweep_id) AS sweep FROM jobs "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps([int(i) for i in job_ids]),),
        )
        return [r["sweep"] for r in rows]

    def sweep_job_ids(self, sweep_id: int) -> list[int]:
        rows = self.rows(
            f"SELECT id FROM jobs WHERE {self._IN_SWEEP} ORDER BY id", {"sweep": int(sweep_id)}
        )
        return [r["id"] for r in rows]

    def add_notices(self, sweep_id: int, kinds: dict[str, int]) -> list[str]:
        """Create a sweep's notices (kind -> attempts it may take), each once whoever else
        tries too; returns the kinds this call created."""
        now = time.time()

        def add(conn: sqlite3.Connection) -> list[str]:
            made = []
            for kind, max_attempts in kinds.items():
                if conn.execute(
                    "INSERT OR IGNORE INTO notices (sweep_id, kind, state, attempts, "
                    "max_attempts, created, next_try) VALUES (?, ?, 'pending', 0, ?, ?, ?)",
                    (int(sweep_id), kind, int(max_attempts), now, now),
                ).rowcount:
                    made.append(kind)
            return made

        return self.write(add)

    def notices_due(self) -> bool:
        """Is a notice due that no live claim holds?  A plain read: no write lock."""
        sql = f"SELECT 1 FROM notices WHERE {self._NOTICE_FREE} LIMIT 1"
        return bool(self.rows(sql, {"now": time.time()}))

    def reserve_notices(self, owner: str, lease_s: float) -> list[int]:
        """Claim for ``owner`` every due notice that no live claim holds (one UPDATE: each
        row has one winner); returns the ids claimed."""
        now = time.time()
        sql = (
            "UPDATE notices SET claimed_by = :owner, lease_until = :until "
            f"WHERE {self._NOTICE_FREE} RETURNING id"
        )
        params = {"owner": owner, "until": now + lease_s, "now": now}
        return self.write(lambda conn: [r[0] for r in conn.execute(sql, params).fetchall()])

    def start_notice(self, owner: str, lease_s: float) -> Optional[dict]:
        """Take one due notice to send now (unclaimed, ``owner``'s, or its claim run out):
        it becomes ``sending``, and the attempt counts."""
        now = time.time()
        rows = self.write(
            lambda conn: conn.execute(
                "UPDATE notices SET state = 'sending', attempts = attempts + 1, "
                "claimed_by = :owner, lease_until = :until WHERE id = (SELECT id FROM notices "
                f"WHERE {self._NOTICE_DUE} AND (claimed_by IS NULL OR claimed_by = :owner "
                "OR lease_until < :now) ORDER BY next_try, id LIMIT 1) "
                "RETURNING id, sweep_id, kind, attempts, max_attempts",
                {"owner": owner, "until": now + lease_s, "now": now},
            ).fetchall()
        )
        keys = ("id", "sweep_id", "kind", "attempts", "max_attempts")
        return dict(zip(keys, rows[0])) if rows else None

    def end_notice(
        self, nid: int, owner: str, error: Optional[str], due: Optional[float], keep_s: float = 0.0
    ) -> bool:
        """Record one try of notice ``nid``: sent (no ``error``), given up (no ``due``), or
        due again at ``due``; with ``keep_s``, ``owner`` keeps its claim until that long
        after, so that nobody else takes the retry while it waits.  False if it lost it."""
        state = "sent" if error is None else "failed" if due is None else "pending"
        sql = (
            "UPDATE notices SET state = :state, last_error = coalesce(:error, last_error), "
            "next_try = coalesce(:due, next_try), "
            "sent = CASE WHEN :state = 'sent' THEN :now END, "
            "claimed_by = CASE WHEN :keep THEN claimed_by END, "
            "lease_until = CASE WHEN :keep THEN :due + :keep_s END "
            "WHERE id = :id AND claimed_by = :owner"
        )
        params = {
            "state": state,
            "error": error,
            "due": due,
            "now": time.time(),
            "keep": keep_s > 0 and state == "pending",
            "keep_s": keep_s,
            "id": int(nid),
            "owner": owner,
        }
        return self.write(lambda conn: conn.execute(sql, params).rowcount == 1)

    def notice_wait(self, owner: str) -> Optional[float]:
        """When the next retry of a notice that ``owner`` holds is due; None: it holds none."""
        rows = self.rows(
            "SELECT min(next_try) AS t FROM notices WHERE claimed_by = ? AND state = 'pending'",
            (owner,),
        )
        return rows[0]["t"]

    def notices(self) -> list[dict]:
        """Every notice, with its sweep's experiment and folder (``dr_exp notify status``)."""
        return self.rows(
            "SELECT n.id, n.sweep_id, s.experiment, s.cwd, s.sweep_dir, n.kind, n.state, "
            "n.attempts, n.max_attempts, n.created, n.next_try, n.sent, n.last_error, "
            "n.claimed_by, n.lease_until FROM notices n JOIN sweeps s ON s.id = n.sweep_id "
            "ORDER BY n.id"
        )

    def finished_since(self, since: float, experiment: Optional[str] = None) -> dict:
        """Jobs that completed or failed since ``since``, and when the first of them started:
        the recent rate of ``dr_exp status --watch``."""
        return self.rows(
            "SELECT count(*) AS n, min(started) AS first_started FROM jobs "
            "WHERE status IN ('completed', 'failed') AND ended >= :since "
            "AND (:experiment IS NULL OR experiment = :experiment)",
            {"since": since, "experiment": experiment},
        )[0]

    # -- allocations that fit their work (dr_exp.allocation) -------------------------
    DURATION_SAMPLE = 101  # a sweep's learned duration: the median of its latest completions

    def sweep_durations(self, experiment: Optional[str] = None) -> dict[int, Optional[float]]:
        """Each sweep that has pending jobs (the sweep that runs them: a re-run's, else
        their own) -> the seconds its jobs are expected to take: its ``expected_minutes``
        setting, else the median duration (ended - started) of up to DURATION_SAMPLE of its
        completed jobs, else None (unknown).  Reads ``job_counts`` and bounded index ranges
        only, so it stays cheap on a 100k-job queue (workers call it every 30 s or so)."""
        scope = {"experiment": experiment}
        counts = self.rows(
            "SELECT sweep_id, status, sum(n) AS n FROM job_counts "
            "WHERE :experiment IS NULL OR experiment = :experiment GROUP BY sweep_id, status",
            scope,
        )
        pending = {r["sweep_id"] for r in counts if r["status"] == "pending" and r["n"] > 0}
        completed = {r["sweep_id"] for r in counts if r["status"] == "completed" and r["n"] > 0}
        size: dict[int, int] = {}
        for r in counts:
            size[r["sweep_id"]] = size.get(r["sweep_id"], 0) + r["n"]
        all_completed = sum(r["n"] for r in counts if r["status"] == "completed")
        rerun = {  # jobs a re-run took over: counted under their first sweep
            r["s"]
            for r in self.rows(
                "SELECT DISTINCT run_sweep_id AS s FROM jobs WHERE run_sweep_id IS NOT NULL "
                "AND +status = 'pending' AND (:experiment IS NULL OR experiment = :experiment)",
                scope,
            )
        }
        wanted = sorted((pending | rerun) - {0})
        if not wanted:
            return {}
        minutes = {
            r["id"]: r["m"]
            for r in self.rows(
                "SELECT id, json_extract(settings, '$.expected_minutes') AS m FROM sweeps "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),),
            )
        }
        # A unary + keeps the planner off one index: walk the sweep's own rows, or the
        # completed jobs (the fewer rows: a fresh 100k-job sweep with 3 completed).
        sample = (
            "SELECT ended - started AS d FROM jobs WHERE {which} AND run_sweep_id IS NULL "
            "AND {status} = 'completed' AND ended IS NOT NULL AND started IS NOT NULL LIMIT :n"
        )
        by_sweep = sample.format(which="sweep_id = :s", status="+status")
        by_status = sample.format(which="+sweep_id = :s", status="status")
        taken_over = (
            "SELECT ended - started AS d FROM jobs WHERE run_sweep_id = :s "
            "AND +status = 'completed' AND ended IS NOT NULL AND started IS NOT NULL LIMIT :n"
        )
        out: dict[int, Optional[float]] = {}
        for sweep in wanted:
            m = minutes.get(sweep)
            if isinstance(m, (int, float)) and m > 0:
                out[sweep] = float(m) * 60.0
                continue
            found: list[dict] = []
            params = {"s": sweep, "n": self.DURATION_SAMPLE}
            if sweep in completed:
                own = by_status if all_completed < size.get(sweep, 0) else by_sweep
                found += self.rows(own, params)
            found += self.rows(taken_over, params)
            durations = sorted(r["d"] for r in found if r["d"] is not None and r["d"] >= 0)
            n = len(durations)
            out[sweep] = (
                None
                if n == 0
                else durations[n // 2]
                if n % 2
                else (durations[n // 2 - 1] + durations[n // 2]) / 2
            )
        return out

    def note_worker_exit(self, worker: str, why: str) -> None:
        """Why a worker exits (too little time left for any pending job), for the registry."""
        self.write(
            lambda conn: conn.execute("UPDATE workers SET detail = ? WHERE id = ?", (why, worker))
        )

    def completed_by_supervisor(self, supervisor: str, host: str, since: float) -> int:
        """Jobs that the workers of node supervisor ``supervisor`` completed since ``since``
        (a requeued allocation that completed none would loop: it is not requeued again)."""
        return self.rows(
            "SELECT count(*) AS n FROM attempts WHERE host = :host AND ended >= :since "
            "AND outcome = 'completed' AND worker IN "
            "(SELECT id FROM workers WHERE supervisor = :supervisor)",
            {"host": host, "since": since, "supervisor": supervisor},
        )[0]["n"]


def _insert(conn: sqlite3.Connection, table: str, rows: list[dict], replace: bool = False) -> int:
    """Insert ``rows`` (dicts with the same keys); returns the first new rowid."""
    columns = list(rows[0])
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    conn.executemany(
        f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [tuple(r[c] for c in columns) for r in rows],
    )
    return conn.execute("SELECT last_insert_rowid()").fetchone()[0] - len(rows) + 1
