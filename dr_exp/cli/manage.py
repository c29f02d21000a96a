"""Changing the queue: ``cancel``, ``retry``, ``priority`` and ``submit``.

A job named by its id that cannot take the action is an error, and then
nothing changes: the engine checks every job in the same transaction that acts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

import dr_exp.cli.options as o
from dr_exp import defaults, paths, render

CANCELLABLE = ("pending", "running", "cancelling")  # cancelling again waits for the worker
RETRYABLE = ("failed", "cancelled")
PRIORITY_RANGE = f"{defaults.PRIORITY_MIN}-{defaults.PRIORITY_MAX}"


@click.command(
    "cancel",
    short_help="Cancel pending jobs, and stop and cancel running ones.",
    help="A pending job becomes cancelled. A running job becomes cancelling: its worker "
    "terminates the job's process group (SIGTERM, then SIGKILL after its grace period) at its "
    "next heartbeat, confirms, and the job becomes cancelled. cancel waits up to --wait "
    "seconds for that confirmation and reports it; cancelling a cancelling job again waits "
    "again.\n\n" + o.SELECTION_HELP,
)
@o.selectors(CANCELLABLE, "cancel")
@o.seconds(
    "--wait",
    defaults.CANCEL_WAIT_S,
    "Seconds to wait for workers to confirm that running jobs stopped; 0: don't wait.",
)
@o.common
def cancel(selection: o.Selection, wait: float) -> int:
    db = o.scope().open_db()
    chosen, explicit = selection.jobs(db, CANCELLABLE, "cancel")
    if not chosen:
        print("no pending or running jobs matched; nothing cancelled")
        return 0
    done = db.cancel(chosen, strict=explicit)
    print(f"cancelled {len(done['pending'])} pending job(s): {render.id_list(done['pending'])}")
    running = done["running"]
    if not running:
        return 0
    print(f"cancelled {len(running)} running job(s): {render.id_list(running)}; stopping them")
    deadline = time.monotonic() + wait
    while True:
        last = db.last_attempts(running)
        acked = {i for i, a in last.items() if a["ended"] is not None}
        if len(acked) == len(running) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    for job_id in running:
        attempt = last.get(job_id) or {}
        if job_id in acked:
            print(f"job {job_id}: stopped by worker {attempt.get('worker')} ({attempt['outcome']})")
        else:
            print(
                f"dr_exp: job {job_id}: worker {attempt.get('worker')} has not confirmed yet; "
                "it stops the job at its next heartbeat",
                file=sys.stderr,
            )
    return 0


@click.command(
    "retry",
    short_help="Move failed or cancelled jobs back to pending.",
    help="Moves failed or cancelled jobs back to pending, with --attempts more attempts. The "
    "attempt history stays; the job keeps its id and its output folder.\n\n" + o.SELECTION_HELP,
)
@o.selectors(RETRYABLE, "retry")
@o.number("--attempts", defaults.MAX_ATTEMPTS, "Attempts each retried job gets.")
@o.common
def retry(selection: o.Selection, attempts: int) -> int:
    db = o.scope().open_db()
    chosen, explicit = selection.jobs(db, RETRYABLE, "retry")
    retried = db.retry(chosen, attempts=attempts, strict=explicit) if chosen else []
    print(f"moved {len(retried)} job(s) back to pending: {render.id_list(retried)}")
    return 0


@click.command(
    "priority",
    short_help=f"Set or boost the priority ({PRIORITY_RANGE}) of jobs.",
    help=f"Sets (--set), or adds to (--boost), the priority of jobs; higher runs first. Every "
    f"new value must lie in {PRIORITY_RANGE}, or nothing changes.\n\n" + o.SELECTION_HELP,
)
@o.selectors(defaults.STATUSES, "reprioritize")
@click.option(
    "--set", "set_to", type=o.Priority(), metavar="N", help=f"The new priority, {PRIORITY_RANGE}."
)
@click.option("--boost", type=int, metavar="N", help="Add N to the priority (negative lowers).")
@o.common
def priority(selection: o.Selection, set_to: Optional[int], boost: Optional[int]) -> int:
    if set_to is not None and boost is not None:
        raise click.UsageError("--set and --boost cannot be used together")
    if set_to is None and boost is None:
        raise click.UsageError("one of the options --set N, --boost N is required")
    db = o.scope().open_db()
    chosen, _ = selection.jobs(db, defaults.STATUSES, "reprioritize")
    changes = db.set_priority(chosen, value=set_to, boost=boost) if chosen else []
    for job_id, old, new in changes:
        print(f"job {job_id}: priority {old} -> {new}")
    if not changes:
        print("no jobs matched; nothing changed")
    return 0


@click.command(
    "submit",
    cls=o.SpreadCommand,
    spread=("--seed",),
    short_help="Queue trainer jobs from a YAML config (no Hydra app needed).",
)
@click.option("--config", required=True, help="YAML config file, found under --config-dir.")
@click.option(
    "--config-dir",
    default=paths.DEFAULT_CONFIG_DIR,
    metavar="DIR",
    help="Folder of the configs: under --base-path, else the base path itself, else here.",
)
@click.option(
    "--seed", "seeds", multiple=True, metavar="SEED...", help="One job per seed: --seed 0 1 2."
)
@click.option(
    "--priority",
    "priority_",
    type=o.Priority(),
    default=defaults.PRIORITY,
    help=f"{PRIORITY_RANGE}; higher runs first.",
)
@click.option("--tags", metavar="A,B", help="Comma-separated tags.")
@click.option("--trainer", metavar="PKG.MOD:FN", help="The trainer function to call.")
@click.option(
    "--on-duplicate",
    type=o.Choice(defaults.ON_DUPLICATE),
    default="retry_failed",
    help="For a job that exists: skip it; queue it again if it failed or was cancelled "
    "(retry_failed); or always add a new job.",
)
@click.option("--dry-run", is_flag=True, help="Check and show; write nothing.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@o.common
def submit(
    config: str,
    config_dir: str,
    seeds: tuple,
    priority_: int,
    tags: Optional[str],
    trainer: Optional[str],
    on_duplicate: str,
    dry_run: bool,
    overrides: tuple,
) -> int:
    """Queue one job per --seed (or one job) that runs a trainer function
    train_model(job_id, worker_id, storage_path, **config). The trainer is --trainer, else
    the config's 'trainer: pkg.module:fn', else 'trainer:' in <base-path>/dr_exp.yaml.
    Overrides (key=value) change the config, as Hydra's would. Nothing is written unless
    every job checks out."""
    from dr_exp import api

    scope = o.scope()
    if not scope.experiment:
        raise click.UsageError("submit needs --experiment (before or after 'submit')")
    job: dict[str, Any] = {
        "config": config,
        "priority": priority_,
        "tags": [t.strip() for t in (tags or "").split(",") if t.strip()],
        "overrides": list(overrides),
    }
    jobs = [dict(job, seed=s) for s in seeds] if seeds else [job]
    done = api.submit_jobs(
        jobs,
        experiment=scope.experiment,
        base_path=scope.base_path,
        db=str(scope.db_path()),
        config_dir=config_dir,
        trainer=trainer,
        on_duplicate=on_duplicate,
        dry_run=dry_run,
    )
    for r in done:
        what = f"{Path(r['config']).name} {' '.join(r['overrides'])}".strip()
        if r["action"] in ("queued", "requeued"):
            print(f"{r['action']} job {r['id']}: {what} (priority {r['priority']})")
        elif r["action"].startswith("would"):
            print(f"{r['action']}{' job ' + str(r['id']) if r['id'] else ''}: {what}")
        else:
            print(f"skipped: job {r['id']} exists ({r['action']}): {what}")
    return 0
