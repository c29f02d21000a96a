"""A notice when a sweep ends, sent exactly once; and the ``on_sweep_end`` hook.

The settings (``hydra.launcher.notify``, ``notify_on_failure``, ``notify_metric``,
``notify_mode``, ``on_sweep_end``) live in the sweep's row, which is signed:
nothing here sends or runs anything for a row that does not verify.

- **When.** A sweep has ended when every one of its jobs is final (completed,
  failed or cancelled); with ``notify_on_failure``, its first failed job also
  sends one notice.  The engine calls :func:`after_jobs` after it records
  outcomes, and :func:`retry_due` now and then; ``dr_exp notify run`` does both
  where no worker runs.
- **Exactly once.** Each notice is one row of the ``notices`` table, created by
  ``INSERT OR IGNORE`` on (sweep, kind): however many workers see the end at
  once, one row exists.  A process claims due rows in one ``UPDATE`` (each row
  has one winner) under a lease, then sends.  Only a process that dies in the
  middle of sending can make a notice go twice, once its lease has run out.
- **Where.** The claiming process hands the sending to a detached ``dr_exp
  notify run --claimed-by ...`` so that a worker never waits on a slow
  receiver; it logs to ``logs/notify.log`` next to the job database.
- **What.** A webhook gets an HTTP POST of the JSON summary; a command (an
  argument list, never a shell) gets the JSON on stdin and in the file
  ``$DR_EXP_NOTICE_FILE``, and runs in the folder the sweep started from.  A
  receiver that is down is retried with exponential backoff (5 s, 10 s, ... up
  to 5 min, for about two hours), each try recorded in the table.
- **The hook.** ``on_sweep_end=pkg.module:function`` is called once, with the
  sweep's results table (:func:`dr_exp.results.load`), in the sweep's folder;
  it is not retried (an aggregation script that fails would fail again).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from dr_exp import paths, signing
from dr_exp.defaults import FINAL_STATUSES, STATUSES

if TYPE_CHECKING:
    from dr_exp.db import JobDB, SweepRow

log = logging.getLogger("dr_exp.notify")

END, FAILURE, HOOK = "end", "failure", "hook"
ENV_NOTICE_FILE = "DR_EXP_NOTICE_FILE"  # a command's copy of the JSON summary
LEASE_S = 180.0  # a claim outlasts one try (a webhook's timeout, a command's)
KEEP_S = 30.0  # a sender keeps a retry's claim this long past its due time
WEBHOOK_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 120.0
BACKOFF_S, BACKOFF_MAX_S = 5.0, 300.0
MAX_TRIES = 30  # 5 s doubling to 5 min: about two hours of retries
FAILURES_LISTED = 5  # failed jobs named in a summary
POLL_S = 5.0  # `dr_exp notify run` looks for ended sweeps this often

# Sweeps this process knows need nothing more (no notice asked, or their end is handled):
# after_jobs skips them without a query.  Database path -> sweep ids.
_settled: dict[str, set[int]] = {}
_children: list[subprocess.Popen] = []


# -- the engine's entry points ---------------------------------------------------------
def after_jobs(db: JobDB, sweep_ids: Iterable[Optional[int]]) -> None:
    """Create the notices of any of ``sweep_ids`` that just ended (or failed first), and
    hand them to a sender.  Call it after recording job outcomes; it never raises, and
    costs one indexed query when there is nothing to do."""
    try:
        ids = sorted({int(i) for i in sweep_ids if i is not None} - _settled_in(db))
        if ids and open_notices(db, ids):
            retry_due(db)
    except Exception as e:  # noqa: BLE001 - a notice must never break the caller
        log.warning("sweep notices: %s: %s", type(e).__name__, e)


def retry_due(db: JobDB) -> None:
    """Claim every due notice (new ones, retries whose backoff is over, claims that ran
    out) and start a detached sender for them.  Never raises; one query when none is due."""
    try:
        _reap_children()
        owner = _owner()
        if db.notices_due() and db.reserve_notices(owner, LEASE_S):
            _start_sender(Path(db.path), owner)
    except Exception as e:  # noqa: BLE001 - a notice must never break the caller
        log.warning("sweep notices: %s: %s", type(e).__name__, e)


def open_notices(db: JobDB, sweep_ids: Optional[list[int]] = None) -> int:
    """Create the notices that ended sweeps (of ``sweep_ids``, else all) are due; returns
    how many this call created."""
    wanted = {r["id"]: r["settings"] for r in db.sweeps_to_notify(sweep_ids)}
    settled = _settled_in(db)
    settled.update(i for i in sweep_ids or () if i not in wanted)
    created = 0
    for sweep_id, settings in wanted.items():
        kinds = _kinds_due(settings, db.sweep_progress(sweep_id)["counts"])
        if kinds and _verified(db, sweep_id) is not None:
            created += len(db.add_notices(sweep_id, kinds))
        if END in kinds or HOOK in kinds:
            settled.add(sweep_id)
    return created


def _settled_in(db: JobDB) -> set[int]:
    return _settled.setdefault(str(db.path), set())


def _kinds_due(settings: dict, counts: dict[str, int]) -> dict[str, int]:
    """The notices a sweep's counts call for: kind -> how many tries it gets."""
    kinds: dict[str, int] = {}
    total = sum(counts.values())
    if settings.get("notify") and settings.get("notify_on_failure") and counts.get("failed"):
        kinds[FAILURE] = MAX_TRIES
    if total and sum(counts.get(s, 0) for s in FINAL_STATUSES) == total:
        if settings.get("notify"):
            kinds[END] = MAX_TRIES
        if settings.get("on_sweep_end"):
            kinds[HOOK] = 1
    return kinds


def _verified(db: JobDB, sweep_id: int) -> Optional[SweepRow]:
    """The sweep, if a key this process holds signed its row as it is (settings included)."""
    sweep = db.get_sweep(sweep_id)
    if sweep is None:
        return None
    try:
        signing.verify_fields("sweep", sweep.signed, sweep.signature, f"sweep {sweep_id}")
    except signing.NotSigned as e:
        log.warning("no notice for sweep %s: %s", sweep_id, e)
        return None
    return sweep


# -- sending -------------------------------------------------------------------------------
def _owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _start_sender(db_path: Path, owner: str) -> None:
    """``dr_exp notify run --claimed-by OWNER`` in its own session: it sends what ``owner``
    claimed, waits out the backoff of its retries, and exits."""
    from dr_exp.local import worker_env

    logs = paths.ensure_dir(paths.worker_logs(db_path), paths.is_shared_folder(db_path.parent))
    cmd = [sys.executable, "-m", "dr_exp", "notify", "run", "--db", str(db_path)]
    with open(logs / "notify.log", "ab") as out:
        _children.append(
            subprocess.Popen(
                [*cmd, "--claimed-by", owner],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(db_path.parent),
                env=worker_env(),
                start_new_session=True,
            )
        )


def _reap_children() -> None:
    _children[:] = [p for p in _children if p.poll() is None]


def run(
    db: JobDB,
    once: bool = False,
    owner: Optional[str] = None,
    poll: float = POLL_S,
    stop: Optional[threading.Event] = None,
) -> int:
    """``dr_exp notify run``: send due notices; returns how many tries failed.

    ``once``: look for ended sweeps, try each due notice once, return.  ``owner``
    (a detached sender): send what ``owner`` claimed and wait out its retries,
    then return.  Otherwise follow the queue until ``stop`` is set.
    """
    stop = stop or threading.Event()
    claimed = owner is not None
    owner = owner or _owner()
    failed = 0
    while not stop.is_set():
        if not claimed:
            open_notices(db)
        failed += send_due(db, owner, keep=not once)
        if once:
            break
        wait = db.notice_wait(owner)
        if wait is None and claimed:
            break
        delay = poll if wait is None else max(0.0, wait - time.time())
        stop.wait(delay if claimed else min(delay, poll))
    return failed


def send_due(db: JobDB, owner: str, keep: bool = True) -> int:
    """Send every due notice that ``owner`` may take; returns how many tries failed.
    With ``keep``, a notice to retry stays ``owner``'s while its backoff runs."""
    failed = 0
    notice = db.start_notice(owner, LEASE_S)
    while notice is not None:
        error = _deliver(db, notice)
        retry_at = None
        if error is not None:
            failed += 1
            if notice["attempts"] < notice["max_attempts"]:
                retry_at = time.time() + backoff(notice["attempts"])
        what = f"sweep {notice['sweep_id']}'s {notice['kind']} notice"
        if error is None:
            log.info("%s sent", what)
        else:
            again = f"; next try in {retry_at - time.time():.0f} s" if retry_at else "; given up"
            log.warning("%s: try %s failed: %s%s", what, notice["attempts"], error, again)
        db.end_notice(notice["id"], owner, error, retry_at, KEEP_S if keep else 0.0)
        notice = db.start_notice(owner, LEASE_S)
    return failed


def backoff(tries: int) -> float:
    """Seconds before the next try after ``tries`` failed ones: 5, 10, 20, ... 300."""
    return min(BACKOFF_S * 2 ** (tries - 1), BACKOFF_MAX_S)


def _deliver(db: JobDB, notice: dict) -> Optional[str]:
    """Send one notice (or call the hook); its error in one line, None when it went."""
    sweep = _verified(db, notice["sweep_id"])
    if sweep is None:
        return f"sweep {notice['sweep_id']} is missing or not signed by a key this process holds"
    try:
        if notice["kind"] == HOOK:
            _call_hook(db, sweep)
        else:
            _send(sweep.settings["notify"], summary(db, sweep, notice["kind"]), sweep.cwd)
    except (Exception, SystemExit) as e:  # the receiver's or the hook's failure, recorded
        return " ".join(f"{type(e).__name__}: {e}".split())[:500]
    return None


def _send(target: Any, data: dict, cwd: str) -> None:
    """POST ``data`` to a webhook URL, or run a command with it on stdin."""
    body = json.dumps(data, indent=2, default=str).encode()
    if isinstance(target, str):
        import urllib.request  # only where a webhook is sent

        request = urllib.request.Request(
            target,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "dr_exp"},
        )
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
            response.read()
        return
    argv = [str(a) for a in target]
    with tempfile.NamedTemporaryFile(prefix="dr_exp_notice_", suffix=".json") as copy:
        copy.write(body)
        copy.flush()
        done = subprocess.run(
            argv,
            input=body,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            cwd=cwd if os.path.isdir(cwd) else None,
            env=dict(os.environ, **{ENV_NOTICE_FILE: copy.name}),
        )
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"{argv[0]} exited with status {done.returncode} {said[0]}".strip())


def _call_hook(db: JobDB, sweep: SweepRow) -> None:
    """``on_sweep_end(results table)``, imported from the sweep's own sys.path, run in the
    folder the sweep started from."""
    from dr_exp import results
    from dr_exp.utils import import_function

    hook = import_function(sweep.settings["on_sweep_end"], sweep.sys_path, what="on_sweep_end")
    table = results.load(db=db.path, sweep_id=sweep.id)
    here = os.getcwd()
    os.chdir(sweep.cwd)
    try:
        hook(table)
    finally:
        os.chdir(here)


# -- the summary ---------------------------------------------------------------------------
def summary(db: JobDB, sweep: SweepRow, kind: str = END) -> dict:
    """What a notice says: the sweep, its counts, its wall time, its best job, its failures."""
    jobs = db.list_jobs(ids=db.sweep_job_ids(sweep.id))
    counts = dict.fromkeys(STATUSES, 0)
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    started = [j["started"] or j["created"] for j in jobs]
    ended = [j["ended"] for j in jobs if j["ended"]]
    wall = max(ended) - min(started) if ended and started else None
    failed = sorted((j for j in jobs if j["status"] == "failed"), key=lambda j: j["ended"] or 0)
    metric, mode = sweep.settings.get("notify_metric"), sweep.settings.get("notify_mode")
    folder = os.path.join(sweep.cwd, sweep.sweep_dir) if sweep.sweep_dir else None
    return {
        "event": "sweep_failure" if kind == FAILURE else "sweep_end",
        "sweep_id": sweep.id,
        "experiment": sweep.experiment,
        "app": sweep.app,
        "sweep_dir": folder,
        "db": str(db.path),
        "host": socket.gethostname(),
        "counts": counts,
        "total": len(jobs),
        "started": _iso(min(started) if started else None),
        "ended": _iso(max(ended) if ended else None),
        "wall_s": round(wall, 1) if wall is not None else None,
        "best": _best([j for j in jobs if j["status"] == "completed"], metric, mode or "min"),
        "failures": [
            {"job_id": j["id"], "overrides": j["overrides"], "error": j["error"]}
            for j in failed[:FAILURES_LISTED]
        ],
    }


def _best(jobs: list[dict], metric: Optional[str], mode: str) -> Optional[dict]:
    """The job with the best finite value of ``metric`` (from its folder or return value)."""
    if not metric:
        return None
    from dr_exp.results import rows_for_jobs

    scored = []
    for row in rows_for_jobs(jobs):
        value = row["metrics"].get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            scored.append((value, row))
    if not scored:
        return {"metric": metric, "mode": mode, "job_id": None, "value": None, "overrides": []}
    pick = min if mode == "min" else max
    value, row = pick(scored, key=lambda pair: pair[0])
    return {
        "metric": metric,
        "mode": mode,
        "job_id": row["job_id"],
        "value": value,
        "overrides": row["overrides"],
    }


def _iso(ts: Optional[float]) -> Optional[str]:
    from datetime import datetime

    return datetime.fromtimestamp(ts).astimezone().isoformat("T", "seconds") if ts else None
