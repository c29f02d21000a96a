"""The ``dr_exp`` command line: watch the queue, list jobs, run workers.

Every command finds the job database the way the launcher does: ``--db``,
else ``$DR_EXP_DB``, else ``.dr_exp/jobs.db`` under the current directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from typing import Any, Optional, Sequence

from dr_exp.db import STATUSES, DatabaseError, JobDB, resolve_db_path
from dr_exp.sync_cli import add_sync_commands, print_status_summary, status_summary

EPILOG = """\
examples:
  python train.py -m optim.lr=0.01,0.1 seed=0,1,2 hydra/launcher=dr_exp
  dr_exp status                       # counts per experiment, running jobs
  dr_exp list --status failed         # what went wrong, with error summaries
  dr_exp list --format json           # every job, for scripts
  dr_exp worker --experiment train    # drain the queue from another shell or node
  dr_exp sync status                  # uploads of finished folders: pending, failing

The database is --db, else $DR_EXP_DB, else .dr_exp/jobs.db in the current directory.
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
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--limit", type=int, default=None, help="show at most N jobs")
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
def _open(args: argparse.Namespace) -> JobDB:
    return JobDB.open(resolve_db_path(args.db), create=False)


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
    jobs = db.list_jobs(statuses=statuses, experiment=args.experiment, limit=args.limit)
    if args.format == "json":
        print(json.dumps([_job_json(j) for j in jobs], indent=2))
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
            db_path=resolve_db_path(args.db),
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
        resolve_db_path(args.db),
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
