"""``hydra/launcher=dr_exp``: its settings (declared in ``dr_exp.config``), in Hydra's ConfigStore.

Hydra imports this module on every start of every Hydra app, so it imports
nothing beyond dataclasses and the ConfigStore.
"""

from hydra.core.config_store import ConfigStore

from dr_exp.config import DrExpLauncherConf

ConfigStore.instance().store(
    group="hydra/launcher", name="dr_exp", node=DrExpLauncherConf, provider="dr_exp"
)
