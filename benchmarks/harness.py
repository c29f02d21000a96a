"""What every benchmark here shares: alternated rounds, medians, ratios, a markdown report.

Each benchmark is one command (``python benchmarks/bench_X.py``).  It hands
``alternate`` one zero-argument callable per contender (dr_exp and its peers);
each callable runs one measurement and returns seconds (or a rate, with
``higher_is_better``).  Rounds rotate who goes first, so that background noise
on this 2-core machine hits every contender alike.  Progress goes to stderr;
the markdown report goes to stdout, ready for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@dataclass
class Series:
    """One contender's measurements, in the unit its callable returns."""

    name: str
    values: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> str:
        return f"{min(self.values):.4g}–{max(self.values):.4g}"


def alternate(
    contenders: Dict[str, Callable[[], float]], repeats: int, label: str = ""
) -> Dict[str, Series]:
    """Run every contender ``repeats`` times, rotating the order each round."""
    names = list(contenders)
    series = {name: Series(name) for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            value = contenders[name]()
            series[name].values.append(value)
            log(f"{label} round {r + 1}/{repeats} {name}: {value:.4g}")
    return series


def ratio(a: Series, b: Series) -> float:
    return a.median / b.median


def table(
    series: Dict[str, Series],
    unit: str,
    baseline: Optional[str] = None,
    per: Optional[int] = None,
    per_label: str = "ms / job",
) -> str:
    """A markdown table: median, spread, and (optionally) per-item cost and ratio to a baseline."""
    head = ["contender", f"median ({unit})", "min–max"]
    if per:
        head.append(per_label)
    if baseline:
        head.append(f"vs {baseline}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in series.values():
        row = [s.name, f"{s.median:.4g}", s.spread]
        if per:
            row.append(f"{1000.0 * s.median / per:.2f}")
        if baseline:
            row.append(f"{ratio(s, series[baseline]):.2f}x")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def header(title: str, argv: Sequence[str], packages: Sequence[str] = ()) -> str:
    """The report's heading: what ran, when, on what."""
    versions = []
    for pkg in ("dr_exp", "hydra-core", *packages):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{pkg} (not installed)")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return "\n".join(
        [
            f"### {title}",
            "",
            f"- Command: `python {shlex.join(argv)}`",
            f"- Date: {now}",
            f"- Python {platform.python_version()}, " + ", ".join(versions),
            f"- Machine: `nproc` = {os.cpu_count()}, {platform.platform()}",
            "",
        ]
    )


def require_positive(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *flags: str
) -> None:
    """A usage error (exit 2) unless each of ``flags`` (their ``args`` names) is 1 or more."""
    for flag in flags:
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be 1 or more")


def run_report(prefix: str, measure: Callable[[Path], List[str]]) -> int:
    """Run ``measure`` in a fresh temporary folder, removed afterwards whatever happens, and
    print the report lines it returns (markdown, on stdout); ``main``'s exit code, 0.

    The folder holds this process's signing key (``DR_EXP_SECRET_KEY_FILE``; no shared
    key), so a benchmark never touches the user's.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["DR_EXP_SECRET_KEY_FILE"] = str(root / "secret.key")
    os.environ.pop("DR_EXP_SHARED_KEY_FILE", None)
    try:
        lines = measure(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(lines))
    return 0
