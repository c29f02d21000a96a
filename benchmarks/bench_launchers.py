"""Launcher overhead, side by side: Hydra's basic, joblib, submitit_local and dr_exp.

    python benchmarks/bench_launchers.py                  # full size: 200-job sweep, 2,000 queued
    python benchmarks/bench_launchers.py --jobs 10 --repeats 1 --queue-jobs 50   # smoke test

Every measurement is a whole ``python benchmarks/noop_app.py -m ...`` command,
started as a subprocess in a fresh temporary directory, so it counts what a user
waits for: Python and Hydra start-up, config composition, the launcher's own work
and its shutdown.  The app does nothing, so the numbers are pure launcher overhead.

Part A runs the same N-job sweep through each launcher; rounds are interleaved
(the order rotates each round) so that background noise hits every launcher alike,
and the median is reported.  Part B times how long dr_exp takes to *queue* many
jobs (no workers, no waiting) against the basic launcher *running* the same jobs.

Progress goes to stderr; the markdown report goes to stdout, ready for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import require_positive  # noqa: E402

APP = HERE / "noop_app.py"
APP_SHOWN = "python benchmarks/noop_app.py"  # how commands are written in the report

# Part A: launcher name -> its extra command-line overrides.
SWEEP_LAUNCHERS: Dict[str, List[str]] = {
    "basic": ["hydra/launcher=basic"],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    # gpus_per_node=0: run on the CPU (CUDA_VISIBLE_DEVICES="") whatever the machine has.
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.gpus_per_node=0"],
    "dr_exp": ["hydra/launcher=dr_exp", "hydra.launcher.workers=2"],
    # with its sweeper, which validates each distinct value instead of composing every job
    "dr_exp+sweeper": ["hydra/launcher=dr_exp", "hydra.launcher.workers=2", "hydra/sweeper=dr_exp"],
}

# Part B: the basic launcher running the jobs vs dr_exp only queueing them.
QUEUE_LAUNCHERS: Dict[str, List[str]] = {
    "basic": ["hydra/launcher=basic"],
    "dr_exp": ["hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0"],
}

WARMUP_JOBS = 2


class BenchError(RuntimeError):
    """A benchmarked command failed or left the wrong results: its numbers would be lies."""


@dataclass
class Timings:
    """Wall times (seconds) of one launcher's repeats."""

    launcher: str
    command: str
    jobs: int
    seconds: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def ms_per_job(self) -> float:
        return 1000.0 * self.median / self.jobs


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def overrides_for(
    launcher_args: List[str], jobs: int, grid: Optional[List[str]] = None
) -> List[str]:
    """The sweep's overrides: ``grid`` (by default ``x`` over ``jobs`` values), then the
    launcher's."""
    # An explicit, relative sweep dir: each run's outputs land in its own temp dir,
    # where they can be counted.
    return [*(grid or [f"x=range(0,{jobs})"]), *launcher_args, "hydra.sweep.dir=sweep"]


def shown_command(launcher_args: List[str], jobs: int) -> str:
    return f"{APP_SHOWN} -m {' '.join(overrides_for(launcher_args, jobs))}"


def run_env(workdir: Path) -> Dict[str, str]:
    """The environment of every command of one run: its queue and signing key in ``workdir``."""
    env = dict(os.environ)
    env["DR_EXP_DB"] = str(workdir / "jobs.db")
    env["DR_EXP_SECRET_KEY_FILE"] = str(workdir / "secret.key")
    env["HYDRA_FULL_ERROR"] = "1"
    return env


def run_app(
    name: str,
    launcher_args: List[str],
    jobs: int,
    timeout: float,
    grid: Optional[List[str]] = None,
) -> tuple[float, Path]:
    """Run one sweep (``overrides_for``) in a fresh temp dir; return (wall seconds, that dir).

    The dir is the caller's to verify and delete.  dr_exp's database and signing
    key are pointed into it so no run sees another's queue or touches ~/.config.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    cmd = [sys.executable, str(APP), "-m", *overrides_for(launcher_args, jobs, grid)]
    output = workdir / "output.log"
    with open(output, "wb") as out:
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                cwd=workdir,
                env=run_env(workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"{name}: timed out after {timeout:.0f}s; output in {output}"
            ) from None
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(
            f"{name}: exit code {proc.returncode} from {shlex.join(cmd)} (cwd {workdir}); "
            f"last lines of {output}:\n{tail(output)}"
        )
    return elapsed, workdir


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def count_job_dirs(workdir: Path) -> int:
    """Jobs that ran: each one leaves sweep/<num>/.hydra behind."""
    return sum(1 for p in (workdir / "sweep").glob("*/.hydra") if p.is_dir())


def dr_exp_count(workdir: Path, status: str) -> int:
    """Jobs with ``status`` in this run's queue, through dr_exp's own CLI."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dr_exp",
            "list",
            "--status",
            status,
            "--format",
            "json",
            "--db",
            str(workdir / "jobs.db"),
        ],
        env=run_env(workdir),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return len(json.loads(out))


def verify_ran(name: str, workdir: Path, jobs: int) -> None:
    """Every job ran (and, for dr_exp, completed in the queue), or the run does not count."""
    found = count_job_dirs(workdir)
    if found != jobs:
        raise BenchError(
            f"{name}: expected {jobs} job folders under {workdir / 'sweep'}, found {found}; "
            f"output in {workdir / 'output.log'}"
        )
    if name.startswith("dr_exp"):
        done = dr_exp_count(workdir, "completed")
        if done != jobs:
            raise BenchError(f"{name}: {done} of {jobs} jobs completed in {workdir / 'jobs.db'}")


def verify_queued(workdir: Path, jobs: int) -> None:
    """dr_exp with wait=false must leave every job pending and none run."""
    pending = dr_exp_count(workdir, "pending")
    if pending != jobs:
        raise BenchError(
            f"dr_exp: expected {jobs} pending jobs in {workdir}/jobs.db, found {pending}"
        )
    ran = count_job_dirs(workdir)
    if ran:
        raise BenchError(f"dr_exp: workers=0 yet {ran} jobs ran in {workdir / 'sweep'}")


def measure(
    part: str,
    launchers: Dict[str, List[str]],
    jobs: int,
    repeats: int,
    timeout: float,
    queue_only: bool = False,
) -> Dict[str, Timings]:
    """Round-robin the launchers ``repeats`` times, rotating who goes first each round."""
    results = {
        name: Timings(name, shown_command(args, jobs), jobs) for name, args in launchers.items()
    }
    names = list(launchers)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds, workdir = run_app(name, launchers[name], jobs, timeout)
            if queue_only and name == "dr_exp":
                verify_queued(workdir, jobs)
            else:
                verify_ran(name, workdir, jobs)
            shutil.rmtree(workdir, ignore_errors=True)
            results[name].seconds.append(seconds)
            log(
                f"{part} round {r + 1}/{repeats}: {name:<15} {seconds:7.2f}s "
                f"({1000 * seconds / jobs:.1f} ms/job)"
            )
    return results


def warm_up(launchers: Dict[str, List[str]], timeout: float) -> None:
    """One tiny untimed sweep per launcher: fills the page cache and .pyc files, and
    fails fast on a broken setup before the long runs start."""
    for name, args in launchers.items():
        seconds, workdir = run_app(name, args, WARMUP_JOBS, timeout)
        verify_ran(name, workdir, WARMUP_JOBS)
        shutil.rmtree(workdir, ignore_errors=True)
        log(f"warm-up: {name:<15} {seconds:7.2f}s ({WARMUP_JOBS} jobs)")


def ratio(a: Optional[Timings], b: Optional[Timings]) -> str:
    if a is None or b is None:
        return "—"
    return f"{a.median / b.median:.2f}x"


def spread(t: Timings) -> str:
    if len(t.seconds) == 1:
        return "—"
    return f"{min(t.seconds):.2f}–{max(t.seconds):.2f}"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_section(argv: List[str]) -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "\n".join(
        [
            f"- Command: `{shlex.join(['python', 'benchmarks/bench_launchers.py', *argv])}`",
            f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- Python {platform.python_version()}, hydra-core {version('hydra-core')}, "
            f"dr_exp {version('dr_exp')}, hydra-joblib-launcher {version('hydra-joblib-launcher')}, "
            f"hydra-submitit-launcher {version('hydra-submitit-launcher')}, "
            f"submitit {version('submitit')}, joblib {version('joblib')}",
            f"- Machine: `nproc` = {cpus}, {platform.platform()}",
        ]
    )


def sweep_section(results: Dict[str, Timings], jobs: int, repeats: int) -> str:
    basic, joblib = results.get("basic"), results.get("joblib")
    rows = [
        f"## {jobs}-job sweep\n",
        f"Median of {repeats} interleaved run(s) of the whole command; each run in a fresh "
        "temporary directory.\n",
        "| launcher | median wall (s) | ms / job | min–max (s) | vs basic | vs joblib |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in results.values():
        rows.append(
            f"| {t.launcher} | {t.median:.2f} | {t.ms_per_job:.1f} | {spread(t)} | "
            f"{ratio(t, basic)} | {ratio(t, joblib)} |"
        )
    rows.append("\nCommands:\n")
    rows += [f"- {t.launcher}: `{t.command}`" for t in results.values()]
    for name in ("dr_exp", "dr_exp+sweeper"):
        if name in results:
            rows.append(
                f"\n{name} / basic = {ratio(results[name], basic)}, "
                f"{name} / joblib = {ratio(results[name], joblib)}"
            )
    if "submitit_local" in results:
        rows.append(
            "\nNote: submitit_local's local executor starts every job of the array as its own "
            f"Python process at once (it has no parallelism cap), so this sweep runs {jobs} "
            "processes concurrently."
        )
    return "\n".join(rows)


def queue_section(results: Dict[str, Timings], jobs: int, repeats: int) -> str:
    rows = [
        f"## Queueing {jobs:,} jobs\n",
        f"dr_exp only enqueues (no workers, no waiting; all {jobs:,} jobs verified pending "
        f"afterwards); the basic launcher runs the same {jobs:,} no-op jobs. "
        f"Median of {repeats} run(s).\n",
        "| launcher | what it does | median wall (s) | ms / job | min–max (s) |",
        "|---|---|---:|---:|---:|",
    ]
    what = {"basic": "runs every job in-process", "dr_exp": "queues every job, runs none"}
    for t in results.values():
        rows.append(
            f"| {t.launcher} | {what[t.launcher]} | {t.median:.2f} | {t.ms_per_job:.2f} | "
            f"{spread(t)} |"
        )
    rows.append("\nCommands:\n")
    rows += [f"- {t.launcher}: `{t.command}`" for t in results.values()]
    if len(results) == 2:
        rows.append(f"\ndr_exp (queue only) / basic = {ratio(results['dr_exp'], results['basic'])}")
    rows.append(
        "\nNote: Hydra's BasicSweeper composes every job's config in the submitting process "
        "(`validate_batch_is_legal`) before any launcher sees the batch, so both times include "
        "one full config composition per job."
    )
    return "\n".join(rows)


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200, help="jobs in the part A sweep (default 200)")
    p.add_argument("--repeats", type=int, default=3, help="part A rounds (default 3)")
    p.add_argument("--queue-jobs", type=int, default=2000, help="jobs in part B (default 2000)")
    p.add_argument("--queue-repeats", type=int, default=1, help="part B rounds (default 1)")
    p.add_argument("--skip-queue", action="store_true", help="skip part B (queueing)")
    p.add_argument(
        "--only",
        default=",".join(SWEEP_LAUNCHERS),
        help=f"comma-separated launchers to run (default: {','.join(SWEEP_LAUNCHERS)})",
    )
    p.add_argument(
        "--timeout", type=float, default=3600, help="seconds before one command is abandoned"
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up sweeps")
    args = p.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in args.only if n not in SWEEP_LAUNCHERS]
    if unknown or not args.only:
        p.error(f"--only: unknown launcher(s) {unknown}; choose from {', '.join(SWEEP_LAUNCHERS)}")
    require_positive(p, args, "jobs", "repeats", "queue_jobs", "queue_repeats")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sweep = {n: a for n, a in SWEEP_LAUNCHERS.items() if n in args.only}
    queue = {n: a for n, a in QUEUE_LAUNCHERS.items() if n in args.only}
    if args.skip_queue:
        queue = {}
    sections = ["# Launcher overhead benchmark", environment_section(argv)]
    try:
        if not args.no_warmup:
            warm_up(sweep, args.timeout)
        log(f"part A: {args.jobs}-job sweep x {args.repeats} round(s): {', '.join(sweep)}")
        results = measure("A", sweep, args.jobs, args.repeats, args.timeout)
        sections.append(sweep_section(results, args.jobs, args.repeats))
        if queue:
            log(
                f"part B: {args.queue_jobs} jobs x {args.queue_repeats} round(s): {', '.join(queue)}"
            )
            results = measure(
                "B", queue, args.queue_jobs, args.queue_repeats, args.timeout, queue_only=True
            )
            sections.append(queue_section(results, args.queue_jobs, args.queue_repeats))
    except BenchError as e:
        print(f"bench_launchers: FAILED: {e}", file=sys.stderr)
        return 1
    print("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
