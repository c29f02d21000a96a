"""Hydra's own reusable launcher tests, run against hydra/launcher=dr_exp.

The same suites hydra-joblib-launcher and hydra-submitit-launcher run.  Jobs
really go through the SQLite queue and separate worker processes.
"""

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

from hydra_plugins.dr_exp_launcher.dr_exp_launcher import DrExpLauncher

FAST = ["hydra.launcher.idle_timeout=2"]

# These fail in the sweeper before any job is queued.
NOTHING_QUEUED = {"test_not_sweeping_hydra_overrides", "test_sweep_1_job_strict_and_bad_key"}


@pytest.fixture(autouse=True)
def jobs_went_through_dr_exp(request: pytest.FixtureRequest, db_path):
    """Prove each suite test really ran its jobs through the queue, not another launcher."""
    yield
    if request.node.originalname in NOTHING_QUEUED or request.cls is None:
        return
    from dr_exp.db import JobDB

    assert db_path.exists(), "no job database: the sweep did not go through dr_exp"
    db = JobDB.open(db_path, create=False)
    try:
        jobs = db.list_jobs()
    finally:
        db.close()
    assert jobs and all(j["status"] == "completed" for j in jobs), jobs


def test_discovery() -> None:
    assert DrExpLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize("launcher_name, overrides", [("dr_exp", FAST)])
class TestDrExpLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "launcher_name, overrides",
    [("dr_exp", FAST + ["hydra.sweeper.max_batch_size=2", "hydra.job.chdir=True"])],
)
class TestDrExpLauncherBatched(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {
                "defaults": [
                    {"override hydra/launcher": "dr_exp"},
                    {"override hydra/hydra_logging": "hydra_debug"},
                    {"override hydra/job_logging": "disabled"},
                ],
                # Some of these tests run one app twice with the same overrides and expect
                # two runs; dr_exp's default skips a completed duplicate (resume by
                # re-running, see test_resume.py), so this generic suite asks for `always`.
                "hydra": {"launcher": {"idle_timeout": 2, "on_duplicate": "always"}},
            },
            ["-m"],
        )
    ],
)
class TestDrExpLauncherIntegration(IntegrationTestSuite):
    pass


def test_plugin_discovery_imports_nothing_heavy() -> None:
    """Hydra imports every hydra_plugins module on every app start: keep ours light.

    Discovery may import the settings' declaration (dr_exp.config) and the constants it
    names, and nothing else of dr_exp or its dependencies.
    """
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.launcher import Launcher\n"
        "names = [p.__name__ for p in Plugins.instance().discover(Launcher)]\n"
        "assert 'DrExpLauncher' in names, names\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('dr_exp', 'sqlite_utils', 'sqlite3', 'cloudpickle', 'pynvml', 'submitit'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported = [m for m in out.stdout.strip().split(",") if m]
    light = {
        "dr_exp",
        "dr_exp.config",
        "dr_exp.defaults",
        "dr_exp.failures",
        "dr_exp.sweeper_config",
        "dr_exp.paths",
    }
    assert "dr_exp.config" in imported and set(imported) <= light, imported


def test_hydra_plugins_is_a_namespace_package() -> None:
    from pathlib import Path

    import hydra_plugins.dr_exp_launcher as plugin

    assert not (Path(plugin.__file__).parent.parent / "__init__.py").exists()
