"""Optimizers and learning-rate schedules, configured from ml_collections dicts.

Schedules are in epochs, as the papers state them (e.g. pretraining: lr 0.1, x0.1 at
epochs 10, 18, 22), converted to steps with the pipeline's steps per epoch.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import optax

from hfrjax.losses import freeze


def make_schedule(cfg: Any, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """``cfg``: {name: piecewise|cosine|poly|constant, lr, warmup_epochs, ...}.

    piecewise: ``boundaries_epochs`` (e.g. [10, 18, 22]) and ``factor`` (0.1);
    cosine: decays to ``end_lr`` (default 0) after warm-up; poly: power ``power`` (2).
    """
    name = cfg.get("name", "constant")
    lr = float(cfg["lr"])
    warmup = int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch))
    if name == "piecewise":
        factor = float(cfg.get("factor", 0.1))
        bounds = {int(round(e * steps_per_epoch)): factor for e in cfg.get("boundaries_epochs", ())}
        main = optax.piecewise_constant_schedule(
            lr, {b - warmup: f for b, f in bounds.items() if b > warmup}
        )
    elif name == "cosine":
        main = optax.cosine_decay_schedule(
            lr, max(1, total_steps - warmup), alpha=float(cfg.get("end_lr", 0.0)) / lr
        )
    elif name == "poly":
        main = optax.polynomial_schedule(
            lr,
            float(cfg.get("end_lr", 0.0)),
            float(cfg.get("power", 2.0)),
            max(1, total_steps - warmup),
        )
    elif name == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(f"unknown schedule {name!r}; use piecewise, cosine, poly or constant")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params: Any, decay_bn_and_bias: bool) -> Any:
    """True where weight decay applies: every leaf, or only kernels (ndim > 1)."""
    return jax.tree_util.tree_map(lambda p: decay_bn_and_bias or p.ndim > 1, params)


def make_optimizer(
    cfg: Any, schedule: optax.Schedule, frozen: Sequence[str] = ()
) -> optax.GradientTransformation:
    """``cfg``: {name: sgd|adamw, momentum, nesterov, weight_decay, decay_bn_and_bias,
    clip_norm (0 = off), accumulate_steps (k > 1: optax.MultiSteps)}. SGD decay is coupled (added to the gradient, as torch.optim.SGD and
    arcface_torch); AdamW's is decoupled. ``frozen`` path prefixes get exactly zero updates."""
    name = cfg.get("name", "sgd")
    wd = float(cfg.get("weight_decay", 0.0))
    decay_all = bool(cfg.get("decay_bn_and_bias", True))
    mask = lambda p: _decay_mask(p, decay_all)  # noqa: E731
    parts = []
    if float(cfg.get("clip_norm", 0.0)) > 0:
        parts.append(optax.clip_by_global_norm(float(cfg["clip_norm"])))
    if name == "sgd":
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask))
        parts.append(
            optax.sgd(
                schedule,
                momentum=float(cfg.get("momentum", 0.9)) or None,
                nesterov=bool(cfg.get("nesterov", False)),
            )
        )
    elif name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=float(cfg.get("b1", 0.9)),
                b2=float(cfg.get("b2", 0.999)),
                weight_decay=wd,
                mask=mask,
            )
        )
    else:
        raise ValueError(f"unknown optimizer {name!r}; use sgd or adamw")
    tx = optax.chain(*parts)
    tx = freeze(tx, list(frozen)) if frozen else tx
    k = int(cfg.get("accumulate_steps", 1) or 1)
    # Gradient accumulation: the mean gradient of k batches, one update every k steps.
    return optax.MultiSteps(tx, every_k_schedule=k) if k > 1 else tx
