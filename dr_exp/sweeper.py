"""``hydra/sweeper=dr_exp``: Hydra's BasicSweeper, validating a sweep in seconds.

BasicSweeper composes every job once before ``launch`` (``validate_batch_is_legal``):
about 40-70 ms a job, 12 minutes for 10,000 jobs before the first one is queued.
This sweeper produces exactly BasicSweeper's jobs, numbers and batches (it *is*
a BasicSweeper; only the validation differs) and validates by what can differ
between jobs:

* a job's overrides split, as Hydra's defaults list splits them, into *group*
  overrides (``db=mysql``, ``+experiment=x``, ``~db``, every ``hydra...``
  override) and *value* overrides (``lr=0.1``, ``+extra=1``, ``~key``);
* each distinct combination of group overrides is composed once, with Hydra's
  own ``load_sweep_config``;
* each distinct value override is applied to that combination's config the way
  Hydra applies it (``ConfigLoaderImpl._apply_overrides_to_config``), on a copy.
  A job whose value overrides can affect one another (one key equal to, or
  inside, another; an add or delete whose lookup goes through an interpolation)
  has its whole sequence applied instead, as Hydra would.

Whenever a job fails that check, Hydra's full composition of that one job is
run and its exception raised: the error (type and message) is always Hydra's
own.  (Should the full composition pass, the job is accepted.)

Every batch is validated before the first ``launch``: with one bad job among
10,000 nothing at all is launched.  That is stricter than BasicSweeper with
``max_batch_size``, which launches the batches before the bad one.

What only a full composition of every job catches is listed in
``WHAT_ONLY_A_FULL_COMPOSITION_CATCHES``; the job then fails on its worker,
which composes it in full, with Hydra's message.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from omegaconf import Container, DictConfig, ListConfig, Node, open_dict

log = logging.getLogger(__name__)

WHAT_ONLY_A_FULL_COMPOSITION_CATCHES = """\
1. Hydra settings read after a job's overrides are applied (hydra.job.env_copy,
   hydra.job.config.override_dirname.*) that interpolate an app key a job overrides:
   they are read here with the group combination's defaults.
2. Resolvers that are not pure functions of their inputs (state, randomness, time),
   reached by an add or delete override's lookup.
3. Which bad job is reported: the first one this check finds; when an earlier job is bad
   only in a way of 1-2, BasicSweeper would have reported that earlier one."""

Job = Tuple[str, ...]
# How a value override is checked against its group combination's composed config:
FAST = "fast"  # a plain assignment to an existing leaf: in place, on one shared copy
ADD = "add"  # a `+key` that adds a new key: in place on the shared copy, then removed again
FRESH = "fresh"  # anything else: on its own fresh copy
SEQUENCE = "sequence"  # may depend on the job's other overrides: the job's whole sequence

# A job override Hydra's grammar reads as `key=<int>` (what range() sweeps produce), built
# without the ANTLR parser; anything else is parsed by Hydra (a test checks they agree).
_SIMPLE_INT = re.compile(
    r"(\+\+|\+|~)?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(-?(?:0|[1-9][0-9]*))"
)
_PREFIX_TYPES = {
    None: OverrideType.CHANGE,
    "+": OverrideType.ADD,
    "++": OverrideType.FORCE_ADD,
    "~": OverrideType.DEL,
}


class WholeSweepValidation:
    """BasicSweeper's ``validate_batch_is_legal``, for the whole sweep at once, one
    composition per distinct group combination.  Mixed into BasicSweeper by
    :func:`sweeper_class`."""

    overrides: Any
    hydra_context: Any
    config: Any
    validated = False
    stats: Dict[str, int] = {}

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        all_batches = list(self.overrides or [])
        whole_sweep = any(batch is b for b in all_batches)
        if whole_sweep and self.validated:
            return  # checked with the whole sweep, before the first launch
        jobs = [job for b in all_batches for job in b] if whole_sweep else list(batch)
        assert self.hydra_context is not None and self.config is not None
        tic = time.perf_counter()
        validator = SweepValidator(self.hydra_context.config_loader, self.config)
        validator.validate(jobs)
        self.stats = dict(validator.stats)
        self.validated = True
        log.debug(
            f"dr_exp sweeper: validated {len(jobs)} jobs in {time.perf_counter() - tic:.2f} s "
            f"({self.stats})"
        )


_classes: Dict[type, type] = {}


def sweeper_class() -> type:
    """``GroupValidatingSweeper(WholeSweepValidation, BasicSweeper)``.

    Built on first use against the BasicSweeper class Hydra's plugin scan has loaded:
    each scan (one per process, but one per test in Hydra's test fixtures) re-executes
    ``basic_sweeper``, and BasicSweeper's ``super(BasicSweeper, self)`` needs an instance
    of the class now bound to that name.
    """
    from hydra._internal.core_plugins import basic_sweeper

    basic = basic_sweeper.BasicSweeper
    if basic not in _classes:
        _classes[basic] = type(
            "GroupValidatingSweeper", (WholeSweepValidation, basic), {"__module__": __name__}
        )
    return _classes[basic]


def new_sweeper(max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None):
    """A BasicSweeper (its jobs, numbers and batches) that validates as this module says."""
    return sweeper_class()(max_batch_size=max_batch_size, params=params)


class SweepValidator:
    """Checks jobs as Hydra's ``load_sweep_config`` would, composing once per group choice."""

    def __init__(self, config_loader: Any, master_config: DictConfig) -> None:
        self.loader = config_loader
        self.master = master_config
        self.parser = OverridesParser.create()  # as load_configuration parses a job's overrides
        self.parsed: Dict[str, Optional[Override]] = {}
        self.repos: Dict[Job, Any] = {}  # hydra-level overrides -> config repository (or None)
        self.is_group: Dict[Tuple[Job, str, bool], bool] = {}
        self.composed: Dict[Job, Optional[DictConfig]] = {}  # group overrides -> config
        self.work: Dict[Job, DictConfig] = {}  # a copy of composed[g] that FAST checks mutate
        self.kinds: Dict[Tuple[Job, str], Tuple[str, int]] = {}
        self.checked: Dict[Tuple[Job, Any], bool] = {}
        self.independent: Dict[Tuple[str, ...], bool] = {}
        self.stats = {"jobs": 0, "compositions": 0, "values": 0, "sequences": 0, "full": 0}

    # -- the sweep ---------------------------------------------------------------
    def validate(self, jobs: Sequence[Sequence[str]]) -> None:
        """Raise Hydra's own composition error for the first job found bad."""
        for job in jobs:
            self.stats["jobs"] += 1
            if self.cheap_ok(tuple(job)):
                continue
            self.stats["full"] += 1
            # Hydra's full composition of this one job: its exception is the one to raise.
            self.loader.load_sweep_config(master_config=self.master, sweep_overrides=list(job))
            log.debug(f"dr_exp sweeper: {list(job)} passed a full composition")

    def cheap_ok(self, job: Job) -> bool:
        parsed = [self.parse(s) for s in job]
        if any(o is None or o.is_sweep_override() for o in parsed):
            return False  # a parse error, or a sweep in a job: Hydra's message says which
        overrides: List[Override] = parsed  # type: ignore[assignment]
        hydra_level = tuple(s for s, o in zip(job, overrides) if hydra_override(o))
        groups: List[str] = []
        values: List[Tuple[str, Override]] = []
        for s, o in zip(job, overrides):
            group = hydra_override(o) or self.group_override(hydra_level, o)
            if group is None:
                return False
            if group:
                groups.append(s)
            else:
                values.append((s, o))
        g = tuple(groups)
        base = self.compose(g)
        if base is None:
            return False
        if not values:
            return True
        keys = tuple(o.key_or_group for _, o in values)
        if self.keys_independent(keys):
            kinds = [self.kind(g, s, o, base) for s, o in values]
            if all(k[0] != SEQUENCE for k in kinds):
                return all(self.value_ok(g, s, o, k, base) for (s, o), k in zip(values, kinds))
        return self.sequence_ok(g, tuple(s for s, _ in values), [o for _, o in values], base)

    # -- parsing and classifying -------------------------------------------------
    def parse(self, text: str) -> Optional[Override]:
        if text not in self.parsed:
            self.parsed[text] = parse_simple_int(text)
        if self.parsed[text] is None:
            try:
                self.parsed[text] = self.parser.parse_override(text)
            except Exception:
                return None
        return self.parsed[text]

    def group_override(self, hydra_level: Job, o: Override) -> Optional[bool]:
        """True where Hydra's defaults list takes ``o`` as a config-group override
        (``hydra._internal.defaults_list.Overrides``); None if that cannot be told."""
        is_dict = isinstance(o.value(), dict)
        key = (hydra_level, o.key_or_group, is_dict)
        if key not in self.is_group:
            repo = self.repository(hydra_level)
            if repo is None:
                return None
            self.is_group[key] = not is_dict and repo.group_exists(o.key_or_group)
        return self.is_group[key]

    def repository(self, hydra_level: Job) -> Any:
        """The config repository a job's composition sees (``hydra.searchpath`` included)."""
        if hydra_level not in self.repos:
            try:
                hydra_overrides = list(self.master.hydra.overrides.hydra) + list(hydra_level)
                _, repo = self.loader._parse_overrides_and_create_caching_repo(
                    self.master.hydra.job.config_name, hydra_overrides
                )
            except Exception:
                repo = None
            self.repos[hydra_level] = repo
        return self.repos[hydra_level]

    @staticmethod
    def keys_independent_uncached(keys: Sequence[str]) -> bool:
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                if a == b or a.startswith(b + ".") or b.startswith(a + "."):
                    return False
        return True

    def keys_independent(self, keys: Tuple[str, ...]) -> bool:
        if keys not in self.independent:
            self.independent[keys] = self.keys_independent_uncached(keys)
        return self.independent[keys]

    def kind(self, g: Job, text: str, o: Override, base: DictConfig) -> Tuple[str, int]:
        key = (g, text)
        if key not in self.kinds:
            self.kinds[key] = classify(o, base)
        return self.kinds[key]

    # -- composing and applying --------------------------------------------------
    def compose(self, g: Job) -> Optional[DictConfig]:
        if g not in self.composed:
            self.stats["compositions"] += 1
            try:
                cfg = self.loader.load_sweep_config(
                    master_config=self.master, sweep_overrides=list(g)
                )
            except Exception:
                cfg = None
            self.composed[g] = cfg
        return self.composed[g]

    def value_ok(
        self, g: Job, text: str, o: Override, kind: Tuple[str, int], base: DictConfig
    ) -> bool:
        key = (g, text)
        if key not in self.checked:
            self.stats["values"] += 1
            if kind[0] in (FAST, ADD):
                if g not in self.work:
                    self.work[g] = cheap_copy(base)
                work = self.work[g]
                ok = apply_ok([o], work)
                if not ok or (kind[0] == ADD and not remove_added(work, o.key_or_group, kind[1])):
                    self.work.pop(g)  # it may be half-changed: the next check takes a new copy
            else:
                ok = apply_ok([o], cheap_copy(base))
            self.checked[key] = ok
        return self.checked[key]

    def sequence_ok(self, g: Job, texts: Job, os: List[Override], base: DictConfig) -> bool:
        key = (g, texts)
        if key not in self.checked:
            self.stats["sequences"] += 1
            self.checked[key] = apply_ok(os, cheap_copy(base))
        return self.checked[key]


def apply_ok(overrides: List[Override], cfg: DictConfig) -> bool:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    try:
        ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)
    except Exception:
        return False
    return True


def classify(o: Override, base: DictConfig) -> Tuple[str, int]:
    """How a value override must be checked against ``base``: (FAST | ADD | FRESH |
    SEQUENCE, for ADD the depth of the first key part that ``base`` lacks)."""
    if o.package is not None:
        return FRESH, 0  # Hydra rejects it whatever the config holds
    parts = o.key_or_group.split(".")
    nodes = path_nodes(base, o.key_or_group)
    whole_path = len(nodes) == len(parts)
    parents_plain = all(
        isinstance(p, DictConfig) and not (p._is_interpolation() or p._is_none() or p._is_missing())
        for p in nodes[: len(parts) - 1]
    )
    if o.is_add() or o.is_delete():
        # Hydra looks the key up with OmegaConf.select, which resolves interpolations on
        # the way: the answer may then depend on the job's other overrides.
        if any(node._is_interpolation() for node in nodes):
            return SEQUENCE, 0
        if o.is_delete() and whole_path and has_interpolation(nodes[-1]):
            return SEQUENCE, 0  # Hydra compares the value to delete with the resolved node
        if o.is_add() and not whole_path and parents_plain:
            return ADD, len(nodes)  # a new key under plain dicts: removed again after the check
        return FRESH, 0
    if o.is_force_add() or isinstance(o.value(), (dict, list)):
        return FRESH, 0
    # A plain assignment of a plain value to an existing leaf: its outcome depends on the
    # leaf's type and flags only, which an earlier successful assignment leaves as they were.
    if whole_path and parents_plain and not isinstance(nodes[-1], Container):
        return FAST, 0
    return FRESH, 0


def remove_added(cfg: DictConfig, key: str, depth: int) -> bool:
    """Undo a successful ``+key=...``: delete the first key part that did not exist."""
    parts = key.split(".")
    try:
        parent: Any = cfg
        for part in parts[:depth]:
            parent = parent._get_node(part)
        if not isinstance(parent, DictConfig):
            return False
        with open_dict(parent):
            del parent[parts[depth]]
    except Exception:
        return False
    return True


def cheap_copy(cfg: DictConfig) -> DictConfig:
    """A deep copy that shares the ``hydra`` node (most of the config; value overrides
    never touch it: every ``hydra...`` override is composed with the group choices)."""
    hydra_node = cfg._get_node("hydra", validate_access=False)
    memo = {} if hydra_node is None else {id(hydra_node): hydra_node}
    return copy.deepcopy(cfg, memo)


def hydra_override(o: Override) -> bool:
    """Overrides composed with the group choices: Hydra's own settings, and ``hydra``."""
    return o.is_hydra_override() or o.key_or_group == "hydra"


def parse_simple_int(text: str) -> Optional[Override]:
    """``key=<int>`` as Hydra's parser reads it, without the parser; None for anything else."""
    m = _SIMPLE_INT.fullmatch(text)
    if m is None:
        return None
    prefix, key, value = m.groups()
    return Override(
        type=_PREFIX_TYPES[prefix],
        key_or_group=key,
        package=None,
        value_type=ValueType.ELEMENT,
        _value=int(value),
        input_line=text,
        config_loader=None,
    )


def path_nodes(cfg: DictConfig, key: str) -> List[Node]:
    """The nodes along a dotted key, without resolving anything, as far as they exist."""
    nodes: List[Node] = []
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Container) or node._is_none() or node._is_missing():
            break
        if node._is_interpolation():
            break
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                break
            child = node._get_node(int(part))
        else:
            child = node._get_node(part, validate_access=False)
        if child is None:
            break
        nodes.append(child)
        node = child
    return nodes


def has_interpolation(node: Node) -> bool:
    if node._is_interpolation():
        return True
    if not isinstance(node, Container) or node._is_none() or node._is_missing():
        return False
    if isinstance(node, DictConfig):
        children = [node._get_node(k) for k in node.keys()]
    else:
        children = [node._get_node(i) for i in range(len(node))]
    return any(has_interpolation(c) for c in children if isinstance(c, Node))
