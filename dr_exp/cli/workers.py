"""Running jobs: ``worker``, ``system launcher``, ``system worker`` and ``workers submit``.

The worker, the node supervisor and submitit import Hydra, NVML and more, so
each command imports its engine only when it runs.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import click

import dr_exp.cli.options as o
from dr_exp import paths

WORKER_HELP = (
    "Claim jobs (highest priority first) and run each in its own process, renewing the "
    "job's lease while it runs; exit after the queue has been empty --idle-timeout seconds. "
    "SIGTERM/SIGINT/SIGUSR1/SIGUSR2 forward the signal to the job, wait --grace seconds, "
    "put the job back to pending (attempts unchanged) and exit."
)
SUPERVISOR_HELP = (
    "Start --workers-per-gpu workers pinned to each GPU this process may use "
    "(CUDA_VISIBLE_DEVICES, else NVML; --cpu-workers CPU workers when there is none). A "
    "worker that dies is restarted with backoff; one that crash-loops is given up, with the "
    "reason logged. Workers stop taking jobs when less than --reserve-minutes of --max-hours "
    "is left, and exit after --idle-timeout seconds of empty queue; the supervisor exits "
    "when they all have."
)


def _run_worker(
    idle_timeout: float,
    grace: float,
    max_jobs: Optional[int],
    lease: float,
    heartbeat: float,
    max_hours: Optional[float],
    reserve_minutes: float,
    stop_claiming_at: Optional[float],
) -> int:
    o.check_lease(lease, heartbeat)
    stop_at = o.claim_deadline(max_hours, reserve_minutes, stop_claiming_at)
    from dr_exp import allocation

    deadline = allocation.worker_deadline(max_hours)
    if deadline is not None:  # the worker's claims fit its jobs in what is left of it
        os.environ[allocation.ENV_DEADLINE] = repr(deadline)
    from dr_exp.worker import Worker  # imports Hydra: only once the options are good

    o.log_to_stderr()
    scope = o.scope()
    worker = Worker(
        scope.open_db(),
        experiment=scope.experiment,
        idle_timeout=idle_timeout,
        grace_period=grace,
        max_jobs=max_jobs,
        lease_s=lease,
        heartbeat_s=heartbeat,
        stop_claiming_at=stop_at,
        supervisor=os.environ.get(paths.ENV_SUPERVISOR),
    )
    return worker.run()


@click.command(
    "worker", help=WORKER_HELP, short_help="Claim and run jobs until the queue stays empty."
)
@o.worker_options
@o.common
def worker(**options: Any) -> int:
    return _run_worker(**options)


@click.group("system", cls=o.OrderedGroup, short_help="Run the node supervisor or a single worker.")
def system() -> None:
    """Run the node supervisor or a single worker, inside an allocation or on any GPU box."""


@system.command(
    "launcher",
    help=SUPERVISOR_HELP,
    short_help="The node supervisor: N workers per GPU, restarted when they die.",
)
@o.supervisor_options
@o.common
def launcher(workers_per_gpu: int, **options: Any) -> int:
    settings = _supervisor_settings(**options)
    from dr_exp.supervisor import NodeSupervisor, SupervisorSettings

    o.log_to_stderr()
    scope = o.scope()
    scope.open_db().close()  # fail here, once, rather than in every worker
    return NodeSupervisor(
        SupervisorSettings(
            db_path=scope.db_path(),
            experiment=scope.experiment,
            workers_per_gpu=workers_per_gpu,
            **settings,
        )
    ).run()


@system.command("worker", help=WORKER_HELP, short_help="A single worker (as `dr_exp worker`).")
@o.worker_options
@o.common
def system_worker(**options: Any) -> int:
    return _run_worker(**options)


def _supervisor_settings(
    cpu_workers: Optional[int],
    max_hours: Optional[float],
    reserve_minutes: float,
    idle_timeout: float,
    grace: float,
    lease: float,
    heartbeat: float,
    crash_limit: int,
    crash_window: float,
) -> dict:
    """The SupervisorSettings fields (other than the database and workers per GPU)."""
    o.check_lease(lease, heartbeat)
    return {
        "cpu_workers": cpu_workers,
        "max_hours": max_hours,
        "reserve_minutes": reserve_minutes,
        "idle_timeout": idle_timeout,
        "lease_s": lease,
        "heartbeat_s": heartbeat,
        "grace_s": grace,
        "crash_limit": crash_limit,
        "crash_window_s": crash_window,
    }


@click.group("workers", cls=o.OrderedGroup, short_help="Add SLURM workers to an existing queue.")
def workers() -> None:
    """Add workers to an existing queue, without a new sweep."""


@workers.command("submit", short_help="Submit a SLURM job array of node supervisors for the queue.")
@o.supervisor_options
@o.slurm_options
@o.common
def workers_submit(
    workers_per_gpu: int,
    array: int,
    partition: Optional[str],
    qos: Optional[str],
    account: Optional[str],
    gpus_per_node: Optional[int],
    cpus_per_task: Optional[int],
    mem_gb: Optional[int],
    timeout_min: int,
    array_parallelism: int,
    name: Optional[str],
    folder: Optional[str],
    setup: Optional[list],
    additional: dict,
    **options: Any,
) -> int:
    """Submit, through submitit, a SLURM job array whose tasks each run `dr_exp system
    launcher` with these supervisor options. No new sweep is needed: the workers drain what
    is queued."""
    settings = _supervisor_settings(**options)
    from dr_exp.slurm import submit_workers

    scope = o.scope()
    scope.open_db().close()
    slurm = {
        "partition": partition,
        "qos": qos,
        "account": account,
        "gpus_per_node": gpus_per_node,
        "cpus_per_task": cpus_per_task,
        "mem_gb": mem_gb,
        "timeout_min": timeout_min,
        "array_parallelism": array_parallelism,
        "submitit_folder": folder,
        "setup": setup,
        "additional_parameters": additional,
        "name": name,
    }
    ids = submit_workers(
        scope.db_path(),
        scope.experiment,
        slurm,
        workers_per_gpu=workers_per_gpu,
        supervisor=settings,
        force_tasks=array,
    )
    print(f"submitted SLURM job(s) {', '.join(ids)}: {array} array task(s)")
    return 0
