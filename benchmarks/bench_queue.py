"""The queue engine: claim + finish through dr_exp's own API, against the bare SQL it runs
and huey's SqliteStorage, in the same run.

    python benchmarks/bench_queue.py [--jobs 20000] [--processes 4] [--repeats 3]
                                     [--delete-jobs 3000] [--skip-delete]

Each measurement gets a fresh database in a temporary folder, filled before the clock
starts; then 1 or ``--processes`` forked processes drain it, all released at once, and the
rate is jobs / wall time until the last one is done.  Every contender is checked after
its run: each job claimed once, none lost.

- **dr_exp**: ``JobDB.enqueue_batch`` (chunks of 5,000), then ``JobDB.claim(...,
  finished=(previous job, its Outcome))`` until it returns None: one transaction per job
  that records the last job and claims the next, signing, leases and attempt history
  included.
- **bare SQL**: the one-statement claim of the field notes (``UPDATE ... WHERE id =
  (SELECT ... LIMIT 1) RETURNING``) with the previous job's guarded completion, in one
  ``BEGIN IMMEDIATE``, on a one-table schema with a partial index on pending rows.
- **huey**: ``huey.storage.SqliteStorage`` with its defaults (WAL, SQLite's default
  synchronous, which is FULL) but dr_exp's 30 s busy timeout; ``dequeue()`` until empty.  Its task rows are inserted
  with one ``executemany`` (exactly the rows ``enqueue`` writes) to keep set-up short.

WAL (synchronous NORMAL for dr_exp and the bare SQL, as dr_exp opens a local file);
then the network-filesystem mode, a rollback journal (``DELETE``, synchronous FULL),
forced as the tests do with ``DR_EXP_JOURNAL_MODE=delete``, with ``--delete-jobs`` jobs.
Rates are claims per second (higher is better); the report gives medians and the ratios
dr_exp/huey and dr_exp/bare.  Progress goes to stderr, the markdown report to stdout.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Callable, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Series, alternate, header, log, ratio, run_report  # noqa: E402

CHUNK = 5000
FORK = multiprocessing.get_context("fork")


# -- filling a fresh database, untimed ---------------------------------------------------
def fill_dr_exp(folder: Path, jobs: int) -> Path:
    from dr_exp.db import JobDB

    path = folder / "jobs.db"
    with JobDB.open(path) as db:
        sweep = db.add_sweep(
            experiment="bench", app="bench", cwd=str(folder), sys_path=[], sweep_dir="multirun",
            config_yaml="", payload=b"p", want_returns=True,
        )  # fmt: skip
        for start in range(0, jobs, CHUNK):
            batch = [(i, [f"x={i}"]) for i in range(start, min(jobs, start + CHUNK))]
            db.enqueue_batch(sweep, "bench", batch, on_duplicate="always")
    return path


BARE_SCHEMA = """
CREATE TABLE jobs (id INTEGER PRIMARY KEY, overrides TEXT NOT NULL, priority INTEGER NOT NULL,
                   status TEXT NOT NULL, worker TEXT, started REAL, ended REAL, result TEXT);
CREATE INDEX jobs_pending ON jobs(priority DESC, id) WHERE status = 'pending';
"""


def bare_connect(path: Path, journal: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.execute(f"PRAGMA synchronous = {'NORMAL' if journal == 'wal' else 'FULL'}")
    return conn


def fill_bare(folder: Path, jobs: int, journal: str) -> Path:
    path = folder / "bare.db"
    conn = bare_connect(path, journal)
    conn.executescript(BARE_SCHEMA)
    for start in range(0, jobs, CHUNK):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO jobs (overrides, priority, status) VALUES (?, 500, 'pending')",
            [(f'["x={i}"]',) for i in range(start, min(jobs, start + CHUNK))],
        )
        conn.execute("COMMIT")
    conn.close()
    return path


def fill_huey(folder: Path, jobs: int) -> Path:
    from huey.storage import SqliteStorage

    path = folder / "huey.db"
    storage = SqliteStorage(name="bench", filename=str(path))
    conn = storage.conn
    for start in range(0, jobs, CHUNK):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)",
            [("bench", f"x={i}".encode(), 0) for i in range(start, min(jobs, start + CHUNK))],
        )
        conn.execute("COMMIT")
    storage.close()
    return path


# -- draining it, in forked processes -----------------------------------------------------
def drain_dr_exp(path: Path, name: str) -> list[int]:
    from dr_exp.db import JobDB, Outcome

    claimed = []
    with JobDB.open(path, create=False) as db:
        finished = None
        while True:
            job = db.claim(name, "bench-host", finished=finished)
            if job is None:  # the last outcome was recorded by this same call
                return claimed
            claimed.append(job.id)
            finished = (job, Outcome(status="completed", return_json="1"))


BARE_CLAIM = (
    "UPDATE jobs SET status = 'running', worker = ?, started = ? WHERE id = (SELECT id FROM "
    "jobs WHERE status = 'pending' ORDER BY priority DESC, id LIMIT 1) RETURNING id, overrides"
)
BARE_DONE = (
    "UPDATE jobs SET status = 'completed', ended = ?, result = '1' "
    "WHERE id = ? AND status = 'running' AND worker = ?"
)


def drain_bare(path: Path, name: str, journal: str) -> list[int]:
    conn = bare_connect(path, journal)
    claimed: list[int] = []
    previous = None
    while True:
        conn.execute("BEGIN IMMEDIATE")
        if previous is not None:
            if conn.execute(BARE_DONE, (time.time(), previous, name)).rowcount != 1:
                raise AssertionError(f"bare: job {previous} was not ours")
        row = conn.execute(BARE_CLAIM, (name, time.time())).fetchone()
        conn.execute("COMMIT")
        if row is None:
            conn.close()
            return claimed
        previous = row[0]
        claimed.append(row[0])


def drain_huey(path: Path, name: str) -> list[bytes]:
    from huey.storage import SqliteStorage

    # dr_exp's busy timeout (huey's default, 5 s, gives "database is locked" on 2 loaded cores)
    storage = SqliteStorage(name="bench", filename=str(path), create_tables=False, timeout=30)
    got = []
    while True:
        data = storage.dequeue()
        if data is None:
            storage.close()
            return got
        got.append(bytes(data))


def _child(drain: Callable, args: tuple, ready, go, results) -> None:
    ready.release()
    go.wait()
    try:
        results.put(("ok", drain(*args)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put(("error", repr(e)))


def run_drain(drain: Callable, args_for: Callable[[int], tuple], processes: int) -> tuple:
    """Start ``processes`` drainers, release them at once; (wall seconds, their results)."""
    ready, go, results = FORK.Semaphore(0), FORK.Event(), FORK.Queue()
    procs = [
        FORK.Process(target=_child, args=(drain, args_for(i), ready, go, results))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    start = time.perf_counter()
    go.set()
    got = [results.get() for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    errors = [r for kind, r in got if kind == "error"]
    if errors:
        raise RuntimeError(f"a drainer failed: {errors[0]}")
    return elapsed, [r for _, r in got]


def check_claims(what: str, per_process: list[list], jobs: int) -> None:
    claimed = [j for one in per_process for j in one]
    if len(claimed) != jobs or len(set(claimed)) != jobs:
        raise AssertionError(
            f"{what}: {len(claimed)} claims, {len(set(claimed))} distinct, {jobs} jobs"
        )


def check_dr_exp(path: Path, jobs: int) -> None:
    conn = sqlite3.connect(path)
    counts = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    attempts = conn.execute("SELECT max(attempts) FROM jobs").fetchone()[0]
    open_attempts = conn.execute("SELECT count(*) FROM attempts WHERE ended IS NULL").fetchone()
    conn.close()
    if counts != {"completed": jobs} or attempts != 1 or open_attempts[0]:
        raise AssertionError(f"dr_exp: {counts}, max attempts {attempts}, open {open_attempts}")


# -- contenders ---------------------------------------------------------------------------
class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def fresh(self) -> Path:
        self.n += 1
        folder = self.root / f"run{self.n}"
        folder.mkdir()
        return folder

    def dr_exp(self, jobs: int, processes: int) -> Callable[[], float]:
        def measure() -> float:
            folder = self.fresh()
            path = fill_dr_exp(folder, jobs)
            elapsed, claims = run_drain(drain_dr_exp, lambda i: (path, f"w{i}"), processes)
            check_claims("dr_exp", claims, jobs)
            check_dr_exp(path, jobs)
            shutil.rmtree(folder)
            return jobs / elapsed

        return measure

    def bare(self, jobs: int, processes: int, journal: str) -> Callable[[], float]:
        def measure() -> float:
            folder = self.fresh()
            path = fill_bare(folder, jobs, journal)
            elapsed, claims = run_drain(drain_bare, lambda i: (path, f"w{i}", journal), processes)
            check_claims("bare", claims, jobs)
            shutil.rmtree(folder)
            return jobs / elapsed

        return measure

    def huey(self, jobs: int, processes: int) -> Callable[[], float]:
        def measure() -> float:
            folder = self.fresh()
            path = fill_huey(folder, jobs)
            elapsed, got = run_drain(drain_huey, lambda i: (path, f"w{i}"), processes)
            check_claims("huey", got, jobs)
            shutil.rmtree(folder)
            return jobs / elapsed

        return measure


def rate_table(series: Dict[str, Series]) -> str:
    lines = ["| contender | median (claims/s) | min–max |", "|---|---|---|"]
    for s in series.values():
        lines.append(f"| {s.name} | {s.median:.0f} | {s.spread} |")
    return "\n".join(lines)


def ratio_lines(series: Dict[str, Series], pairs: list[tuple[str, str]]) -> str:
    out = []
    for a, b in pairs:
        if a in series and b in series:
            out.append(f"- {a} / {b}: **{ratio(series[a], series[b]):.2f}x**")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20000, help="jobs per WAL run (20000)")
    ap.add_argument("--processes", type=int, default=4, help="processes of the multi runs (4)")
    ap.add_argument("--repeats", type=int, default=3, help="alternated rounds (3)")
    ap.add_argument("--delete-jobs", type=int, default=3000, help="jobs per DELETE run (3000)")
    ap.add_argument("--skip-delete", action="store_true", help="WAL only")
    ap.add_argument("--skip-wal", action="store_true", help="the rollback journal only")
    args = ap.parse_args(argv)

    return run_report("bench_queue_", lambda root: measure(root, args, argv))


def measure(root: Path, args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The report's lines, from measurements in ``root`` (a fresh temporary folder)."""
    os.environ["DR_EXP_DB"] = str(root / "unused.db")
    bench = Bench(root)
    p = args.processes
    report = [
        header("Queue engine: claim + finish", ["benchmarks/bench_queue.py", *argv], ["huey"])
    ]
    if not args.skip_wal:
        os.environ["DR_EXP_JOURNAL_MODE"] = "wal"
        contenders = {
            "dr_exp, 1 process": bench.dr_exp(args.jobs, 1),
            f"dr_exp, {p} processes": bench.dr_exp(args.jobs, p),
            "bare SQL, 1 process": bench.bare(args.jobs, 1, "wal"),
            f"bare SQL, {p} processes": bench.bare(args.jobs, p, "wal"),
            "huey, 1 process": bench.huey(args.jobs, 1),
            f"huey, {p} processes": bench.huey(args.jobs, p),
        }
        wal = alternate(contenders, args.repeats, "wal")
        report += [
            f"WAL, {args.jobs} jobs, {args.repeats} alternated rounds (claims per second, "
            "claim and finish in one transaction for dr_exp and the bare SQL):",
            "",
            rate_table(wal),
            "",
            ratio_lines(
                wal,
                [
                    ("dr_exp, 1 process", "huey, 1 process"),
                    (f"dr_exp, {p} processes", f"huey, {p} processes"),
                    ("dr_exp, 1 process", "bare SQL, 1 process"),
                    (f"dr_exp, {p} processes", f"bare SQL, {p} processes"),
                ],
            ),
            "",
        ]
    if not args.skip_delete:
        os.environ["DR_EXP_JOURNAL_MODE"] = "delete"
        n = args.delete_jobs
        contenders = {
            "dr_exp, 1 process": bench.dr_exp(n, 1),
            f"dr_exp, {p} processes": bench.dr_exp(n, p),
            "bare SQL, 1 process": bench.bare(n, 1, "delete"),
            f"bare SQL, {p} processes": bench.bare(n, p, "delete"),
        }
        delete = alternate(contenders, args.repeats, "delete")
        report += [
            f"Rollback journal (DELETE, synchronous FULL: the network-filesystem mode), {n} jobs:",
            "",
            rate_table(delete),
            "",
            ratio_lines(
                delete,
                [
                    ("dr_exp, 1 process", "bare SQL, 1 process"),
                    (f"dr_exp, {p} processes", f"bare SQL, {p} processes"),
                ],
            ),
            "",
        ]
    return report


if __name__ == "__main__":
    log("bench_queue: starting")
    sys.exit(main(sys.argv[1:]))
