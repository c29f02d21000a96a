"""500 workers heartbeating into one job database in the rollback-journal mode (the mode
dr_exp uses on a network filesystem): the share of write capacity they use, and what a
worker claiming meanwhile sees.

    python benchmarks/bench_heartbeat.py [--workers 500] [--heartbeat-s 10] [--beats 1000]
                                         [--load-s 20] [--repeats 3]

Every worker is registered and holds one running job.  Three measurements:

1. **Write lock held per heartbeat.**  One heartbeat is one ``JobDB.beat`` call (lease,
   liveness and GPU telemetry in one ``BEGIN IMMEDIATE`` transaction): its wall time,
   from taking the write lock to the end of the commit's syncs, uncontended, over
   ``--beats`` beats spread over every worker.  Against it, alternated in the same run:
   the two transactions a worker wrote before (``heartbeat`` then ``worker_heartbeat``).
   The share of write capacity = mean lock time x workers / heartbeat interval.
2. **Sustainable rate.**  Two processes beating as fast as they can for a few seconds:
   transactions per second, against the rate the workers need.
3. **Claim latency under load.**  Two processes beat for every worker at its real pace
   (each worker once per ``--heartbeat-s``, spread evenly) for ``--load-s`` seconds, while
   one more claims and finishes jobs back to back: the claim's median and p99 latency,
   against the same claimer with no heartbeats.

DR_EXP_JOURNAL_MODE=delete forces the rollback journal (synchronous FULL), as the tests do.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import alternate, header, log, run_report, table  # noqa: E402

FORK = multiprocessing.get_context("fork")
TELEMETRY = {"gpu_util": 93.0, "gpu_mem_used_mb": 30000.0, "gpu_mem_total_mb": 81920.0}


def build(path: Path, workers: int, spare_jobs: int) -> None:
    """``workers`` registered workers, each holding one running job; ``spare_jobs`` pending."""
    from dr_exp.db import JobDB

    with JobDB.open(path) as db:
        sweep = db.add_sweep(
            experiment="bench", app="bench", cwd="/", sys_path=[], sweep_dir="multirun",
            config_yaml="", payload=b"p", want_returns=False,
        )  # fmt: skip
        db.enqueue(sweep, "bench", [(i, [f"x={i}"]) for i in range(workers)], priority=900)
        for start in range(0, spare_jobs, 5000):
            batch = [(i, [f"y={i}"]) for i in range(start, min(spare_jobs, start + 5000))]
            db.enqueue(sweep, "bench", batch, priority=100)
        for i in range(workers):
            db.register_worker({"id": f"w{i}", "host": f"node{i % 50}", "pid": 1000 + i})
            if db.claim(f"w{i}", f"node{i % 50}", lease_s=3600) is None:
                raise AssertionError("too few jobs to hold")


def held_jobs(db) -> dict:
    """worker -> its Job, rebuilt from the rows (the fields the fence compares)."""
    from dr_exp.db import Job

    rows = db.rows(
        "SELECT id, experiment, sweep_id, job_num, attempts, worker FROM jobs "
        "WHERE status = 'running'"
    )
    return {
        r["worker"]: Job(r["id"], r["experiment"], r["sweep_id"], r["job_num"], [], r["attempts"])
        for r in rows
    }


def beat_once(db, worker: str, job, combined: bool) -> None:
    if combined:
        if db.beat(worker, "busy", job, TELEMETRY, lease_s=3600) != "ok":
            raise AssertionError(f"{worker} lost its job")
    else:
        if db.heartbeat(job, worker, lease_s=3600) != "ok":
            raise AssertionError(f"{worker} lost its job")
        db.worker_heartbeat(worker, "busy", job.id, TELEMETRY)


def lock_time(path: Path, beats: int, combined: bool, samples: list) -> Callable[[], float]:
    """Mean seconds one heartbeat holds the write lock (its whole call, uncontended)."""

    def measure() -> float:
        from dr_exp.db import JobDB

        with JobDB.open(path, create=False) as db:
            jobs = sorted(held_jobs(db).items())
            times = []
            for n in range(beats):
                worker, job = jobs[n % len(jobs)]
                start = time.perf_counter()
                beat_once(db, worker, job, combined)
                times.append(time.perf_counter() - start)
        samples.extend(times)
        return statistics.mean(times)

    return measure


def _beater(path: str, workers: list[str], interval: float, until: float, out) -> None:
    """Beat for ``workers``: each once per ``interval`` (0: as fast as possible)."""
    from dr_exp.db import JobDB

    db = JobDB.open(path, create=False)
    jobs = held_jobs(db)
    mine = [(w, jobs[w]) for w in workers]
    done, late = 0, 0.0
    start = time.monotonic()
    while time.monotonic() < until:
        for k, (worker, job) in enumerate(mine):
            if interval:  # worker k of n beats at start + k/n of each interval
                due = start + (done // len(mine)) * interval + interval * k / len(mine)
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                else:
                    late = max(late, -wait)
            if time.monotonic() >= until:
                break
            beat_once(db, worker, job, combined=True)
            done += 1
    out.put((done, time.monotonic() - start, late))


def _claimer(path: str, until: float, out) -> None:
    from dr_exp.db import JobDB, Outcome

    db = JobDB.open(path, create=False)
    latencies, finished = [], None
    while time.monotonic() < until:
        start = time.perf_counter()
        job = db.claim("claimer", "claim-host", finished=finished, lease_s=3600)
        latencies.append(time.perf_counter() - start)
        if job is None:
            break
        finished = (job, Outcome(status="completed", return_json="1"))
    out.put(latencies)


def run_load(path: Path, workers: int, interval: float, seconds: float, claim: bool) -> dict:
    """Beat for every worker from 2 processes (at ``interval``, 0 = flat out), with a claimer
    alongside if ``claim``; totals per second and the claimer's latencies."""
    until = time.monotonic() + seconds
    out, claims = FORK.Queue(), FORK.Queue()
    names = [f"w{i}" for i in range(workers)]
    beaters = [
        FORK.Process(target=_beater, args=(str(path), names[k::2], interval, until, out))
        for k in range(2 if interval is not None else 0)
    ]
    claimer = FORK.Process(target=_claimer, args=(str(path), until, claims)) if claim else None
    for p in beaters + ([claimer] if claimer else []):
        p.start()
    results = [out.get() for _ in beaters]
    latencies = claims.get() if claimer else []
    for p in beaters + ([claimer] if claimer else []):
        p.join()
    beats = sum(r[0] for r in results)
    elapsed = max((r[1] for r in results), default=seconds)
    return {
        "beats_per_s": beats / elapsed if results else 0.0,
        "late_s": max((r[2] for r in results), default=0.0),
        "latencies": latencies,
    }


def pct(values: list, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str]) -> int:
    from dr_exp import defaults

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, default=500, help="simulated workers (500)")
    ap.add_argument(
        "--heartbeat-s", type=float, default=defaults.HEARTBEAT_S, help="interval (HEARTBEAT_S)"
    )
    ap.add_argument("--beats", type=int, default=1000, help="beats per lock-time round (1000)")
    ap.add_argument("--load-s", type=float, default=20.0, help="seconds of the load runs (20)")
    ap.add_argument("--repeats", type=int, default=3, help="alternated rounds (3)")
    args = ap.parse_args(argv)

    return run_report("bench_heartbeat_", lambda root: measure(root, args, argv))


def measure(root: Path, args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The report's lines, from measurements in ``root`` (a fresh temporary folder)."""
    os.environ["DR_EXP_DB"] = str(root / "jobs.db")
    os.environ["DR_EXP_JOURNAL_MODE"] = "delete"
    path = root / "jobs.db"
    w, hb = args.workers, args.heartbeat_s
    needed = w / hb
    report = [
        header(
            "Heartbeats: 500 workers, rollback journal", ["benchmarks/bench_heartbeat.py", *argv]
        )
    ]
    log(f"building {w} workers with running jobs")
    build(path, w, spare_jobs=50_000)
    from dr_exp.db import JobDB

    with JobDB.open(path, create=False) as db:
        mode = db.conn.execute("PRAGMA journal_mode").fetchone()[0]
    samples: dict[str, list] = {"combined": [], "separate": []}
    series = alternate(
        {
            "one transaction (beat)": lock_time(path, args.beats, True, samples["combined"]),
            "two (heartbeat + worker_heartbeat)": lock_time(
                path, args.beats, False, samples["separate"]
            ),
        },
        args.repeats,
        "lock",
    )
    for s in series.values():
        s.values = [v * 1000 for v in s.values]
    combined = series["one transaction (beat)"].median / 1000
    separate = series["two (heartbeat + worker_heartbeat)"].median / 1000
    log("flat out: 2 processes beating as fast as they can")
    flat = run_load(path, w, 0.0, min(args.load_s, 5.0), claim=False)
    log("claims alone")
    alone = run_load(path, w, None, args.load_s / 2, claim=True)  # type: ignore[arg-type]
    log(f"claims while {w} workers beat every {hb:g} s")
    loaded = run_load(path, w, hb, args.load_s, claim=True)
    report += [
        f"Journal mode `{mode}` (synchronous FULL), {w} workers each holding a running job, "
        f"HEARTBEAT_S = {hb:g} s, so {needed:.0f} heartbeats per second.",
        "",
        "Write lock held per heartbeat (ms, mean of each round; uncontended):",
        "",
        table(series, "ms"),
        "",
        f"- p99 of one beat: {pct(samples['combined'], 0.99) * 1000:.2f} ms "
        f"(two transactions: {pct(samples['separate'], 0.99) * 1000:.2f} ms)",
        f"- **share of write capacity used by {w} workers: "
        f"{100 * combined * needed:.1f}%** (one transaction per beat); "
        f"{100 * separate * needed:.1f}% with two",
        f"- sustainable rate, 2 processes flat out: {flat['beats_per_s']:.0f} beats/s, "
        f"so {w} workers need {100 * needed / flat['beats_per_s']:.1f}% of it",
        "",
        f"A worker claiming and finishing jobs back to back ({args.load_s:g} s under load):",
        "",
        "| claimer | claims | median (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, run in (("alone", alone), (f"with {w} workers beating", loaded)):
        lat = run["latencies"]
        report.append(
            f"| {name} | {len(lat)} | {statistics.median(lat) * 1000:.2f} | "
            f"{pct(lat, 0.99) * 1000:.2f} | {max(lat) * 1000:.1f} |"
        )
    report += [
        "",
        f"- heartbeats delivered under load: {loaded['beats_per_s']:.1f}/s of {needed:.0f}/s "
        f"needed (latest beat behind its schedule: {loaded['late_s'] * 1000:.0f} ms)",
        "",
    ]
    return report


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
