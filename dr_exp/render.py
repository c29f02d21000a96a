"""How the commands print: plain-text tables, durations, ISO times, JSON and CSV.

Standard library only, and no command module: every command prints through these.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any, Optional, Sequence


def iso(ts: Optional[float]) -> Optional[str]:
    """An epoch time as local ISO 8601 with its offset, to the second."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m07s, 2h05m."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns two spaces apart, None as blank, no trailing spaces."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for r in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def id_list(ids: Sequence[int], limit: int = 20) -> str:
    """``1 2 3``, cut after ``limit`` ids with a count of the rest; ``-`` for none."""
    text = " ".join(map(str, ids[:limit]))
    return text + (f" ... ({len(ids) - limit} more)" if len(ids) > limit else "") or "-"


def job_json(row: dict) -> dict:
    """A job row as ``list --format json`` prints it: times as ISO strings."""
    out = dict(row)
    for key in ("created", "started", "ended"):
        out[key] = iso(row[key])
    return out


def print_json(value: Any, **kwargs: Any) -> None:
    print(json.dumps(value, indent=2, **kwargs))


def print_csv(rows: list[dict]) -> None:
    """One row per dict, for spreadsheets: lists joined by spaces, other values as JSON."""
    if not rows:
        return
    import csv  # only here: the C module's load is felt at every CLI start

    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(k, v) for k, v in row.items()})


def _cell(key: str, value: Any) -> Any:
    if isinstance(value, list) and key != "return_value":
        return " ".join(map(str, value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value
