"""A Hydra callback that records which process ran each hook."""

import os
from pathlib import Path

from hydra.experimental.callback import Callback


class RecordPid(Callback):
    def on_job_start(self, config, **kwargs) -> None:
        Path(config.hydra.runtime.output_dir, "on_job_start.pid").write_text(str(os.getpid()))

    def on_job_end(self, config, job_return, **kwargs) -> None:
        Path(config.hydra.runtime.output_dir, "on_job_end.txt").write_text(
            f"{os.getpid()} {job_return.status.name} {job_return.return_value}"
        )
