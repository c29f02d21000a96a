"""One interface for what a worker runs: the jobs of a Hydra sweep or of trainer functions.

A worker loads one :class:`JobContext` per sweep (``dr_exp.kinds.load_context``),
calls ``activate`` once in its own process before it forks that sweep's first
job, and ``run`` in each job's forked process.  With a fork server
(:mod:`dr_exp.forkserver`), ``load`` runs once in the server, and ``prepare``
there before each job's fork; its result reaches ``run``.  It never asks which kind a
context is: the Hydra kind lives in :mod:`dr_exp.hydra_sweep`, the trainer kind
in :mod:`dr_exp.trainer`, and a new kind of job is one more subclass and one
more entry in ``dr_exp.kinds.KINDS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from dr_exp.db import Job


class SweepUnavailable(Exception):
    """The sweep's jobs cannot run here: missing, not signed with our key, or not loadable."""


class JobContext(ABC):
    """What a worker needs to run any job of one sweep."""

    sweep_id: int
    cwd: str  # the directory the sweep was submitted from; jobs start there
    want_returns: bool  # does a waiting launcher read each job's JobReturn?
    settings: dict  # the sweep's signed settings (retry policy, notices), see dr_exp.config

    def activate(self) -> None:
        """In the worker, once per sweep before its first fork: state its jobs inherit."""
        return None  # most kinds have nothing to set up

    def load(self) -> bool:
        """In the sweep's fork server, once: what every job would otherwise load itself.
        Never raises: a sweep that cannot load fails each job in ``run``, and returns
        False so that the server is not kept (the next job loads afresh: a fixed file
        is seen)."""
        return True

    def prepare(self, job: Job) -> Any:
        """In the fork server, before ``job``'s fork: work to hand to ``run`` (None: none).
        Never raises: an error is handed over, and ``run`` fails the job with it."""
        return None

    @abstractmethod
    def run(self, job: Job, report: Callable[[dict], None], prepared: Any = None) -> dict:
        """In the job's own process: run ``job``; ``report({"output_dir": ...})`` as soon as
        the folder is known; return ``{"status", "output_dir", "return_json" | "error",
        "result_blob"?}``.  A ``{"sync": [...]}`` report names the sweep's sync
        destinations, so that the worker records the folder of a job that dies."""
