"""The waiting launcher's progress: a live bar on a terminal, one line per change in a log.

On a terminal the bar is drawn by rich when it is installed (``pip install
'dr_exp[watch]'``), else it is one status line rewritten in place.  Anywhere
else (a SLURM log, a pipe, CI) it writes a ``dr_exp: [###...] 3/6 done · ...``
line when the counts change, at most every 5 seconds and always at the end, so
that logs stay short and greppable.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

from dr_exp.defaults import FINAL_STATUSES

LOG_EVERY_S = 5.0  # a log gets a line per change, but not more often than this
BAR_WIDTH = 24


def done_of(counts: dict[str, int]) -> int:
    return sum(counts.get(s, 0) for s in FINAL_STATUSES)


class _RichBar:
    """rich's progress bar with the queue's counts beside it."""

    def __init__(self, stream: Any, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("dr_exp"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "done · {task.fields[running]} running · {task.fields[pending]} pending · "
                "{task.fields[failed]} failed"
            ),
            TimeElapsedColumn(),
            console=Console(file=stream),
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.task = self.bar.add_task("jobs", total=total, running=0, pending=0, failed=0)
        self.bar.start()

    def show(self, counts: dict[str, int]) -> None:
        self.bar.update(
            self.task,
            completed=done_of(counts),
            running=counts.get("running", 0),
            pending=counts.get("pending", 0),
            failed=counts.get("failed", 0),
        )

    def close(self) -> None:
        self.bar.stop()


def _rich_bar(stream: Any, total: int) -> Optional[_RichBar]:
    try:
        return _RichBar(stream, total)
    except ImportError:  # rich is optional: the plain status line instead
        return None


class Progress:
    """How many of ``total`` jobs are done: a bar on a terminal, a line per change in a log."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_text = ""
        self.last_time = 0.0
        self.started = time.monotonic()
        self.rich = _rich_bar(self.stream, total) if self.tty else None

    def show(self, counts: dict[str, int]) -> None:
        if self.rich is not None:
            self.rich.show(counts)
            return
        done = done_of(counts)
        filled = int(BAR_WIDTH * done / max(self.total, 1))
        text = (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self.total} done · "
            f"{counts.get('running', 0)} running · {counts.get('pending', 0)} pending · "
            f"{counts.get('failed', 0)} failed · {time.monotonic() - self.started:.0f}s"
        )
        if self.tty:
            if text != self.last_text:
                self.stream.write("\r" + text)
                self.stream.flush()
        else:
            key = text.rsplit(" · ", 1)[0]
            now = time.monotonic()
            if key != self.last_text.rsplit(" · ", 1)[0] and (
                now - self.last_time > LOG_EVERY_S or done == self.total
            ):
                self.stream.write(f"dr_exp: {text}\n")
                self.stream.flush()
                self.last_time = now
            else:
                return
        self.last_text = text

    def close(self) -> None:
        if self.rich is not None:
            self.rich.close()
            self.rich = None
        elif self.tty and self.last_text:
            self.stream.write("\n")
            self.stream.flush()
            self.last_text = ""
