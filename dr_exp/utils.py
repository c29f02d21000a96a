"""Helpers: ``StructuredLogger`` for job code, ``import_function`` for names like pkg.mod:fn.

``StructuredLogger`` writes events that ``dr_exp show``/``logs`` display:

    from dr_exp.utils import StructuredLogger

    logger = StructuredLogger(job_id)
    logger.log_event("epoch_complete", {"epoch": 3, "train_loss": 0.41, "val_acc": 0.88})

Each event is one JSON line appended to ``events.jsonl`` in the job's output
folder: ``{"time": ..., "ts": ..., "job_id": ..., "event": ..., "data": {...}}``.
Inside a dr_exp job the folder comes from ``$DR_EXP_OUTPUT_DIR``, which the
worker sets for Hydra and trainer jobs alike; under plain Hydra it is the
run's output folder; anywhere else it is the current directory.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from dr_exp.errors import BadInput
from dr_exp.jobfiles import EVENTS_FILE
from dr_exp.paths import ENV_JOB_ID, ENV_OUTPUT_DIR


def _default_dir() -> Path:
    if os.environ.get(ENV_OUTPUT_DIR):
        return Path(os.environ[ENV_OUTPUT_DIR])
    try:  # a Hydra run without dr_exp: its output folder
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - no Hydra, or no run: fall back to the cwd
        pass
    return Path.cwd()


class StructuredLogger:
    """Appends timestamped JSON events to ``<output folder>/events.jsonl``."""

    def __init__(
        self, job_id: Union[int, str, None] = None, output_dir: Union[str, Path, None] = None
    ) -> None:
        self.job_id = job_id if job_id is not None else os.environ.get(ENV_JOB_ID)
        self.path = Path(output_dir or _default_dir()) / EVENTS_FILE

    def log_event(self, event: str, data: Optional[dict[str, Any]] = None) -> dict:
        """Append one event; returns the record written.  Values that JSON lacks become text."""
        now = time.time()
        record = {
            "time": dt.datetime.fromtimestamp(now).astimezone().isoformat(timespec="milliseconds"),
            "ts": now,
            "job_id": self.job_id,
            "event": str(event),
            "data": dict(data or {}),
        }
        line = json.dumps(record, default=_jsonable) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:  # one write per line: lines never interleave
            f.write(line)
        return record


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy and torch scalars and arrays
        return obj.tolist()
    return str(obj)


def read_events(output_dir: Union[str, Path]) -> list[dict]:
    """The events of a job folder, oldest first (torn or foreign lines are skipped)."""
    path = Path(output_dir) / EVENTS_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def format_event(event: dict) -> str:
    data = event.get("data") or {}
    fields = " ".join(f"{k}={v}" for k, v in data.items()) if isinstance(data, dict) else data
    return f"{event.get('time', '')}  {event.get('event', '')}  {fields}".rstrip()


class FunctionNotFound(BadInput):
    """A ``pkg.module:function`` that cannot be imported (reported as one line)."""


def split_function_name(name: str, what: str = "function") -> tuple[str, str]:
    """``pkg.module:fn`` (or ``pkg.module.fn``) -> (module, function)."""
    name = str(name).strip()
    module, sep, attr = name.partition(":")
    if not sep:
        module, _, attr = name.rpartition(".")
    if not module or not attr or not all(p.isidentifier() for p in module.split(".")):
        raise FunctionNotFound(f"{what} must look like pkg.module:function, got {name!r}")
    return module, attr


def import_function(
    name: str, sys_path: Optional[list[str]] = None, what: str = "function"
) -> Callable[..., Any]:
    """Import ``name`` (``sys_path`` entries first); any failure is one FunctionNotFound line."""
    module_name, attr = split_function_name(name, what)
    for entry in reversed(sys_path or []):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        module = importlib.import_module(module_name)
    except BaseException as e:  # noqa: B036 - a SystemExit in user code is a bad name too
        text = f"{type(e).__name__}: {e}".replace("\n", " ")
        raise FunctionNotFound(f"cannot import {what} {name!r}: {text}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise FunctionNotFound(f"cannot import {what} {name!r}: {module_name} has no {attr!r}")
    if not callable(fn):
        raise FunctionNotFound(f"{what} {name!r} is not a function")
    return fn
