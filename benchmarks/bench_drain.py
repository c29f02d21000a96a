"""Per-job cost of one worker draining trivial jobs, against the basic launcher's per-job cost.

    python benchmarks/bench_drain.py                 # 200 jobs, 3 alternated rounds
    python benchmarks/bench_drain.py --jobs 20 --repeats 1   # smoke test

Each round, alternated: the basic launcher runs the whole ``x=range(N)`` sweep of
``benchmarks/noop_app.py`` in-process (the whole command, validation included);
dr_exp queues the same sweep (``wait=false workers=0``, not timed) and then one
``dr_exp worker --max-jobs N`` drains it (the whole worker command, timed).  The
report gives the per-job time of each and the ratio of their rates; dr_exp's
``fork_server=false`` (each job forked from the worker, loading its sweep) is
measured in the same rounds, to show what the fork server saves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, List

from bench_launchers import APP, APP_SHOWN, BenchError, dr_exp_count, run_app, verify_ran
from harness import alternate, header, log, table

LAUNCH = ["hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0"]


def basic(jobs: int, timeout: float) -> Callable[[], float]:
    def run() -> float:
        seconds, workdir = run_app("basic", ["hydra/launcher=basic"], jobs, timeout)
        verify_ran("basic", workdir, jobs)
        shutil.rmtree(workdir, ignore_errors=True)
        return 1000.0 * seconds / jobs

    return run


def drain(jobs: int, timeout: float, extra: List[str]) -> Callable[[], float]:
    def run() -> float:
        _, workdir = run_app("dr_exp", LAUNCH + extra, jobs, timeout)
        env = dict(os.environ)
        env["DR_EXP_DB"] = str(workdir / "jobs.db")
        env["DR_EXP_SECRET_KEY_FILE"] = str(workdir / "secret.key")
        cmd = [sys.executable, "-m", "dr_exp", "worker", "--max-jobs", str(jobs)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, timeout=timeout)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise BenchError(f"worker exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
        done = dr_exp_count(workdir, "completed")
        if done != jobs:
            raise BenchError(f"dr_exp: {done} of {jobs} jobs completed in {workdir}")
        shutil.rmtree(workdir, ignore_errors=True)
        return 1000.0 * seconds / jobs

    return run


def main(argv: List[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1800.0)
    args = p.parse_args(argv)
    contenders = {
        "basic (whole sweep)": basic(args.jobs, args.timeout),
        "dr_exp worker": drain(args.jobs, args.timeout, []),
        "dr_exp worker, fork_server=false": drain(
            args.jobs, args.timeout, ["hydra.launcher.fork_server=false"]
        ),
    }
    series = alternate(contenders, args.repeats, label="drain")
    ours, peer = series["dr_exp worker"], series["basic (whole sweep)"]
    print(
        header(
            f"One worker draining {args.jobs} trivial jobs", ["benchmarks/bench_drain.py", *argv]
        )
    )
    print(f"Median of {args.repeats} alternated round(s); milliseconds per job.\n")
    print(table(series, "ms / job", baseline="basic (whole sweep)"))
    print(
        f"\ndr_exp's per-job rate = {peer.median / ours.median:.2f}x the basic launcher's "
        f"({peer.median:.1f} ms / {ours.median:.1f} ms per job).\n"
    )
    print("Commands:\n")
    print(f"- basic: `{APP_SHOWN} -m x=range(0,{args.jobs}) hydra/launcher=basic`")
    print(
        f"- dr_exp: `{APP_SHOWN} -m x=range(0,{args.jobs}) {' '.join(LAUNCH)}`, then "
        f"`dr_exp worker --max-jobs {args.jobs}` (timed)"
    )
    log(f"done ({APP})")


if __name__ == "__main__":
    main(sys.argv[1:])
