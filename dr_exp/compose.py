"""Hydra's composition of a sweep's jobs, with what the jobs share computed once.

Hydra's ``load_sweep_config`` composes every job from scratch: it builds the
defaults list, loads and merges every config file, then applies the job's
overrides.  The jobs of one sweep differ only in their overrides, and most of
the work depends only on the overrides that choose config groups
(``db=mysql``, ``hydra/launcher=...``): a sweep of ``lr=...`` and ``seed=...``
shares one defaults list and one merged config.

:class:`SweepComposer` keeps, per distinct choice of config groups, the
defaults list and the merged config before any value override, and does per
job exactly what ``ConfigLoaderImpl._load_configuration_impl`` (hydra-core
1.3) does after that: apply the value overrides in struct mode, record the
overrides and choices, and fill ``hydra.runtime`` and ``hydra.job``.  The
result is the config Hydra composes, node for node (``tests/test_compose.py``
compares them, and the parity tests compare job folders byte for byte).

The cache is dropped when a file of the config search path changes, so an
edited YAML file applies from the next job, as it would under Hydra.  An
override of ``hydra.searchpath`` makes every job compose in full.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any, Callable, Optional

from hydra import __version__, version
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.config_repository import CachingConfigRepository
from hydra._internal.defaults_list import DefaultsList, create_defaults_list
from hydra.conf import ConfigSourceInfo
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobRuntime
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException


class SweepComposer:
    """``compose(overrides)`` returns ``loader.load_sweep_config(master, overrides)``."""

    def __init__(self, loader: ConfigLoaderImpl, master: DictConfig) -> None:
        self.loader = loader
        self.master = master
        self.config_name: Optional[str] = master.hydra.job.config_name
        self.hydra_overrides: list[str] = list(OmegaConf.to_container(master.hydra.overrides.hydra))
        self.parser = OverridesParser.create()
        self._stamp: Optional[tuple] = None
        self._reset()

    def _reset(self) -> None:
        self.repo: Optional[CachingConfigRepository] = None
        self.cache: dict[tuple[str, ...], tuple[DefaultsList, DictConfig]] = {}

    def compose(self, sweep_overrides: list[str]) -> DictConfig:
        return self.plan(sweep_overrides)(copy.deepcopy)

    def plan(self, sweep_overrides: list[str]) -> Callable[[Callable], DictConfig]:
        """What jobs share, now (parsing, validation, the cached merge); the job's own part
        when the answer is called, with how to copy the cached merge.

        A fork server plans, then forks: its job's process finishes the plan in place
        (``plan(o)(lambda c: c)``), on its private copy of the server's memory, which
        saves the deep copy of the whole config that ``compose`` makes.
        """
        overrides = self.hydra_overrides + list(sweep_overrides)
        parsed = self.parser.parse_overrides(overrides=overrides)
        if any(o.get_key_element() == "hydra.searchpath" for o in parsed):
            full = self.loader.load_sweep_config(self.master, list(sweep_overrides))
            return lambda _copy: full
        try:
            planned = self._plan(parsed)
        except OmegaConfBaseException as e:  # as Hydra's load_configuration wraps it
            raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from e

        defaults_list, merged, config_overrides, repo = planned

        def finish(copy_merged: Callable) -> DictConfig:
            try:
                cfg = self._finish(
                    defaults_list, config_overrides, parsed, repo, copy_merged(merged)
                )
            except OmegaConfBaseException as e:
                raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from e
            OmegaConf.copy_cache(from_config=self.master, to_config=cfg)
            return cfg

        return finish

    def _repo(self, parsed: list[Override]) -> CachingConfigRepository:
        """The search path's repository, shared by the jobs until a config file changes."""
        stamp = _files_stamp(self.repo) if self.repo is not None else None
        if self.repo is None or stamp != self._stamp:
            self._reset()
            self.loader.ensure_main_config_source_available()
            repo = CachingConfigRepository(self.loader.repository)
            self.loader._process_config_searchpath(self.config_name, parsed, repo)
            self.repo, self._stamp = repo, _files_stamp(repo)
        return self.repo

    def _plan(self, parsed: list[Override]) -> tuple:
        """``ConfigLoaderImpl._load_configuration_impl`` up to the merged config, which is
        reused across jobs that choose the same config groups: (defaults list, merged
        config, the value overrides, the repository)."""
        loader = self.loader
        repo = self._repo(parsed)
        loader.validate_sweep_overrides_legal(
            overrides=parsed, run_mode=RunMode.RUN, from_shell=True
        )
        choice = tuple(o.input_line for o in parsed if _chooses_group(o, repo))
        cached = self.cache.get(choice)
        if cached is None:
            defaults_list = create_defaults_list(
                repo=repo,
                config_name=self.config_name,
                overrides_list=parsed,
                prepend_hydra=True,
                skip_missing=False,  # RunMode.RUN, as load_sweep_config composes
            )
            merged = loader._compose_config_from_defaults_list(
                defaults=defaults_list.defaults, repo=repo
            )
            cached = self.cache[choice] = (defaults_list, merged)
            config_overrides = defaults_list.config_overrides
        else:
            config_overrides = [o for o in parsed if not _chooses_group(o, repo)]
        defaults_list, merged = cached
        return defaults_list, merged, config_overrides, repo

    def _finish(
        self,
        defaults_list: DefaultsList,
        config_overrides: list[Override],
        parsed: list[Override],
        repo: CachingConfigRepository,
        cfg: DictConfig,
    ) -> DictConfig:
        """The rest of ``_load_configuration_impl``, on ``cfg``: a copy of the merged config
        that is the job's own."""
        OmegaConf.set_struct(cfg, True)
        OmegaConf.set_readonly(cfg.hydra, False)
        ConfigLoaderImpl._apply_overrides_to_config(config_overrides, cfg)
        app_overrides = []
        for override in parsed:
            if override.is_hydra_override():
                cfg.hydra.overrides.hydra.append(override.input_line)
            else:
                cfg.hydra.overrides.task.append(override.input_line)
                app_overrides.append(override)
        with open_dict(cfg.hydra):
            cfg.hydra.runtime.choices.update(defaults_list.overrides.known_choices)
            for key in cfg.hydra.job.env_copy:
                cfg.hydra.job.env_set[key] = os.environ[key]
        cfg.hydra.runtime.version = __version__
        cfg.hydra.runtime.version_base = version.getbase()
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.runtime.config_sources = [
            ConfigSourceInfo(path=x.path, schema=x.scheme(), provider=x.provider)
            for x in repo.get_sources()
        ]
        if "name" not in cfg.hydra.job:
            cfg.hydra.job.name = JobRuntime().get("name")
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=app_overrides,
            kv_sep=cfg.hydra.job.config.override_dirname.kv_sep,
            item_sep=cfg.hydra.job.config.override_dirname.item_sep,
            exclude_keys=cfg.hydra.job.config.override_dirname.exclude_keys,
        )
        cfg.hydra.job.config_name = self.config_name
        return cfg


def _chooses_group(override: Override, repo: Any) -> bool:
    """Does Hydra's defaults list take this override (a group choice), rather than apply it
    to the composed config?  The rule of ``hydra._internal.defaults_list.Overrides``."""
    if override.is_sweep_override():
        return True  # Hydra skips it there; validate_sweep_overrides_legal refuses it
    return repo.group_exists(override.key_or_group) and not isinstance(override.value(), dict)


def _files_stamp(repo: Any) -> tuple:
    """The names, sizes and times of the files under the search path's folders."""
    seen = []
    for source in repo.get_sources():
        if source.scheme() != "file" or not os.path.isdir(source.path):
            continue
        for folder, dirs, files in os.walk(source.path):
            dirs.sort()
            for name in sorted(files):
                try:
                    st = os.stat(os.path.join(folder, name))
                except OSError:
                    continue
                seen.append((folder, name, st.st_size, st.st_mtime_ns))
    return tuple(seen)
