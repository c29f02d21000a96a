"""Trainer jobs: jobs submitted from Python or ``dr_exp submit``, with no Hydra app behind them.

A trainer job names a YAML config file, its overrides, and a trainer function
with the signature::

    def train_model(job_id, worker_id, storage_path, **config) -> dict:
        ...
        return {"metrics": {"val_acc": 0.93}, "artifacts": {"checkpoint": "model.pt"}}

Which function: ``trainer=``/``--trainer``, else the config's top-level key
``trainer: pkg.module:fn``, else ``trainer:`` in ``<base_path>/dr_exp.yaml``.
The submitting side imports it once, so a typo is an error before anything is
queued; the sweep row stores only its name and the config's path (JSON, so
there is no pickle to sign).

The worker runs a trainer job in the same forked child as a Hydra job.  The
child composes the config with Hydra's compose API (defaults lists work, and
every override is forced, ``++key=value``), writes a Hydra-style folder
``<base_path>/outputs/<experiment>/<job id>`` with ``.hydra/config.yaml`` and
``.hydra/overrides.yaml``, calls the trainer with the folder as
``storage_path``, writes ``metrics.json``, and records the whole return value
(metrics and artifacts) in the database and in ``job.json``.  A failure writes
``error.txt`` with the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from dr_exp import jobfiles, paths
from dr_exp.context import JobContext
from dr_exp.db import Job, SweepRow
from dr_exp.errors import BadInput
from dr_exp.utils import import_function

PROJECT_SETTINGS = "dr_exp.yaml"  # in the base path: project-wide settings such as `trainer`
LOG_FILE = "train.log"


class TrainerError(BadInput):
    """A trainer that cannot be named: no trainer key, or a YAML file that is not a mapping."""


def read_yaml(path: Path) -> dict:
    """A YAML mapping, with a one-line error for a file that is not one."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        text = str(e).replace("\n", " ")
        raise TrainerError(f"cannot read {path}: {text}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainerError(f"{path} must hold a mapping (key: value lines)")
    return data


def trainer_name(explicit: Optional[str], config_path: Path, base_path: Path) -> str:
    """The trainer for a config: explicit, else the config's ``trainer`` key, else dr_exp.yaml."""
    if explicit:
        return explicit
    name = read_yaml(config_path).get("trainer")
    if not name:
        settings = Path(base_path) / PROJECT_SETTINGS
        if settings.exists():
            name = read_yaml(settings).get("trainer")
    if not name:
        raise TrainerError(
            f"no trainer for {config_path.name}: add 'trainer: pkg.module:function' to it or "
            f"to {Path(base_path) / PROJECT_SETTINGS}, or pass trainer=/--trainer"
        )
    if not isinstance(name, str):
        raise TrainerError(f"trainer must be a string like pkg.module:function, got {name!r}")
    return name


@dataclass
class TrainerSweep(JobContext):
    """What a worker needs to run the jobs of one trainer sweep."""

    sweep_id: int
    cwd: str
    sys_path: list[str]
    spec: dict  # config (absolute path), trainer (name), project
    sweep_dir: str  # <base_path>/outputs/<experiment>
    want_returns: bool = False
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_sweep(cls, sweep: SweepRow) -> TrainerSweep:
        return cls(
            sweep_id=sweep.id,
            cwd=sweep.cwd,
            sys_path=sweep.sys_path,
            spec=sweep.spec or {},
            sweep_dir=sweep.sweep_dir or os.path.join(sweep.cwd, "outputs", sweep.experiment),
            settings=sweep.settings,
        )

    def run(self, job: Job, report: Callable[[dict], None], prepared: Any = None) -> dict:
        """In the forked job process: compose, call the trainer, record what it returned."""
        from dr_exp.jobfiles import write_error_file
        from dr_exp.returns import error_summary, to_json

        output_dir = os.path.join(job.sweep_dir or self.sweep_dir, job.sweep_subdir or str(job.id))
        report({"output_dir": output_dir})
        try:
            os.chdir(self.cwd)
            jobfiles.job_started(output_dir, job)
            _log_to(Path(output_dir) / LOG_FILE)
            config = self._compose(job, Path(output_dir))
            config.pop("trainer", None)
            fn = import_function(self.spec["trainer"], self.sys_path, "trainer")
            logging.getLogger("dr_exp.trainer").info(
                "job %s: %s %s", job.id, self.spec["trainer"], " ".join(job.overrides)
            )
            ret = fn(str(job.id), os.environ.get(paths.ENV_WORKER_ID, ""), output_dir, **config)
            metrics = ret.get("metrics", ret) if isinstance(ret, dict) else None
            if isinstance(metrics, dict):
                jobfiles.write_json(Path(output_dir) / jobfiles.METRICS_FILE, metrics)
        except BaseException as exc:  # noqa: B036 - SystemExit in a trainer is a failure too
            write_error_file(
                output_dir, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            )
            return {"status": "failed", "error": error_summary(exc), "output_dir": output_dir}
        return {"status": "completed", "return_json": to_json(ret), "output_dir": output_dir}

    def _compose(self, job: Job, output_dir: Path) -> dict:
        """The job's config from its YAML file and overrides, saved the way Hydra saves it."""
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        config_path = Path(self.spec["config"])
        GlobalHydra.instance().clear()  # a Hydra sweep's state may linger in the worker
        forced = [o if o.startswith(("+", "~")) else f"++{o}" for o in job.overrides]
        with initialize_config_dir(config_dir=str(config_path.parent), version_base=None):
            cfg = compose(config_name=config_path.stem, overrides=forced)
        hydra_dir = output_dir / ".hydra"
        hydra_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, hydra_dir / "config.yaml")
        OmegaConf.save(OmegaConf.create(list(job.overrides)), hydra_dir / "overrides.yaml")
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _log_to(path: Path) -> None:
    """The job's log file, like Hydra's ``<job name>.log``, plus the worker's stderr."""
    formatter = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in (logging.FileHandler(path), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
