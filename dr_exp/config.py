"""``hydra/launcher=dr_exp``'s settings: the typed dataclasses Hydra's ConfigStore holds.

These dataclasses are the one declaration of every ``hydra.launcher.*``
setting: its name, type and default.  OmegaConf checks the types (and the
enum choices) when Hydra composes the config; :func:`check` adds only the
range and cross-field rules that a type cannot say.

Hydra imports this module (through ``hydra_plugins.dr_exp_launcher.config``) on
every start of every app, so it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

from dr_exp import defaults, paths
from dr_exp.failures import RETRYABLE


class Backend(str, Enum):
    """Where a sweep's workers run."""

    local = "local"  # worker processes on this machine
    slurm = "slurm"  # a SLURM job array of node supervisors, through submitit


class OnDuplicate(str, Enum):
    """What a re-run does with a job that exists already (same experiment, app, overrides)."""

    retry_failed = "retry_failed"  # skip completed/pending/running; queue failed/cancelled again
    skip = "skip"  # skip every existing job
    always = "always"  # queue every job anew


class NotifyMode(str, Enum):
    """Which value of notify_metric is the best one."""

    min = "min"  # a loss, an error rate
    max = "max"  # an accuracy, a reward


@dataclass
class DrExpSlurmConf(BaseQueueConf):
    """hydra-submitit-launcher's submitit_slurm keys (a config ports over), plus array_size.

    Each array task runs one node supervisor with workers_per_gpu workers per GPU.
    """

    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    name: str = "dr_exp-${hydra.job.name}"
    # The most array tasks one submission asks for; fewer when fewer jobs are pending.
    array_size: int = defaults.ARRAY_SIZE
    partition: Optional[str] = None
    qos: Optional[str] = None
    comment: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    gres: Optional[str] = None
    cpus_per_gpu: Optional[int] = None
    gpus_per_task: Optional[int] = None
    mem_per_gpu: Optional[str] = None
    mem_per_cpu: Optional[str] = None
    account: Optional[str] = None
    signal_delay_s: int = 120
    max_num_timeout: int = 0
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    array_parallelism: int = defaults.ARRAY_PARALLELISM
    setup: Optional[List[str]] = None
    # true: an array task whose time runs out (SLURM's warning signal, signal_delay_s before
    # the limit, or too little time left for any pending job) while work remains puts its
    # jobs back and requeues itself (scontrol requeue), so a fresh allocation goes on.
    requeue: bool = False


# hydra-submitit-launcher's shared keys, passed to submitit without a "slurm_" prefix.
SUBMITIT_BASE_KEYS = frozenset(f.name for f in fields(BaseQueueConf)) - {"submitit_folder"}


@dataclass
class DrExpSyncConf:
    """Upload each finished job's output folder (see README, "Syncing results")."""

    # null: off; a path, [user@]host:/path (rsync over ssh) or an fsspec URL (s3://...).
    dest: Optional[str] = None
    # The sync queue; null: $DR_EXP_SYNC_QUEUE, else .sync_queue.db next to the job database.
    queue: Optional[str] = None
    # The local folder that dest mirrors; null: the directory the multirun starts from.
    base: Optional[str] = None
    # fsspec storage options, e.g. {endpoint_url: "http://127.0.0.1:9000"}; typed Any so
    # that `sync.options={...}` can set a whole mapping on the command line.
    options: Any = None
    # Extra rsync arguments, e.g. [-e, "ssh -p 2222 -i ~/.ssh/id_sync"].
    rsync_args: List[str] = field(default_factory=list)
    # KiB/s per uploader; 0: unlimited.
    bwlimit: float = 0.0
    # false: only `dr_exp sync run` uploads (e.g. compute nodes without network).
    background: bool = True


@dataclass
class DrExpLauncherConf:
    _target_: str = "hydra_plugins.dr_exp_launcher.dr_exp_launcher.DrExpLauncher"
    # Groups jobs in the database; `dr_exp status/list --experiment` filter on it.
    experiment: str = "${hydra.job.name}"
    # 0-1000, higher runs first; FIFO within a priority.
    priority: int = defaults.PRIORITY
    tags: List[str] = field(default_factory=list)
    # The job database; null: $DR_EXP_DB, else .dr_exp/jobs.db under the current directory.
    db: Optional[str] = None
    # Local worker processes to start; null: one per GPU, else one per CPU core
    # (never more than the batch has jobs); 0: none, the queue is drained elsewhere.
    workers: Optional[int] = None
    # true: block with a progress bar and return real results (optimizing sweepers
    # need this); false: return right after enqueueing.
    wait: bool = True
    # Seconds a local worker waits on an empty queue before it exits; 0: never.
    idle_timeout: float = defaults.SWEEP_IDLE_TIMEOUT_S
    # Create the database folder and files group-readable and -writable (2770/0660).
    group_shared: bool = False
    # A job whose worker vanishes (lease expired) is retried up to this many
    # attempts in all, then marked failed ("lost after N attempts").
    max_attempts: int = defaults.MAX_ATTEMPTS
    # What a re-run does with jobs that exist already; see OnDuplicate.  Re-queued
    # jobs keep their job number and output folder.
    on_duplicate: OnDuplicate = OnDuplicate.retry_failed
    # pkg.module:function called with each job's composed config; returns its
    # priority (0-1000).  It costs one more composition per job (~40 ms).
    priority_fn: Optional[str] = None
    # Where workers run; with slurm, each array task runs workers_per_gpu workers per GPU.
    backend: Backend = Backend.local
    workers_per_gpu: int = 1
    slurm: DrExpSlurmConf = field(default_factory=DrExpSlurmConf)
    sync: DrExpSyncConf = field(default_factory=DrExpSyncConf)
    # A notice when the sweep ends (dr_exp.notify), sent once: null (none), a webhook URL
    # (http:// or https://: a POST of the JSON summary), or a command as a list of
    # arguments, e.g. [notify-send, "sweep done"] (the JSON on stdin; never a shell string).
    # Typed Any so that a URL or a list can be given on the command line.
    notify: Any = None
    # Also send one notice at the sweep's first failed job.
    notify_on_failure: bool = False
    # The metric whose best value (and its job) the summary reports; notify_mode says
    # whether the best is the smallest or the largest value.
    notify_metric: Optional[str] = None
    notify_mode: NotifyMode = NotifyMode.min
    # pkg.module:function called once the sweep ends, with its results table (a pandas
    # DataFrame, as dr_exp.results.load gives it), in the folder the sweep started from.
    on_sweep_end: Optional[str] = None
    # How many times a failure of each class is retried, after an exponential backoff:
    # e.g. {oom: 1, killed: 1, error: 0}; the classes are dr_exp.failures.RETRYABLE (a lost
    # job's attempts are max_attempts).  null: failures are final.  Typed Any (default
    # null) so that `retry={oom:1}` can set a whole mapping on the command line.
    retry: Any = None
    # The first retry's wait, in seconds; each next one waits twice as long (at most 10 min).
    retry_backoff_s: float = 10.0
    # Copy the project's source (the files git tracks, or snapshot_glob's matches) into the
    # sweep folder when the sweep is submitted; its jobs import from the copy.
    snapshot_code: bool = False
    snapshot_glob: Optional[str] = None
    # Load the sweep once per worker in a fork server, and fork each job from it (jobs
    # still see the project's files as they are when they start; see dr_exp.forkserver).
    # false: each job's process is forked from the worker and loads the sweep itself.
    fork_server: bool = True
    # Minutes one job is expected to take; null: the median of the sweep's completed jobs
    # (unknown until one completes).  A worker does not claim a job that would not end
    # before its allocation does (SLURM's time limit, or --max-hours).
    expected_minutes: Optional[float] = None


def _at_least(value: Any, low: float, key: str, what: str) -> list[str]:
    return [] if value is None or value >= low else [f"{key}: must be {what}, got {value}"]


def check(conf: DrExpLauncherConf) -> list[str]:
    """The rules a type cannot say, as ``"<key>: <why>"`` messages (empty when all hold)."""
    problems: list[str] = []
    try:
        paths.check_experiment(conf.experiment)
    except ValueError as e:
        problems.append(f"experiment: {e}")
    if not defaults.PRIORITY_MIN <= conf.priority <= defaults.PRIORITY_MAX:
        problems.append(
            f"priority: must be from 0 to 1000 (higher runs first), got {conf.priority}"
        )
    if not all(str(t).strip() for t in conf.tags):
        problems.append(f"tags: must be a list of non-empty names, got {list(conf.tags)!r}")
    if conf.db is not None and not conf.db.strip():
        problems.append("db: must be a path or null")
    problems += _at_least(conf.workers, 0, "workers", "0 or more")
    problems += _at_least(conf.idle_timeout, 0, "idle_timeout", "0 (never) or more seconds")
    problems += _at_least(conf.max_attempts, 1, "max_attempts", "1 or more")
    problems += _at_least(conf.workers_per_gpu, 1, "workers_per_gpu", "1 or more")
    problems += _at_least(conf.slurm.array_size, 1, "slurm.array_size", "1 or more")
    if conf.idle_timeout != conf.idle_timeout or conf.idle_timeout == float("inf"):
        problems.append(
            f"idle_timeout: must be a finite number of seconds, got {conf.idle_timeout}"
        )
    problems += _at_least(conf.retry_backoff_s, 0, "retry_backoff_s", "0 or more seconds")
    problems += _at_least(conf.slurm.signal_delay_s, 0, "slurm.signal_delay_s", "0 or more seconds")
    if conf.slurm.requeue and conf.slurm.signal_delay_s >= conf.slurm.timeout_min * 60:
        problems.append(
            f"slurm.signal_delay_s: SLURM's warning ({conf.slurm.signal_delay_s} s before the end) "
            f"would come at the start of a {conf.slurm.timeout_min}-minute allocation; with "
            "slurm.requeue it must be shorter than slurm.timeout_min"
        )
    minutes = conf.expected_minutes
    if minutes is not None and not 0 < minutes < float("inf"):
        problems.append(f"expected_minutes: must be more than 0 minutes, or null, got {minutes}")
    retry = conf.retry if isinstance(conf.retry, dict) else {}
    if conf.retry is not None and not isinstance(conf.retry, dict):
        problems.append(f"retry: must be a mapping like {{oom: 1}}, got {conf.retry!r}")
    for name, times in retry.items():
        if isinstance(times, bool) or not isinstance(times, int):
            problems.append(f"retry.{name}: must be a whole number of retries, got {times!r}")
        elif name not in RETRYABLE:
            problems.append(
                f"retry.{name}: not a failure class that can be retried; "
                f"choose from {', '.join(RETRYABLE)} (lost jobs: max_attempts)"
            )
        elif not 0 <= times <= 100:
            problems.append(f"retry.{name}: must be from 0 to 100 retries, got {times}")
    return problems + _notify_problems(conf)


def _notify_problems(conf: DrExpLauncherConf) -> list[str]:
    """notify is a URL or an argument list, never a shell string; the rest needs it."""
    from urllib.parse import urlsplit

    from dr_exp.utils import FunctionNotFound, split_function_name

    target, problems = conf.notify, []
    if isinstance(target, str):
        url = urlsplit(target.strip())
        if url.scheme not in ("http", "https") or not url.netloc:
            problems.append(
                f"notify: must be an http:// or https:// URL, or a command as a list of "
                f"arguments such as [notify-send, done] (never a shell string), got {target!r}"
            )
    elif isinstance(target, (list, tuple)):
        plain = all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in target)
        if not target or not plain or not str(target[0]).strip():
            problems.append(
                f"notify: a command is a non-empty list of argument strings, got {list(target)!r}"
            )
    elif target is not None:
        problems.append(f"notify: must be null, a URL or a list of arguments, got {target!r}")
    for key in ("notify_on_failure", "notify_metric"):
        if getattr(conf, key) and target is None:
            problems.append(f"{key}: needs notify (a URL or a command) to send the notice")
    if conf.notify_metric is not None and not conf.notify_metric.strip():
        problems.append("notify_metric: must be a metric's name or null")
    if conf.on_sweep_end is not None:
        try:
            split_function_name(conf.on_sweep_end, "the name")
        except FunctionNotFound as e:
            problems.append(f"on_sweep_end: {e}")
    return problems
