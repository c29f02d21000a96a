"""A trainer with the seed's signature: train_model(job_id, worker_id, storage_path, **config)."""

import json
import os
from pathlib import Path

from dr_exp.utils import StructuredLogger


def train_model(job_id, worker_id, storage_path, **config):
    logger = StructuredLogger(job_id)
    for epoch in range(config["epochs"]):
        logger.log_event("epoch_complete", {"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    if config["fail"]:
        raise RuntimeError(f"job {job_id} was told to fail")
    checkpoint = Path(storage_path) / "model.ckpt"
    checkpoint.write_text(json.dumps({"worker": worker_id, "pid": os.getpid()}))
    acc = config["optim"]["lr"] * 10 + config["seed"]
    return {
        "metrics": {"val_acc": acc, "val_loss": 1.0 - config["optim"]["lr"]},
        "artifacts": {"checkpoint": str(checkpoint), "config_seen": sorted(config)},
    }


def not_a_function():
    pass


NOT_CALLABLE = 3
