"""The Hydra ``Sweeper`` for dr_exp: thin glue over ``dr_exp.sweeper``."""

from typing import Any, Dict, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class DrExpSweeper(Sweeper):
    """BasicSweeper's jobs, batches and numbers; each group choice composed once."""

    def __init__(
        self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None
    ):
        from dr_exp.sweeper import new_sweeper  # only when selected

        self.impl = new_sweeper(max_batch_size=max_batch_size, params=params)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: Any) -> Any:
        return self.impl.sweep(arguments)
