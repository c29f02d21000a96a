"""A Hydra app that writes result files, for the sync tests.

mode=write  writes `files` files data_<i>.bin of `size` bytes, appends a line to
            log.txt, and writes extra.txt when `extra` is set; returns x
mode=fail   writes its files, then raises ValueError (error.txt must be uploaded too)
mode=kill   writes its files, then SIGKILLs its own process: no on_job_end runs,
            so only the worker can record the folder
"""

import os
import signal
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=".", config_name="sync_app")
def main(cfg: DictConfig):
    out = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    for i in range(cfg.files):
        path = out / f"data_{i}.bin"
        if not path.exists():  # a resumed job leaves its earlier results alone
            path.write_bytes(bytes([(cfg.x + i) % 256]) * cfg.size)
    with open(out / "log.txt", "a") as f:
        f.write(f"run x={cfg.x} pid={os.getpid()}\n")
    if cfg.extra:
        (out / "extra.txt").write_text(str(cfg.extra))
    if cfg.mode == "fail":
        raise ValueError(f"x={cfg.x} is not allowed")
    if cfg.mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return cfg.x


if __name__ == "__main__":
    main()
