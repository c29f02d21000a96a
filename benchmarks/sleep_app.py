"""A Hydra app whose jobs sleep ``sleep`` seconds, so a sweep measures scheduling, not work.

python benchmarks/sleep_app.py -m x=range(0,48) sleep=0.5 hydra/launcher=dr_exp

Its config is a dataclass in Hydra's ConfigStore (no YAML next to it): ``x`` is the
swept integer, ``sleep`` the seconds each job sleeps.
"""

import time
from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore


@dataclass
class SleepConf:
    x: int = 0
    sleep: float = 0.5


ConfigStore.instance().store(name="sleep_app", node=SleepConf)


@hydra.main(version_base=None, config_name="sleep_app")
def main(cfg: SleepConf) -> int:
    time.sleep(cfg.sleep)
    return cfg.x


if __name__ == "__main__":
    main()
