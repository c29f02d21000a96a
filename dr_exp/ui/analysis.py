"""The numbers behind a sweep's tables and plots, for the dashboard and the report alike.

Both read the same things: the results table of :mod:`dr_exp.results` (one row per
job, from the output folders, so a synced copy works) and each job's
``events.jsonl`` (:class:`dr_exp.utils.StructuredLogger`).  :func:`analyse` turns
them into one JSON-ready dict, which ``static/dr_exp.js`` draws the same way in
the dashboard and in the report:

- ``rows``: each job's id, status, swept parameters and metrics;
- ``groups``: one per setting of the swept parameters other than seeds, with the
  mean, standard deviation and count of each metric over the seeds;
- ``by_param``: each metric against each swept parameter, one line per setting of
  the other parameters, with the spread over seeds;
- ``curves``: learning curves, one plot per event and numeric field (for example
  ``epoch_complete``'s ``loss`` against its ``epoch``), one line per job;
- ``failures``: the failed jobs with their ``error.txt``;
- ``warnings``: what could not be read (a corrupt events file, a vanished folder).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Sequence

from dr_exp import jobfiles, results
from dr_exp.ui.assets import plain
from dr_exp.utils import read_events

if TYPE_CHECKING:
    import pandas as pd

BASE_COLUMNS = ("job_id", "status", "experiment", "output_dir")
X_KEYS = ("epoch", "step", "global_step", "iteration", "iter", "batch", "round")
# Lower is better for a metric whose name holds one of these; higher otherwise.
LOWER_IS_BETTER = ("loss", "err", "mse", "mae", "perplexity", "ppl", "regret", "cost", "time")
MAX_POINTS = 500  # per learning curve, thinned evenly beyond this
MAX_CURVE_PLOTS = 24
MAX_SERIES = 300  # jobs drawn in one learning-curve plot
MAX_BY_PARAM = 48
MAX_WARNINGS = 20
ERROR_LINES, ERROR_BYTES = 80, 16384


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_seed(name: str) -> bool:
    """Seeds are what results are averaged over: a parameter named like ``seed``."""
    return "seed" in name.rsplit(".", 1)[-1].lower()


def direction(metric: str) -> str:
    """``min`` for losses, errors and times; ``max`` for everything else."""
    return "min" if any(word in metric.lower() for word in LOWER_IS_BETTER) else "max"


def read_tail(path: Path, lines: int, max_bytes: int = 262144) -> Optional[str]:
    """The last ``lines`` lines of a text file, reading at most ``max_bytes`` of its end;
    None when it cannot be read (absent, a folder, no permission)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read()
    except OSError:
        return None
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def job_events(folder: Optional[Path]) -> tuple[list[dict], Optional[str]]:
    """A job's StructuredLogger events, and a warning when its events file cannot be used.

    A torn last line (the job is writing it) is skipped quietly; a file that is
    there but yields no event at all is reported as corrupt.
    """
    if folder is None:
        return [], None
    path = folder / jobfiles.EVENTS_FILE
    try:
        events = [e for e in read_events(folder) if isinstance(e, dict)]
        size = path.stat().st_size if path.exists() else 0
    except (OSError, UnicodeError) as e:
        return [], f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})"
    if size and not events:
        return [], f"{path}: corrupt ({size} bytes, no readable event); skipped"
    return events, None


def error_text(folder: Optional[Path], summary: Optional[str] = None) -> str:
    """The end of a failed job's error.txt, else its one-line summary."""
    text = read_tail(folder / jobfiles.ERROR_FILE, ERROR_LINES, ERROR_BYTES) if folder else None
    return text or summary or "(no error.txt)"


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    step = math.ceil(len(points) / MAX_POINTS)
    return points[::step] + ([points[-1]] if (len(points) - 1) % step else [])


def curves_of(events: Sequence[dict]) -> dict[tuple[str, str], tuple[str, list]]:
    """One job's learning curves: (event, field) -> (x name, [(x, y), ...]).

    x is the first of ``X_KEYS`` that every such event carries, else the event's
    number; an event needs two occurrences to make a curve.
    """
    by_event: dict[str, list[dict]] = {}
    for event in events:
        if isinstance(event.get("data"), dict):
            by_event.setdefault(str(event.get("event")), []).append(event["data"])
    out: dict[tuple[str, str], tuple[str, list]] = {}
    for name, items in by_event.items():
        if len(items) < 2:
            continue
        x_key = next((k for k in X_KEYS if all(is_number(d.get(k)) for d in items)), None)
        fields = dict.fromkeys(
            k for d in items for k, v in d.items() if k != x_key and is_number(v)
        )
        for field in fields:
            points = [
                (d[x_key] if x_key else n, d[field])
                for n, d in enumerate(items)
                if is_number(d.get(field))
            ]
            if len(points) >= 2:
                out[(name, field)] = (x_key or "event #", _thin(points))
    return out


def _key(values: Sequence[Any]) -> str:
    return json.dumps(list(values), default=str)


def _order(value: Any) -> tuple:
    """Numbers by value, before anything else by its text."""
    return (0, value, "") if is_number(value) else (1, 0, str(value))


def _sorted_values(values: Sequence[Any]) -> list[Any]:
    return sorted({_key([v]): v for v in values}.values(), key=_order)


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def _label(params: dict, names: Sequence[str]) -> str:
    return " ".join(f"{k}={params.get(k)}" for k in names)


def _records(
    df: pd.DataFrame, jobs: Optional[dict[int, dict]], sweep_dir: Optional[Path]
) -> list[dict]:
    """The results table's rows, each with its ``overrides``.

    With ``jobs`` (database rows by id) only those jobs count, with the database's
    status, and a job that has no row in the table (no folder yet) is added.
    """
    records = [plain(r) for r in df.to_dict("records")]
    if jobs is None:
        manifest = {e.get("id"): e.get("overrides") for e in jobfiles.read_manifest(sweep_dir)}
        for r in records:
            folder = Path(r["output_dir"]) if r.get("output_dir") else None
            known = manifest.get(r["job_id"]) if r["job_id"] is not None else None
            if known is None and folder is not None and folder.is_dir():
                known = results.read_job_folder(folder)["overrides"]
            r["overrides"] = known or []
        return records
    kept = [r for r in records if r["job_id"] in jobs]
    seen = {r["job_id"] for r in kept}
    for r in kept:
        job = jobs[r["job_id"]]
        r["overrides"] = job["overrides"]
        r["output_dir"] = job["output_dir"] or r.get("output_dir")
        gone = r["output_dir"] is not None and not Path(r["output_dir"]).is_dir()
        # As results.load does: a completed job whose folder is gone is missing.
        r["status"] = "missing" if gone and job["status"] == "completed" else job["status"]
    for job_id, job in jobs.items():
        if job_id not in seen:
            row = {"job_id": job_id, "status": job["status"], "output_dir": job["output_dir"]}
            kept.append(
                dict(row, overrides=job["overrides"], **results.override_columns(job["overrides"]))
            )
    return sorted(kept, key=lambda r: (r["job_id"] is None, r["job_id"] or 0))


def analyse(
    df: pd.DataFrame,
    *,
    title: str,
    source: str,
    jobs: Optional[dict[int, dict]] = None,
    sweep_dir: Optional[Path] = None,
) -> dict:
    """Everything the sweep view draws, as plain JSON-ready data (see the module's doc)."""
    records = _records(df, jobs, sweep_dir)
    params: dict[str, None] = {}
    for r in records:
        params.update(dict.fromkeys(results.override_columns(r["overrides"])))
    metric_names = [c for c in df.columns if c not in BASE_COLUMNS and c not in params]
    rows = []
    for r in records:
        rows.append(
            {
                "job_id": r["job_id"],
                "status": r.get("status"),
                "params": {p: r.get(p) for p in params},
                "metrics": {m: r.get(m) for m in metric_names if r.get(m) is not None},
                "output_dir": r.get("output_dir"),
            }
        )
    swept = [p for p in params if len({_key([row["params"][p]]) for row in rows}) > 1]
    seeds = [p for p in swept if is_seed(p)]
    config = [p for p in swept if p not in seeds]
    metrics = [m for m in metric_names if any(is_number(row["metrics"].get(m)) for row in rows)]
    for row in rows:
        row["label"] = _label(row["params"], swept) or f"job {row['job_id']}"
        row["group"] = _label(row["params"], config) or "all jobs"
    groups = _groups(rows, config, metrics)
    curves, warnings = _curves(rows)
    missing = [r for r in rows if r["output_dir"] and not Path(r["output_dir"]).is_dir()]
    missing = [r for r in missing if r["status"] not in ("pending", "cancelled")]
    if missing:
        ids = ", ".join(str(r["job_id"]) for r in missing[:10])
        warnings.append(f"{len(missing)} job folder(s) are missing (jobs {ids})")
    return plain(
        {
            "title": title,
            "source": source,
            "generated": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "counts": dict(Counter(str(row["status"]) for row in rows)),
            "params": list(params),
            "swept": swept,
            "seeds": seeds,
            "config": config,
            "fixed": {p: rows[0]["params"][p] for p in params if p not in swept} if rows else {},
            "metrics": metrics,
            "columns": metric_names,
            "directions": {m: direction(m) for m in metrics},
            "rows": rows,
            "groups": groups,
            "by_param": _by_param(groups, config, metrics),
            "curves": curves,
            "failures": [
                {
                    "job_id": row["job_id"],
                    "label": row["label"],
                    "output_dir": row["output_dir"],
                    "error": error_text(
                        Path(row["output_dir"]) if row["output_dir"] else None,
                        (jobs or {}).get(row["job_id"], {}).get("error"),
                    ),
                }
                for row in rows
                if row["status"] == "failed"
            ],
            "warnings": warnings[:MAX_WARNINGS]
            + (
                [f"... and {len(warnings) - MAX_WARNINGS} more"]
                if len(warnings) > MAX_WARNINGS
                else []
            ),
        }
    )


def _groups(rows: list[dict], config: list[str], metrics: list[str]) -> list[dict]:
    """One entry per setting of the non-seed swept parameters: spread of each metric."""
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        by_key.setdefault(_key([row["params"][p] for p in config]), []).append(row)
    out = []
    for members in by_key.values():
        first = members[0]["params"]
        out.append(
            {
                "label": members[0]["group"],
                "params": {p: first[p] for p in config},
                "jobs": len(members),
                "completed": sum(m["status"] == "completed" for m in members),
                "metrics": {
                    metric: _spread(
                        [
                            m["metrics"][metric]
                            for m in members
                            if is_number(m["metrics"].get(metric))
                        ]
                    )
                    for metric in metrics
                },
            }
        )
    return sorted(out, key=lambda g: [_order(g["params"][p]) for p in config])


def _by_param(groups: list[dict], config: list[str], metrics: list[str]) -> list[dict]:
    """Each metric against each swept parameter: one trace per setting of the others."""
    plots = []
    for metric in metrics:
        for param in config:
            others = [p for p in config if p != param]
            traces: dict[str, dict] = {}
            for g in groups:
                spread = g["metrics"][metric]
                if spread["mean"] is None:
                    continue
                name = _label(g["params"], others)
                trace = traces.setdefault(name, {"name": name, "points": []})
                trace["points"].append((g["params"][param], spread))
            for trace in traces.values():
                points = trace.pop("points")
                rank = {_key([x]): i for i, x in enumerate(_sorted_values([x for x, _ in points]))}
                points.sort(key=lambda point: rank[_key([point[0]])])
                trace["x"] = [x for x, _ in points]
                trace.update({stat: [s[stat] for _, s in points] for stat in ("mean", "std", "n")})
            if traces:
                plots.append({"metric": metric, "param": param, "traces": list(traces.values())})
    return plots[:MAX_BY_PARAM]


def curve_plots(jobs: Iterable[tuple[dict, Sequence[dict]]]) -> list[dict]:
    """Learning-curve plots from (job, its events) pairs, a job being a dict with its
    ``job_id``, ``label`` and ``group``: one plot per event and field, a line per job."""
    plots: dict[tuple[str, str], dict] = {}
    for job, events in jobs:
        for (event, field), (x_name, points) in curves_of(events).items():
            if (event, field) not in plots and len(plots) >= MAX_CURVE_PLOTS:
                continue
            plot = plots.setdefault(
                (event, field), {"event": event, "field": field, "x_name": x_name, "series": []}
            )
            if len(plot["series"]) < MAX_SERIES:
                series = {k: job[k] for k in ("job_id", "label", "group")}
                series.update(x=[x for x, _ in points], y=[y for _, y in points])
                plot["series"].append(series)
    return list(plots.values())


def _curves(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Learning-curve plots from every job's events, and the warnings of unreadable files."""
    warnings: list[str] = []

    def events_of_each() -> Iterator[tuple[dict, list[dict]]]:
        for row in rows:
            folder = Path(row["output_dir"]) if row["output_dir"] else None
            if folder is not None and folder.is_dir():
                events, warning = job_events(folder)
                warnings.extend([warning] if warning else [])
                yield row, events

    plots = curve_plots(events_of_each())
    return plots, warnings
