"""dr_exp's SLURM array of node supervisors against hydra-submitit-launcher, on SLURM.

    python benchmarks/bench_slurm.py                      # 48 jobs of 0.5 s, 3 rounds each
    python benchmarks/bench_slurm.py --jobs 8 --repeats 1 # smoke test

Needs a SLURM cluster (``bash tests/slurm/slurm-up.sh`` starts the single-node test
cluster as root).  Every measurement is one whole ``python benchmarks/sleep_app.py -m
x=range(0,N) sleep=S ...`` command in a fresh temporary folder, timed from its start
until it returns with every result:

- ``dr_exp``: ``hydra/launcher=dr_exp hydra/sweeper=dr_exp`` with ``backend=slurm`` and ``wait=true``: one
  SLURM array of ``--tasks`` node supervisors, each running ``--workers`` workers pinned
  to its GPU, that drain the queue;
- ``submitit``: ``hydra/launcher=submitit_slurm``: one array task per job.

Rounds alternate (benchmarks/harness.py), and between two measurements the benchmark
waits until the previous one's array has left the queue, so that one contender's idle
tasks never hold the CPUs the other needs.  For dr_exp it also reports when the first
job started (its ``started`` in the job database, from the command's start and from
the array's submission) and when the last one ended.

Progress goes to stderr; the markdown report goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import alternate, header, log, table  # noqa: E402

APP = HERE / "sleep_app.py"
NAME = "dr_exp_bench"  # every array this benchmark submits (cancelled by name at the end)


class BenchError(RuntimeError):
    """A measured command failed or left the wrong results: its numbers would be lies."""


def squeue(name: str) -> List[str]:
    out = subprocess.run(
        ["squeue", "-h", f"--name={name}", "-o", "%i %T"], capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def wait_until_gone(name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while squeue(name):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", f"--name={name}"], capture_output=True)
            raise BenchError(f"arrays named {name} still queued after {timeout:.0f} s")
        time.sleep(0.2)


def cluster_problem() -> Optional[str]:
    try:
        out = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    if out.returncode != 0:
        return f"no SLURM controller: {out.stderr.strip()}"
    return None


def dr_exp_args(args: argparse.Namespace, name: str) -> List[str]:
    return [
        "hydra/launcher=dr_exp",
        "hydra/sweeper=dr_exp",  # validates each distinct value, not each job (see README)
        "hydra.launcher.backend=slurm",
        f"hydra.launcher.workers_per_gpu={args.workers}",
        "hydra.launcher.slurm.gpus_per_node=1",
        f"hydra.launcher.slurm.array_size={args.tasks}",
        f"hydra.launcher.slurm.timeout_min={args.timeout_min}",
        f"hydra.launcher.slurm.name={name}",
        "hydra.launcher.idle_timeout=2",  # idle supervisors give the node back soon
    ]


def submitit_args(args: argparse.Namespace, name: str) -> List[str]:
    return [
        "hydra/launcher=submitit_slurm",
        f"hydra.launcher.timeout_min={args.timeout_min}",
        f"hydra.launcher.name={name}",
    ]


class Contender:
    """One launcher: runs the sweep in a fresh folder, checks it, returns seconds."""

    def __init__(self, name: str, launcher_args: List[str], args: argparse.Namespace) -> None:
        self.name = name
        self.launcher_args = launcher_args
        self.args = args
        self.first_started: List[float] = []  # dr_exp: command start -> first job started
        self.submit_to_first: List[float] = []  # dr_exp: array submitted -> first job started
        self.first_ended: List[float] = []  # dr_exp: array submitted -> first job ended
        self.last_ended: List[float] = []  # dr_exp: command start -> last job ended

    def command(self) -> List[str]:
        sweep = [f"x=range(0,{self.args.jobs})", f"sleep={self.args.sleep}"]
        return [sys.executable, str(APP), "-m", *sweep, *self.launcher_args]

    def __call__(self) -> float:
        wait_until_gone(NAME)
        with tempfile.TemporaryDirectory(prefix=f"bench_slurm_{self.name}_") as tmp:
            work = Path(tmp)
            env = dict(os.environ)
            env["DR_EXP_DB"] = str(work / "queue" / "jobs.db")
            env["DR_EXP_SECRET_KEY_FILE"] = str(work / "secret.key")
            env["HYDRA_FULL_ERROR"] = "1"
            out = work / "out.log"
            start_wall = time.time()
            start = time.perf_counter()
            with open(out, "wb") as log_file:
                try:
                    proc = subprocess.run(
                        self.command(),
                        cwd=work,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        timeout=self.args.timeout,
                    )
                except subprocess.TimeoutExpired:
                    subprocess.run(["scancel", f"--name={NAME}"], capture_output=True)
                    why = f"{self.name}: no result after {self.args.timeout:.0f} s"
                    raise BenchError(why) from None
            seconds = time.perf_counter() - start
            text = out.read_text(errors="replace")
            if proc.returncode != 0:
                raise BenchError(f"{self.name} exited {proc.returncode}:\n{text[-3000:]}")
            self.check(work, text, start_wall)
        return seconds

    def check(self, work: Path, text: str, start_wall: float) -> None:
        """Every job ran once and returned (its folder exists); dr_exp's timeline too."""
        folders = [p for p in work.glob("multirun/*/*/*") if p.is_dir() and p.name.isdigit()]
        if len(folders) != self.args.jobs:
            raise BenchError(
                f"{self.name}: {len(folders)} job folders, not {self.args.jobs}:\n{text[-2000:]}"
            )
        if not self.name.startswith("dr_exp"):
            return
        conn = sqlite3.connect(work / "queue" / "jobs.db")
        try:
            first, first_end, last, done = conn.execute(
                "SELECT min(started), min(ended), max(ended), sum(status = 'completed') FROM jobs"
            ).fetchone()
        finally:
            conn.close()
        if done != self.args.jobs:
            raise BenchError(f"dr_exp: {done} of {self.args.jobs} jobs completed")
        self.first_started.append(first - start_wall)
        self.last_ended.append(last - start_wall)
        submitted = min(p.stat().st_mtime for p in work.glob("multirun/*/*/.submitit/*/*.pkl"))
        self.submit_to_first.append(first - submitted)
        self.first_ended.append(first_end - submitted)


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=48, help="jobs in the sweep (default 48)")
    p.add_argument("--sleep", type=float, default=0.5, help="seconds each job sleeps")
    p.add_argument("--repeats", type=int, default=3, help="rounds per contender (default 3)")
    p.add_argument("--tasks", type=int, default=2, help="dr_exp array tasks (default 2)")
    p.add_argument("--workers", type=int, default=4, help="dr_exp workers per task (default 4)")
    p.add_argument("--timeout-min", type=int, default=10, help="each SLURM task's time limit")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take")
    p.add_argument("--only", choices=["dr_exp", "submitit"], help="measure one contender")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    problem = cluster_problem()
    if problem:
        print(f"bench_slurm: {problem} (start one: bash tests/slurm/slurm-up.sh)", file=sys.stderr)
        return 2
    dr_exp = Contender("dr_exp", dr_exp_args(args, NAME), args)
    peers: Dict[str, Contender] = {"dr_exp": dr_exp}
    peers["submitit"] = Contender("submitit", submitit_args(args, NAME), args)
    if args.only:
        peers = {args.only: peers[args.only]}
    contenders: Dict[str, Callable[[], float]] = dict(peers)
    try:
        log(f"warm-up: one small run of each ({', '.join(contenders)})")
        for c in peers.values():
            small = argparse.Namespace(**dict(vars(args), jobs=2))
            Contender(c.name, c.launcher_args, small)()
        series = alternate(contenders, args.repeats, label=f"{args.jobs} jobs")
    finally:
        subprocess.run(["scancel", f"--name={NAME}"], capture_output=True)
    jobs = f"{args.jobs} jobs of {args.sleep} s"
    lines = [
        header(
            "SLURM: dr_exp's array of node supervisors vs hydra-submitit-launcher",
            ["benchmarks/bench_slurm.py", *(argv or sys.argv[1:])],
            ["submitit", "hydra-submitit-launcher"],
        ),
        f"{jobs}, `python benchmarks/sleep_app.py -m x=range(0,{args.jobs}) "
        f"sleep={args.sleep}`, from the command's start until it returns with every result "
        f"({args.repeats} alternated rounds, after one warm-up run of each).  dr_exp: "
        f"{args.tasks} array tasks of {args.workers} workers each (one GPU per task), "
        "`wait=true`; submitit: one array task per job.",
        "",
        table(series, "s", baseline="dr_exp" if "dr_exp" in series else None),
        "",
    ]
    if "submitit" in series and "dr_exp" in series:
        speedup = series["submitit"].median / series["dr_exp"].median
        lines.append(f"dr_exp is {speedup:.2f}x faster than hydra-submitit-launcher.")
        lines.append("")
    if dr_exp.first_started:
        med = statistics.median
        lines += [
            "dr_exp's timeline (medians): first job started "
            f"{med(dr_exp.first_started):.2f} s after the command and "
            f"{med(dr_exp.submit_to_first):.2f} s after the array was submitted (and ended "
            f"{med(dr_exp.first_ended):.2f} s after it); "
            f"last job ended {med(dr_exp.last_ended):.2f} s after the command.",
            "",
        ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
