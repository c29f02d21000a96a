"""What ``dr_exp status`` shows, and ``dr_exp status --watch``: the same view, live.

:func:`take` reads one snapshot of the queue (counts, running jobs, workers, the
recent rate, the latest failures); the row builders turn it into table rows
that the plain ``status`` prints and the live view draws.  The live view uses
rich, an optional extra (``pip install 'dr_exp[watch]'``), imported only by
:func:`watch`, so that the core and plain ``status`` never load it.

The ETA is the jobs left (pending, running, being cancelled) over the recent
rate: jobs that completed or failed in the last :data:`RATE_WINDOW_S` seconds
(or since the first of them started, when that is later), per minute.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from dr_exp import defaults, render
from dr_exp.errors import UserError

if TYPE_CHECKING:
    from dr_exp.db import JobDB

RATE_WINDOW_S = 300.0  # the completions that make the rate: the last 5 minutes
FAILURES_SHOWN = 5
LEFT = ("pending", "running", "cancelling")

COUNT_HEADERS = ["experiment", *defaults.STATUSES, "total"]
RUNNING_HEADERS = ["id", "experiment", "worker", "host", "gpu", "elapsed", "overrides"]
WORKER_HEADERS = ["worker", "state", "job", "gpu", "gpu util", "gpu mem", "heartbeat", "slurm job"]
FAILURE_HEADERS = ["id", "experiment", "ended", "error"]


@dataclass
class Snapshot:
    """The queue at one moment, as ``status`` shows it."""

    db: str
    experiment: Optional[str]
    taken: float
    counts: dict[str, dict[str, int]]  # experiment -> status -> jobs
    running: list[dict]
    workers: list[dict]
    finished: int  # jobs that completed or failed within the last window_s seconds
    window_s: float
    failures: list[dict]  # the latest failed jobs, newest first

    def total(self, status: Optional[str] = None) -> int:
        return sum(c[status] if status else sum(c.values()) for c in self.counts.values())

    @property
    def left(self) -> int:
        return sum(self.total(s) for s in LEFT)

    @property
    def rate_per_min(self) -> Optional[float]:
        if not self.finished or self.window_s <= 0:
            return None
        return self.finished * 60.0 / self.window_s

    @property
    def eta_s(self) -> Optional[float]:
        rate = self.rate_per_min
        return self.left * 60.0 / rate if rate else None


def take(db: JobDB, experiment: Optional[str] = None, recent: bool = True) -> Snapshot:
    """Read a snapshot; ``recent``: the rate and the latest failures too."""
    now = time.time()
    counts: dict[str, dict[str, int]] = {}
    for row in db.status_counts(experiment):
        counts.setdefault(row["experiment"], dict.fromkeys(defaults.STATUSES, 0))
        counts[row["experiment"]][row["status"]] = row["n"]
    running = db.list_jobs(statuses=["running", "cancelling"], experiment=experiment)
    workers = db.live_workers(defaults.WORKER_SHOWN_S, experiment)
    finished, window, failures = 0, 0.0, []
    if recent:
        since = now - RATE_WINDOW_S
        done = db.finished_since(since, experiment)
        finished = done["n"]
        window = now - max(since, done["first_started"] or now)
        failures, _ = db.jobs_page(
            statuses=["failed"],
            experiment=experiment,
            sort="ended",
            descending=True,
            limit=FAILURES_SHOWN,
        )
    return Snapshot(
        str(db.path), experiment, now, counts, running, workers, finished, window, failures
    )


# -- rows: the plain status prints them, the live view draws them ---------------------------
def count_rows(snap: Snapshot) -> list[list]:
    return [
        [exp] + [c[s] for s in defaults.STATUSES] + [sum(c.values())]
        for exp, c in sorted(snap.counts.items())
    ]


def running_rows(snap: Snapshot) -> list[list]:
    gpus = {w["id"]: w["gpu"] for w in snap.workers}
    return [
        [
            j["id"],
            j["experiment"],
            j["worker"],
            j["host"],
            gpus.get(j["worker"]) or "-",
            render.duration(snap.taken - j["started"]) if j["started"] else "",
            " ".join(j["overrides"]),
        ]
        for j in snap.running
    ]


def gpu_memory(w: dict) -> str:
    if w["gpu_mem_used_mb"] is None:
        return "-"
    return f"{w['gpu_mem_used_mb'] / 1024:.1f}/{w['gpu_mem_total_mb'] / 1024:.0f} GiB"


def worker_rows(snap: Snapshot) -> list[list]:
    return [
        [
            w["id"],
            w["state"],
            w["job_id"] if w["state"] == "busy" else "",
            w["gpu"] or "-",
            f"{w['gpu_util']:.0f}%" if w["gpu_util"] is not None else "-",
            gpu_memory(w),
            render.duration(snap.taken - w["heartbeat"]) + " ago",
            w["slurm_job_id"] or "",
        ]
        for w in snap.workers
    ]


def failure_rows(snap: Snapshot) -> list[list]:
    return [
        [j["id"], j["experiment"], render.iso(j["ended"]), j["error"] or ""] for j in snap.failures
    ]


def progress_line(snap: Snapshot) -> str:
    done = sum(snap.total(s) for s in defaults.FINAL_STATUSES)
    parts = [f"{done}/{snap.total()} done"]
    parts += [f"{snap.total(s)} {s}" for s in ("running", "pending", "failed")]
    return " · ".join(parts)


def throughput_line(snap: Snapshot) -> str:
    window = render.duration(RATE_WINDOW_S)
    rate, eta = snap.rate_per_min, snap.eta_s
    if rate is None:
        pace = f"throughput: no job finished in the last {window}"
    else:
        pace = f"throughput: {rate:.1f} jobs/min over the last {render.duration(snap.window_s)}"
    if not snap.left:
        return f"{pace} · nothing left"
    when = render.duration(eta) if eta is not None else "unknown"
    return f"{pace} · {snap.left} left · ETA {when}"


# -- the live view -------------------------------------------------------------------------
def view(snap: Snapshot, interval: Optional[float] = None) -> Any:
    """The snapshot as one rich renderable; ``interval``: the live view's refresh."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def table(title: str, headers: list[str], rows: list[list], wide: str = "") -> Any:
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for h in headers:
            t.add_column(h, overflow="fold" if h == wide else "ellipsis", no_wrap=h != wide)
        for row in rows:
            t.add_row(*("" if v is None else str(v) for v in row))
        return t

    when = time.strftime("%H:%M:%S", time.localtime(snap.taken))
    scope = f" · experiment {snap.experiment}" if snap.experiment else ""
    refresh = f" · every {interval:g}s · Ctrl-C to quit" if interval else ""
    parts: list[Any] = [
        Text(f"dr_exp status · {snap.db}{scope} · {when}{refresh}", style="bold"),
        Text(progress_line(snap)),
        Text(throughput_line(snap)),
    ]
    if not snap.counts:
        parts.append(Text("no jobs"))
    else:
        parts.append(table("jobs", COUNT_HEADERS, count_rows(snap)))
    if snap.running:
        rows = running_rows(snap)
        parts.append(table(f"running ({len(rows)})", RUNNING_HEADERS, rows, wide="overrides"))
    if snap.workers:
        parts.append(table(f"workers ({len(snap.workers)})", WORKER_HEADERS, worker_rows(snap)))
    if snap.failures:
        rows = failure_rows(snap)
        parts.append(table("latest failures", FAILURE_HEADERS, rows, wide="error"))
    return Group(*parts)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the view as Ctrl-C does: terminal restored


def watch(db: JobDB, experiment: Optional[str], interval: float) -> int:
    """Redraw the view every ``interval`` seconds until Ctrl-C; one snapshot when stdout is
    not a terminal."""
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        raise UserError("dr_exp status --watch needs rich: pip install 'dr_exp[watch]'") from None
    if not sys.stdout.isatty():
        import shutil

        width = int(os.environ.get("COLUMNS") or shutil.get_terminal_size((120, 40)).columns)
        Console(width=width).print(view(take(db, experiment)))
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Live(view(take(db, experiment), interval), screen=True, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(view(take(db, experiment), interval), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0
