"""``hydra/sweeper=dr_exp``: BasicSweeper's jobs, validated per group choice, not per job.

Every sweep here runs through both ``basic`` and ``dr_exp`` and must give the same
jobs (overrides, numbers, batches, configs) or the same error (type and message).
Hydra's own suites run with the sweeper selected, over the basic launcher and over
dr_exp's queue; real apps run as subprocesses where the database is checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional

import pytest
from conftest import ROOT, run_cli
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from omegaconf import OmegaConf

APP = ROOT / "tests" / "apps" / "sweeper_app.py"
NOOP = ROOT / "benchmarks" / "noop_app.py"
SWEEPERS = ["basic", "dr_exp"]
QUEUE_ONLY = ["hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0"]

# The app's typed config group (opt/adam) must be in the ConfigStore for in-process runs.
# (Not by importing the app: @hydra.main sets Hydra's version_base, process-wide.)
_spec = importlib.util.spec_from_file_location("sweeper_schema", APP.parent / "sweeper_schema.py")
assert _spec and _spec.loader
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))


# -- in-process: the same sweep through both sweepers ---------------------------------
def sweep_outcome(
    hydra_sweep_runner: Any,
    tmp_path: Path,
    sweeper: str,
    overrides: List[str],
    max_batch_size: Optional[int] = None,
    config_name: str = "sweeper_app",
) -> tuple:
    """(result, jobs the task ran): result is every batch's (num, overrides, config), or
    the error as (type, message, cause type, cause message)."""
    ran: list = []

    def task(cfg: Any) -> Any:
        ran.append(1)
        return OmegaConf.to_container(cfg)

    flags = [f"hydra/sweeper={sweeper}", "hydra/launcher=basic", "hydra/job_logging=disabled"]
    if max_batch_size:
        flags.append(f"hydra.sweeper.max_batch_size={max_batch_size}")
    try:
        with hydra_sweep_runner(
            calling_file=str(APP),
            calling_module=None,
            task_function=task,
            config_path="sweeper_conf",
            config_name=config_name,
            overrides=flags + overrides,
            temp_dir=tmp_path / sweeper,
        ) as sweep:
            result: Any = [
                [(r.hydra_cfg.hydra.job.num, list(r.overrides), r.return_value) for r in batch]
                for batch in sweep.returns
            ]
    except Exception as e:
        cause = e.__cause__
        result = (type(e), str(e), type(cause), str(cause))
    return result, len(ran)


def both(hydra_sweep_runner: Any, tmp_path: Path, overrides: List[str], batch=None, **kw) -> dict:
    return {
        s: sweep_outcome(hydra_sweep_runner, tmp_path, s, overrides, batch, **kw) for s in SWEEPERS
    }


# hydra's tests/test_basic_sweeper.py::test_split, run end to end through both sweepers.
SPLIT = [
    pytest.param(["lr=10"], None, [[["lr=10"]]], id="simple"),
    pytest.param(["lr=10,20"], None, [[["lr=10"], ["lr=20"]]], id="split_1d"),
    pytest.param(["tags=[10,20]"], None, [[["tags=[10,20]"]]], id="not_split_yaml_list"),
    pytest.param(
        ["tags=[a,b,c],[d,e,f]"], None, [[["tags=[a,b,c]"], ["tags=[d,e,f]"]]], id="list_of_lists"
    ),
    pytest.param(
        ["lr=1,2", "epochs=10,11"],
        None,
        [
            [
                ["lr=1", "epochs=10"],
                ["lr=1", "epochs=11"],
                ["lr=2", "epochs=10"],
                ["lr=2", "epochs=11"],
            ]
        ],
        id="no_batching",
    ),
    pytest.param(
        ["lr=1,2", "epochs=10,11"],
        1,
        [
            [["lr=1", "epochs=10"]],
            [["lr=1", "epochs=11"]],
            [["lr=2", "epochs=10"]],
            [["lr=2", "epochs=11"]],
        ],
        id="batches_of_1",
    ),
    pytest.param(
        ["lr=1,2", "epochs=10,11"],
        2,
        [
            [["lr=1", "epochs=10"], ["lr=1", "epochs=11"]],
            [["lr=2", "epochs=10"], ["lr=2", "epochs=11"]],
        ],
        id="batches_of_2",
    ),
    pytest.param(
        ["epochs=range(0,3)"], None, [[["epochs=0"], ["epochs=1"], ["epochs=2"]]], id="range"
    ),
]


@pytest.mark.usefixtures("hydra_restore_singletons")
@pytest.mark.parametrize("args, max_batch_size, expected", SPLIT)
def test_split(hydra_sweep_runner, tmp_path, args, max_batch_size, expected) -> None:
    out = both(hydra_sweep_runner, tmp_path, args, max_batch_size)
    assert out["dr_exp"] == out["basic"]
    batches, _ = out["dr_exp"]
    assert [[ov for _, ov, _ in batch] for batch in batches] == expected
    nums = [num for batch in batches for num, _, _ in batch]
    assert nums == list(range(len(nums)))


GOOD = [
    pytest.param(["db=mysql,postgresql", "db.user=someone"], id="value_only_in_one_group_option"),
    pytest.param(["db=mysql,postgresql", "lr=1,2", "opt.lr=0.5,1"], id="groups_x_values"),
    pytest.param(["+extra=5", "extra=6,7"], id="add_then_override_same_key"),
    pytest.param(["+extra=1,2", "+more.deep=3,4"], id="adds"),
    pytest.param(["~db", "lr=1,2"], id="delete_group"),
    pytest.param(["nested.b={c: 3},{c: 4}", "nested.a=7"], id="dict_merge"),
    pytest.param(["maybe=1,2", "lr=${epochs}"], id="interpolations"),
    pytest.param(["lr=0.1", "~warmup_lr=0.1"], id="delete_with_value"),
    pytest.param(["tags=[1,2]", "tags.0=5,6"], id="list_then_index"),
    pytest.param([], id="no_overrides"),
]


@pytest.mark.usefixtures("hydra_restore_singletons")
@pytest.mark.parametrize("overrides", GOOD)
@pytest.mark.parametrize("batch", [None, 2])
def test_same_jobs_and_configs(hydra_sweep_runner, tmp_path, overrides, batch) -> None:
    out = both(hydra_sweep_runner, tmp_path, overrides, batch)
    assert isinstance(out["basic"][0], list), out["basic"]
    assert out["dr_exp"] == out["basic"]


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_params(hydra_sweep_runner, tmp_path) -> None:
    out = both(hydra_sweep_runner, tmp_path, ["epochs=3,4"], config_name="sweeper_params")
    assert out["dr_exp"] == out["basic"]
    assert [ov for _, ov, _ in out["dr_exp"][0][0]][:2] == [
        ["lr=1", "+seed=0", "epochs=3"],
        ["lr=1", "+seed=0", "epochs=4"],
    ]


BAD = [
    pytest.param(["boo=bar"], id="bad_key"),
    pytest.param(["lr=1,2", "boo=1,2"], id="bad_key_in_grid"),
    pytest.param(["opt.lr=0.5,abc"], id="bad_typed_value"),
    pytest.param(["db=mysql,postgresql", "db.timeout=5"], id="key_missing_in_one_option"),
    pytest.param(["db=mysql,postgresql", "+db.timeout=5"], id="add_existing_in_one_option"),
    pytest.param(["db=mysql,nosuch"], id="bad_group_option"),
    pytest.param(["~lr", "lr=1,2"], id="delete_then_override"),
    pytest.param(["epochs=1,2", "+epochs=3"], id="add_over_override"),
    pytest.param(["lr=0.1,0.5", "~warmup_lr=0.1"], id="delete_through_interpolation"),
    pytest.param(["maybe=null,1", "+alias=5"], id="add_through_interpolation"),
    pytest.param(["lr@pkg=1,2"], id="package_on_a_value"),
    pytest.param(["nested.b={d: 3}"], id="dict_merge_not_in_struct"),
    pytest.param(["+nested.b=5"], id="add_existing"),
    pytest.param(["lr=1,2", "x=[1"], id="parse_error"),
]


@pytest.mark.usefixtures("hydra_restore_singletons")
@pytest.mark.parametrize("overrides", BAD)
def test_same_error(hydra_sweep_runner, tmp_path, overrides) -> None:
    out = both(hydra_sweep_runner, tmp_path, overrides)
    assert isinstance(out["basic"][0], tuple), out["basic"]
    assert out["dr_exp"] == out["basic"]


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_every_batch_is_validated_before_the_first_launch(hydra_sweep_runner, tmp_path) -> None:
    """Stricter than BasicSweeper: with batches of 1, basic runs jobs 0 and 1 first."""
    out = both(hydra_sweep_runner, tmp_path, ["opt.lr=1,2,abc"], batch=1)
    (basic_err, basic_ran), (ours_err, ours_ran) = out["basic"], out["dr_exp"]
    assert ours_err == basic_err and "opt.lr=abc" in basic_err[1]
    assert (basic_ran, ours_ran) == (2, 0)


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_what_only_a_full_composition_catches(hydra_sweep_runner, tmp_path) -> None:
    """Hydra reads hydra.job.env_copy after the job's overrides; this app's interpolates
    env_vars.  Only the launcher's own composition of job 1 sees the unset variable."""
    out = both(hydra_sweep_runner, tmp_path, ["env_vars=[],[DR_EXP_NO_SUCH_VAR]"])
    (basic_err, basic_ran), (ours_err, ours_ran) = out["basic"], out["dr_exp"]
    assert ours_err == basic_err and basic_err[0] is KeyError
    assert (basic_ran, ours_ran) == (0, 1)  # ours ran job 0, then the launcher failed job 1


def test_the_cheap_parse_agrees_with_hydras_parser() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dr_exp.sweeper import parse_simple_int

    parser = OverridesParser.create()
    for text in ["x=5", "+x=0", "++a.b=-12", "~a.b_c=7", "true=5", "a.null=1", "x=-0", "x=10**9"]:
        ours = parse_simple_int(text)
        if ours is not None:
            assert ours == parser.parse_override(text), text
    for text in ["x=007", "x=1_000", "a.0=1", "x=5.0", "x=+5", "x@p=1", "x=1,2"]:
        assert parse_simple_int(text) is None, text


def test_one_composition_for_a_grid_of_values(hydra_restore_singletons, tmp_path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from dr_exp.sweeper import SweepValidator

    with initialize_config_dir(str(APP.parent / "sweeper_conf"), version_base=None):
        compose("sweeper_app")  # hydra_restore_singletons undoes it
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("sweeper_app", [], RunMode.MULTIRUN)
        jobs = [
            [f"db={db}", f"lr={i}", f"+seed={j}"]
            for db in ("mysql", "postgresql")
            for i in range(20)
            for j in range(20)
        ]
        validator = SweepValidator(loader, master)
        validator.validate(jobs)
    assert validator.stats == {
        "jobs": 800,
        "compositions": 2,
        "values": 80,
        "sequences": 0,
        "full": 0,
    }


# -- discovery ------------------------------------------------------------------------
def test_discovery() -> None:
    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "DrExpSweeper" in names


def test_discovery_imports_only_the_settings() -> None:
    code = (
        "import sys\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "assert 'DrExpSweeper' in [p.__name__ for p in Plugins.instance().discover(Sweeper)]\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('dr_exp.sweeper'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["dr_exp.sweeper_config"]


def test_the_plugin_is_thin_glue() -> None:
    plugin = ROOT / "hydra_plugins" / "dr_exp_sweeper"
    lines = sum(len(p.read_text().splitlines()) for p in plugin.glob("*.py"))
    assert lines < 60, f"hydra_plugins/dr_exp_sweeper has {lines} lines: move logic to dr_exp/"
    conf = (ROOT / "dr_exp" / "sweeper_config.py").read_text()
    imports = {m for m in re.findall(r"^(?:from|import) (\S+)", conf, re.M)}
    assert imports <= {"__future__", "dataclasses", "typing"}, imports


# -- Hydra's suites with hydra/sweeper=dr_exp -----------------------------------------
@pytest.mark.parametrize(
    "launcher_name, overrides",
    [
        ("basic", ["hydra/sweeper=dr_exp"]),
        ("dr_exp", ["hydra/sweeper=dr_exp", "hydra.launcher.idle_timeout=2"]),
    ],
)
class TestDrExpSweeper(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "launcher_name, overrides",
    [
        ("basic", ["hydra/sweeper=dr_exp", "hydra.sweeper.max_batch_size=2"]),
        (
            "dr_exp",
            [
                "hydra/sweeper=dr_exp",
                "hydra.sweeper.max_batch_size=2",
                "hydra.launcher.idle_timeout=2",
                "hydra.job.chdir=True",
            ],
        ),
    ],
)
class TestDrExpSweeperBatched(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        pytest.param(
            {"defaults": [{"override hydra/sweeper": "dr_exp"}]},
            ["-m", "hydra/launcher=basic", "hydra/job_logging=disabled"],
            id="basic_launcher",
        ),
        pytest.param(
            {
                "defaults": [
                    {"override hydra/sweeper": "dr_exp"},
                    {"override hydra/launcher": "dr_exp"},
                    {"override hydra/hydra_logging": "hydra_debug"},
                    {"override hydra/job_logging": "disabled"},
                ],
                "hydra": {"launcher": {"idle_timeout": 2, "on_duplicate": "always"}},
            },
            ["-m"],
            id="dr_exp_launcher",
        ),
    ],
)
class TestDrExpSweeperIntegration(IntegrationTestSuite):
    pass


# -- real apps, real queue ------------------------------------------------------------
def app(
    script: Path, *overrides: str, cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(script), "-m", *overrides, "hydra.sweep.dir=sweep"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def error_text(proc: subprocess.CompletedProcess) -> str:
    """What Hydra printed for the error: stderr without log lines."""
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("[")]
    return "\n".join(lines).strip()


def rows(db_path: Path) -> dict:
    if not db_path.exists():
        return {"sweeps": 0, "jobs": 0}
    con = sqlite3.connect(db_path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("sweeps", "jobs")
            if t in tables
        }
    finally:
        con.close()


def listed(db_path: Path, *args: str) -> list:
    return json.loads(run_cli("list", "--format", "json", "--db", str(db_path), *args).stdout)


def test_one_bad_value_in_10000_jobs_writes_nothing(tmp_path, db_path) -> None:
    """The same error as the basic sweeper (shown on 3 jobs: it composes every job), and
    neither a sweep nor a job row in the queue."""
    values = [str(i) for i in range(9999)]
    values.insert(5000, "abc")
    assert len(values) == 10_000
    ours = app(APP, "opt.lr=" + ",".join(values), "hydra/sweeper=dr_exp", *QUEUE_ONLY, cwd=tmp_path)
    basic = app(APP, "opt.lr=1,abc,2", "hydra/sweeper=basic", *QUEUE_ONLY, cwd=tmp_path)
    assert ours.returncode == basic.returncode == 1
    assert "Error merging override opt.lr=abc" in error_text(ours)
    assert error_text(ours) == error_text(basic)
    assert rows(db_path) in ({"sweeps": 0, "jobs": 0}, {})
    if db_path.exists():
        assert listed(db_path) == []


def test_a_10000_job_grid_is_queued(tmp_path, db_path) -> None:
    proc = app(
        NOOP, "x=range(0,100)", "+y=range(0,100)", "hydra/sweeper=dr_exp", *QUEUE_ONLY, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pending = listed(db_path, "--status", "pending", "--limit", "20000")
    assert len(pending) == 10_000
    assert rows(db_path) == {"sweeps": 1, "jobs": 10_000}


def test_the_worker_fails_just_the_job_only_a_full_composition_catches(tmp_path, db_path) -> None:
    proc = app(
        APP,
        "env_vars=[],[DR_EXP_NO_SUCH_VAR],[HOME]",
        "hydra/sweeper=dr_exp",
        "hydra/launcher=dr_exp",
        "hydra.launcher.workers=1",
        "hydra.launcher.idle_timeout=2",
        cwd=tmp_path,
    )
    assert proc.returncode == 1  # the sweeper re-raises the failed job (wait=true)
    jobs = {j["job_num"]: j for j in listed(db_path)}
    assert {n: j["status"] for n, j in jobs.items()} == {
        0: "completed",
        1: "failed",
        2: "completed",
    }
    assert "KeyError: 'DR_EXP_NO_SUCH_VAR'" in jobs[1]["error"]
    shown = run_cli("show", str(jobs[1]["id"])).stdout
    assert "DR_EXP_NO_SUCH_VAR" in shown
    basic = app(
        APP,
        "env_vars=[],[DR_EXP_NO_SUCH_VAR],[HOME]",
        "hydra/sweeper=basic",
        *QUEUE_ONLY,
        cwd=tmp_path,
    )
    assert basic.returncode == 1 and "KeyError: 'DR_EXP_NO_SUCH_VAR'" in basic.stderr
