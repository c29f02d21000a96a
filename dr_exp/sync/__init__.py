"""Syncing results: finished output folders go to a durable queue, then to a destination.

    job ends ──> on_job_end: SyncCallback records the folder (one insert into
                 .sync_queue.db)                     │ the worker records it too, for a
                                                     │ job whose process died first
    uploader (a thread of each worker and supervisor, or `dr_exp sync run`)
      claims a due folder under a lease ──> sends new and changed files ──>
      checks sizes at the destination ──> uploaded  (or: failing, retried with backoff)

A job never waits for its upload, and an unreachable destination never fails
a job: it shows in ``dr_exp status`` and ``dr_exp sync status``.  A folder
whose uploader is killed keeps its lease until it expires, then the next
uploader finishes it.  A folder that gets new files after its upload (a job
resumed in it, or files appended later) is uploaded again: recording it again
does that, and uploaders re-scan recently uploaded folders for changed files.

The modules:

- :mod:`.queue`: the sync queue's SQL (``SyncQueue``, ``Target``, ``Folder``, ``LeaseLost``);
- :mod:`.destinations`: a path, rsync over ssh, or any fsspec URL;
- :mod:`.uploader`: ``Uploader``, and what workers and supervisors run (``WorkerSync``,
  ``SupervisorSync``);
- :mod:`.callback`: ``SyncCallback``, ``record_finished``, and the launcher's side
  (``validate_settings``, ``attach_callback``).

Hydra configs name ``dr_exp.sync.SyncCallback``, and user code calls
``dr_exp.sync.record_finished``.  These two are imported on first use (PEP 562): the callback needs Hydra's Callback base, which costs ~300 ms
that ``dr_exp sync status`` must not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dr_exp.sync.callback import SyncCallback, record_finished

# name -> the module of this package that defines it
_LAZY = {"SyncCallback": "callback", "record_finished": "callback"}

__all__ = ["SyncCallback", "record_finished"]
assert sorted(__all__) == sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once found, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
