"""Reading the queue: ``status``, ``list``, ``show``, ``logs`` and ``results``.

None of these writes to the job database, and none creates it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import click

import dr_exp.cli.options as o
from dr_exp import defaults, render
from dr_exp.cli.sync import print_status_summary, status_summary
from dr_exp.errors import BadInput, DatabaseError

if TYPE_CHECKING:
    from dr_exp.db import JobDB


WORKER_KEYS = (
    "id host pid experiment state job_id gpu gpu_util gpu_mem_used_mb "
    "gpu_mem_total_mb slurm_job_id supervisor"
).split()


def _worker_json(w: dict, now: float) -> dict:
    out = {k: w[k] for k in WORKER_KEYS}
    out["heartbeat_age_s"] = round(now - w["heartbeat"], 1)
    out["started"] = render.iso(w["started"])
    return out


@click.command("status", short_help="Job counts per experiment and status; running jobs.")
@o.format_option("table", "json")
@o.WATCH
@o.INTERVAL
@o.common
def status(fmt: str, watch: bool, interval: float) -> int:
    """Job counts per experiment and status, the running jobs with their worker, host, GPU
    and elapsed time, and the live workers with their GPU, its utilization and memory, and
    their SLURM job. With a sync queue, one line of upload counts, with the last error when a
    folder is failing. --watch redraws it live (with the recent throughput, an ETA and the
    latest failures) until Ctrl-C; it needs rich (pip install 'dr_exp[watch]'), and prints
    one snapshot when its output is not a terminal."""
    from dr_exp import watch as view

    scope = o.scope()
    db = scope.open_db()
    if watch:
        if fmt != "table":
            raise BadInput("--watch draws the table view; leave out --format json")
        return view.watch(db, scope.experiment, interval)
    snap = view.take(db, scope.experiment, recent=False)
    if fmt == "json":
        render.print_json(
            {
                "db": str(db.path),
                "experiments": snap.counts,
                "running": [
                    {
                        "id": j["id"],
                        "experiment": j["experiment"],
                        "worker": j["worker"],
                        "host": j["host"],
                        "started": render.iso(j["started"]),
                        "elapsed_s": round(snap.taken - j["started"], 1) if j["started"] else None,
                        "overrides": j["overrides"],
                    }
                    for j in snap.running
                ],
                "workers": [_worker_json(w, snap.taken) for w in snap.workers],
                "stopped_hosts": [
                    dict(h, at=render.iso(h["at"])) for h in db.stopped_hosts(stopped_since())
                ],
                "sync": status_summary(scope),
            }
        )
        return 0
    print(f"database: {db.path}")
    print_status_summary(scope)
    if not snap.counts:
        print("no jobs" + (f" for experiment {scope.experiment!r}" if scope.experiment else ""))
        return 0
    print(render.table(view.COUNT_HEADERS, view.count_rows(snap)))
    if snap.running:
        print("\nrunning:")
        print(render.table(view.RUNNING_HEADERS, view.running_rows(snap)))
    if snap.workers:
        print("\nworkers:")
        print(render.table(view.WORKER_HEADERS, view.worker_rows(snap)))
    for host in db.stopped_hosts(stopped_since()):
        print(f"\n{host['host']} stopped claiming at {render.iso(host['at'])}: {host['detail']}")
    return 0


def stopped_since() -> float:
    """Hosts the host breaker stopped within the last hour are shown."""
    return time.time() - 3600


@click.command("list", short_help="One row per job, filtered by status, tag and sweep.")
@o.status_option(everything="all")
@o.format_option("table", "json", "csv")
@o.LIMIT
@o.TAG
@o.SWEEP
@o.FAILURE
@o.common
def list_(
    statuses: Optional[tuple],
    fmt: str,
    limit: Optional[int],
    tags: tuple,
    sweep: Optional[str],
    failures: Optional[tuple],
) -> int:
    """One row per job. The JSON form is a list of job objects with id, experiment,
    sweep_id, job_num, status, priority, tags, overrides, attempts, worker, host, created,
    started, ended, output_dir, return_value and error; --format csv is for spreadsheets."""
    scope = o.scope()
    db = scope.open_db()
    jobs = db.list_jobs(
        statuses=list(statuses) if statuses else None,
        experiment=scope.experiment,
        limit=limit,
        tags=list(tags) or None,
        sweep_ids=db.sweeps_named(sweep) if sweep else None,
        failures=list(failures) if failures else None,
    )
    if fmt == "json":
        render.print_json([render.job_json(j) for j in jobs])
        return 0
    if fmt == "csv":
        render.print_csv([render.job_json(j) for j in jobs])
        return 0
    if not jobs:
        print("no jobs")
        return 0
    rows = []
    for j in jobs:
        result = j["error"] if j["status"] == "failed" else j["return_value"]
        if not isinstance(result, str) and result is not None:
            result = json.dumps(result)
        if result and len(result) > 60:
            result = result[:57] + "..."
        rows.append(
            [j["id"], j["experiment"], j["status"], j["priority"], " ".join(j["overrides"]), result]
        )
    print(
        render.table(["id", "experiment", "status", "priority", "overrides", "result/error"], rows)
    )
    return 0


def _job_or_error(db: JobDB, job_id: int) -> dict:
    job = db.get_job(job_id)
    if job is None:
        raise BadInput(f"no job with id {job_id}")
    return job


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:] if lines else []
    except OSError:
        return []


def _log_files(folder: Optional[Path]) -> list[Path]:
    return sorted(folder.glob("*.log")) if folder and folder.is_dir() else []


@click.command("show", short_help="One job: config, attempts, folder, error, log, events.")
@o.JOB_ID
@o.lines_option(10, "error.txt, of each log and of the events")
@o.format_option("table", "json")
@o.common
def show(job_id: int, lines: int, fmt: str) -> int:
    """The job's status, priority, tags, overrides and times; its config
    (.hydra/config.yaml); the history of attempts (worker, host, start, end, outcome and
    detail such as an exit signal); its output folder; and the last lines of its error.txt,
    its log and its structured events."""
    from dr_exp import jobfiles
    from dr_exp.utils import format_event, read_events

    db = o.scope().open_db()
    job = _job_or_error(db, job_id)
    attempts = db.attempts(job["id"])
    folder = Path(job["output_dir"]) if job["output_dir"] else None
    config_file = folder / ".hydra" / "config.yaml" if folder else None
    config = config_file.read_text() if config_file and config_file.exists() else None
    error_tail = _tail(folder / jobfiles.ERROR_FILE, lines) if folder else []
    logs = {str(p): _tail(p, lines) for p in _log_files(folder)}
    events = read_events(folder)[-lines:] if folder and lines else []
    if fmt == "json":
        out = render.job_json(job)
        out.update(
            config=config,
            attempts=[
                dict(a, started=render.iso(a["started"]), ended=render.iso(a["ended"]))
                for a in attempts
            ],
            error_tail=error_tail,
            logs=logs,
            events=events,
        )
        render.print_json(out, default=str)
        return 0
    iso = render.iso
    print(
        f"job {job['id']}  experiment {job['experiment']}  sweep {job['sweep_id']} "
        f"({job['kind']} {job['app']})  job #{job['job_num']}"
    )
    result = job["error"] if job["status"] == "failed" else job["return_value"]
    print(f"status:     {job['status']}" + (f"  ({json.dumps(result)})" if result else ""))
    print(f"priority:   {job['priority']}   tags: {', '.join(job['tags']) or '-'}")
    print(f"overrides:  {' '.join(job['overrides']) or '-'}")
    print(
        f"created:    {iso(job['created'])}   started: {iso(job['started']) or '-'}   "
        f"ended: {iso(job['ended']) or '-'}"
    )
    print(f"attempts:   {job['attempts']} of {job['max_attempts']}")
    print(f"output:     {job['output_dir'] or '(none yet)'}")
    snap = (job.get("settings") or {}).get("snapshot")
    if snap:
        commit = f"git {snap['commit']}" if snap.get("commit") else "no git commit"
        dirty = ", with uncommitted changes" if snap.get("dirty") else ""
        print(f"code:       snapshot {snap['dir']} ({commit}{dirty}; {snap['files']} files)")
    if attempts:
        print("\nattempts:")
        rows = [
            [
                a["attempt"],
                a["worker"],
                a["host"],
                iso(a["started"]),
                iso(a["ended"]),
                a["outcome"] or "(running)",
                a["detail"],
            ]
            for a in attempts
        ]
        headers = ["#", "worker", "host", "started", "ended", "exit", "detail"]
        print(render.indent(render.table(headers, rows)))
    print(f"\nconfig ({config_file}):" if config else "\nconfig: (composed when the job runs)")
    if config:
        print(render.indent(config.rstrip()))
    if error_tail:
        print(f"\nerror.txt (last {len(error_tail)} lines):")
        print(render.indent("\n".join(error_tail)))
    for path, tail in logs.items():
        print(f"\nlog {path} (last {len(tail)} lines):")
        print(render.indent("\n".join(tail)) if tail else "  (empty)")
    if events:
        print(f"\nevents (last {len(events)}):")
        print(render.indent("\n".join(format_event(e) for e in events)))
    return 0


@click.command("logs", short_help="A job's log files and events; -f follows them until it ends.")
@o.JOB_ID
@click.option("--follow", "-f", is_flag=True, help="Follow the logs until the job ends.")
@o.lines_option(50, "each log")
@o.common
def logs(job_id: int, follow: bool, lines: int) -> int:
    """The job's log files (<output folder>/*.log: Hydra's <job name>.log, or a trainer
    job's train.log) and its structured events. -f follows them until the job ends."""
    from dr_exp import jobfiles
    from dr_exp.utils import format_event

    db = o.scope().open_db()
    job = _job_or_error(db, job_id)
    offsets: dict[Path, int] = {}
    shown: list[Path] = []  # the file whose lines were printed last, as tail -f heads them

    def show_new(first: bool) -> None:
        """Print the whole lines the job's logs and events gained since the last look."""
        folder = Path(job["output_dir"]) if job["output_dir"] else None
        if folder is None:
            return
        for path in _log_files(folder) + [folder / jobfiles.EVENTS_FILE]:
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(offsets.get(path, 0))
                data = f.read()
            data = data[: data.rfind(b"\n") + 1]  # a line still being written waits
            offsets[path] = offsets.get(path, 0) + len(data)
            new = data.decode(errors="replace").splitlines()
            if first:
                new = new[-lines:] if lines else []
            if path.name == jobfiles.EVENTS_FILE:
                new = _events(new, format_event)
            if new:
                if shown != [path]:
                    print(f"==> {path} <==")
                    shown[:] = [path]
                print("\n".join(new), flush=True)

    if not job["output_dir"] and not follow:
        print(f"job {job['id']} is {job['status']} and has no output folder yet")
        return 0
    show_new(first=True)
    try:
        while follow:
            done = job["status"] in defaults.FINAL_STATUSES
            time.sleep(0.5)
            job = db.get_job(job["id"]) or job
            show_new(first=not offsets)
            if done:
                break
    except KeyboardInterrupt:  # Ctrl-C ends following, as for tail -f
        pass
    return 0


def _events(lines: list[str], format_event: Callable[[dict], str]) -> list[str]:
    """Event lines as ``show`` prints them; a torn or foreign line is skipped."""
    out = []
    for line in lines:
        try:
            event: Any = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            out.append(format_event(event))
    return out


@click.command(
    "results", short_help="One table of overrides and metrics, read from the output folders."
)
@o.SWEEP_FOLDERS
@o.TAG
@click.option(
    "--group-by", metavar="A,B", help="Columns to group by, e.g. optim.lr,model: mean/std/count."
)
@o.BEST
@o.TOP
@o.BEST_MODE
@o.format_option("table", "csv", "json", "parquet")
@o.OUTPUT
@o.common
def results(
    sweeps: tuple,
    tags: tuple,
    group_by: Optional[str],
    best: Optional[str],
    top: Optional[int],
    mode: Optional[str],
    fmt: str,
    output: Optional[str],
) -> int:
    """One row per job: its id, status, one column per override, its metrics and its output
    folder. Rows come from the database's jobs (of --experiment), or, with --sweep, from a
    sweep folder alone (a synced copy needs no database); several --sweep give one table with
    a 'sweep' column, to compare them side by side. --group-by gives one row per group, with
    the mean, standard deviation and count of each numeric metric. --best METRIC keeps the
    best row (--top K: the K best), smallest first unless --max; rows without a number for
    it are left out. --format parquet writes a Parquet file: it needs -o FILE (never a
    terminal) and pyarrow (pip install 'dr_exp[results]')."""
    from dr_exp import jobfiles
    from dr_exp import results as table

    if best is None and (top is not None or mode is not None):
        raise click.UsageError("--top, --min and --max go with --best METRIC")
    target = _output_path(output, binary=fmt == "parquet")
    scope = o.scope()
    db_path = scope.db_path()
    if not sweeps and not db_path.exists():
        raise DatabaseError(f"no job database at {db_path}; use --sweep DIR to read a folder")
    df = table.load(
        experiment=scope.experiment,
        sweep_dir=list(sweeps) or None,
        db=str(db_path),
        group_by=group_by,
        tags=list(tags),
    )
    if best is not None:
        df = table.best(df, best, top or 1, mode or "min")
    if fmt == "parquet":
        data = table.parquet_bytes(df)
    elif fmt == "json":
        data = (df.to_json(orient="records", indent=2) + "\n").encode()
    elif fmt == "csv":
        data = df.to_csv(index=False).encode()
    else:
        data = ("no jobs" if df.empty else df.to_string(index=False)).encode() + b"\n"
    if target is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
    else:
        jobfiles.write_bytes(str(target), data)
        print(f"results: {len(df)} rows written to {target}", file=sys.stderr)
    return 0


def _output_path(output: Optional[str], binary: bool) -> Optional[Path]:
    """Where ``-o`` writes (None: stdout), checked before anything is read or written."""
    if output in (None, "-"):
        if binary and (output is None or sys.stdout.isatty()):
            raise BadInput("parquet is binary: give -o FILE (or -o - into a pipe), not a terminal")
        return None
    path = Path(output).expanduser()
    if path.is_dir():
        raise BadInput(f"cannot write {output}: it is a directory")
    if not path.parent.is_dir():
        raise BadInput(f"cannot write {output}: no folder {path.parent}")
    return path
