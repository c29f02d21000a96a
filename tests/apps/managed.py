"""A Hydra app for the management tests: logs, structured events, metrics, and sleeps.

acc = lr * 10 + seed, so over seeds 0, 1, 2 the mean is lr * 10 + 1 and the std 1.
fail_if: a folder; the job raises while <fail_if>/<seed> exists (remove it, then re-run).
sleep / marker_dir: as in app.py (marker_dir/<seed>.start holds the job's pid;
marker_dir/release ends every sleep early).
"""

import logging
import os
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dr_exp.utils import StructuredLogger

log = logging.getLogger(__name__)


@hydra.main(version_base=None, config_path=".", config_name="managed")
def main(cfg: DictConfig):
    events = StructuredLogger(os.environ.get("DR_EXP_JOB_ID"))
    if cfg.marker_dir:
        Path(cfg.marker_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.marker_dir) / f"{cfg.seed}.start").write_text(str(os.getpid()))
    for epoch in range(2):
        log.info("epoch %d of seed %d", epoch, cfg.seed)
        events.log_event("epoch_complete", {"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    if cfg.fail_if and (Path(cfg.fail_if) / str(cfg.seed)).exists():
        raise RuntimeError(f"seed {cfg.seed} is told to fail")
    deadline = time.time() + cfg.sleep
    while time.time() < deadline:
        if cfg.marker_dir and (Path(cfg.marker_dir) / "release").exists():
            break
        time.sleep(0.05)
    log.info("done")
    return {"acc": cfg.lr * 10 + cfg.seed, "loss": 1.0 - cfg.lr}


if __name__ == "__main__":
    main()
