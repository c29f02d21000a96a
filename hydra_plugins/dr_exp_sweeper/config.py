"""``hydra/sweeper=dr_exp``: its settings (declared in ``dr_exp.sweeper_config``), in the
ConfigStore.  Hydra imports this on every app start: it imports nothing heavy."""

from hydra.core.config_store import ConfigStore

from dr_exp.sweeper_config import DrExpSweeperConf

ConfigStore.instance().store(
    group="hydra/sweeper", name="dr_exp", node=DrExpSweeperConf, provider="dr_exp"
)
