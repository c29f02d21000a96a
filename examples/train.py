"""A real, small training app: an MLP trained with numpy SGD on two spirals.

    python examples/train.py                                     # one run
    python examples/train.py -m optim.lr=0.01,0.1 seed=0,1,2 hydra/launcher=dr_exp

It trains for a few seconds on the CPU and returns its validation metrics,
which dr_exp records as the job's return value.
"""

from __future__ import annotations

import json
import logging
import time

import hydra
import numpy as np
from omegaconf import DictConfig

from dr_exp.utils import StructuredLogger

log = logging.getLogger(__name__)


def make_spirals(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 2, size=n)
    t = rng.uniform(0.25, 1.0, size=n) * 3 * np.pi
    angle = t + labels * np.pi
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) / (3 * np.pi)
    x += rng.normal(scale=noise / 3, size=x.shape)
    return x.astype(np.float64), labels


def init_params(cfg: DictConfig, rng: np.random.Generator) -> list[np.ndarray]:
    sizes = [2] + [cfg.model.hidden] * cfg.model.layers + [2]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params.append(rng.normal(scale=np.sqrt(2.0 / fan_in), size=(fan_in, fan_out)))
        params.append(np.zeros(fan_out))
    return params


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    activations = [x]
    h = x
    for i in range(0, len(params) - 2, 2):
        h = np.maximum(h @ params[i] + params[i + 1], 0.0)
        activations.append(h)
    logits = h @ params[-2] + params[-1]
    return logits, activations


def loss_and_grads(
    params: list[np.ndarray], x: np.ndarray, y: np.ndarray, weight_decay: float
) -> tuple[float, list[np.ndarray]]:
    logits, activations = forward(params, x)
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(probs[np.arange(n), y] + 1e-12).mean()
    grad = probs
    grad[np.arange(n), y] -= 1
    grad /= n
    grads: list[np.ndarray] = [np.zeros_like(p) for p in params]
    for layer in reversed(range(len(params) // 2)):
        w = params[2 * layer]
        grads[2 * layer] = activations[layer].T @ grad + weight_decay * w
        grads[2 * layer + 1] = grad.sum(axis=0)
        if layer:
            grad = (grad @ w.T) * (activations[layer] > 0)
    return float(loss), grads


def evaluate(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    logits, _ = forward(params, x)
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return {
        "val_loss": float(-log_probs[np.arange(len(y)), y].mean()),
        "val_acc": float((logits.argmax(axis=1) == y).mean()),
    }


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    rng = np.random.default_rng(cfg.seed)
    x_train, y_train = make_spirals(cfg.data.n_train, cfg.data.noise, rng)
    x_val, y_val = make_spirals(cfg.data.n_val, cfg.data.noise, rng)
    params = init_params(cfg, rng)
    velocity = [np.zeros_like(p) for p in params]
    started = time.perf_counter()
    events = StructuredLogger()  # learning curves for `dr_exp ui` and `dr_exp report`
    for epoch in range(cfg.train.epochs):
        order = rng.permutation(len(y_train))
        for start in range(0, len(order), cfg.train.batch_size):
            batch = order[start : start + cfg.train.batch_size]
            _, grads = loss_and_grads(
                params, x_train[batch], y_train[batch], cfg.optim.weight_decay
            )
            for p, v, g in zip(params, velocity, grads):
                v *= cfg.optim.momentum
                v -= cfg.optim.lr * g
                p += v
        if epoch % 20 == 0 or epoch == cfg.train.epochs - 1:
            scores = evaluate(params, x_val, y_val)
            log.info("epoch %d: %s", epoch, scores)
            events.log_event("epoch_complete", {"epoch": epoch, **scores})
    metrics = evaluate(params, x_val, y_val)
    metrics["train_seconds"] = round(time.perf_counter() - started, 3)
    with open(_metrics_path(), "w") as f:
        json.dump(metrics, f, indent=2)
    log.info("final: %s", metrics)
    return metrics


def _metrics_path() -> str:
    from hydra.core.hydra_config import HydraConfig

    return f"{HydraConfig.get().runtime.output_dir}/metrics.json"


if __name__ == "__main__":
    main()
