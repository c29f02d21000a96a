"""A Hydra app for tests/test_sweeper.py: config groups, a typed group, interpolations.

python tests/apps/sweeper_app.py -m db=mysql,postgresql opt.lr=0.1,0.2 hydra/sweeper=dr_exp
"""

import hydra
import sweeper_schema  # noqa: F401  (registers opt/adam)
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="sweeper_conf", config_name="sweeper_app")
def main(cfg: DictConfig) -> float:
    return float(cfg.opt.lr)


if __name__ == "__main__":
    main()
