"""Queueing a 10,000-job grid sweep: ``hydra/sweeper=dr_exp`` against Hydra's basic sweeper.

    python benchmarks/bench_queueing.py                          # 10,000 jobs; basic at 400
    python benchmarks/bench_queueing.py --jobs 400 --basic-jobs 100 --repeats 1   # smoke test

Both queue a grid sweep of ``benchmarks/noop_app.py`` into dr_exp (``hydra/launcher=dr_exp
hydra.launcher.wait=false hydra.launcher.workers=0``: nothing runs), so the time is the
whole command a user waits for: start-up, validation, and writing the queue.  The basic
sweeper composes every job once before the first row is written (about 12 minutes at
10,000 jobs), so it runs a smaller grid (``--basic-jobs``) and the report extrapolates
its per-job cost; that is said in the output.  Every run is in a fresh temporary
directory with its own DR_EXP_DB and DR_EXP_SECRET_KEY_FILE, and is verified afterwards:
exactly the expected number of pending jobs, through ``dr_exp list``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
from pathlib import Path
from typing import Callable, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_launchers import (  # noqa: E402
    APP_SHOWN,
    BenchError,
    dr_exp_count,
    overrides_for,
    run_app,
)
from harness import alternate, header, require_positive, table  # noqa: E402

QUEUE_ONLY = ["hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0"]


def grid(jobs: int) -> List[str]:
    """A two-key grid of ``jobs`` jobs (a perfect square), or one key when it is not one."""
    side = math.isqrt(jobs)
    if side * side == jobs:
        return [f"x=range(0,{side})", f"+y=range(0,{side})"]
    return [f"x=range(0,{jobs})"]


def launcher_args(sweeper: str) -> List[str]:
    return [f"hydra/sweeper={sweeper}", *QUEUE_ONLY]


def shown(sweeper: str, jobs: int) -> str:
    return f"{APP_SHOWN} -m " + shlex.join(overrides_for(launcher_args(sweeper), jobs, grid(jobs)))


def queue_once(sweeper: str, jobs: int, timeout: float) -> float:
    """One whole command in a fresh temp dir; its wall seconds, once the queue is checked."""
    seconds, workdir = run_app(sweeper, launcher_args(sweeper), jobs, timeout, grid(jobs))
    try:
        found = dr_exp_count(workdir, "pending")
        if found != jobs:
            raise BenchError(f"{sweeper}: expected {jobs} pending jobs, found {found}")
        return seconds
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10_000, help="dr_exp sweeper's grid (10,000)")
    p.add_argument("--basic-jobs", type=int, default=400, help="basic sweeper's grid (400)")
    p.add_argument("--repeats", type=int, default=3, help="alternated rounds (3)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a run is abandoned")
    args = p.parse_args(argv)
    require_positive(p, args, "jobs", "basic_jobs", "repeats")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sizes = {"dr_exp": args.jobs, "basic": args.basic_jobs}
    contenders: dict[str, Callable[[], float]] = {
        name: (lambda name=name: queue_once(name, sizes[name], args.timeout)) for name in sizes
    }
    try:
        queue_once("dr_exp", 4, args.timeout)  # warm-up: .pyc files, page cache, a broken setup
        series = alternate(contenders, args.repeats, label="queueing")
    except BenchError as e:
        print(f"bench_queueing: FAILED: {e}", file=sys.stderr)
        return 1
    ours, basic = series["dr_exp"], series["basic"]
    ms = {name: 1000.0 * s.median / sizes[name] for name, s in series.items()}
    basic_at_n = basic.median * args.jobs / args.basic_jobs
    lines = [
        header(
            "Queueing a grid sweep: hydra/sweeper=dr_exp vs basic",
            ["benchmarks/bench_queueing.py", *argv],
        ),
        f"Whole command, median of {args.repeats} alternated run(s), each in a fresh temp dir; "
        "every run checked afterwards to leave exactly its jobs pending (`dr_exp list`).",
        "",
        f"### dr_exp sweeper, {args.jobs:,} jobs",
        "",
        table({"dr_exp": ours}, "s", per=args.jobs),
        "",
        f"### basic sweeper, {args.basic_jobs:,} jobs (it composes every job: a full "
        f"{args.jobs:,} would take ~{basic_at_n / 60:.0f} min)",
        "",
        table({"basic": basic}, "s", per=args.basic_jobs),
        "",
        f"- per job: dr_exp {ms['dr_exp']:.3f} ms, basic {ms['basic']:.1f} ms "
        f"({ms['basic'] / ms['dr_exp']:.0f}x per job)",
        f"- basic at {args.jobs:,} jobs, extrapolated linearly from {args.basic_jobs:,} "
        f"(start-up included, so slightly high): ~{basic_at_n:.0f} s, "
        f"{basic_at_n / ours.median:.0f}x dr_exp's measured {ours.median:.1f} s",
        "",
        "Commands:",
        "",
        f"- dr_exp: `{shown('dr_exp', args.jobs)}`",
        f"- basic: `{shown('basic', args.basic_jobs)}`",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
