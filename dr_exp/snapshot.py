"""``hydra.launcher.snapshot_code``: the code a sweep was submitted with, kept for its jobs.

At submit time the project's source (the files git tracks, or those matching
``snapshot_glob``) is copied into ``<sweep folder>/.dr_exp_code``, and the sweep's
``sys.path`` entries and Hydra config search path that lie in the project are
pointed into the copy.  A sweep queued for days then runs the code and config
files it was submitted with, whatever the researcher edits meanwhile.  The task
function itself (from ``__main__``) is pickled by value, as always.
"""

from __future__ import annotations

import copy
import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dr_exp.errors import BadInput

FOLDER = ".dr_exp_code"


@dataclass
class Snapshot:
    root: str  # the project folder that was copied
    dir: str  # where the copy is
    commit: Optional[str]  # git HEAD, when the project is a git checkout
    dirty: bool  # uncommitted changes were copied too
    files: int

    def settings(self) -> dict:
        return dict(vars(self))

    def moved(self, path: str) -> str:
        """``path`` inside the copy, if it lies in the project; else unchanged."""
        absolute = os.path.abspath(path)
        if absolute == self.root or absolute.startswith(self.root.rstrip("/") + "/"):
            return os.path.join(self.dir, os.path.relpath(absolute, self.root))
        return path


def _git(cwd: str, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def take(cwd: str, sweep_dir: str, pattern: Optional[str]) -> Snapshot:
    """Copy the project into the sweep folder; BadInput when there is nothing to copy."""
    top = _git(cwd, "rev-parse", "--show-toplevel")
    root = top.strip() if top and not pattern else os.path.abspath(cwd)
    if pattern:
        names = [p for p in glob.glob(pattern, root_dir=root, recursive=True)]
    elif top:
        names = [n for n in (_git(root, "ls-files", "-z") or "").split("\0") if n]
    else:
        raise BadInput(
            "hydra.launcher.snapshot_code: the project is not a git checkout; "
            "set hydra.launcher.snapshot_glob (e.g. '**/*.py') to say what to copy"
        )
    target = Path(os.path.abspath(sweep_dir)) / FOLDER
    files = 0
    for name in names:
        src = Path(root) / name
        if src.is_file() and not src.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / name)
            files += 1
    if not files:
        raise BadInput(f"hydra.launcher.snapshot_code: no files to copy under {root}")
    commit = (_git(root, "rev-parse", "HEAD") or "").strip() or None
    dirty = bool((_git(root, "status", "--porcelain") or "").strip()) if commit else False
    return Snapshot(root, str(target), commit, dirty, files)


def redirect(snap: Snapshot, sys_path: list[str], hydra_context: Any) -> tuple[list, Any]:
    """The sweep's sys.path and Hydra context, reading the project from the copy."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.types import HydraContext

    search_path = copy.deepcopy(hydra_context.config_loader.get_search_path())
    for element in search_path.config_search_path:  # pkg:// and structured:// stay
        path = element.path or ""
        if path.startswith("file://"):
            element.path = "file://" + snap.moved(path[len("file://") :])
        elif path.startswith("/"):
            element.path = snap.moved(path)
    loader = ConfigLoaderImpl(config_search_path=search_path)
    context = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)
    return [snap.moved(p) for p in sys_path], context
