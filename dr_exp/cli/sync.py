"""``dr_exp sync status|run|retry``, and the one sync line of ``dr_exp status``.

The queue is found by :func:`dr_exp.paths.sync_queue`: ``--queue``, else the
variable ``paths.ENV_SYNC_QUEUE`` names, else the file next to the job database
that --db / --base-path name.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import click

import dr_exp.cli.options as o
from dr_exp import render
from dr_exp.cli.options import Scope
from dr_exp.errors import DatabaseError

if TYPE_CHECKING:
    from dr_exp.sync.queue import SyncQueue

FOLDER_KEYS = (
    "id state path dest rel host experiment job_id generation attempts last_error "
    "owner files bytes sent_files sent_bytes total_sent_files total_sent_bytes"
).split()


def _open(path: Path) -> SyncQueue:
    """The existing sync queue, closed when the command ends."""
    from dr_exp.sync.queue import SyncQueue

    return o.closed_at_exit(SyncQueue.open(path, create=False))


def summary_line(summary: dict) -> str:
    line = (
        f"{summary['pending']} pending, {summary['uploading']} uploading, "
        f"{summary['uploaded']} uploaded, {summary['failing']} failing"
    )
    if summary["failing"] and summary.get("last_error"):
        error = summary["last_error"]
        line += f" (last error: {error[:120]}{'...' if len(error) > 120 else ''})"
    return line


def status_summary(scope: Scope) -> Optional[dict]:
    """The sync queue's counts for ``dr_exp status``; None when there is no queue."""
    path = scope.sync_queue()
    if not path.exists():
        return None
    try:
        q = _open(path)
    except DatabaseError as e:
        return {"queue": str(path), "error": str(e)}
    return dict(q.summary(), queue=str(path))


def print_status_summary(scope: Scope) -> None:
    """One line for ``dr_exp status``: what the uploaders have left and what fails."""
    summary = status_summary(scope)
    if summary is None:
        return
    if "error" in summary:
        print(f"sync: {summary['error']}")
        return
    print(f"sync: {summary_line(summary)}; see dr_exp sync status")


@click.group(
    "sync",
    cls=o.OrderedGroup,
    short_help="Upload finished output folders; show what is pending or failing.",
)
def sync() -> None:
    """Finished output folders (hydra.launcher.sync.dest=...) wait in the sync queue until
    an uploader sends them: every worker and node supervisor runs one in the background,
    and `dr_exp sync run` runs one on its own."""


@sync.command("status", short_help="Pending, uploading, uploaded and failing folders.")
@o.format_option("table", "json")
@o.SYNC_STATE
@o.LIMIT
@o.QUEUE
@o.common
def sync_status(
    fmt: str, states: Optional[tuple], limit: Optional[int], queue: Optional[str]
) -> int:
    """Folders waiting for upload, being uploaded, and failing, with their last error.
    The JSON form lists every folder, uploaded ones too."""
    q = _open(o.scope().sync_queue(queue))
    summary = q.summary()
    if states is None and fmt == "table":
        states = ("pending", "uploading", "failing")
    rows = q.folders(list(states) if states else None, limit)
    if fmt == "json":
        out = []
        for r in rows:
            item = {k: r[k] for k in FOLDER_KEYS}
            for key in ("recorded", "uploaded", "next_try", "last_error_at", "lease_expires"):
                item[key] = render.iso(r[key] or None)
            out.append(item)
        render.print_json({"queue": str(q.path), "summary": summary, "folders": out})
        return 0
    print(f"sync queue: {q.path}")
    print(summary_line(dict(summary, last_error=None)))
    if not rows:
        return 0
    now = time.time()
    table = []
    for r in rows:
        if r["state"] == "failing":
            when = f"retry in {render.duration(max(0, r['next_try'] - now))}"
        elif r["state"] == "uploading":
            when = f"by {r['owner']}"
        elif r["state"] == "uploaded":
            when = f"{r['sent_files']}/{r['files']} files sent"
        else:
            when = ""
        dest = f"{r['dest'].rstrip('/')}/{r['rel']}"
        table.append(
            [r["id"], r["state"], r["path"], dest, r["attempts"], when, r["last_error"] or ""]
        )
    print(render.table(["id", "state", "folder", "destination", "fails", "", "last error"], table))
    return 0


@sync.command("run", short_help="Run an uploader until stopped (or --once).")
@click.option("--once", is_flag=True, help="Upload what is due now, then exit.")
@o.lease_options
@o.POLL
@o.QUEUE
@o.common
def sync_run(once: bool, lease: float, heartbeat: float, poll: float, queue: Optional[str]) -> int:
    """Upload due folders: new and changed files only, sizes checked at the destination,
    failures retried with exponential backoff. Without --once it follows the queue until
    SIGTERM or SIGINT; a folder being uploaded then is given back to the queue. With --once
    it exits 1 when an upload failed."""
    from dr_exp.sync.uploader import Uploader

    o.check_lease(lease, heartbeat)
    path = o.scope().sync_queue(queue)
    _open(path).close()  # one clear error before any logging
    o.log_to_stderr()
    uploader = Uploader(path, lease_s=lease, heartbeat_s=heartbeat)

    def on_signal(signum: int, _frame: object) -> None:
        uploader.stop.set()  # an upload in progress gives its folder back to the queue

    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        if once:
            uploader.run_once(force_rescan=True)
        else:
            uploader.follow(poll)
    finally:
        uploader.close()
    print(f"sync: {summary_line(_open(path).summary())}", file=sys.stderr)
    return 1 if once and uploader.failed else 0  # --once: did every upload succeed?


@sync.command("retry", short_help="Retry failing folders now instead of after their backoff.")
@o.QUEUE
@o.common
def sync_retry(queue: Optional[str]) -> int:
    """Make every failing folder due now, for example after fixing the destination."""
    n = _open(o.scope().sync_queue(queue)).retry_now()
    print(f"{n} failing folder(s) will be retried by the next uploader")
    return 0
