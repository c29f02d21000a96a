"""Parity with Hydra's basic launcher: the same sweep, run once by each launcher.

A job's output folder must come out the same under ``hydra/launcher=dr_exp`` as
under the basic launcher: the ``.hydra/*.yaml`` files, the job log (including
what Hydra callbacks log from ``on_job_start``/``on_job_end``) and what a
callback such as ``PickleJobInfoCallback`` writes.  Only what legitimately
differs between the two runs is normalized, each item explained where it is.
"""

from __future__ import annotations

import pickle
import re
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import run_app

APPS = Path(__file__).parent / "apps"
PARITY_APP = APPS / "parity.py"

XS = (1, 2)
PICKLE_CALLBACK = (
    "+hydra.callbacks.pickle._target_=hydra.experimental.callbacks.PickleJobInfoCallback"
)
DR_EXP = ("hydra/launcher=dr_exp", "hydra.launcher.workers=1", "hydra.launcher.idle_timeout=1")
SWEEP = "<SWEEP_DIR>"
# "[2026-01-31 12:34:56,789]", the start of every line of Hydra's job log format.
TIMESTAMP = re.compile(r"^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}\]")


def run_sweep(tmp_path: Path, name: str, *launcher: str) -> Path:
    sweep_dir = tmp_path / name
    run_app(
        PARITY_APP,
        "-m",
        f"x={','.join(map(str, XS))}",
        f"hydra.sweep.dir={sweep_dir}",
        PICKLE_CALLBACK,
        *launcher,
        cwd=tmp_path,  # the same cwd for both runs: hydra.runtime.cwd needs no normalizing
    )
    return sweep_dir


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # Module-scoped, so both runs happen once; conftest's autouse fixture is
    # function-scoped, so give this one its own database and key.
    tmp_path = tmp_path_factory.mktemp("parity")
    mp = pytest.MonkeyPatch()
    db = tmp_path / "queue" / "jobs.db"
    mp.setenv("DR_EXP_DB", str(db))
    mp.setenv("DR_EXP_SECRET_KEY_FILE", str(tmp_path / "secret.key"))
    mp.setenv("HYDRA_FULL_ERROR", "0")
    try:
        yield {
            "basic": run_sweep(tmp_path, "basic"),
            "drexp": run_sweep(tmp_path, "drexp", *DR_EXP),
            "db": db,
        }
    finally:
        mp.undo()


def normalized_text(path: Path, sweep_dir: Path) -> str:
    # The two runs write into different sweep dirs (tmp/basic, tmp/drexp): the one
    # path that differs in every file that names a path.
    return path.read_text().replace(str(sweep_dir), SWEEP)


def normalized_hydra_yaml(path: Path, sweep_dir: Path) -> tuple[str, str]:
    """hydra.yaml with the launcher's own differences taken out, and the job's id."""
    cfg = yaml.safe_load(normalized_text(path, sweep_dir))
    hydra = cfg["hydra"]
    # The launcher's own config node: BasicLauncher's is just its _target_, dr_exp's
    # holds its settings.  That is the point of choosing a launcher.
    assert hydra["launcher"]["_target_"]
    hydra["launcher"] = "<LAUNCHER>"
    # Which launcher the command line chose.
    hydra["runtime"]["choices"]["hydra/launcher"] = "<LAUNCHER>"
    # The command line's hydra overrides: the dr_exp run has the launcher overrides
    # on top (hydra/launcher=dr_exp, hydra.launcher.*); nothing else may differ.
    hydra["overrides"]["hydra"] = [o for o in hydra["overrides"]["hydra"] if o not in DR_EXP]
    # hydra.job.id: the basic launcher numbers jobs 0, 1, ...; dr_exp gives the job's
    # id in its queue (documented in README).  Returned for the caller to check.
    job_id = hydra["job"]["id"]
    hydra["job"]["id"] = "<JOB_ID>"
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False), job_id


def log_lines(path: Path, sweep_dir: Path) -> list[str]:
    lines = normalized_text(path, sweep_dir).splitlines()
    for line in lines:
        assert TIMESTAMP.match(line), f"{path}: line without a timestamp: {line!r}"
    return [TIMESTAMP.sub("", line) for line in lines]


@pytest.mark.parametrize("num", range(len(XS)))
def test_hydra_files_match_basic_launcher(sweeps: dict[str, Path], num: int) -> None:
    basic, drexp = sweeps["basic"] / str(num), sweeps["drexp"] / str(num)
    assert sorted(p.name for p in (basic / ".hydra").iterdir()) == sorted(
        p.name for p in (drexp / ".hydra").iterdir()
    )
    for name in ("config.yaml", "overrides.yaml"):  # no normalizing at all
        assert (drexp / ".hydra" / name).read_bytes() == (basic / ".hydra" / name).read_bytes()

    basic_yaml, basic_id = normalized_hydra_yaml(basic / ".hydra" / "hydra.yaml", sweeps["basic"])
    drexp_yaml, drexp_id = normalized_hydra_yaml(drexp / ".hydra" / "hydra.yaml", sweeps["drexp"])
    assert drexp_yaml == basic_yaml
    assert basic_id == str(num)
    conn = sqlite3.connect(sweeps["db"])
    try:
        (queue_id,) = conn.execute("SELECT id FROM jobs WHERE job_num = ?", (num,)).fetchone()
    finally:
        conn.close()
    assert drexp_id == str(queue_id)


@pytest.mark.parametrize("num", range(len(XS)))
def test_job_log_matches_basic_launcher(sweeps: dict[str, Path], num: int) -> None:
    basic = log_lines(sweeps["basic"] / str(num) / "parity.log", sweeps["basic"])
    drexp = log_lines(sweeps["drexp"] / str(num) / "parity.log", sweeps["drexp"])
    callback = "[hydra.experimental.callbacks.PickleJobInfoCallback][INFO] - "
    assert basic == [
        f"{callback}Saving job configs in {SWEEP}/{num}/.hydra/config.pickle",
        f"[__main__][INFO] - parity job x={XS[num]}",
        f"{callback}Saving job_return in {SWEEP}/{num}/.hydra/job_return.pickle",
    ]
    assert drexp == basic


@pytest.mark.parametrize("launcher", ["basic", "drexp"])
@pytest.mark.parametrize("num", range(len(XS)))
def test_pickle_job_info_callback_files(sweeps: dict[str, Path], launcher: str, num: int) -> None:
    from hydra.core.utils import JobStatus
    from omegaconf import DictConfig

    hydra_dir = sweeps[launcher] / str(num) / ".hydra"
    with open(hydra_dir / "config.pickle", "rb") as f:
        config = pickle.load(f)
    assert isinstance(config, DictConfig)
    assert config.x == XS[num]
    assert config.hydra.runtime.output_dir == str(sweeps[launcher] / str(num))
    with open(hydra_dir / "job_return.pickle", "rb") as f:
        job_return = pickle.load(f)
    assert job_return.status == JobStatus.COMPLETED
    assert job_return.return_value == XS[num] * 10
    assert job_return.overrides == [f"x={XS[num]}"]
