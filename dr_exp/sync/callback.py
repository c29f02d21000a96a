"""Recording finished folders: the Hydra callback, the launcher's settings, and the Python API.

:func:`record_finished` is the one entry point for anything that finishes jobs
(the Hydra callback in the job's process, the worker for a job that died, user
code).  This module imports Hydra's Callback base (~300 ms), so the package
exposes it lazily and the uploader imports it only when a sweep has callbacks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.experimental.callback import Callback

from dr_exp import paths
from dr_exp.config import DrExpSyncConf
from dr_exp.errors import BadInput
from dr_exp.sync.destinations import check_dest
from dr_exp.sync.folders import record_folder
from dr_exp.sync.queue import SyncQueue

log = logging.getLogger("dr_exp.sync")

SETTINGS = tuple(f.name for f in fields(DrExpSyncConf))  # hydra.launcher.sync.*


def validate_settings(raw: Any) -> dict:
    """Check ``hydra.launcher.sync.*``; returns them normalized, or {} when sync is off.

    Raises ``ValueError("<key>: <why>")``.
    """
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(SETTINGS))
    if unknown:
        raise BadInput(f"{unknown[0]}: unknown setting; known: {', '.join(SETTINGS)}")
    if raw.get("dest") in (None, ""):
        return {}
    try:
        dest = check_dest(raw["dest"])
    except ValueError as e:
        raise BadInput(f"dest: {e}") from None
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise BadInput(f"options: must be a mapping of fsspec storage options, got {options!r}")
    rsync_args = raw.get("rsync_args") or []
    if isinstance(rsync_args, str) or not all(isinstance(a, str) for a in rsync_args):
        raise BadInput(f"rsync_args: must be a list of arguments, got {rsync_args!r}")
    bwlimit = raw.get("bwlimit") or 0
    if isinstance(bwlimit, bool) or not isinstance(bwlimit, (int, float)) or bwlimit < 0:
        raise BadInput(f"bwlimit: must be 0 (unlimited) or more KiB/s, got {bwlimit!r}")
    background = raw.get("background", True)
    if not isinstance(background, bool):
        raise BadInput(f"background: must be true or false, got {background!r}")
    for key in ("queue", "base"):
        if raw.get(key) is not None and not str(raw[key]).strip():
            raise BadInput(f"{key}: must be a path or null")
    return {
        "dest": dest,
        "queue": str(paths.sync_queue(raw["queue"])) if raw.get("queue") else None,
        "base": os.path.abspath(os.path.expanduser(raw["base"])) if raw.get("base") else None,
        "options": options,
        "rsync_args": list(rsync_args),
        "bwlimit": float(bwlimit),
        "background": background,
    }


def record_finished(
    output_dir: os.PathLike | str,
    dest: str,
    *,
    queue: Optional[os.PathLike | str] = None,
    base: Optional[os.PathLike | str] = None,
    options: Optional[dict] = None,
    rsync_args: Sequence[str] = (),
    bwlimit: float = 0.0,
    background: bool = True,
    experiment: Optional[str] = None,
    job_id: Optional[int] = None,
    since: Optional[float] = None,
) -> Optional[int]:
    """Queue a finished job's output folder for upload to ``dest``; returns its queue id.

    The folder goes to ``<dest>/<its path below base>`` (``base`` defaults to the
    current directory).  ``queue`` defaults to :func:`dr_exp.paths.sync_queue`.
    Recording a folder again uploads it again (only its new and changed files).
    With ``since``, a folder already recorded at or after that time is left as
    it is (None is returned): the worker uses it to avoid a second upload of a
    folder that the job's own callback recorded.  Cheap: one small transaction.
    """
    settings = validate_settings(
        {
            "dest": dest,
            "options": options,
            "rsync_args": list(rsync_args),
            "bwlimit": bwlimit,
            "background": background,
        }
    )
    queue_path = paths.sync_queue(queue)
    return record_folder(queue_path, settings, output_dir, base, experiment, job_id, since)


class SyncCallback(Callback):
    """Records each finished job's output folder for upload (failed jobs too).

    Enabled by ``hydra.launcher.sync.dest=...``, or directly::

        hydra:
          callbacks:
            sync:
              _target_: dr_exp.sync.SyncCallback
              dest: s3://bucket/results

    It is built where the sweep starts and pickled with it; ``on_job_end`` runs in
    the job's process.  It never fails a job: any error is logged as a warning.
    """

    def __init__(
        self,
        dest: str,
        queue: Optional[str] = None,
        base: Optional[str] = None,
        options: Optional[dict] = None,
        rsync_args: Optional[Sequence[str]] = None,
        bwlimit: float = 0.0,
        background: bool = True,
    ) -> None:
        settings = validate_settings(
            {
                "dest": dest,
                "queue": queue,
                "base": base,
                "options": _plain(options),
                "rsync_args": _plain(rsync_args),
                "bwlimit": bwlimit,
                "background": background,
            }
        )
        self.dest: str = settings["dest"]
        # Resolved now, where the sweep starts: a job may run in another directory.
        self.queue = str(paths.sync_queue(settings["queue"]))
        self.base: Optional[str] = settings["base"]
        self.options: dict = settings["options"]
        self.rsync_args: list[str] = settings["rsync_args"]
        self.bwlimit: float = settings["bwlimit"]
        self.background: bool = settings["background"]

    def record(
        self,
        output_dir: str,
        base: Optional[str] = None,
        experiment: Optional[str] = None,
        job_id: Optional[int] = None,
        since: Optional[float] = None,
    ) -> Optional[int]:
        """record_finished with this callback's settings, checked once when it was built."""
        return record_folder(
            self.queue, vars(self), output_dir, self.base or base, experiment, job_id, since
        )

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        try:
            from omegaconf import OmegaConf

            output_dir = OmegaConf.select(config, "hydra.runtime.output_dir")
            if not output_dir:
                return
            job_id = OmegaConf.select(config, "hydra.job.id")
            self.record(
                str(output_dir),
                base=OmegaConf.select(config, "hydra.runtime.cwd"),
                experiment=OmegaConf.select(config, "hydra.job.name"),
                job_id=int(job_id) if str(job_id).isdigit() else None,  # dr_exp's job id
            )
        except Exception as e:  # never fail the job over its upload
            log.warning("dr_exp sync: could not record %s for upload: %s", output_dir_of(config), e)


def output_dir_of(config: Any) -> str:
    """The job's output folder, for a warning; a placeholder when the config lacks it."""
    try:
        return str(config.hydra.runtime.output_dir)
    except Exception:
        return "the output folder"


def _plain(value: Any) -> Any:
    """Hydra hands callbacks DictConfig/ListConfig values; store plain ones."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def attach_callback(
    hydra_context: Any, settings: dict, db_path: Path, group_shared: bool = False
) -> SyncCallback:
    """Add the sweep's SyncCallback to the callbacks that travel with it to the workers.

    Creates the queue file now, so that uploaders started on other nodes find it;
    with ``group_shared`` (``hydra.launcher.group_shared``) it is 0660 in a 2770
    folder, so that a group's workers and jobs can all write to it.
    """
    queue = paths.sync_queue(settings.get("queue"), db=db_path)
    callback = SyncCallback(**dict(settings, queue=str(queue)))
    if callback.base is None:
        callback.base = os.getcwd()
    SyncQueue.open(queue, group_shared=group_shared).close()
    callbacks = getattr(hydra_context, "callbacks", None)
    if callbacks is not None and not any(
        isinstance(c, SyncCallback) and vars(c) == vars(callback) for c in callbacks.callbacks
    ):
        callbacks.callbacks.append(callback)
    return callback


def sync_settings(callbacks: Sequence[Any]) -> list[dict]:
    """The settings of the SyncCallbacks among a sweep's Hydra callbacks, as plain dicts:
    what a job's process reports to its worker, which records the folder of a job that
    died before its on_job_end."""
    return [dict(vars(c)) for c in callbacks if isinstance(c, SyncCallback)]
