"""SweepComposer gives exactly Hydra's composition of each job, and Hydra's errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from hydra.version import VersionBase
from omegaconf import OmegaConf

from dr_exp.compose import SweepComposer

FILES = {
    "config.yaml": "defaults:\n  - db: mysql\n  - optim: sgd\n  - _self_\nlr: 0.1\nseed: 0\nname: ${db.driver}-${lr}\nnested:\n  a: 1\n  b: {c: 2}\n",
    "db/mysql.yaml": "driver: mysql\nport: 3306\n",
    "db/postgres.yaml": "driver: postgres\nport: 5432\nuser: pg\n",
    "optim/sgd.yaml": "name: sgd\nmomentum: 0.9\n",
    "optim/adam.yaml": "name: adam\nbetas: [0.9, 0.99]\n",
    "extra/probe.yaml": "level: 3\n",
}

JOBS = [
    ["lr=0.01", "seed=1"],
    ["lr=0.02", "seed=2"],
    ["db=postgres", "lr=0.01"],
    ["db=postgres", "db.user=admin", "seed=3"],
    ["optim=adam", "optim.betas=[0.5,0.6]"],
    ["+extra=probe", "lr=1e-3"],
    ["+newkey=5", "nested.b.c=7"],
    ["~nested.a", "seed=4"],
    ["nested={a: 9, b: {c: 10}}"],
    ["db=mysql", "lr=0.01", "seed=1"],
    ["hydra.job.name=other", "lr=3"],
    ["lr=0.01", "seed=1"],  # a repeat: served from the cache
]

BAD = [
    ["lr=0.1", "nokey=1"],
    ["db=nosuch"],
    ["db.nosuch=1"],
    ["+db=mysql"],
    ["optim=adam", "optim.momentum=1"],
]


@pytest.fixture
def loader_and_master(tmp_path: Path):
    conf = tmp_path / "conf"
    for name, text in FILES.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    # initialize_config_dir sets Hydra's version base for the whole process: put it back, or
    # later in-process Hydra runs (Hydra's own suites) lose their legacy chdir default.
    base = VersionBase.instance().version_base
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf), version_base=None, job_name="app"):
            loader = GlobalHydra.instance().config_loader()
            master = loader.load_configuration(
                "config", ["hydra.sweep.dir=sweep", "hydra/job_logging=disabled"], RunMode.MULTIRUN
            )
            yield loader, master, conf
    finally:
        GlobalHydra.instance().clear()
        VersionBase.instance().version_base = base


def _same(a, b) -> None:
    assert OmegaConf.to_yaml(a) == OmegaConf.to_yaml(b)
    assert OmegaConf.is_struct(a) == OmegaConf.is_struct(b)
    assert OmegaConf.is_readonly(a.hydra) == OmegaConf.is_readonly(b.hydra)
    app = [OmegaConf.masked_copy(c, [k for k in c if k != "hydra"]) for c in (a, b)]
    assert OmegaConf.to_yaml(app[0], resolve=True) == OmegaConf.to_yaml(app[1], resolve=True)


def test_every_job_composes_as_hydra_composes_it(loader_and_master) -> None:
    loader, master, _ = loader_and_master
    composer = SweepComposer(loader, master)
    for overrides in JOBS:
        _same(composer.compose(overrides), loader.load_sweep_config(master, overrides))
    assert len(composer.cache) < len(JOBS)  # the jobs shared their group choices


def test_bad_jobs_fail_with_hydras_own_error(loader_and_master) -> None:
    loader, master, _ = loader_and_master
    composer = SweepComposer(loader, master)
    composer.compose(["lr=0.5"])  # warm the cache first
    for overrides in BAD:
        with pytest.raises(Exception) as ours:
            composer.compose(overrides)
        with pytest.raises(Exception) as hydras:
            loader.load_sweep_config(master, overrides)
        assert type(ours.value) is type(hydras.value)
        assert str(ours.value) == str(hydras.value)
        assert isinstance(ours.value, ConfigCompositionException) or str(ours.value)
    _same(composer.compose(["lr=0.5"]), loader.load_sweep_config(master, ["lr=0.5"]))


def test_an_edited_config_file_applies_to_the_next_job(loader_and_master) -> None:
    loader, master, conf = loader_and_master
    composer = SweepComposer(loader, master)
    assert composer.compose(["lr=1"]).db.port == 3306
    time.sleep(0.01)  # a new modification time (not a timing assertion)
    (conf / "db" / "mysql.yaml").write_text("driver: mysql\nport: 3307\n")
    first = composer.compose(["lr=2"])
    assert first.db.port == 3307
    _same(first, loader.load_sweep_config(master, ["lr=2"]))


def test_a_plan_finished_in_place_in_a_fork_is_hydras_config_and_spares_the_cache(
    loader_and_master,
) -> None:
    """As under a fork server: plan in this process, finish in a forked child without a copy
    (its memory is its own), bad jobs included; the cache here is left as it was."""
    import os
    import pickle

    loader, master, _ = loader_and_master
    composer = SweepComposer(loader, master)
    composer.compose(["lr=0.5"])  # a warm cache, which the children must not change here
    cached = {k: OmegaConf.to_yaml(m) for k, (_, m) in composer.cache.items()}
    for overrides in JOBS + BAD:
        try:
            expected = OmegaConf.to_yaml(loader.load_sweep_config(master, overrides))
        except Exception as e:
            expected = f"{type(e).__name__}: {e}"
        try:
            finish = composer.plan(overrides)
        except Exception as e:  # found while planning: the server hands the error over
            assert f"{type(e).__name__}: {e}" == expected, overrides
            continue
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                got = OmegaConf.to_yaml(finish(lambda merged: merged))
            except Exception as e:
                got = f"{type(e).__name__}: {e}"
            os.write(write, pickle.dumps(got))
            os._exit(0)
        os.close(write)
        data = b""
        while chunk := os.read(read, 1 << 16):
            data += chunk
        os.close(read)
        os.waitpid(pid, 0)
        assert pickle.loads(data) == expected, overrides
    assert {k: OmegaConf.to_yaml(m) for k, (_, m) in composer.cache.items() if k in cached} == (
        cached
    )
