"""``dr_exp status --watch`` and the waiting launcher's progress bar, drawn in a real terminal
(tmux), with real sweeps and real workers."""

from __future__ import annotations

import io
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from conftest import ROOT, run_app, run_cli
from manage_helpers import assert_one_line_error, start_worker, wait_for

from dr_exp.progress import Progress

APP = ROOT / "tests" / "apps" / "app.py"
QUEUE_ONLY = ("hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0")
# tmux drives the live view; CI has it (a missing tmux there fails, it does not skip).
needs_tmux = pytest.mark.skipif(
    shutil.which("tmux") is None and not os.environ.get("CI"), reason="needs tmux"
)


class Terminal:
    """A detached tmux session of our own (its own server, so it has our environment)."""

    def __init__(self, command: str) -> None:
        self.socket = f"dr_exp-test-{secrets.token_hex(4)}"
        self.tmux("new-session", "-d", "-s", "main", "-x", "160", "-y", "50", command)

    def tmux(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "main")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()


def shell(*argv: str, exit_file: Path) -> str:
    """A shell line that runs ``argv``, records its exit status, and keeps the pane open."""
    return f"{shlex.join(argv)}; echo EXIT=$? > {shlex.quote(str(exit_file))}; sleep 600"


def frames_until(term: Terminal, predicate, what: str, frames: list[str]) -> None:
    def look() -> bool:
        frames.append(term.screen())
        return predicate(frames[-1])

    wait_for(look, timeout=120, what=what)


@needs_tmux
def test_watch_shows_the_sweep_live_and_exits_cleanly_on_ctrl_c(
    tmp_path: Path, db_path: Path, terminals: list[Terminal]
) -> None:
    run_app(APP, "-m", "mode=sleep", "sleep=3", "x=range(0,6)", *QUEUE_ONLY, cwd=tmp_path)
    exit_file = tmp_path / "exit"
    command = (sys.executable, "-m", "dr_exp", "status", "--watch", "--interval", "1")
    term = Terminal(shell(*command, exit_file=exit_file))
    terminals.append(term)
    frames: list[str] = []
    frames_until(term, lambda s: "0/6 done" in s and "6 pending" in s, "the queued sweep", frames)
    worker = start_worker("worker", "--idle-timeout", "60", log=tmp_path / "worker.log")
    try:
        frames_until(term, lambda s: "running (1)" in s, "a running job", frames)
        running = frames[-1]
        assert "mode=sleep" in running and "busy" in running  # the job and its worker's row
        frames_until(term, lambda s: "jobs/min" in s and "ETA" in s, "a throughput", frames)
        frames_until(term, lambda s: "6/6 done" in s, "the end of the sweep", frames)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    seen = {int(m) for f in frames for m in re.findall(r"(\d)/6 done", f)}
    assert {0, 6} < seen, seen  # counts changed live, through values in between
    done = frames[-1]
    assert re.search(r"app\s+0\s+0\s+0\s+6\s+0\s+0\s+6", done), done  # the counts table
    assert "nothing left" in done

    term.tmux("send-keys", "-t", "main", "C-c")
    wait_for(lambda: exit_file.exists() and exit_file.read_text().strip(), what="the exit")
    assert exit_file.read_text().strip() == "EXIT=0"
    assert "dr_exp status ·" not in term.screen()  # the terminal is back as it was


def test_watch_without_a_terminal_prints_one_snapshot(tmp_path: Path, db_path: Path) -> None:
    one_worker = ("hydra/launcher=dr_exp", "hydra.launcher.workers=1")
    run_app(APP, "-m", "mode=ok,fail", "x=9", *one_worker, cwd=tmp_path, check=False)
    run_app(APP, "-m", "x=1,2", *QUEUE_ONLY, cwd=tmp_path)
    out = run_cli("status", "--watch", "--interval", "1").stdout
    assert out.count("dr_exp status ·") == 1  # one snapshot, then it exits
    assert "2/4 done · 0 running · 2 pending · 1 failed" in out
    assert "latest failures" in out and "ValueError: x=9 is not allowed" in out
    assert re.search(r"2 left · ETA \S+", out), out
    assert "\x1b[" not in out  # no terminal codes in a pipe

    # Plain status never loads rich; without rich, --watch says what to install.
    probe = (
        "import sys\n"
        "from dr_exp.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "finally:\n"
        "    print('rich' in sys.modules, file=sys.stderr)\n"
    )
    plain = subprocess.run([sys.executable, "-c", probe, "status"], capture_output=True, text=True)
    assert plain.returncode == 0 and plain.stderr.strip() == "False", plain.stderr
    blocked = (
        "import sys\nsys.modules['rich'] = None\nfrom dr_exp.cli import main\nmain(sys.argv[1:])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", blocked, "status", "--watch"], capture_output=True, text=True
    )
    assert_one_line_error(proc, "pip install 'dr_exp[watch]'")
    for args, needle in [
        (["--format", "json"], "--watch draws the table view"),
        (["--interval", "0"], "must be more than 0 seconds"),
    ]:
        assert_one_line_error(run_cli("status", "--watch", *args, check=False), needle)


@needs_tmux
def test_the_waiting_launcher_draws_a_bar_on_a_terminal(
    tmp_path: Path, db_path: Path, terminals: list[Terminal]
) -> None:
    exit_file = tmp_path / "exit"
    sweep = (sys.executable, str(APP), "-m", "mode=sleep", "sleep=1", "x=range(0,3)")
    sweep += ("hydra/launcher=dr_exp", "hydra.launcher.workers=1")
    term = Terminal(f"cd {shlex.quote(str(tmp_path))} && " + shell(*sweep, exit_file=exit_file))
    terminals.append(term)
    frames: list[str] = []
    frames_until(term, lambda s: "3/3 done" in s, "the bar at the end", frames)
    wait_for(exit_file.exists, what="the launcher's exit")
    assert exit_file.read_text().strip() == "EXIT=0"
    bar = next(line for line in term.screen().splitlines() if "3/3 done" in line)
    assert bar.startswith("dr_exp") and "━" in bar and "0 failed" in bar, bar


def test_progress_in_a_log_is_one_line_per_change() -> None:
    log = io.StringIO()
    bar = Progress(4, stream=log)
    bar.show({"pending": 4})
    bar.show({"pending": 4})  # no change: no line
    bar.show({"running": 1, "completed": 3})  # a change within 5 s: no line
    bar.show({"completed": 3, "failed": 1})  # the end: always a line
    bar.close()
    lines = log.getvalue().splitlines()
    assert [line.rsplit(" · ", 1)[0] for line in lines] == [
        "dr_exp: [........................] 0/4 done · 0 running · 4 pending · 0 failed",
        "dr_exp: [########################] 4/4 done · 0 running · 0 pending · 1 failed",
    ]
    assert all(re.fullmatch(r".* · \d+s", line) for line in lines)
