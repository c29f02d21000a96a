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


class GpuTelemetry:
    """Utilization and memory of the GPU a worker is pinned to, through NVML.

    Returns {} on a CPU-only machine (no driver, no library, no visible GPU),
    so heartbeats simply carry no GPU columns there.

    The first read returns {} without touching NVML: it comes with the worker's first
    claim, and ``nvmlInit`` (tens of ms, seconds on a node without the persistence
    daemon) would delay the first job's start.  NVML starts at the next heartbeat,
    while the job runs in its own process.
    """

    def __init__(self) -> None:
        self._handle: object = None
        self._failed = False
        self._deferred = False  # the first read has been answered without NVML

    def _device(self) -> object:
        if self._handle is not None or self._failed:
            return self._handle
        gpus = visible_gpus()
        try:
            import pynvml

            if not gpus:
                raise RuntimeError("no GPU")
            pynvml.nvmlInit()
            first = gpus[0]
            if first.startswith(("GPU-", "MIG-")):
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(first)
            else:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(int(first))
        except Exception:
            self._failed = True
        return self._handle

    def read(self) -> dict:
        if not self._deferred:
            self._deferred = True
            return {}
        handle = self._device()
        if handle is None:
            return {}
        try:
            import pynvml

            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            return {
                "gpu_util": float(util.gpu),
                "gpu_mem_used_mb": mem.used / 2**20,
                "gpu_mem_total_mb": mem.total / 2**20,
            }
        except Exception:
            return {}
