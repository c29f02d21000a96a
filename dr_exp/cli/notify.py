"""``dr_exp notify run|status``: the notices sent when sweeps end (see :mod:`dr_exp.notify`)."""

from __future__ import annotations

import sys
import time
from typing import Optional

import click

import dr_exp.cli.options as o
from dr_exp import render


@click.group(
    "notify", cls=o.OrderedGroup, short_help="Notices when sweeps end: send them, see their state."
)
def notify() -> None:
    """A sweep launched with hydra.launcher.notify (a webhook URL or a command) gets one
    notice once all of its jobs are final, and one at its first failed job with
    notify_on_failure; hydra.launcher.on_sweep_end=pkg.module:function is called once with
    its results table. Workers and the waiting launcher send them; `dr_exp notify run` sends
    them where none runs (after `dr_exp cancel`, say)."""


@notify.command("run", short_help="Send due notices until stopped (or --once).")
@click.option("--once", is_flag=True, help="Look for ended sweeps, try each due notice once, exit.")
@click.option("--claimed-by", metavar="OWNER", hidden=True)  # a worker's detached sender
@o.POLL
@o.common
def notify_run(once: bool, claimed_by: Optional[str], poll: float) -> int:
    """Look for sweeps that have ended, and send their notices: a webhook gets an HTTP POST
    of the JSON summary, a command gets it on stdin and in $DR_EXP_NOTICE_FILE. A receiver
    that is down is retried with exponential backoff. Without --once it follows the queue
    until SIGTERM or SIGINT. With --once it exits 1 when a notice failed."""
    from dr_exp import notify as notices

    db = o.scope().open_db()
    o.log_to_stderr()
    import signal
    import threading
    from collections import Counter

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    failed = notices.run(db, once=once, owner=claimed_by, poll=poll, stop=stop)
    states = Counter(n["state"] for n in db.notices())
    line = ", ".join(f"{states[s]} {s}" for s in ("pending", "sending", "sent", "failed"))
    print(f"notices: {line}", file=sys.stderr)
    return 1 if once and failed else 0


@notify.command("status", short_help="Each notice: its sweep, kind, state, tries, last error.")
@o.format_option("table", "json")
@o.common
def notify_status(fmt: str) -> int:
    """One row per notice: its sweep, its kind (end, failure, or hook for on_sweep_end), its
    state (pending, sending, sent, or failed once its tries ran out), how many tries it took,
    when it was sent or is tried again, and its last error."""
    db = o.scope().open_db()
    experiment = o.scope().experiment
    rows = [n for n in db.notices() if experiment in (None, n["experiment"])]
    if fmt == "json":
        times = ("created", "next_try", "sent", "lease_until")
        render.print_json([dict(n, **{k: render.iso(n[k]) for k in times}) for n in rows])
        return 0
    if not rows:
        print("no notices")
        return 0
    now = time.time()
    keys = ("id", "sweep_id", "experiment", "kind", "state")
    table = [
        [n[k] for k in keys]
        + [f"{n['attempts']}/{n['max_attempts']}", _when(n, now)]
        + [n["last_error"] or ""]
        for n in rows
    ]
    headers = ["id", "sweep", "experiment", "kind", "state", "tries", "when", "last error"]
    print(render.table(headers, table))
    return 0


def _when(notice: dict, now: float) -> str:
    """When a notice was sent, or when it is tried next."""
    if notice["state"] == "sent":
        return f"sent {render.iso(notice['sent'])}"
    if notice["state"] == "pending":
        return f"next try in {render.duration(max(0.0, notice['next_try'] - now))}"
    return ""
