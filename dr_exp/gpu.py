"""Which GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` first, else NVML."""

from __future__ import annotations

import os
from typing import Optional


def visible_gpus() -> list[str]:
    """GPU ids to pin workers to; empty on a CPU-only machine.

    ``CUDA_VISIBLE_DEVICES`` wins when set (SLURM sets it for ``--gres=gpu:N``),
    because it is what the scheduler gave this process; otherwise ask NVML.
    """
    env: Optional[str] = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import pynvml  # the nvidia-ml-py bindings; imported only when asked

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: a CPU-only machine
        return []
