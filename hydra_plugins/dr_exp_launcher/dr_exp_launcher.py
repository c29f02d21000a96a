"""The Hydra ``Launcher`` for dr_exp: thin glue over ``dr_exp.submit``."""

from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class DrExpLauncher(Launcher):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.submitter: Optional[Any] = None

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        from omegaconf import OmegaConf

        from dr_exp.submit import LauncherSettings, SweepSubmitter  # heavy: only when used

        raw = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in self.settings.items()
        }
        self.submitter = SweepSubmitter(
            LauncherSettings.from_hydra(raw), hydra_context, task_function, config
        )

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.submitter is not None, "setup() was not called"
        return self.submitter.launch(job_overrides, initial_job_idx)
