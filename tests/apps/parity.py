"""A Hydra app for the launcher parity tests: logs one line, returns x * 10."""

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base=None, config_path=".", config_name="parity")
def main(cfg: DictConfig):
    log.info("parity job x=%s", cfg.x)
    return cfg.x * 10


if __name__ == "__main__":
    main()
