"""Describing what a job returned or raised: JSON for return values, one-line errors.

Both the Hydra kind and the trainer kind of job (``dr_exp.context``) describe
their outcome with these, in the job's own process.
"""

from __future__ import annotations

import json
import os
from typing import Any


class JobError(RuntimeError):
    """Stands in for a job's exception when the original cannot travel back."""


def to_json(value: Any) -> str:
    """JSON for a return value: numbers, dicts, lists; numpy scalars and configs converted."""

    def default(obj: Any) -> Any:
        try:
            from omegaconf import DictConfig, ListConfig, OmegaConf

            if isinstance(obj, (DictConfig, ListConfig)):
                return OmegaConf.to_container(obj, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
            return obj.tolist()
        if isinstance(obj, (set, frozenset, tuple)):
            return list(obj)
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        return repr(obj)

    try:
        return json.dumps(value, default=default, allow_nan=False)
    except ValueError:  # NaN or Infinity: not JSON; they become null
        try:
            return json.dumps(_finite(json.loads(json.dumps(value, default=default))))
        except (TypeError, ValueError):
            return json.dumps(repr(value))
    except TypeError:
        return json.dumps(repr(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def error_summary(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text[:500]
