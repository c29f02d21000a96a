"""The jobs of a Hydra multirun, run exactly as Hydra's basic launcher would run them.

The launcher pickles a :class:`SweepPayload` once per sweep and signs it.  A
worker verifies and unpickles it into a :class:`HydraSweep`, and in each job's
forked process composes the job's config from the sweep's master config and
the job's overrides (Hydra's own ``load_sweep_config``), then calls Hydra's
``run_job``: the output folder, ``.hydra/*.yaml``, the job log and the
callbacks are a multirun's.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

import cloudpickle

from dr_exp import jobfiles
from dr_exp.context import JobContext, SweepUnavailable
from dr_exp.db import Job, SweepRow
from dr_exp.jobfiles import write_error_file
from dr_exp.returns import JobError, error_summary, to_json
from dr_exp.sync.callback import sync_settings


@dataclass
class SweepPayload:
    """What a worker needs to rebuild any job of one sweep; pickled once per sweep."""

    hydra_context: Any  # hydra.types.HydraContext: config loader and callbacks
    task_function: Callable[[Any], Any]
    config: Any  # the master DictConfig the sweeper launched with
    singleton_state: dict  # Hydra's Singleton state: ConfigStore, resolvers, HydraConfig


class HydraSweep(JobContext):
    """A stored Hydra sweep whose signature verified, with where and how it was submitted.

    The worker never unpickles it: each job's process does, after the fork, so that
    it imports the project's modules as they are on disk when the job starts (as
    under hydra-submitit-launcher), and no sweep's modules linger in the worker for
    the next sweep.
    """

    def __init__(self, row: SweepRow) -> None:
        self.sweep_id = row.id
        self.cwd = row.cwd
        self.want_returns = row.want_returns
        self.settings = row.settings
        self.row = row
        self._loaded: Optional[SweepPayload] = None  # in a fork server, after load()
        self._load_error: Optional[BaseException] = None
        self._composer: Any = None

    @classmethod
    def from_sweep(cls, row: SweepRow) -> HydraSweep:
        """Nothing is imported or unpickled here (the row's signature is already checked)."""
        return cls(row)

    def activate(self) -> None:
        """In the worker: Hydra's plugins, scanned once for every fork to inherit."""
        _scan_hydra_plugins()

    def _load(self) -> SweepPayload:
        """In the job's process: unpickle (the submitter's sys.path first) and set Hydra's
        global state (ConfigStore, resolvers).

        ``Singleton.set_state`` re-creates the Plugins singleton unless the state holds
        one, which would scan the plugins again (see _scan_hydra_plugins): hand it the
        instance the worker scanned before the fork.
        """
        from hydra.core.plugins import Plugins
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals

        for entry in reversed(self.row.sys_path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        plugins = Plugins.instance()
        sweep = cloudpickle.loads(self.row.payload)  # its row's signature covers its digest
        if not isinstance(sweep, SweepPayload):
            raise SweepUnavailable(f"sweep {self.sweep_id}'s payload is not a dr_exp sweep")
        setup_globals()
        instances = {**sweep.singleton_state["instances"], Plugins: plugins}
        Singleton.set_state({**sweep.singleton_state, "instances": instances})
        return sweep

    def load(self) -> bool:
        """In the fork server: unpickle once, and keep a composer for the sweep's jobs."""
        from dr_exp.compose import SweepComposer

        try:
            os.chdir(self.cwd)
            self._loaded = self._load()
            self._composer = SweepComposer(
                self._loaded.hydra_context.config_loader, self._loaded.config
            )
        except BaseException as exc:  # noqa: B036 - each job reports it, as without a server
            self._load_error = exc
            return False
        return True

    def prepare(self, job: Job) -> Any:
        """In the fork server: what the job's composition shares with other jobs (a plan
        its process finishes in place, see SweepComposer.plan), or the error composing it."""
        if self._load_error is not None:
            return self._load_error
        try:
            return self._composer.plan(list(job.overrides))
        except BaseException as exc:  # noqa: B036 - the job's process reports it
            return exc

    def run(self, job: Job, report: Callable[[dict], None], prepared: Any = None) -> dict:
        """Compose the job's config (or take the fork server's), call Hydra's ``run_job``
        and describe the result."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobStatus, run_job
        from omegaconf import OmegaConf, open_dict

        output_dir: Optional[str] = None
        try:
            os.chdir(self.cwd)  # before unpickling: the submitter's relative sys.path entries
            if isinstance(prepared, BaseException):
                if self._loaded is None:  # the sweep itself did not load
                    raise prepared
            sweep = self._loaded or self._load()
            callbacks = getattr(sweep.hydra_context.callbacks, "callbacks", None) or []
            report({"sync": sync_settings(callbacks)})  # for a job that dies before on_job_end
            if isinstance(prepared, BaseException):
                raise prepared
            if prepared is None:
                sweep_config = sweep.hydra_context.config_loader.load_sweep_config(
                    sweep.config, list(job.overrides)
                )
            else:  # this process's copy of the server's merged config is the job's own
                sweep_config = prepared(lambda merged: merged)
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = job.id
                sweep_config.hydra.job.num = job.job_num
                if job.sweep_dir:  # re-queued by a later sweep: back into its own folder
                    sweep_config.hydra.sweep.dir = job.sweep_dir
                if job.sweep_subdir:
                    sweep_config.hydra.sweep.subdir = job.sweep_subdir
            # The ``hydra:`` resolver's view while the folder is resolved; run_job sets its
            # own (a masked, read-only copy) first thing, as under the basic launcher.
            HydraConfig.instance().cfg = sweep_config
            folder = os.path.abspath(
                os.path.join(
                    str(OmegaConf.select(sweep_config, "hydra.sweep.dir")),
                    str(OmegaConf.select(sweep_config, "hydra.sweep.subdir")),
                )
            )
            # A ${now:...} folder was not chosen: FolderTaken if it holds another job's results.
            chosen = OmegaConf.to_container(sweep_config.hydra.sweep, resolve=False)["dir"]
            jobfiles.job_started(folder, job, exclusive="${now:" in str(chosen))
            output_dir = folder
            report({"output_dir": output_dir})
            ret = run_job(
                hydra_context=sweep.hydra_context,
                task_function=sweep.task_function,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
        except BaseException as exc:  # noqa: B036 - SystemExit/KeyboardInterrupt escape run_job
            write_error_file(output_dir, _traceback(exc))
            return {"status": "failed", "error": error_summary(exc), "output_dir": output_dir}

        result: dict = {"output_dir": output_dir}
        if ret.status == JobStatus.COMPLETED:
            result.update(status="completed", return_json=to_json(ret._return_value))
        else:
            write_error_file(output_dir, _traceback(ret._return_value))
            result.update(status="failed", error=error_summary(ret._return_value))
        if self.want_returns:
            result["result_blob"] = _pickle_job_return(ret)
        return result


def _scan_hydra_plugins() -> None:
    """Have Hydra discover its plugins in this process once, before a sweep is unpickled.

    Hydra's plugin scan re-executes every ``hydra_plugins`` module even when it is
    already imported, which defines their config dataclasses anew.  Objects unpickled
    before a scan (the sweep's master config, its config loader's cache) would keep
    the old classes, and pickling the job's config then fails ("it's not the same
    object as ..."): PickleJobInfoCallback wrote empty pickles and lost its log lines.
    """
    from hydra.core.plugins import Plugins

    Plugins.instance()


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _pickle_job_return(ret: Any) -> bytes:
    """The JobReturn for the waiting launcher; degrade the value if it cannot pickle."""
    import cloudpickle
    from hydra.core.utils import JobStatus

    try:
        return cloudpickle.dumps(ret)
    except Exception:
        value = ret._return_value
        if ret.status == JobStatus.FAILED:
            ret._return_value = JobError(error_summary(value))
        else:
            ret._return_value = to_json_value(value)
        return cloudpickle.dumps(ret)


def to_json_value(value: Any) -> Any:
    import json

    return json.loads(to_json(value))
