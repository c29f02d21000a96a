"""Naming and recording a finished output folder: what the callback and the worker share."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from dr_exp.sync.queue import SyncQueue, Target

# The settings that make a Target (the rest say where the queue and the base are).
TARGET_SETTINGS = ("dest", "options", "rsync_args", "bwlimit", "background")


def relative_name(output_dir: str, base: Optional[str]) -> str:
    """Where a folder goes under the destination: its path below ``base``.

    A folder outside ``base`` keeps its whole absolute path (without the leading /).
    """
    path = os.path.abspath(output_dir)
    if base:
        base = os.path.abspath(base)
        if path == base:
            return os.path.basename(path) or "root"
        if path.startswith(base.rstrip("/") + "/"):
            return os.path.relpath(path, base)
    return path.lstrip("/") or "root"


def record_folder(
    queue: os.PathLike | str,
    settings: dict,
    output_dir: os.PathLike | str,
    base: Optional[os.PathLike | str],
    experiment: Optional[str],
    job_id: Optional[int],
    since: Optional[float],
) -> Optional[int]:
    """Record ``output_dir`` in ``queue`` for upload to ``settings``' destination.

    A new queue is group-writable when its folder is marked shared (paths.ensure_dir):
    this runs in the job's process, which does not know hydra.launcher.group_shared.
    """
    path = os.path.abspath(output_dir)
    rel = relative_name(path, str(base) if base else os.getcwd())
    target = Target(**{k: settings[k] for k in TARGET_SETTINGS})
    with SyncQueue.open(Path(queue)) as q:
        return q.record(path, target, rel, experiment=experiment, job_id=job_id, since=since)
