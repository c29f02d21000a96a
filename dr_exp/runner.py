"""Running one job inside its own process, exactly as a Hydra multirun would.

The worker forks one child per job.  The child composes the job's config from
the sweep's master config and the job's overrides (Hydra's own
``load_sweep_config``) and calls Hydra's ``run_job``, so the output folder,
``.hydra/*.yaml``, the job log and the callbacks are a multirun's.  Whatever the
job does to its process (a crash, ``os._exit``, a segfault, leaked globals)
ends with that process, never with the worker.

The child talks to the worker over a pipe in length-prefixed pickle frames:
first ``{"output_dir": ...}`` once it is known, then the result.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from dr_exp import jobfiles
from dr_exp.db import Job

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!Q")


@dataclass
class SweepContext:
    """What a worker needs to rebuild any job of one sweep; pickled once per sweep."""

    hydra_context: Any  # hydra.types.HydraContext: config loader and callbacks
    task_function: Callable[[Any], Any]
    config: Any  # the master DictConfig the sweeper launched with
    singleton_state: dict  # Hydra's Singleton state: ConfigStore, resolvers, HydraConfig


class JobError(RuntimeError):
    """Stands in for a job's exception when the original cannot travel back."""


def to_json(value: Any) -> str:
    """JSON for a return value: numbers, dicts, lists; numpy scalars and configs converted."""

    def default(obj: Any) -> Any:
        try:
            from omegaconf import DictConfig, ListConfig, OmegaConf

            if isinstance(obj, (DictConfig, ListConfig)):
                return OmegaConf.to_container(obj, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
            return obj.tolist()
        if isinstance(obj, (set, frozenset, tuple)):
            return list(obj)
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        return repr(obj)

    try:
        return json.dumps(value, default=default, allow_nan=True)
    except (TypeError, ValueError):
        return json.dumps(repr(value))


def error_summary(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text[:500]


def write_error_file(output_dir: Optional[str], text: str) -> None:
    if not output_dir:
        return
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "error.txt").write_text(text)
    except OSError:
        pass


def send_frame(fd: int, message: dict) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FrameReader:
    """Reassembles the child's frames from pipe chunks."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes) -> list[dict]:
        self.buffer += chunk
        messages = []
        while len(self.buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) < _HEADER.size + size:
                break
            data = self.buffer[_HEADER.size : _HEADER.size + size]
            self.buffer = self.buffer[_HEADER.size + size :]
            messages.append(pickle.loads(data))  # our own forked child wrote it
        return messages


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the worker dies (Linux).

    A SIGKILLed worker cannot stop its job, and its lease will expire and let
    another worker run the job: the orphan must not outlive it.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(70)


def child_main(
    ctx: SweepContext, cwd: str, job: Job, want_returns: bool, fd: int, parent_pid: int
) -> None:
    """Entry point of the forked job process; never returns."""
    code = 0
    try:
        die_with_parent(parent_pid)
        os.setpgid(0, 0)  # the worker signals the whole job tree through this group
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        result = run_in_this_process(ctx, cwd, job, want_returns, lambda m: send_frame(fd, m))
        jobfiles.job_ended(result.get("output_dir"), result)
        send_frame(fd, result)
    except BaseException:  # noqa: B036 - the job process must always exit here
        traceback.print_exc()
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_in_this_process(
    ctx: SweepContext,
    cwd: str,
    job: Job,
    want_returns: bool,
    report: Callable[[dict], None],
) -> dict:
    """Compose the job's config, call Hydra's ``run_job`` and describe the result."""
    if hasattr(ctx, "run_job"):  # not a Hydra sweep: a trainer job (dr_exp.trainer)
        return ctx.run_job(job, report)
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobStatus, run_job
    from omegaconf import OmegaConf, open_dict

    output_dir: Optional[str] = None
    try:
        os.chdir(cwd)  # hydra.runtime.cwd and relative paths are the submitting shell's
        sweep_config = ctx.hydra_context.config_loader.load_sweep_config(
            ctx.config, list(job.overrides)
        )
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = job.id
            sweep_config.hydra.job.num = job.job_num
            if job.sweep_dir:  # re-queued by a later sweep: back into its own folder
                sweep_config.hydra.sweep.dir = job.sweep_dir
            if job.sweep_subdir:
                sweep_config.hydra.sweep.subdir = job.sweep_subdir
        HydraConfig.instance().set_config(sweep_config)
        output_dir = os.path.abspath(
            os.path.join(
                str(OmegaConf.select(sweep_config, "hydra.sweep.dir")),
                str(OmegaConf.select(sweep_config, "hydra.sweep.subdir")),
            )
        )
        report({"output_dir": output_dir})
        jobfiles.job_started(output_dir, job)
        ret = run_job(
            hydra_context=ctx.hydra_context,
            task_function=ctx.task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    except BaseException as exc:  # noqa: B036 - SystemExit/KeyboardInterrupt escape run_job
        write_error_file(
            output_dir, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        )
        return {"status": "failed", "error": error_summary(exc), "output_dir": output_dir}

    result: dict = {"output_dir": output_dir}
    if ret.status == JobStatus.COMPLETED:
        result.update(status="completed", return_json=to_json(ret._return_value))
    else:
        exc = ret._return_value
        write_error_file(
            output_dir, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        )
        result.update(status="failed", error=error_summary(exc))
    if want_returns:
        result["result_blob"] = _pickle_job_return(ret)
    return result


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
            ret._return_value = json.loads(to_json(value))
        return cloudpickle.dumps(ret)


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"job process killed by signal {-code} ({name})"
    return f"job process exited with code {code} before reporting a result"
