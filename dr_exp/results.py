"""Gather a sweep's results into one table, read from the jobs' output folders.

    from dr_exp import results

    df = results.load(experiment="train")               # jobs listed by the database
    df = results.load(sweep_dir="multirun/2024-05-01/12-00-00")   # no database at all
    df = results.load(experiment="train", group_by=["optim.lr"])  # mean/std/count over seeds
    df = results.load(sweep_dir=["multirun/a", "multirun/b"])    # side by side: a `sweep` column
    top = results.best(df, "val_acc", top=3, mode="max")          # the 3 best of each sweep

One row per job: ``job_id``, ``status``, one column per override (values
typed: ``optim.lr=0.1`` gives the float 0.1), the job's metrics, and
``output_dir``.  Everything comes from the folders, so a synced copy works:

- overrides from ``.hydra/overrides.yaml``;
- metrics from ``metrics.json``, else from the return value recorded in
  ``job.json`` (a dict's numbers, a trainer's ``metrics``, or a single number
  as ``return_value``);
- status from ``job.json`` (``error.txt`` marks a failure when the job
  process died before it could record one).

With a database, every job of the experiment is a row, and its status is the
database's: pending, cancelled and failed jobs stay visible, and a completed job
whose folder is gone shows as ``missing``.  With ``sweep_dir``, the jobs the
sweep queued (its ``dr_exp_jobs.jsonl``) that have no folder show as ``missing``.

pandas (and pyarrow, for :func:`parquet_bytes`) are optional: ``pip install
'dr_exp[results]'``.  :func:`rows_for_jobs` needs neither: ``dr_exp.notify``
finds a sweep's best job with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from dr_exp import jobfiles
from dr_exp.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd


class ResultsError(BadInput):
    """Bad input to results (reported as one line)."""


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ResultsError(
            "results need pandas: pip install pandas (or 'dr_exp[results]')"
        ) from None
    return pandas


def typed(value: str) -> Any:
    """An override's value as a number, bool or None when it reads as one."""
    text = value.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", ""):
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def override_columns(overrides: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+")
        if not sep or key.startswith("~"):
            continue
        out[key.strip()] = typed(value)
    return out


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_job_folder(folder: Path) -> dict:
    """What one output folder says about its job: id, status, overrides, metrics."""
    info = jobfiles.read_job_file(folder) or {}
    overrides = info.get("overrides") or []
    overrides_file = folder / ".hydra" / "overrides.yaml"
    if overrides_file.exists():
        import yaml

        try:
            loaded = yaml.safe_load(overrides_file.read_text())
            overrides = loaded if isinstance(loaded, list) else overrides
        except yaml.YAMLError:
            pass
    metrics = _read_json(folder / jobfiles.METRICS_FILE)
    if not isinstance(metrics, dict):
        value = info.get("return_value")
        if isinstance(value, dict):
            metrics = value.get("metrics") if isinstance(value.get("metrics"), dict) else value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics = {"return_value": value}
        else:
            metrics = {}
    status = info.get("status")
    has_error = (folder / jobfiles.ERROR_FILE).exists()
    if status not in ("completed", "failed"):
        if has_error:
            status = "failed"
        elif status == "running":
            status = "incomplete"  # running now, or its process died unrecorded
        elif not info:  # a folder dr_exp did not run (e.g. Hydra's basic launcher)
            status = "completed" if (folder / jobfiles.METRICS_FILE).exists() else "unknown"
    return {
        "job_id": info.get("id"),
        "status": status,
        "overrides": [str(o) for o in overrides],
        "metrics": _flatten(metrics),
        "output_dir": str(folder),
    }


def _job_folders(sweep_dir: Path) -> list[Path]:
    """Folders under ``sweep_dir`` that hold a job (``.hydra/`` or ``job.json``)."""
    found = []
    for root, dirs, files in os.walk(sweep_dir):
        if ".hydra" in dirs or jobfiles.JOB_FILE in files:
            found.append(Path(root))
            dirs[:] = []  # a job folder holds no other jobs
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return found


def _rows_from_sweep_dir(sweep_dir: Path) -> list[dict]:
    if not sweep_dir.is_dir():
        raise ResultsError(f"no sweep folder at {sweep_dir}")
    rows = [read_job_folder(folder) for folder in _job_folders(sweep_dir)]
    seen = {r["job_id"] for r in rows if r["job_id"] is not None}
    for entry in jobfiles.read_manifest(sweep_dir):
        if entry.get("id") not in seen:
            seen.add(entry.get("id"))
            rows.append(
                {
                    "job_id": entry.get("id"),
                    "status": "missing",
                    "overrides": entry.get("overrides") or [],
                    "metrics": {},
                    "output_dir": entry.get("output_dir"),
                }
            )
    return rows


def rows_for_jobs(jobs: Sequence[dict]) -> list[dict]:
    """The rows of database jobs (``JobDB.list_jobs``): what each folder says, with the
    database's status; a completed job whose folder is gone is ``missing``."""
    rows = []
    for job in jobs:
        folder = Path(job["output_dir"]) if job["output_dir"] else None
        status = job["status"]
        if folder is not None and folder.is_dir():
            row = read_job_folder(folder)
            row["job_id"] = job["id"]
        else:
            row = {"job_id": job["id"], "overrides": job["overrides"], "metrics": {}}
            row["output_dir"] = job["output_dir"]
            if status == "completed":
                status = "missing"  # completed, but its folder is gone
        row["status"] = status
        row["experiment"] = job["experiment"]
        rows.append(row)
    return rows


def _rows_from_db(
    experiment: Optional[str],
    db: Optional[str],
    base_path: Optional[str],
    tags: Sequence[str],
    sweep_id: Optional[int] = None,
) -> list:
    from dr_exp.db import JobDB
    from dr_exp.paths import job_db as db_path_for

    store = JobDB.open(db_path_for(db, base_path), create=False)
    try:
        ids = store.sweep_job_ids(sweep_id) if sweep_id is not None else None
        jobs = store.list_jobs(experiment=experiment, tags=list(tags) or None, ids=ids)
    finally:
        store.close()
    return rows_for_jobs(jobs)


def _by_job_id(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["job_id"] is None, r["job_id"] or 0))


def load(
    experiment: Optional[str] = None,
    sweep_dir: Union[str, Path, Sequence[Union[str, Path]], None] = None,
    db: Union[str, Path, None] = None,
    group_by: Union[str, Sequence[str], None] = None,
    base_path: Union[str, Path, None] = None,
    tags: Sequence[str] = (),
    sweep_id: Optional[int] = None,
) -> pd.DataFrame:
    """One row per job (or, with ``group_by``, per group: mean, std and count of each metric).

    ``sweep_dir`` reads only that folder; several folders give one table whose
    first column, ``sweep``, names each row's folder (to compare sweeps side by
    side).  Otherwise the database (``db``, or ``<base_path>/.dr_exp/jobs.db``,
    or the default) lists the jobs of ``experiment`` (all experiments when None;
    only those with every tag in ``tags``; only sweep ``sweep_id``'s when given),
    and their folders give the rest.
    """
    pd = _pandas()
    labeled = False
    if sweep_dir is not None:
        if tags:
            raise ResultsError("tags live in the database; filter a sweep folder by its columns")
        folders = [sweep_dir] if isinstance(sweep_dir, (str, Path)) else list(sweep_dir)
        labeled = len(folders) > 1
        rows = []
        for folder in folders:
            found = _by_job_id(_rows_from_sweep_dir(Path(folder).expanduser()))
            rows += [dict(r, sweep=str(folder)) for r in found]
    else:
        rows = _by_job_id(
            _rows_from_db(
                experiment,
                str(db) if db else None,
                str(base_path) if base_path else None,
                tags,
                sweep_id,
            )
        )
    override_keys: dict[str, None] = {}
    metric_keys: dict[str, None] = {}
    records = []
    for row in rows:
        record: dict[str, Any] = {"sweep": row.get("sweep")} if labeled else {}
        record.update(job_id=row["job_id"], status=row["status"])
        if "experiment" in row:
            record["experiment"] = row["experiment"]
        for key, value in override_columns(row["overrides"]).items():
            override_keys.setdefault(key)
            record[key] = value
        for key, value in row["metrics"].items():
            name = key if key not in record else f"metrics.{key}"
            metric_keys.setdefault(name)
            record[name] = value
        record["output_dir"] = row["output_dir"]
        records.append(record)
    base = (["sweep"] if labeled else []) + ["job_id", "status"]
    base += ["experiment"] if sweep_dir is None else []
    columns = base + list(override_keys) + list(metric_keys) + ["output_dir"]
    df = pd.DataFrame.from_records(records, columns=columns)
    if group_by:
        keys = [k.strip() for k in group_by.split(",")] if isinstance(group_by, str) else group_by
        df = _grouped(pd, df, list(keys), list(metric_keys))
    return df


def _grouped(pd: Any, df: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean, std and count of every numeric metric per group (seeds are what varies)."""
    unknown = [k for k in keys if k not in df.columns]
    if unknown:
        known = [c for c in df.columns if c not in ("job_id", "status", "output_dir")]
        raise ResultsError(
            f"cannot group by {unknown[0]!r}: no such column; columns: {', '.join(known) or 'none'}"
        )
    numeric = [
        m
        for m in metrics
        if m not in keys
        and pd.api.types.is_numeric_dtype(pd.to_numeric(df[m], errors="coerce"))
        and df[m].map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).any()
    ]
    groups = df.groupby(keys, dropna=False, sort=True)
    out = groups.size().rename("jobs").to_frame()
    out["completed"] = groups["status"].apply(lambda s: int((s == "completed").sum()))
    for m in numeric:
        values = pd.to_numeric(df[m], errors="coerce").groupby([df[k] for k in keys], dropna=False)
        out[f"{m}_mean"] = values.mean()
        out[f"{m}_std"] = values.std()
        out[f"{m}_count"] = values.count()
    return out.reset_index()


def best(df: pd.DataFrame, metric: str, top: int = 1, mode: str = "min") -> pd.DataFrame:
    """The ``top`` rows with the best ``metric`` (the smallest with ``min``), best first.

    With a ``sweep`` column (several sweeps side by side), the best of each sweep.
    A grouped table ranks by ``<metric>_mean``.  Rows without a number are left out.
    """
    pd = _pandas()
    column = metric if metric in df.columns else f"{metric}_mean"
    if column not in df.columns:
        known = [c for c in df.columns if c not in ("job_id", "status", "output_dir", "sweep")]
        raise ResultsError(f"no metric {metric!r}; columns: {', '.join(known) or 'none'}")
    if mode not in ("min", "max"):
        raise ResultsError(f"mode must be min or max, got {mode!r}")
    if top < 1:
        raise ResultsError(f"top must be 1 or more, got {top}")
    rank = "__rank__"
    ranked = df.assign(**{rank: pd.to_numeric(df[column], errors="coerce")}).dropna(subset=[rank])
    ranked = ranked.sort_values(rank, ascending=mode == "min", kind="stable")
    if "sweep" in ranked.columns:
        order = {name: i for i, name in enumerate(df["sweep"].drop_duplicates())}
        ranked = ranked.groupby("sweep", sort=False).head(top)
        ranked = ranked.sort_values("sweep", key=lambda s: s.map(order), kind="stable")
    else:
        ranked = ranked.head(top)
    return ranked.drop(columns=rank).reset_index(drop=True)


def parquet_bytes(df: pd.DataFrame) -> bytes:
    """The table as a Parquet file.  A column that mixes kinds of value (numbers and
    text, as an override may) is written as text, since a Parquet column has one type."""
    try:
        import pyarrow  # noqa: F401 - pandas writes Parquet through it
    except ImportError:
        raise ResultsError(
            "--format parquet needs pyarrow: pip install pyarrow (or 'dr_exp[results]')"
        ) from None
    import io

    def kind(value: Any) -> str:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return "number" if number else type(value).__name__

    out = df.copy()
    for name in out.columns:
        values = [v for v in out[name] if v is not None and v == v]  # not None, not NaN
        if out[name].dtype == object and len({kind(v) for v in values}) > 1:
            out[name] = out[name].map(lambda v: v if v is None or v != v else str(v))
    buffer = io.BytesIO()
    out.to_parquet(buffer, index=False)
    return buffer.getvalue()
