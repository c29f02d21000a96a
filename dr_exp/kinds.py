"""The kinds of sweep a worker can run, by the ``kind`` column of the ``sweeps`` table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from dr_exp import signing
from dr_exp.context import JobContext, SweepUnavailable

if TYPE_CHECKING:
    from dr_exp.db import SweepRow


def load_context(sweep: SweepRow) -> JobContext:
    """The context of a stored sweep; SweepUnavailable when its jobs cannot run.

    The row's signature is checked first, before anything of it is imported,
    unpickled, composed or put on sys.path.
    """
    try:
        signing.verify_fields("sweep", sweep.signed, sweep.signature, f"sweep {sweep.id}")
    except signing.NotSigned as e:
        raise SweepUnavailable(str(e)) from None
    loader = KINDS.get(sweep.kind)
    if loader is None:
        raise SweepUnavailable(f"sweep {sweep.id} has an unknown kind {sweep.kind!r}")
    return loader()(sweep)


def _hydra() -> Callable[[SweepRow], JobContext]:
    from dr_exp.hydra_sweep import HydraSweep

    return HydraSweep.from_sweep


def _trainer() -> Callable[[SweepRow], JobContext]:
    from dr_exp.trainer import TrainerSweep

    return TrainerSweep.from_sweep


# sweeps.kind -> its loader, imported when first needed: a worker pays only for what it runs
KINDS: dict[str, Callable[[], Callable[[SweepRow], JobContext]]] = {
    "hydra": _hydra,
    "trainer": _trainer,
}
