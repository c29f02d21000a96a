"""``hydra/launcher=dr_exp``: the settings, registered in Hydra's ConfigStore.

Hydra imports this module on every start of every Hydra app, so it imports
nothing beyond dataclasses and the ConfigStore.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf


@dataclass
class DrExpSlurmConf(BaseQueueConf):
    """hydra-submitit-launcher's submitit_slurm keys (a config ports over), plus array_size.

    Each array task runs one node supervisor with workers_per_gpu workers per GPU.
    """

    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    name: str = "dr_exp-${hydra.job.name}"
    # The most array tasks one submission asks for; fewer when fewer jobs are pending.
    array_size: int = 4
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
    array_parallelism: int = 256
    setup: Optional[List[str]] = None


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
    priority: int = 500
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
    idle_timeout: float = 10.0
    # Create a new database file group-readable and -writable (0660, not 0600).
    group_shared: bool = False
    # A job whose worker vanishes (lease expired) is retried up to this many
    # attempts in all, then marked failed ("lost after N attempts").
    max_attempts: int = 3
    # A job that already exists (same experiment, app and overrides), when a sweep
    # is run again: retry_failed skips completed, pending and running jobs and
    # queues failed and cancelled ones again; skip skips them all; always adds
    # new jobs.  Re-queued jobs keep their job number and output folder.
    on_duplicate: str = "retry_failed"
    # pkg.module:function called with each job's composed config; returns its
    # priority (0-1000).  It costs one more composition per job (~40 ms).
    priority_fn: Optional[str] = None
    # local: worker processes on this machine; slurm: a submitit job array of
    # node supervisors (see slurm.*), each running workers_per_gpu workers per GPU.
    backend: str = "local"
    workers_per_gpu: int = 1
    slurm: DrExpSlurmConf = field(default_factory=DrExpSlurmConf)
    sync: DrExpSyncConf = field(default_factory=DrExpSyncConf)


ConfigStore.instance().store(
    group="hydra/launcher", name="dr_exp", node=DrExpLauncherConf, provider="dr_exp"
)
