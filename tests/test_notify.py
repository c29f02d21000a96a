"""A notice when a sweep ends: real sweeps, real workers, a real HTTP receiver on 127.0.0.1,
real commands and hooks; sent exactly once, retried while the receiver is down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from conftest import ROOT, run_app, run_cli
from manage_helpers import start_worker, wait_for
from test_resume import hydra_error_line

from dr_exp import notify
from dr_exp.db import JobDB

APP = ROOT / "tests" / "apps" / "app.py"
QUEUE_ONLY = ("hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0")
# Stands in for the engine's calls (a worker after each outcome, a waiting launcher): it
# calls them over and over until the sweep's notices are all sent.
ENGINE = """
import sys
import time
from dr_exp import notify
from dr_exp.db import JobDB

db = JobDB.open(sys.argv[1], create=False)
kinds = set(sys.argv[3:])
while {n["kind"] for n in db.notices() if n["state"] == "sent"} < kinds:
    notify.after_jobs(db, [int(sys.argv[2])])
    notify.retry_due(db)
    time.sleep(0.01)
"""


class Receiver:
    """A webhook receiver on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[dict] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                bodies.append(json.loads(self.rfile.read(size)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def no_stray_senders(db_path: Path) -> Iterator[None]:
    """Stop any detached sender this test's engine calls started (a failed test's retries)."""
    yield
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--claimed-by" in argv and str(db_path).encode() in argv:
            os.kill(int(entry.name), signal.SIGTERM)


def notices(db_path: Path) -> list[dict]:
    with JobDB.open(db_path, create=False) as db:
        return db.notices()


def only_sweep(db_path: Path) -> int:
    with JobDB.open(db_path, create=False) as db:
        (sweep,) = db.sweeps()
    return sweep["id"]


def engine(db_path: Path, sweep_id: int, *kinds: str) -> subprocess.Popen:
    args = [sys.executable, "-c", ENGINE, str(db_path), str(sweep_id), *kinds]
    return subprocess.Popen(args, env=dict(os.environ))


def drain(tmp_path: Path, workers: int = 1) -> list[subprocess.Popen]:
    """Real workers that run the queue dry, then exit."""
    return [
        start_worker("worker", "--idle-timeout", "2", log=tmp_path / f"worker{i}.log")
        for i in range(workers)
    ]


def wait_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        assert p.wait(timeout=120) == 0


def test_four_workers_finishing_together_send_one_notice(
    tmp_path: Path, db_path: Path, receiver: Receiver
) -> None:
    sweep = ("-m", "mode=sleep", "sleep=1", "x=range(0,8)", f"hydra.launcher.notify={receiver.url}")
    best = ("hydra.launcher.notify_metric=return_value", "hydra.launcher.notify_mode=max")
    run_app(APP, *sweep, *QUEUE_ONLY, *best, cwd=tmp_path)
    sweep_id = only_sweep(db_path)
    engines = [engine(db_path, sweep_id, "end") for _ in range(4)]
    wait_all(drain(tmp_path, workers=4) + engines)
    wait_for(lambda: receiver.bodies, what="the notice")
    assert run_cli("notify", "run", "--once").returncode == 0  # a late sender: nothing left
    (body,) = receiver.bodies
    assert (body["event"], body["sweep_id"], body["experiment"]) == ("sweep_end", sweep_id, "app")
    assert body["counts"] == dict.fromkeys(body["counts"], 0) | {"completed": 8}
    assert body["total"] == 8 and body["wall_s"] > 0 and body["failures"] == []
    assert Path(body["sweep_dir"]).is_dir()
    top = body["best"]
    assert (top["metric"], top["mode"], top["value"]) == ("return_value", "max", 7)
    assert "x=7" in top["overrides"] and top["job_id"] in range(1, 9)
    (row,) = notices(db_path)
    assert (row["kind"], row["state"], row["attempts"]) == ("end", "sent", 1)


def test_first_failure_sends_a_notice_and_the_end_another(
    tmp_path: Path, db_path: Path, receiver: Receiver
) -> None:
    markers = tmp_path / "markers"
    settings = (f"hydra.launcher.notify={receiver.url}", "hydra.launcher.notify_on_failure=true")
    sweep = ("-m", "mode=fail,sleep", "x=3", "sleep=300", f"marker_dir={markers}")
    run_app(APP, *sweep, *QUEUE_ONLY, *settings, cwd=tmp_path)
    sweep_id = only_sweep(db_path)
    stand_in = engine(db_path, sweep_id, "failure", "end")
    workers = drain(tmp_path, workers=2)
    wait_for(lambda: receiver.bodies, what="the failure notice")
    first = receiver.bodies[0]
    assert first["event"] == "sweep_failure"
    assert (first["counts"]["failed"], first["counts"]["completed"]) == (1, 0)  # one still runs
    assert [f["error"] for f in first["failures"]] == ["ValueError: x=3 is not allowed"]
    (markers / "release").write_text("")  # now the sleeping job ends, and with it the sweep
    wait_all(workers + [stand_in])
    wait_for(lambda: len(receiver.bodies) == 2, what="the end notice")
    assert run_cli("notify", "run", "--once").returncode == 0
    assert len(receiver.bodies) == 2
    end = receiver.bodies[1]
    assert end["event"] == "sweep_end"
    assert (end["counts"]["failed"], end["counts"]["completed"], end["total"]) == (1, 1, 2)
    assert sorted((n["kind"], n["state"]) for n in notices(db_path)) == [
        ("end", "sent"),
        ("failure", "sent"),
    ]


def test_a_receiver_that_is_down_gets_the_notice_after_a_retry(
    tmp_path: Path, db_path: Path
) -> None:
    with socket.socket() as s:  # a port nobody listens on, until the receiver starts there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"hydra.launcher.notify=http://127.0.0.1:{port}/hook"
    run_app(APP, "-m", "x=1,2", *QUEUE_ONLY, url, cwd=tmp_path)
    wait_all(drain(tmp_path))
    db = JobDB.open(db_path, create=False)
    notify.after_jobs(db, [only_sweep(db_path)])  # as a worker does: a detached sender tries
    db.close()

    def failed_once() -> bool:
        rows = notices(db_path)
        return bool(rows) and rows[0]["state"] == "pending" and rows[0]["attempts"] >= 1

    wait_for(failed_once, what="a failed first try")
    (row,) = notices(db_path)
    assert "Connection refused" in row["last_error"] and row["next_try"] > row["created"]
    status = run_cli("notify", "status").stdout
    assert "pending" in status and "next try in" in status and "Connection refused" in status
    receiver = Receiver(port)
    try:
        wait_for(lambda: notices(db_path)[0]["state"] == "sent", what="the retry")
        (row,) = notices(db_path)
        assert row["attempts"] >= 2 and len(receiver.bodies) == 1
        assert receiver.bodies[0]["counts"]["completed"] == 2
    finally:
        receiver.close()


def test_a_command_notice_runs_once_with_the_summary_on_stdin(
    tmp_path: Path, db_path: Path
) -> None:
    out = tmp_path / "notices.jsonl"
    code = (
        "import json, os, sys; body = sys.stdin.read(); "
        "copy = open(os.environ['DR_EXP_NOTICE_FILE']).read(); "
        "line = {'body': json.loads(body), 'same': body == copy, 'cwd': os.getcwd()}; "
        "open(sys.argv[1], 'a').write(json.dumps(line) + chr(10))"
    )
    command = f'hydra.launcher.notify=["{sys.executable}",-c,"{code}","{out}"]'
    run_app(APP, "-m", "x=1,2", *QUEUE_ONLY, command, cwd=tmp_path)
    wait_all(drain(tmp_path))
    senders = [
        subprocess.Popen([sys.executable, "-m", "dr_exp", "notify", "run", "--once"])
        for _ in range(3)
    ]
    wait_all(senders)
    run_cli("notify", "run", "--once")
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["same"] and line["cwd"] == str(tmp_path)  # stdin and the file agree
    assert line["body"]["counts"]["completed"] == 2 and line["body"]["best"] is None


def test_on_sweep_end_gets_the_results_table_once(tmp_path: Path, db_path: Path) -> None:
    hook = "hydra.launcher.on_sweep_end=sweep_hooks:record"
    run_app(APP, "-m", "x=1,2,3", *QUEUE_ONLY, hook, cwd=tmp_path)
    wait_all(drain(tmp_path))
    run_cli("notify", "run", "--once")
    got = json.loads((tmp_path / "sweep_end.json").read_text())
    assert got["type"] == "pandas.DataFrame"
    assert {"job_id", "status", "x", "output_dir"} <= set(got["columns"])
    assert [(r["status"], r["x"]) for r in got["rows"]] == [("completed", x) for x in (1, 2, 3)]
    (tmp_path / "sweep_end.json").unlink()
    run_cli("notify", "run", "--once")
    assert not (tmp_path / "sweep_end.json").exists()  # called once, never again
    (row,) = notices(db_path)
    assert (row["kind"], row["state"], row["attempts"]) == ("hook", "sent", 1)


def test_no_notice_work_costs_no_pandas(tmp_path: Path, db_path: Path) -> None:
    run_app(APP, "-m", "x=1", *QUEUE_ONLY, cwd=tmp_path)
    code = (
        "import sys\n"
        "from dr_exp import notify\n"
        "from dr_exp.db import JobDB\n"
        "db = JobDB.open(sys.argv[1], create=False)\n"
        "notify.after_jobs(db, [1, 2, None])\n"
        "notify.retry_due(db)\n"
        "print('pandas' in sys.modules, db.notices())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(db_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["False", "[]"], proc.stderr


@pytest.mark.parametrize(
    "override, needle",
    [
        ("notify=echo hi", "never a shell string"),
        ("notify=ftp://example.org/x", "http:// or https:// URL"),
        ("notify=[]", "non-empty list of argument strings"),
        ("notify_on_failure=true", "needs notify"),
        ("notify_mode=median", "notify_mode"),
        ("on_sweep_end=not-a-name", "pkg.module:function"),
    ],
)
def test_bad_notice_settings_are_one_line_and_write_nothing(
    tmp_path: Path, db_path: Path, override: str, needle: str
) -> None:
    setting = f"hydra.launcher.{override}"
    proc = run_app(APP, "-m", "x=1", *QUEUE_ONLY, setting, cwd=tmp_path, check=False)
    line = hydra_error_line(proc)
    assert f"hydra.launcher.{override.split('=')[0]}" in line and needle in line, line
    assert not db_path.exists()
