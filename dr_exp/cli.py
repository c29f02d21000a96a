"""The ``dr_exp`` command line: watch the queue, list jobs, run workers, manage jobs.

Every command finds the job database the way the launcher does: ``--db``,
else ``<--base-path>/.dr_exp/jobs.db``, else ``$DR_EXP_DB``, else
``.dr_exp/jobs.db`` under the current directory (``_db_path``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from dr_exp.db import STATUSES, JobDB
from dr_exp.errors import DatabaseError
from dr_exp.paths import job_db as db_path_for
from dr_exp.sync_cli import add_sync_commands, print_status_summary, status_summary

EPILOG = """\
examples:
  python train.py -m optim.lr=0.01,0.1 seed=0,1,2 hydra/launcher=dr_exp
  dr_exp status                       # counts per experiment, running jobs
  dr_exp list --status failed         # what went wrong, with error summaries
  dr_exp list --format json           # every job, for scripts
  dr_exp worker --experiment train    # drain the queue from another shell or node
  dr_exp show 12                      # one job: config, attempts, error, log, events
  dr_exp cancel --tag probe           # cancel pending and running jobs by tag
  dr_exp retry --status failed        # queue failed jobs again
  dr_exp priority --tag main --boost 100
  dr_exp results --experiment train --group-by optim.lr
  dr_exp --base-path P --experiment E submit --config baseline.yaml --seed 0 --priority 100
  dr_exp sync status                  # uploads of finished folders: pending, failing

The database is --db, else P/.dr_exp/jobs.db with --base-path P, else $DR_EXP_DB,
else .dr_exp/jobs.db in the current directory.
"""


class CLIError(Exception):
    """Reported as one line on stderr with exit status 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage plus a message
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    # On the top level and on each command, so `dr_exp --db X status` and
    # `dr_exp status --db X` both work; SUPPRESS keeps one from erasing the other.
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--db", default=default, help="job database (default: $DR_EXP_DB or .dr_exp/jobs.db)"
    )
    parser.add_argument(
        "--experiment", "-e", default=default, help="only this experiment (default: all)"
    )
    parser.add_argument(
        "--base-path",
        default=default,
        help="project folder: its .dr_exp/jobs.db is the database, and submitted jobs "
        "write under its outputs/",
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="dr_exp",
        description="A durable SQLite job queue behind a Hydra launcher (hydra/launcher=dr_exp).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("status", help="job counts per experiment and status, and running jobs")
    _common(p, top=False)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("list", help="list jobs")
    _common(p, top=False)
    p.add_argument(
        "--status",
        default="all",
        help=f"one of {', '.join(STATUSES)}, all; comma-separated for several (default: all)",
    )
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--limit", type=int, default=None, help="show at most N jobs")
    _filter_options(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "worker",
        help="claim and run jobs until the queue stays empty",
        description=WORKER_DESCRIPTION,
    )
    _worker_options(p)
    p.set_defaults(func=cmd_worker)

    system = sub.add_parser(
        "system",
        help="run the node supervisor or a single worker (inside an allocation or on a GPU box)",
    )
    system_sub = system.add_subparsers(
        dest="system_command", metavar="COMMAND", parser_class=Parser
    )
    system_sub.required = True
    p = system_sub.add_parser(
        "launcher",
        help="node supervisor: N workers per GPU, restarted when they die",
        description=SUPERVISOR_DESCRIPTION,
    )
    _common(p, top=False)
    _supervisor_options(p)
    p.set_defaults(func=cmd_supervisor)
    p = system_sub.add_parser("worker", help="a single worker (same as `dr_exp worker`)",
                              description=WORKER_DESCRIPTION)  # fmt: skip
    _worker_options(p)
    p.set_defaults(func=cmd_worker)

    workers = sub.add_parser("workers", help="add SLURM workers to an existing queue")
    workers_sub = workers.add_subparsers(
        dest="workers_command", metavar="COMMAND", parser_class=Parser
    )
    workers_sub.required = True
    p = workers_sub.add_parser(
        "submit",
        help="submit a SLURM job array of node supervisors for the queue",
        description="Submit, through submitit, a SLURM job array whose tasks each run "
        "`dr_exp system launcher`. No new sweep is needed: the workers drain what is queued.",
    )
    _common(p, top=False)
    _supervisor_options(p)
    _slurm_options(p)
    p.set_defaults(func=cmd_workers_submit)
    _add_manage_commands(sub)
    add_sync_commands(sub, _common)
    return parser


WORKER_DESCRIPTION = (
    "Claim jobs (highest priority first) and run each in its own process, renewing the "
    "job's lease while it runs. SIGTERM/SIGINT/SIGUSR1/SIGUSR2 forward the signal to the "
    "job, wait --grace seconds, put the job back to pending (attempts unchanged) and exit."
)
SUPERVISOR_DESCRIPTION = (
    "Start --workers-per-gpu workers pinned to each GPU this process may use "
    "(CUDA_VISIBLE_DEVICES, else NVML; CPU workers when there is none). A worker that dies "
    "is restarted with backoff; one that crash-loops is given up, with the reason logged. "
    "Workers stop taking jobs when less than --reserve-minutes of --max-hours is left, and "
    "exit after --idle-timeout seconds of empty queue; the supervisor exits when they all have."
)


def _worker_options(p: argparse.ArgumentParser) -> None:
    _common(p, top=False)
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="exit after the queue has been empty this many seconds; 0 waits for ever (default 60)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds a signalled job gets to exit before it is killed (default 10)",
    )
    p.add_argument("--max-jobs", type=int, default=None, help="exit after running N jobs")
    _lease_options(p)


def _supervisor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers-per-gpu", type=int, default=1, help="workers per GPU (default 1)")
    p.add_argument(
        "--cpu-workers",
        type=int,
        default=None,
        help="workers to run when no GPU is visible (default: --workers-per-gpu)",
    )
    p.add_argument("--max-hours", type=float, default=None,
                   help="time budget of this allocation, in hours")  # fmt: skip
    p.add_argument(
        "--reserve-minutes",
        type=float,
        default=0.0,
        help="stop taking new jobs this many minutes before --max-hours ends (default 0)",
    )
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="workers exit after this many seconds of empty queue (default 60)")  # fmt: skip
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds a signalled job gets before it is killed (default 10)")  # fmt: skip
    p.add_argument("--lease", type=float, default=60.0, help="job lease, seconds (default 60)")
    p.add_argument("--heartbeat", type=float, default=10.0,
                   help="seconds between heartbeats (default 10)")  # fmt: skip
    p.add_argument("--crash-limit", type=int, default=5,
                   help="failed worker exits within --crash-window that stop restarts (default 5)")  # fmt: skip
    p.add_argument("--crash-window", type=float, default=120.0,
                   help="seconds over which worker crashes are counted (default 120)")  # fmt: skip


def _slurm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--array", type=int, required=True, help="number of array tasks to submit")
    p.add_argument("--partition")
    p.add_argument("--qos")
    p.add_argument("--account")
    p.add_argument("--gpus-per-node", type=int, default=None)
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--mem-gb", type=int, default=None)
    p.add_argument("--timeout-min", type=int, default=60)
    p.add_argument("--array-parallelism", type=int, default=256)
    p.add_argument("--name", default=None, help="SLURM job name (default: dr_exp-<experiment>)")
    p.add_argument("--folder", default=None,
                   help="submitit folder for logs (default: <db folder>/slurm/%%j)")  # fmt: skip
    p.add_argument("--setup", action="append", default=None,
                   help="a shell line to run before the supervisor; repeatable")  # fmt: skip
    p.add_argument("--additional", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch parameter, e.g. --additional constraint=a100; repeatable")  # fmt: skip


def _lease_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lease",
        type=float,
        default=60.0,
        help="seconds a claimed job stays ours without a heartbeat; when it runs out, "
        "any worker may requeue the job (default 60)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=10.0,
        help="seconds between lease renewals and worker heartbeats (default 10)",
    )
    p.add_argument(
        "--max-hours",
        type=float,
        default=None,
        help="stop taking new jobs when less than --reserve-minutes of this budget is left",
    )
    p.add_argument(
        "--reserve-minutes",
        type=float,
        default=0.0,
        help="with --max-hours: stop claiming this many minutes before the end (default 0)",
    )
    p.add_argument("--stop-claiming-at", type=float, default=None, help=argparse.SUPPRESS)


# -- helpers ------------------------------------------------------------------
def _db_path(args: argparse.Namespace) -> Path:
    """The database every command uses: --db, else --base-path's, else $DR_EXP_DB or ./.dr_exp."""
    return db_path_for(getattr(args, "db", None), getattr(args, "base_path", None))


def _open(args: argparse.Namespace) -> JobDB:
    return JobDB.open(_db_path(args), create=False)


def _iso(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for r in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def _job_json(row: dict) -> dict:
    out = dict(row)
    for key in ("created", "started", "ended"):
        out[key] = _iso(row[key])
    return out


# -- commands -------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    db = _open(args)
    counts: dict[str, dict[str, int]] = {}
    for row in db.status_counts(args.experiment):
        counts.setdefault(row["experiment"], {s: 0 for s in STATUSES})[row["status"]] = row["n"]
    running = db.list_jobs(statuses=["running"], experiment=args.experiment)
    workers = db.live_workers(WORKER_SHOWN_S, args.experiment)
    now = time.time()
    if args.format == "json":
        print(
            json.dumps(
                {
                    "db": str(db.path),
                    "experiments": counts,
                    "running": [
                        {
                            "id": j["id"],
                            "experiment": j["experiment"],
                            "worker": j["worker"],
                            "host": j["host"],
                            "started": _iso(j["started"]),
                            "elapsed_s": round(now - j["started"], 1) if j["started"] else None,
                            "overrides": j["overrides"],
                        }
                        for j in running
                    ],
                    "workers": [_worker_json(w, now) for w in workers],
                    "sync": status_summary(args.db),
                },
                indent=2,
            )
        )
        return 0
    print(f"database: {db.path}")
    print_status_summary(args.db)
    if not counts:
        print("no jobs" + (f" for experiment {args.experiment!r}" if args.experiment else ""))
        return 0
    rows = [
        [exp] + [c[s] for s in STATUSES] + [sum(c.values())] for exp, c in sorted(counts.items())
    ]
    print(_table(["experiment", *STATUSES, "total"], rows))
    if running:
        print("\nrunning:")
        print(
            _table(
                ["id", "experiment", "worker", "elapsed", "overrides"],
                [
                    [
                        j["id"],
                        j["experiment"],
                        j["worker"],
                        _duration(now - j["started"]) if j["started"] else "",
                        " ".join(j["overrides"]),
                    ]
                    for j in running
                ],
            )
        )
    if workers:
        print("\nworkers:")
        print(
            _table(
                ["worker", "state", "job", "gpu", "gpu util", "gpu mem", "heartbeat", "slurm job"],
                [
                    [
                        w["id"],
                        w["state"],
                        w["job_id"] if w["state"] == "busy" else "",
                        w["gpu"] or "-",
                        f"{w['gpu_util']:.0f}%" if w["gpu_util"] is not None else "-",
                        (
                            f"{w['gpu_mem_used_mb'] / 1024:.1f}/{w['gpu_mem_total_mb'] / 1024:.0f} GiB"
                            if w["gpu_mem_used_mb"] is not None
                            else "-"
                        ),
                        _duration(now - w["heartbeat"]) + " ago",
                        w["slurm_job_id"] or "",
                    ]
                    for w in workers
                ],
            )
        )
    return 0


# Workers that have not beaten for this long are presumed gone and not shown.
WORKER_SHOWN_S = 180.0


def _worker_json(w: dict, now: float) -> dict:
    keys = ("id", "host", "pid", "experiment", "state", "job_id", "gpu", "gpu_util",
            "gpu_mem_used_mb", "gpu_mem_total_mb", "slurm_job_id", "supervisor")  # fmt: skip
    out = {k: w[k] for k in keys}
    out["heartbeat_age_s"] = round(now - w["heartbeat"], 1)
    out["started"] = _iso(w["started"])
    return out


def _parse_statuses(text: str) -> Optional[list[str]]:
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    if not wanted or "all" in wanted:
        return None
    for s in wanted:
        if s not in STATUSES:
            raise CLIError(f"unknown status {s!r}; choose from {', '.join(STATUSES)}, all")
    return wanted


def cmd_list(args: argparse.Namespace) -> int:
    statuses = _parse_statuses(args.status)
    if args.limit is not None and args.limit < 1:
        raise CLIError("--limit must be 1 or more")
    db = _open(args)
    jobs = db.list_jobs(
        statuses=statuses,
        experiment=args.experiment,
        limit=args.limit,
        tags=args.tag or None,
        sweep_ids=_sweep_ids(db, args.sweep) if args.sweep else None,
    )
    if args.format == "json":
        print(json.dumps([_job_json(j) for j in jobs], indent=2))
        return 0
    if args.format == "csv":
        _print_csv([_job_json(j) for j in jobs])
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
            [
                j["id"],
                j["experiment"],
                j["status"],
                j["priority"],
                " ".join(j["overrides"]),
                result,
            ]
        )
    print(_table(["id", "experiment", "status", "priority", "overrides", "result/error"], rows))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from dr_exp.worker import Worker

    if args.idle_timeout < 0:
        raise CLIError("--idle-timeout must be 0 (never) or more seconds")
    if args.grace < 0:
        raise CLIError("--grace must be 0 or more seconds")
    if args.max_jobs is not None and args.max_jobs < 1:
        raise CLIError("--max-jobs must be 1 or more")
    stop_claiming_at = _check_lease_options(args)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s [%(name)s] %(message)s",
        stream=sys.stderr,
    )
    db = _open(args)
    worker = Worker(
        db,
        experiment=args.experiment,
        idle_timeout=args.idle_timeout,
        grace_period=args.grace,
        max_jobs=args.max_jobs,
        lease_s=args.lease,
        heartbeat_s=args.heartbeat,
        stop_claiming_at=stop_claiming_at,
        supervisor=os.environ.get("DR_EXP_SUPERVISOR"),
    )
    return worker.run()


def _check_lease_options(args: argparse.Namespace) -> Optional[float]:
    """Validate lease/heartbeat/max-hours; returns when to stop claiming (epoch seconds)."""
    if args.heartbeat <= 0:
        raise CLIError("--heartbeat must be more than 0 seconds")
    if args.lease <= args.heartbeat:
        raise CLIError("--lease must be longer than --heartbeat (several missed beats)")
    if args.max_hours is not None and args.max_hours <= 0:
        raise CLIError("--max-hours must be more than 0")
    if args.reserve_minutes < 0:
        raise CLIError("--reserve-minutes must be 0 or more")
    if args.stop_claiming_at is not None:
        return args.stop_claiming_at
    if args.max_hours is None:
        return None
    return time.time() + args.max_hours * 3600 - args.reserve_minutes * 60


def _supervisor_settings(args: argparse.Namespace) -> dict:
    for name in ("workers_per_gpu", "crash_limit"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be 1 or more")
    if args.cpu_workers is not None and args.cpu_workers < 1:
        raise CLIError("--cpu-workers must be 1 or more")
    if args.idle_timeout < 0 or args.grace < 0:
        raise CLIError("--idle-timeout and --grace must be 0 or more seconds")
    if args.heartbeat <= 0 or args.lease <= args.heartbeat:
        raise CLIError("--lease must be longer than --heartbeat, and --heartbeat more than 0")
    if args.max_hours is not None and args.max_hours <= 0:
        raise CLIError("--max-hours must be more than 0")
    return {
        "cpu_workers": args.cpu_workers,
        "max_hours": args.max_hours,
        "reserve_minutes": args.reserve_minutes,
        "idle_timeout": args.idle_timeout,
        "lease_s": args.lease,
        "heartbeat_s": args.heartbeat,
        "grace_s": args.grace,
        "crash_limit": args.crash_limit,
        "crash_window_s": args.crash_window,
    }


def cmd_supervisor(args: argparse.Namespace) -> int:
    from dr_exp.supervisor import NodeSupervisor, SupervisorSettings

    settings = _supervisor_settings(args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", stream=sys.stderr
    )
    _open(args).close()  # fail here, once, rather than in every worker
    return NodeSupervisor(
        SupervisorSettings(
            db_path=_db_path(args),
            experiment=args.experiment,
            workers_per_gpu=args.workers_per_gpu,
            **settings,
        )
    ).run()


def cmd_workers_submit(args: argparse.Namespace) -> int:
    from dr_exp.slurm import submit_workers

    settings = _supervisor_settings(args)
    if args.array < 1:
        raise CLIError("--array must be 1 or more")
    additional = {}
    for item in args.additional:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--additional takes KEY=VALUE, got {item!r}")
        additional[key] = value
    _open(args).close()
    slurm = {
        "partition": args.partition,
        "qos": args.qos,
        "account": args.account,
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem_gb,
        "timeout_min": args.timeout_min,
        "array_parallelism": args.array_parallelism,
        "submitit_folder": args.folder,
        "setup": args.setup,
        "additional_parameters": additional,
        "name": args.name,
    }
    ids = submit_workers(
        _db_path(args),
        args.experiment,
        slurm,
        workers_per_gpu=args.workers_per_gpu,
        supervisor=settings,
        force_tasks=args.array,
    )
    print(f"submitted SLURM job(s) {', '.join(ids)}: {args.array} array task(s)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        raise SystemExit(2)
    try:
        code = args.func(args)
    except (CLIError, DatabaseError, ValueError) as e:
        print(f"dr_exp: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except BrokenPipeError:  # `dr_exp list | head`
        code = 0
    raise SystemExit(code)


# -- managing jobs ------------------------------------------------------------------
def _filter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        help="only jobs with this tag; repeat it for jobs that carry every one",
    )
    p.add_argument("--sweep", help="only jobs of this sweep: its id, or its folder")


def _selector_options(p: argparse.ArgumentParser, statuses: str) -> None:
    p.add_argument("ids", nargs="*", help="job ids: 3 5 7-9 (or select with the options)")
    p.add_argument("--status", help=f"only jobs with this status ({statuses}); comma-separated")
    _filter_options(p)


def _add_manage_commands(sub: Any) -> None:
    p = sub.add_parser(
        "show",
        help="one job: overrides, config, attempts, output folder, error, log and events",
    )
    _common(p, top=False)
    p.add_argument("id", help="job id")
    p.add_argument("--lines", type=int, default=10, help="lines of error.txt and log (10)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "cancel",
        help="cancel pending jobs, and stop and cancel running ones",
        description="A pending job becomes cancelled. A running job is marked cancelled; its "
        "worker terminates the job's process at its next heartbeat and confirms, which this "
        "command waits for (--wait).",
    )
    _common(p, top=False)
    _selector_options(p, "pending, running")
    p.add_argument(
        "--wait",
        type=float,
        default=15.0,
        help="seconds to wait for workers to confirm running jobs stopped; 0: don't (15)",
    )
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "retry",
        help="move failed or cancelled jobs back to pending (attempt history kept)",
    )
    _common(p, top=False)
    _selector_options(p, "failed, cancelled")
    p.add_argument(
        "--attempts", type=int, default=3, help="attempts each retried job gets (default 3)"
    )
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("priority", help="set or boost the priority (0-1000) of jobs")
    _common(p, top=False)
    _selector_options(p, "any")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--set", type=int, dest="set_to", metavar="N", help="new priority, 0-1000")
    how.add_argument("--boost", type=int, metavar="N", help="add N (negative lowers)")
    p.set_defaults(func=cmd_priority)

    p = sub.add_parser(
        "logs", help="a job's log file(s) and structured events; -f follows them until it ends"
    )
    _common(p, top=False)
    p.add_argument("id", help="job id")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    p.add_argument("--lines", type=int, default=50, help="lines of each log to show (50)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser(
        "results",
        help="one table of overrides and metrics, read from the jobs' output folders",
        description="Rows come from the database's jobs (of --experiment), or, with --sweep, "
        "from a sweep folder alone (a synced copy needs no database).",
    )
    _common(p, top=False)
    p.add_argument("--sweep", help="read this sweep folder only; no database needed")
    p.add_argument("--tag", action="append", default=[], help="only jobs with this tag")
    p.add_argument("--group-by", help="columns to group by, e.g. optim.lr,model: mean/std/count")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser(
        "submit",
        help="queue trainer jobs from a YAML config (no Hydra app needed)",
        description="Queue one job per --seed (or one job) that runs a trainer function "
        "train_model(job_id, worker_id, storage_path, **config). The trainer is --trainer, "
        "else the config's 'trainer: pkg.module:fn', else 'trainer:' in <base-path>/dr_exp.yaml.",
    )
    _common(p, top=False)
    p.add_argument("--config", required=True, help="YAML file, under <base-path>/--config-dir")
    p.add_argument("--config-dir", default="configs/experiment", help="(configs/experiment)")
    p.add_argument("--seed", nargs="+", help="one job per seed (seed=N)")
    p.add_argument("--priority", default="500", help="0-1000, higher runs first (500)")
    p.add_argument("--tags", default="", help="comma-separated tags")
    p.add_argument("--trainer", help="pkg.module:function to call")
    p.add_argument(
        "--on-duplicate",
        choices=("skip", "retry_failed", "always"),
        default="retry_failed",
        help="for a job that exists: skip it; queue it again if it failed or was cancelled "
        "(the default); or always add a new job",
    )
    p.add_argument("--dry-run", action="store_true", help="check and show; write nothing")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1")
    p.set_defaults(func=cmd_submit)


def _print_csv(rows: list[dict]) -> None:
    import csv

    if not rows:
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: " ".join(map(str, v)) if isinstance(v, list) and k != "return_value"
                else json.dumps(v) if isinstance(v, (dict, list))
                else v
                for k, v in row.items()
            }
        )  # fmt: skip


def _parse_id(text: str) -> int:
    if not text.strip().isdigit():
        raise CLIError(f"bad job id {text!r}; give a number like 3")
    return int(text)


def _parse_ids(tokens: Sequence[str]) -> list[int]:
    """``3 5,6 7-9`` -> [3, 5, 6, 7, 8, 9]."""
    ids: list[int] = []
    for token in tokens:
        for part in token.split(","):
            if not part.strip():
                continue
            low, sep, high = part.partition("-")
            if sep:
                a, b = _parse_id(low), _parse_id(high)
                if b < a:
                    raise CLIError(f"bad id range {part!r}")
                ids.extend(range(a, b + 1))
            else:
                ids.append(_parse_id(part))
    return list(dict.fromkeys(ids))


def _sweep_ids(db: JobDB, value: str) -> list[int]:
    """A sweep named by its id or by its folder (as Hydra printed it)."""
    sweeps = db.sweeps()
    if value.strip().isdigit():
        if not any(s["id"] == int(value) for s in sweeps):
            raise CLIError(f"no sweep with id {value}")
        return [int(value)]
    wanted = Path(value).expanduser().resolve()
    found = [
        s["id"]
        for s in sweeps
        if s["sweep_dir"] and Path(s["cwd"], s["sweep_dir"]).resolve() == wanted
    ]
    if not found:
        raise CLIError(f"no sweep with folder {value}")
    return found


def _select(db: JobDB, args: argparse.Namespace, allowed: Sequence[str], verb: str):
    """The jobs a cancel/retry/priority command acts on, and whether ids named them."""
    ids = _parse_ids(args.ids)
    statuses = _parse_statuses(args.status) if args.status else None
    for s in statuses or ():
        if s not in allowed:
            raise CLIError(f"cannot {verb} {s} jobs; only {', '.join(allowed)} ones")
    if not (ids or args.tag or statuses or args.sweep):
        raise CLIError(f"say which jobs to {verb}: ids, --tag, --status or --sweep")
    if ids:
        known = {j["id"] for j in db.list_jobs(ids=ids)}
        missing = [i for i in ids if i not in known]
        if missing:
            raise CLIError(f"no job with id {missing[0]}")
    rows = db.list_jobs(
        ids=ids or None,
        statuses=statuses or (None if ids else list(allowed)),
        experiment=args.experiment,
        tags=args.tag or None,
        sweep_ids=_sweep_ids(db, args.sweep) if args.sweep else None,
    )
    return [r["id"] for r in rows], bool(ids)


def cmd_cancel(args: argparse.Namespace) -> int:
    if args.wait < 0:
        raise CLIError("--wait must be 0 or more seconds")
    db = _open(args)
    ids, explicit = _select(db, args, ("pending", "running"), "cancel")
    if not ids:
        print("no pending or running jobs matched; nothing cancelled")
        return 0
    done = db.cancel(ids, strict=explicit)
    print(f"cancelled {len(done['pending'])} pending job(s): {_id_list(done['pending'])}")
    running = done["running"]
    if not running:
        return 0
    print(f"cancelled {len(running)} running job(s): {_id_list(running)}; stopping them")
    deadline = time.monotonic() + args.wait
    while True:
        last = db.last_attempts(running)
        acked = {i for i, a in last.items() if a["ended"] is not None}
        if len(acked) == len(running) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    for job_id in running:
        attempt = last.get(job_id) or {}
        if job_id in acked:
            print(f"job {job_id}: stopped by worker {attempt.get('worker')} ({attempt['outcome']})")
        else:
            print(
                f"dr_exp: job {job_id}: worker {attempt.get('worker')} has not confirmed yet; "
                "it stops the job at its next heartbeat",
                file=sys.stderr,
            )
    return 0


def _id_list(ids: Sequence[int], limit: int = 20) -> str:
    text = " ".join(map(str, ids[:limit]))
    return text + (f" ... ({len(ids) - limit} more)" if len(ids) > limit else "") or "-"


def cmd_retry(args: argparse.Namespace) -> int:
    if args.attempts < 1:
        raise CLIError("--attempts must be 1 or more")
    db = _open(args)
    ids, explicit = _select(db, args, ("failed", "cancelled"), "retry")
    retried = db.retry(ids, attempts=args.attempts, strict=explicit) if ids else []
    print(f"moved {len(retried)} job(s) back to pending: {_id_list(retried)}")
    return 0


def cmd_priority(args: argparse.Namespace) -> int:
    from dr_exp.db import validate_priority

    if args.set_to is not None:
        validate_priority(args.set_to)
    db = _open(args)
    ids, _ = _select(db, args, STATUSES, "reprioritize")
    changes = db.set_priority(ids, value=args.set_to, boost=args.boost) if ids else []
    for job_id, old, new in changes:
        print(f"job {job_id}: priority {old} -> {new}")
    if not changes:
        print("no jobs matched; nothing changed")
    return 0


def _job_or_error(db: JobDB, text: str) -> dict:
    job = db.get_job(_parse_id(text))
    if job is None:
        raise CLIError(f"no job with id {text}")
    return job


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:] if lines else []
    except OSError:
        return []


def _log_files(folder: Optional[Path]) -> list[Path]:
    return sorted(folder.glob("*.log")) if folder and folder.is_dir() else []


def cmd_show(args: argparse.Namespace) -> int:
    from dr_exp import jobfiles
    from dr_exp.utils import format_event, read_events

    if args.lines < 0:
        raise CLIError("--lines must be 0 or more")
    db = _open(args)
    job = _job_or_error(db, args.id)
    attempts = db.attempts(job["id"])
    folder = Path(job["output_dir"]) if job["output_dir"] else None
    config_file = folder / ".hydra" / "config.yaml" if folder else None
    config = config_file.read_text() if config_file and config_file.exists() else None
    error_tail = _tail(folder / jobfiles.ERROR_FILE, args.lines) if folder else []
    logs = {str(p): _tail(p, args.lines) for p in _log_files(folder)}
    events = read_events(folder)[-args.lines :] if folder and args.lines else []
    if args.format == "json":
        out = _job_json(job)
        out.update(
            config=config,
            attempts=[
                dict(a, started=_iso(a["started"]), ended=_iso(a["ended"])) for a in attempts
            ],
            error_tail=error_tail,
            logs=logs,
            events=events,
        )
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"job {job['id']}  experiment {job['experiment']}  sweep {job['sweep_id']} "
          f"({job['kind']} {job['app']})  job #{job['job_num']}")  # fmt: skip
    result = job["error"] if job["status"] == "failed" else job["return_value"]
    print(f"status:     {job['status']}" + (f"  ({json.dumps(result)})" if result else ""))
    print(f"priority:   {job['priority']}   tags: {', '.join(job['tags']) or '-'}")
    print(f"overrides:  {' '.join(job['overrides']) or '-'}")
    print(f"created:    {_iso(job['created'])}   started: {_iso(job['started']) or '-'}   "
          f"ended: {_iso(job['ended']) or '-'}")  # fmt: skip
    print(f"attempts:   {job['attempts']} of {job['max_attempts']}")
    print(f"output:     {job['output_dir'] or '(none yet)'}")
    if attempts:
        print("\nattempts:")
        rows = [
            [a["attempt"], a["worker"], a["host"], _iso(a["started"]), _iso(a["ended"]),
             a["outcome"] or "(running)", a["detail"]]
            for a in attempts
        ]  # fmt: skip
        print(_indent(_table(["#", "worker", "host", "started", "ended", "exit", "detail"], rows)))
    print(f"\nconfig ({config_file}):" if config else "\nconfig: (composed when the job runs)")
    if config:
        print(_indent(config.rstrip()))
    if error_tail:
        print(f"\nerror.txt (last {len(error_tail)} lines):")
        print(_indent("\n".join(error_tail)))
    for path, lines in logs.items():
        print(f"\nlog {path} (last {len(lines)} lines):")
        print(_indent("\n".join(lines)) if lines else "  (empty)")
    if events:
        print(f"\nevents (last {len(events)}):")
        print(_indent("\n".join(format_event(e) for e in events)))
    return 0


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def cmd_logs(args: argparse.Namespace) -> int:
    from dr_exp import jobfiles
    from dr_exp.db import FINAL_STATUSES
    from dr_exp.utils import format_event

    if args.lines < 0:
        raise CLIError("--lines must be 0 or more")
    db = _open(args)
    job = _job_or_error(db, args.id)
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
            lines = data.decode(errors="replace").splitlines()
            if first:
                lines = lines[-args.lines :] if args.lines else []
            if path.name == jobfiles.EVENTS_FILE:
                events = []
                for line in lines:
                    try:
                        events.append(format_event(json.loads(line)))
                    except ValueError:
                        continue
                lines = events
            if lines:
                if shown != [path]:
                    print(f"==> {path} <==")
                    shown[:] = [path]
                print("\n".join(lines), flush=True)

    if not job["output_dir"] and not args.follow:
        print(f"job {job['id']} is {job['status']} and has no output folder yet")
        return 0
    show_new(first=True)
    try:
        while args.follow:
            done = job["status"] in FINAL_STATUSES
            time.sleep(0.5)
            job = db.get_job(job["id"]) or job
            show_new(first=not offsets)
            if done:
                break
    except KeyboardInterrupt:
        pass
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from dr_exp import results

    if args.sweep is None and not _db_path(args).exists():
        raise CLIError(f"no job database at {_db_path(args)}; use --sweep DIR to read a folder")
    df = results.load(
        experiment=args.experiment,
        sweep_dir=args.sweep,
        db=str(_db_path(args)),
        group_by=args.group_by,
        tags=args.tag,
    )
    if args.format == "json":
        print(df.to_json(orient="records", indent=2))
    elif args.format == "csv":
        print(df.to_csv(index=False), end="")
    elif df.empty:
        print("no jobs")
    else:
        print(df.to_string(index=False))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from dr_exp import api

    if not args.experiment:
        raise CLIError("submit needs --experiment (before or after 'submit')")
    job: dict[str, Any] = {
        "config": args.config,
        "priority": args.priority,
        "tags": [t.strip() for t in args.tags.split(",") if t.strip()],
        "overrides": args.overrides,
    }
    jobs = [dict(job, seed=s) for s in args.seed] if args.seed else [job]
    results = api.submit_jobs(
        jobs,
        experiment=args.experiment,
        base_path=args.base_path,
        db=str(_db_path(args)),
        config_dir=args.config_dir,
        trainer=args.trainer,
        on_duplicate=args.on_duplicate,
        dry_run=args.dry_run,
    )
    for r in results:
        what = f"{Path(r['config']).name} {' '.join(r['overrides'])}".strip()
        if r["action"] in ("queued", "requeued"):
            print(f"{r['action']} job {r['id']}: {what} (priority {r['priority']})")
        elif r["action"].startswith("would"):
            print(f"{r['action']}{' job ' + str(r['id']) if r['id'] else ''}: {what}")
        else:
            print(f"skipped: job {r['id']} exists ({r['action']}): {what}")
    return 0
