"""``dr_exp sync``: watch the sync queue, and run the uploader on its own.

The queue is ``--queue``, else ``$DR_EXP_SYNC_QUEUE``, else ``.sync_queue.db``
next to the job database (``--db``, ``$DR_EXP_DB``, ``.dr_exp/jobs.db``).
Errors are ValueErrors or DatabaseErrors: the CLI prints them as one line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from dr_exp.errors import DatabaseError
from dr_exp.sync.queue import SyncQueue

STATES = ("pending", "uploading", "uploaded", "failing")

SYNC_DESCRIPTION = (
    "Finished output folders (hydra.launcher.sync.dest=...) wait in the sync queue until an "
    "uploader sends them: every worker and node supervisor runs one in the background, and "
    "`dr_exp sync run` runs one on its own."
)
RUN_DESCRIPTION = (
    "Upload due folders: new and changed files only, sizes checked at the destination, "
    "failures retried with exponential backoff. Without --once it follows the queue until "
    "SIGTERM or SIGINT; a folder being uploaded then is given back to the queue. With "
    "--once it exits 1 when an upload failed."
)


def queue_path(args: argparse.Namespace) -> Path:
    from dr_exp.paths import sync_queue

    if getattr(args, "queue", None):
        return Path(args.queue).expanduser().absolute()
    return sync_queue(db=args.db)


def add_sync_commands(sub: Any, common: Callable[[argparse.ArgumentParser, bool], None]) -> None:
    """Register ``dr_exp sync status|run|retry`` on the CLI's subparsers."""
    sync = sub.add_parser(
        "sync", help="upload finished output folders; show what is pending or failing",
        description=SYNC_DESCRIPTION,
    )  # fmt: skip
    sync_sub = sync.add_subparsers(dest="sync_command", metavar="COMMAND", parser_class=type(sync))
    sync_sub.required = True

    def options(p: argparse.ArgumentParser) -> None:
        common(p, False)
        p.add_argument(
            "--queue",
            default=None,
            help="sync queue (default: $DR_EXP_SYNC_QUEUE, else .sync_queue.db next to the "
            "job database)",
        )

    p = sync_sub.add_parser("status", help="pending, uploading, uploaded and failing folders")
    options(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument(
        "--state",
        default=None,
        help=f"only folders in these states ({', '.join(STATES)}; comma-separated); "
        "default: all but uploaded in the table, all in JSON",
    )
    p.add_argument("--limit", type=int, default=None, help="show at most N folders")
    p.set_defaults(func=cmd_sync_status)

    p = sync_sub.add_parser("run", help="run an uploader until stopped (or --once)",
                            description=RUN_DESCRIPTION)  # fmt: skip
    options(p)
    p.add_argument("--once", action="store_true", help="upload what is due now, then exit")
    p.add_argument("--lease", type=float, default=60.0,
                   help="seconds a claimed folder stays ours without renewal (default 60)")  # fmt: skip
    p.add_argument("--heartbeat", type=float, default=10.0,
                   help="seconds between lease renewals (default 10)")  # fmt: skip
    p.add_argument("--poll", type=float, default=2.0,
                   help="seconds between looks at the queue when following (default 2)")  # fmt: skip
    p.set_defaults(func=cmd_sync_run)

    p = sync_sub.add_parser("retry", help="retry failing folders now instead of after backoff")
    options(p)
    p.set_defaults(func=cmd_sync_retry)


def _open(args: argparse.Namespace) -> SyncQueue:
    return SyncQueue.open(queue_path(args), create=False)


def _iso(ts: Optional[float]) -> Optional[str]:
    if not ts:
        return None
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def summary_line(summary: dict) -> str:
    line = (
        f"{summary['pending']} pending, {summary['uploading']} uploading, "
        f"{summary['uploaded']} uploaded, {summary['failing']} failing"
    )
    if summary["failing"] and summary.get("last_error"):
        error = summary["last_error"]
        line += f" (last error: {error[:120]}{'...' if len(error) > 120 else ''})"
    return line


def status_summary(db: Optional[str]) -> Optional[dict]:
    """The sync queue's counts for ``dr_exp status``; None when there is no queue."""
    from dr_exp.paths import sync_queue

    path = sync_queue(db=db)
    if not path.exists():
        return None
    try:
        q = SyncQueue.open(path, create=False)
    except DatabaseError as e:
        return {"queue": str(path), "error": str(e)}
    try:
        return dict(q.summary(), queue=str(path))
    finally:
        q.close()


def print_status_summary(db: Optional[str]) -> None:
    """One line for ``dr_exp status``: what the uploaders have left and what fails."""
    summary = status_summary(db)
    if summary is None:
        return
    if "error" in summary:
        print(f"sync: {summary['error']}")
        return
    print(f"sync: {summary_line(summary)}; see dr_exp sync status")


def cmd_sync_status(args: argparse.Namespace) -> int:
    states = None
    if args.state:
        states = [s.strip() for s in args.state.split(",") if s.strip()]
        for s in states:
            if s not in STATES:
                raise ValueError(f"unknown state {s!r}; choose from {', '.join(STATES)}")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be 1 or more")
    q = _open(args)
    try:
        summary = q.summary()
        if states is None and args.format == "table":
            states = ["pending", "uploading", "failing"]
        rows = q.folders(states, args.limit)
    finally:
        q.close()
    if args.format == "json":
        keys = ("id", "state", "path", "dest", "rel", "host", "experiment", "job_id",
                "generation", "attempts", "last_error", "owner", "files", "bytes", "sent_files",
                "sent_bytes", "total_sent_files", "total_sent_bytes")  # fmt: skip
        out = []
        for r in rows:
            item = {k: r[k] for k in keys}
            for key in ("recorded", "uploaded", "next_try", "last_error_at", "lease_expires"):
                item[key] = _iso(r[key])
            out.append(item)
        print(json.dumps({"queue": str(q.path), "summary": summary, "folders": out}, indent=2))
        return 0
    print(f"sync queue: {q.path}")
    print(summary_line(dict(summary, last_error=None)))
    if not rows:
        return 0
    from dr_exp.cli import _duration, _table

    now = time.time()
    table = []
    for r in rows:
        if r["state"] == "failing":
            when = f"retry in {_duration(max(0, r['next_try'] - now))}"
        elif r["state"] == "uploading":
            when = f"by {r['owner']}"
        elif r["state"] == "uploaded":
            when = f"{r['sent_files']}/{r['files']} files sent"
        else:
            when = ""
        dest = f"{r['dest'].rstrip('/')}/{r['rel']}"
        table.append([r["id"], r["state"], r["path"], dest, r["attempts"], when,
                      r["last_error"] or ""])  # fmt: skip
    print(_table(["id", "state", "folder", "destination", "fails", "", "last error"], table))
    return 0


def cmd_sync_run(args: argparse.Namespace) -> int:
    from dr_exp.sync.uploader import Uploader

    if args.heartbeat <= 0:
        raise ValueError("--heartbeat must be more than 0 seconds")
    if args.lease <= args.heartbeat:
        raise ValueError("--lease must be longer than --heartbeat (several missed beats)")
    if args.poll <= 0:
        raise ValueError("--poll must be more than 0 seconds")
    path = queue_path(args)
    SyncQueue.open(path, create=False).close()  # one clear error before any logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s",
                        stream=sys.stderr)  # fmt: skip
    uploader = Uploader(path, lease_s=args.lease, heartbeat_s=args.heartbeat)

    def on_signal(signum: int, _frame: object) -> None:
        uploader.stop.set()  # an upload in progress gives its folder back to the queue

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        if args.once:
            uploader.run_once(force_rescan=True)
        else:
            uploader.follow(args.poll)
    finally:
        uploader.close()
    q = SyncQueue.open(path, create=False)
    try:
        print(f"sync: {summary_line(q.summary())}", file=sys.stderr)
    finally:
        q.close()
    return 1 if args.once and uploader.failed else 0  # --once: did every upload succeed?


def cmd_sync_retry(args: argparse.Namespace) -> int:
    q = _open(args)
    try:
        n = q.retry_now()
    finally:
        q.close()
    print(f"{n} failing folder(s) will be retried by the next uploader")
    return 0
