"""Every default and limit that more than one module uses, declared once.

Constants only: Hydra's plugin discovery, the CLI and every worker import this
module, so it imports nothing.
"""

from __future__ import annotations

# -- jobs ------------------------------------------------------------------------
# What a re-run does with jobs that exist already (config.OnDuplicate is the typed form).
ON_DUPLICATE = ("skip", "retry_failed", "always")
PRIORITY = 500
PRIORITY_MIN, PRIORITY_MAX = 0, 1000
MAX_ATTEMPTS = 3  # attempts a job gets when its worker vanishes (lease expired)
# cancelling: a running job that was cancelled, until its worker confirms the process is gone
STATUSES = ("pending", "running", "cancelling", "completed", "failed", "cancelled")
FINAL_STATUSES = ("completed", "failed", "cancelled")

# -- leases and heartbeats (job claims and sync uploads alike) -------------------------
LEASE_S = 60.0  # a claimed job is lost when its worker misses renewing it this long
HEARTBEAT_S = 10.0  # between lease renewals and worker heartbeats
GRACE_S = 10.0  # a signalled job gets this long to exit before SIGKILL

# -- workers -------------------------------------------------------------------------
WORKER_IDLE_TIMEOUT_S = 60.0  # `dr_exp worker` / `system launcher`: exit after an empty queue
SWEEP_IDLE_TIMEOUT_S = 10.0  # local workers that a sweep starts (hydra.launcher.idle_timeout)
WORKER_SHOWN_S = 180.0  # `dr_exp status` hides workers silent for longer
CRASH_LIMIT = 5  # failed worker exits within CRASH_WINDOW_S that stop a supervisor's restarts
CRASH_WINDOW_S = 120.0
RESTART_BACKOFF_MAX_S = 30.0

# -- SLURM -----------------------------------------------------------------------------
ARRAY_SIZE = 4  # the most array tasks one submission asks for
ARRAY_PARALLELISM = 256
TIMEOUT_MIN = 60

# -- SQLite ----------------------------------------------------------------------------
BUSY_TIMEOUT_S = 30.0  # SQLite's busy handler waits this long for a lock before retrying

# -- CLI -------------------------------------------------------------------------------
CANCEL_WAIT_S = 15.0  # `dr_exp cancel` waits this long for workers to confirm
SYNC_POLL_S = 2.0  # an uploader looks at its queue this often when following it
