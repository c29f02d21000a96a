"""The Hydra ``Launcher`` for dr_exp: thin glue over ``dr_exp.multirun``."""

from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class DrExpLauncher(Launcher):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # hydra.launcher.*, typed by dr_exp.config.DrExpLauncherConf
        self.multirun: Optional[Any] = None

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        from dr_exp.multirun import Multirun, settings_from  # heavy: only when used

        self.multirun = Multirun(settings_from(self.settings), hydra_context, task_function, config)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.multirun is not None, "setup() was not called"
        return self.multirun.launch(job_overrides, initial_job_idx)
