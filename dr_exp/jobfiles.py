"""The files dr_exp keeps in output folders, so that results never need the database.

Each job's output folder (a Hydra multirun folder, or a trainer job's folder)
holds, beside Hydra's ``.hydra/`` and the job's own files:

- ``job.json``: the job's id, experiment, overrides and status, written by the
  job process when it starts (``running``) and again when it ends, with the
  return value (``completed``) or the error summary (``failed``);
- ``error.txt``: the traceback of a failed job;
- ``events.jsonl``: the events of ``dr_exp.utils.StructuredLogger``;
- ``metrics.json``: written by trainer jobs (and by apps that want to).

Each sweep folder holds ``dr_exp_jobs.jsonl``, one line per job the sweep
queued, so that a job that never produced a folder still shows as missing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from dr_exp.errors import UserError
from dr_exp.identity import normalize_overrides
from dr_exp.paths import ENV_EXPERIMENT, ENV_JOB_ID, ENV_OUTPUT_DIR, ENV_WORKER_ID

JOB_FILE = "job.json"
ERROR_FILE = "error.txt"
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "dr_exp_jobs.jsonl"


def write_json(path: Path, data: Any) -> None:
    """Write atomically, so a reader on a synced copy never sees half a file."""
    os.replace(_json_beside(path, data), path)


def _json_beside(path: Path, data: Any) -> Path:
    """``data`` as JSON in a temporary file beside ``path``, to be moved or linked there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return tmp


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically (a temporary name, then a rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class FolderTaken(UserError):
    """The output folder holds another job's ``job.json``: two sweeps resolved to one folder."""


def job_started(
    output_dir: str, job: Any, worker_id: Optional[str] = None, exclusive: bool = False
) -> None:
    """In the job process, before the job runs: write ``job.json``, set the environment.

    ``exclusive`` (a folder the user did not choose, see ``_take_folder``): FolderTaken,
    with nothing in the folder changed, when another job's results are there.  The
    environment (``$DR_EXP_JOB_ID``, ``$DR_EXP_OUTPUT_DIR``) is for StructuredLogger and
    for the job's own code.  An earlier attempt's ``error.txt`` is removed, so the folder
    tells the truth about this attempt.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (_take_folder if exclusive else write_json)(
        folder / JOB_FILE,
        {
            "id": job.id,
            "experiment": job.experiment,
            "job_num": job.job_num,
            "overrides": list(job.overrides),
            "attempt": job.attempts,
            "worker": worker_id or os.environ.get(ENV_WORKER_ID),
            "status": "running",
            "started": time.time(),
        },
    )
    os.environ[ENV_JOB_ID] = str(job.id)
    os.environ[ENV_OUTPUT_DIR] = output_dir
    os.environ[ENV_EXPERIMENT] = str(job.experiment)
    try:
        (folder / ERROR_FILE).unlink()
    except FileNotFoundError:
        pass


def _take_folder(path: Path, record: dict) -> None:
    """Write ``record`` as the ``job.json`` at ``path`` unless another job's is there.

    Two sweeps queued within the same second get the same default ``${now:...}``
    folder, and their jobs the same numbered folders in it.  The basic launcher, one
    sweep at a time, would overwrite the first one's results; here both jobs may even
    start at once.  The file is written under a temporary name and linked into place,
    which succeeds for exactly one of two jobs starting together; the other reads whose
    folder it is.  The same job again (an earlier attempt, a re-run of the same
    overrides) takes it over.  A folder the user chose (a fixed ``hydra.sweep.dir``) is
    not checked: running a changed job in it again, to resume it, is theirs to decide.
    """
    folder = path.parent
    tmp = _json_beside(path, record)
    try:
        try:
            os.link(tmp, path)  # atomic: fails when the file exists
            return
        except OSError:  # it exists (or hard links are not supported: look, then write)
            pass
        other = read_job_file(folder)
        if other is not None and not _same_job(other, record):
            raise FolderTaken(
                f"{folder} holds job {other.get('id')}'s results "
                f"({' '.join(other.get('overrides') or []) or 'no overrides'}), not this job's "
                f"({' '.join(record['overrides']) or 'no overrides'}): two sweeps queued close "
                "together resolved to the same ${now:...} folder; nothing there was changed; "
                "queue this job again (a new sweep gets a new folder) or set hydra.sweep.dir"
            )
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def _same_job(a: dict, b: dict) -> bool:
    """The same experiment and overrides: this job's earlier attempt, or a re-run of it (a
    job's id alone would match another queue's job)."""
    return a.get("experiment") == b["experiment"] and normalize_overrides(
        a.get("overrides") or []
    ) == normalize_overrides(b["overrides"])


def job_ended(output_dir: Optional[str], result: dict) -> None:
    """In the job process, after the job ran: record its status and return value."""
    if not output_dir:
        return
    path = Path(output_dir) / JOB_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    return_json = result.get("return_json")
    data.update(
        status=result.get("status"),
        ended=time.time(),
        return_value=json.loads(return_json) if return_json else None,
        error=result.get("error"),
    )
    try:
        write_json(path, data)
    except OSError:
        pass


def read_job_file(output_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(output_dir) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None


def append_manifest(sweep_dir: Path, entries: Iterable[dict]) -> None:
    """Record the jobs a sweep queued, one JSON line each, in its sweep folder."""
    lines = "".join(json.dumps(e) + "\n" for e in entries)
    if not lines:
        return
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(sweep_dir) / MANIFEST_FILE, "a") as f:
        f.write(lines)


def read_manifest(sweep_dir: Path) -> list[dict]:
    path = Path(sweep_dir) / MANIFEST_FILE
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from an interrupted write
    return entries


def write_error_file(output_dir: Optional[str], text: str) -> None:
    """A failed job's traceback, in its folder; never fails the worker that writes it."""
    if not output_dir:
        return
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / ERROR_FILE).write_text(text)
    except OSError:
        pass
