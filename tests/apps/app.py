"""A Hydra app whose jobs misbehave on request, for the worker's failure tests.

mode=ok      returns x * 2
mode=fail    raises ValueError
mode=exit    os._exit(3)
mode=kill    SIGKILLs its own process
mode=segv    dereferences NULL
mode=sysexit sys.exit(4)
mode=leak    mutates module and process state, returns what it found first
mode=env     returns the GPU and SLURM variables the job sees
mode=exclusive  holds an exclusive lock on marker_dir/<x>.lock for `sleep` seconds;
             appends to marker_dir/DOUBLE if another process of the same job holds it
mode=sleep   sleeps `sleep` seconds or until marker_dir/release exists, returns x;
             writes marker_dir/<x>.start (its pid) and <x>.end
mode=helper  forks a helper that sleeps 120 s holding the job's inherited files open (its
             pid in marker_dir/<x>.helper), then returns x at once
mode=atexit  registers an atexit handler that writes marker_dir/<x>.atexit, returns x
mode=big     returns `size` bytes
mode=badhost fails on the host named badnode, else sleeps `sleep` s and returns x
mode=oom     raises MemoryError
mode=nonfinite returns NaN and Infinity, which JSON cannot hold
stubborn=true  ignore SIGTERM (any mode)
"""

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

SEEN: list = []


@hydra.main(version_base=None, config_path=".", config_name="app")
def main(cfg: DictConfig):
    if cfg.stubborn:  # ignores SIGTERM: only the worker's SIGKILL after its grace period ends it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if cfg.marker_dir:
        Path(cfg.marker_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.marker_dir) / f"{cfg.x}.start").write_text(str(os.getpid()))
    if cfg.mode == "fail":
        raise ValueError(f"x={cfg.x} is not allowed")
    if cfg.mode == "exit":
        os._exit(3)
    if cfg.mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.mode == "segv":
        ctypes.string_at(0)
    if cfg.mode == "sysexit":
        sys.exit(4)
    if cfg.mode == "leak":
        found = {"seen": len(SEEN), "env": os.environ.get("DR_EXP_TEST_LEAK")}
        SEEN.append(cfg.x)
        os.environ["DR_EXP_TEST_LEAK"] = str(cfg.x)
        return found
    if cfg.mode == "env":
        keys = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_ARRAY_TASK_ID",
                "SLURM_ARRAY_JOB_ID")  # fmt: skip
        return {k: os.environ.get(k) for k in keys}
    if cfg.mode == "exclusive":
        import fcntl

        Path(cfg.marker_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(cfg.marker_dir) / f"{cfg.x}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                with open(Path(cfg.marker_dir) / "DOUBLE", "a") as f:
                    f.write(f"{cfg.x} {os.getpid()}\n")
                raise RuntimeError(f"job x={cfg.x} is already running elsewhere") from None
            time.sleep(cfg.sleep)
            with open(Path(cfg.marker_dir) / f"{cfg.x}.done", "a") as f:
                f.write(f"{os.getpid()}\n")
        return cfg.x
    if cfg.mode == "sleep":
        deadline = time.time() + cfg.sleep
        while time.time() < deadline:  # marker_dir/release ends every sleep early
            if cfg.marker_dir and (Path(cfg.marker_dir) / "release").exists():
                break
            time.sleep(0.05)
        if cfg.marker_dir:
            (Path(cfg.marker_dir) / f"{cfg.x}.end").write_text("")
        return cfg.x
    if cfg.mode == "helper":
        pid = os.fork()
        if pid == 0:  # keeps every inherited descriptor, the result pipe too
            time.sleep(120)
            os._exit(0)
        (Path(cfg.marker_dir) / f"{cfg.x}.helper").write_text(str(pid))
        return cfg.x
    if cfg.mode == "atexit":
        import atexit

        atexit.register(lambda: (Path(cfg.marker_dir) / f"{cfg.x}.atexit").write_text("ran"))
        return cfg.x
    if cfg.mode == "badhost":
        import socket

        if socket.gethostname() == "badnode":
            raise RuntimeError("the GPU on badnode is broken")
        time.sleep(cfg.sleep)
        return cfg.x
    if cfg.mode == "oom":
        raise MemoryError(f"x={cfg.x} needs more memory")
    if cfg.mode == "nonfinite":
        return {"loss": float("nan"), "best": float("inf"), "x": cfg.x}
    if cfg.mode == "big":
        return b"x" * int(cfg.size)
    return cfg.x * 2


if __name__ == "__main__":
    main()
