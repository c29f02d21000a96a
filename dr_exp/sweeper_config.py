"""``hydra/sweeper=dr_exp``'s settings: BasicSweeper's, under dr_exp's name.

Hydra imports this module (through ``hydra_plugins.dr_exp_sweeper.config``) on
every start of every app, so it imports dataclasses and typing only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

SWEEPER_TARGET = "hydra_plugins.dr_exp_sweeper.dr_exp_sweeper.DrExpSweeper"


@dataclass
class DrExpSweeperConf:
    """Mirrors ``hydra._internal.core_plugins.basic_sweeper.BasicSweeperConf``."""

    _target_: str = SWEEPER_TARGET
    # Jobs per launch() call; None: one batch.  Every batch is validated before the first.
    max_batch_size: Optional[int] = None
    # Extra overrides swept as if given on the command line (key -> "v1,v2" or "range(...)").
    params: Optional[Dict[str, str]] = None
