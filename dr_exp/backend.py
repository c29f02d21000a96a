"""The storage contract: what a job queue backend must provide to workers and the CLI.

:class:`dr_exp.db.JobDB` implements it on one SQLite file.  A backend on a
server database would implement the same methods, with the same guarantees,
and the worker loop, the launcher and the CLI would not change.

The guarantees every implementation keeps:

- **Atomic claims.**  ``claim`` hands each pending job to exactly one worker:
  the highest priority first, first in first out within a priority.  The same
  call records the worker's previous outcome (``finished``) and reaps expired
  leases, so a lost job goes back to the queue without a separate janitor.
- **Fenced changes.**  ``finish``, ``heartbeat``, ``requeue`` and
  ``set_output_dir`` change a job only while it is ``running`` under that
  ``worker``; otherwise they change nothing and say so (False, or
  ``"lost"``/``"cancelled"``), which makes a stale worker harmless.
- **Leases.**  A claimed job is the worker's for ``lease_s`` seconds, renewed
  by ``heartbeat``, or by ``beat``, which records the worker's liveness and
  telemetry in the same transaction (one write per heartbeat interval).  ``reap_expired`` puts a job whose lease ran out back to
  pending, with one more attempt counted, or fails it after its
  ``max_attempts`` ("lost after N attempts").
- **Whole batches.**  ``enqueue_batch``, ``cancel``, ``retry`` and
  ``set_priority`` validate everything first and write in one transaction:
  bad input changes nothing.
- **History.**  Every attempt is kept (worker, host, start, end, outcome).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional, Protocol, Sequence

if TYPE_CHECKING:
    from dr_exp.db import Enqueued, Job, Outcome, SweepRow


class JobQueue(Protocol):
    """The calls the worker loop, the launcher and the CLI make on a job queue."""

    # -- submitting -------------------------------------------------------------------
    def add_sweep(self, **sweep: object) -> int:
        """Store what runs a sweep's jobs (a signed payload, or a trainer spec); its id."""

    def get_sweep(self, sweep_id: int) -> Optional[SweepRow]: ...

    def enqueue_batch(
        self, sweep_id: int, experiment: str, jobs: Sequence[tuple[int, Sequence[str]]], **how: Any
    ) -> Enqueued:
        """Queue (job number, overrides) pairs with ``priority`` (one, or one per job),
        ``tags``, ``max_attempts``, matched against existing identities per ``on_duplicate``."""

    # -- the worker's side ------------------------------------------------------------
    def claim(self, worker: str, host: str, **options: Any) -> Optional[Job]:
        """The next job for ``worker`` (of ``experiment`` only, if given; none of the sweeps
        in ``skip_sweeps``), under a lease of ``lease_s``, after recording ``finished``
        (job id, Outcome); None when none is due."""

    def has_work(self, experiment: Optional[str] = None) -> bool:
        """Anything to claim or reap?  A read that takes no write lock (idle polling)."""

    def heartbeat(self, job_id: int, worker: str, lease_s: float = ...) -> str:
        """Renew the lease: ``ok``, or ``cancelled``/``lost`` when the job is not ours."""

    def beat(
        self,
        worker: str,
        state: str,
        job: Optional[Job] = None,
        telemetry: Optional[dict] = None,
        lease_s: float = ...,
    ) -> Optional[str]:
        """One transaction: the worker's liveness and telemetry, and (given ``job``) its lease
        renewed with ``heartbeat``'s guarantees and answer."""

    def set_output_dir(self, job_id: int, worker: str, output_dir: str) -> bool: ...

    def finish(self, job_id: int, worker: str, outcome: Outcome) -> bool:
        """Record completed or failed; False when the job is no longer ours."""

    def requeue(self, job_id: int, worker: str, count_attempt: bool = False) -> bool:
        """Give a running job back (a preempted job does not count an attempt)."""

    def reap_expired(self) -> list[int]:
        """Requeue or fail the running jobs whose lease ran out; their ids."""

    # -- the worker registry ------------------------------------------------------------
    def register_worker(self, info: dict) -> None: ...

    def worker_heartbeat(
        self, worker: str, state: str, job_id: Optional[int], telemetry: Optional[dict] = None
    ) -> None: ...

    def live_workers(self, max_age_s: float, experiment: Optional[str] = None) -> list[dict]: ...

    # -- watching -------------------------------------------------------------------------
    def status_counts(self, experiment: Optional[str] = None) -> list[dict]:
        """One row per (experiment, status) with its count ``n``."""

    def list_jobs(self, **filters: Any) -> list[dict]:
        """Jobs matching every filter given: ``statuses``, ``experiment``, ``ids``, ``tags``
        (jobs that carry all of them), ``sweep_ids``; at most ``limit``, in id order."""

    def get_job(self, job_id: int) -> Optional[dict]: ...

    def attempts(self, job_id: int) -> list[dict]: ...

    def last_attempts(self, ids: Sequence[int]) -> dict[int, dict]: ...

    def progress(self, job_ids: Iterable[int]) -> dict[str, int]: ...

    def results(self, job_ids: Sequence[int]) -> dict[int, dict]: ...

    def sweeps(self) -> list[dict]: ...

    # -- managing ---------------------------------------------------------------------------
    def cancel(self, ids: Sequence[int], strict: bool = True) -> dict[str, list[int]]: ...

    def retry(self, ids: Sequence[int], attempts: int = ..., strict: bool = True) -> list[int]: ...

    def set_priority(
        self, ids: Sequence[int], value: Optional[int] = None, boost: Optional[int] = None
    ) -> list[tuple[int, int, int]]: ...

    def close(self) -> None: ...
