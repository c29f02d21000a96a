"""Big queues: ``dr_exp status``, ``list --limit 50``, claiming and ``retry --status failed``
on 100,000 jobs, and ``dr_exp status`` on 1,000,000.

    python benchmarks/bench_big_queue.py [--jobs 100000] [--million 1000000] [--repeats 5]

The 100,000-job database is written through the Python API (``JobDB.enqueue_batch``, in
chunks of 5,000: every row signed), then given a realistic mix of states with plain SQL
(70% completed, 5% failed, 500 running, the rest pending; the counts' triggers follow).
The million-row database repeats those rows under new ids with ``INSERT ... SELECT``
(their signatures, which cover the id, do not verify: status and list never check them;
the copies of running jobs are completed, so 500 jobs run at any size).

Whole CLI commands run as subprocesses (``python -m dr_exp ...``, wall time, the
interpreter's start and the CLI's imports included), against two floors: ``python -c
pass`` and ``python -m dr_exp --help``.  The same reads run in-process too (open the
database, run the query), since the CLI's import time is its own work.  Claims are
claim + finish through the API.  ``retry --status failed`` changes the database: the
failed jobs are failed again (SQL) before each round.  Each query's ``EXPLAIN QUERY
PLAN`` is part of the report.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Series, alternate, header, log, run_report, table  # noqa: E402

CHUNK = 5000


def build(path: Path, jobs: int) -> None:
    from dr_exp.db import JobDB

    with JobDB.open(path) as db:
        sweeps = [
            db.add_sweep(
                experiment=f"exp{k % 3}",
                app="train",
                cwd="/proj",
                sys_path=[],
                sweep_dir=f"multirun/{k}",
                config_yaml="",
                payload=b"p",
                want_returns=True,
            )  # fmt: skip
            for k in range(10)
        ]
        for start in range(0, jobs, CHUNK):
            sweep = sweeps[(start // CHUNK) % len(sweeps)]
            overrides = [
                (i, [f"model.lr={i * 1e-5:.5f}", f"seed={i % 7}", "trainer.max_epochs=100"])
                for i in range(start, min(jobs, start + CHUNK))
            ]
            db.enqueue_batch(
                sweep, f"exp{sweeps.index(sweep) % 3}", overrides, on_duplicate="always"
            )
        n = jobs
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE jobs SET status = 'completed', attempts = 1, started = created, "
            "ended = created + 60, return_value = '0.5', worker = 'w', host = 'node' "
            "WHERE id % 100 < 70"
        )
        conn.execute(
            "UPDATE jobs SET status = 'failed', attempts = 3, ended = created + 5, "
            "error = 'RuntimeError: diverged', failure = 'error' WHERE id % 100 BETWEEN 70 AND 74"
        )
        conn.execute(
            "UPDATE jobs SET status = 'running', attempts = 1, worker = 'w' || (id % 500), "
            "host = 'node', started = created, lease_gen = 1, lease_s = 3600 "
            f"WHERE id IN (SELECT id FROM jobs WHERE status = 'pending' ORDER BY id LIMIT {min(500, n // 10)})"
        )
        conn.execute("COMMIT")


def grow(source: Path, path: Path, rows: int) -> None:
    """A copy of ``source`` repeated under new ids up to ``rows`` jobs."""
    shutil.copy(source, path)
    for suffix in ("-wal", "-shm"):
        if Path(str(source) + suffix).exists():
            shutil.copy(str(source) + suffix, str(path) + suffix)
    from dr_exp.db import JobDB

    with JobDB.open(path, create=False) as db:
        base = db.conn.execute("SELECT max(id) FROM jobs").fetchone()[0]
        cols = [r[1] for r in db.conn.execute("PRAGMA table_info(jobs)") if r[1] != "id"]
        names = ", ".join(cols)
        # The copies are finished jobs: the running ones stay the original 500.
        values = names.replace(
            "status", "CASE status WHEN 'running' THEN 'completed' ELSE status END", 1
        )
        copies = 1
        while base * (copies + 1) <= rows:
            for start in range(1, base + 1, 50_000):
                sql = (
                    f"INSERT INTO jobs (id, {names}) SELECT id + {base * copies}, {values} "
                    f"FROM jobs WHERE id BETWEEN {start} AND {start + 49_999}"
                )
                db.write(lambda conn, sql=sql: conn.execute(sql))
            copies += 1
            log(f"  {base * copies} rows")
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def cli(*args: str) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "dr_exp", *args], capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"dr_exp {' '.join(args)}: {proc.stderr[-2000:]}")
        return elapsed

    return run


def python_floor() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def in_process(path: Path, query: Callable) -> Callable[[], float]:
    def run() -> float:
        from dr_exp.db import JobDB

        start = time.perf_counter()
        with JobDB.open(path, create=False) as db:
            query(db)
        return time.perf_counter() - start

    return run


def status_reads(db) -> None:
    """What ``dr_exp status`` reads (dr_exp.watch.take without the recent rate)."""
    from dr_exp import watch

    watch.take(db, None, recent=False)
    db.stopped_hosts(time.time() - 3600)


def claim_latency(path: Path, claims: int) -> Callable[[], float]:
    """Median seconds of one claim + finish of the previous job."""

    def run() -> float:
        from dr_exp.db import JobDB, Outcome

        times, finished = [], None
        with JobDB.open(path, create=False) as db:
            for _ in range(claims):
                start = time.perf_counter()
                job = db.claim("bench", "bench-host", finished=finished)
                times.append(time.perf_counter() - start)
                finished = (job, Outcome(status="completed", return_json="1")) if job else None
            if finished:
                db.finish(finished[0], "bench", finished[1])
        return statistics.median(times)

    return run


def retry_failed(path: Path) -> Callable[[], float]:
    from dr_exp.db import JobDB

    with JobDB.open(path, create=False) as db:
        failed = [r["id"] for r in db.rows("SELECT id FROM jobs WHERE status = 'failed'")]
    run_cli = cli("retry", "--status", "failed")

    def run() -> float:
        with JobDB.open(path, create=False) as db:  # the same failed jobs, failed again
            db.write(
                lambda conn: conn.execute(
                    "UPDATE jobs SET status = 'failed', max_attempts = 3 "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (str(failed),),
                )
            )
        return run_cli()

    return run


def plans(path: Path) -> str:
    from dr_exp.db import JobDB

    with JobDB.open(path, create=False) as db:
        found = []

        def trace(sql: str) -> None:
            if sql.lstrip().upper().startswith("SELECT") and "sqlite_" not in sql:
                found.append(sql)

        db.conn.set_trace_callback(trace)
        status_reads(db)
        db.list_jobs(limit=50)
        db.list_jobs(statuses=["failed"], limit=50)
        db.conn.set_trace_callback(None)
        lines = []
        for sql in dict.fromkeys(found):
            plan = [r[3] for r in db.conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
            short = " ".join(sql.split())
            lines.append(f"- `{short[:160]}{'…' if len(short) > 160 else ''}`: {'; '.join(plan)}")
        return "\n".join(lines)


def ms(series: Dict[str, Series]) -> Dict[str, Series]:
    for s in series.values():
        s.values = [v * 1000 for v in s.values]
    return series


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000, help="jobs in the big queue (100000)")
    ap.add_argument(
        "--million", type=int, default=1_000_000, help="rows for status (1000000; 0 skips)"
    )
    ap.add_argument("--repeats", type=int, default=5, help="alternated rounds (5)")
    ap.add_argument("--claims", type=int, default=300, help="claims per claim round (300)")
    args = ap.parse_args(argv)

    return run_report("bench_big_queue_", lambda root: measure(root, args, argv))


def measure(root: Path, args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The report's lines, from measurements in ``root`` (a fresh temporary folder)."""
    os.environ.pop("DR_EXP_EXPERIMENT", None)
    big, million = root / "big.db", root / "million.db"
    report = [header("Big queues", ["benchmarks/bench_big_queue.py", *argv])]
    log(f"building {args.jobs} jobs through the API")
    t = time.perf_counter()
    build(big, args.jobs)
    log(f"  {time.perf_counter() - t:.1f} s")
    os.environ["DR_EXP_DB"] = str(big)
    floors = ms(
        alternate(
            {"python -c pass": python_floor, "dr_exp --help": cli("--help")},
            args.repeats,
            "floor",
        )
    )
    whole = ms(
        alternate(
            {
                "dr_exp status": cli("status"),
                "dr_exp list --limit 50": cli("list", "--limit", "50"),
                "dr_exp list --status failed --limit 50": cli(
                    "list", "--status", "failed", "--limit", "50"
                ),
            },
            args.repeats,
            "cli",
        )
    )
    inner = ms(
        alternate(
            {
                "status reads": in_process(big, status_reads),
                "status_counts()": in_process(big, lambda db: db.status_counts()),
                "list_jobs(limit=50)": in_process(big, lambda db: db.list_jobs(limit=50)),
                "list_jobs(failed, limit=50)": in_process(
                    big, lambda db: db.list_jobs(statuses=["failed"], limit=50)
                ),
                "claim + finish (median of a round)": claim_latency(big, args.claims),
            },
            args.repeats,
            "in-process",
        )
    )
    retried = ms(
        alternate({"dr_exp retry --status failed": retry_failed(big)}, args.repeats, "retry")
    )
    failed = args.jobs * 5 // 100
    report += [
        f"{args.jobs} jobs (70% completed, 5% failed, 500 running, the rest pending):",
        "",
        table(floors, "ms"),
        "",
        table(whole, "ms"),
        "",
        "In-process (open the database and run the reads; no CLI imports):",
        "",
        table(inner, "ms"),
        "",
        f"`dr_exp retry --status failed` ({failed} failed jobs, failed again before each round):",
        "",
        table(retried, "ms"),
        "",
        "Query plans (what `status` and `list --limit 50` run):",
        "",
        plans(big),
        "",
    ]
    if args.million:
        log(f"growing to {args.million} rows")
        grow(big, million, args.million)
        os.environ["DR_EXP_DB"] = str(million)
        rows = ms(
            alternate(
                {
                    "dr_exp status": cli("status"),
                    "dr_exp list --status failed --limit 50": cli(
                        "list", "--status", "failed", "--limit", "50"
                    ),
                    "status reads, in-process": in_process(million, status_reads),
                    "status_counts(), in-process": in_process(
                        million, lambda db: db.status_counts()
                    ),
                },
                args.repeats,
                "million",
            )
        )
        report += [f"{args.million} rows:", "", table(rows, "ms"), ""]
    return report


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
