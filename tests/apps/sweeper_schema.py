"""sweeper_app's typed config group, registered on import (the app and tests import it)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class Adam:  # a typed option: opt.lr=abc fails validation
    lr: float = 0.001
    beta: float = 0.9


ConfigStore.instance().store(group="opt", name="adam", node=Adam)
