"""A Hydra app that does no work, so a sweep over it measures only launcher overhead.

python benchmarks/noop_app.py -m x=range(0,200) hydra/launcher=dr_exp
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return float(cfg.x) * 0.5


if __name__ == "__main__":
    main()
