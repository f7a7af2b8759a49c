"""Optimizers and learning-rate schedules, configured from ml_collections dicts.

Schedules are in epochs, as the papers state them (e.g. pretraining: lr 0.1, x0.1 at
epochs 10, 18, 22), converted to steps with the pipeline's steps per epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import optax

from hfrjax.config import Section
from hfrjax.losses import freeze


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(Section):
    """Learning rate in epochs, as the papers state it (module docstring)."""

    name: str = "piecewise"  # piecewise | cosine | poly | constant
    lr: float = 0.1
    warmup_epochs: float = 0.0  # Linear warm-up from 0.
    boundaries_epochs: tuple[float, ...] = ()  # piecewise: multiply by ``factor`` at each.
    factor: float = 0.1
    end_lr: float = 0.0  # cosine / poly
    power: float = 2.0  # poly


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Section):
    """SGD's and RMSProp's decay is coupled (added to the gradient, as torch.optim.SGD /
    RMSprop and arcface_torch do); AdamW's is decoupled."""

    name: str = "sgd"  # sgd | adamw | rmsprop
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_bn_and_bias: bool = True  # False: decay only kernels (ndim > 1).
    clip_norm: float = 0.0  # Global-norm clipping; 0 = off.
    accumulate_steps: int = 1  # k > 1: one update per k batches with the mean gradient.
    b1: float = 0.9  # adamw
    b2: float = 0.999  # adamw
    eps: float = 1e-8  # adamw, rmsprop
    rms_decay: float = 0.99  # rmsprop: torch.optim.RMSprop's alpha (CSAN §IV-C trains with it)
    rms_momentum: float = 0.0  # rmsprop
    eps_in_sqrt: bool = False  # rmsprop: False divides by sqrt(v) + eps, as PyTorch does.


def make_schedule(cfg: Any, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    cfg = ScheduleConfig.from_config(cfg, "schedule").to_dict()
    return _make_schedule(cfg, steps_per_epoch, total_steps)


def _make_schedule(cfg: dict, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """``cfg``: {name: piecewise|cosine|poly|constant, lr, warmup_epochs, ...}.

    piecewise: ``boundaries_epochs`` (e.g. [10, 18, 22]) and ``factor`` (0.1);
    cosine: decays to ``end_lr`` (default 0) after warm-up; poly: power ``power`` (2).
    """
    name = cfg["name"]
    lr = float(cfg["lr"])
    warmup = int(round(float(cfg["warmup_epochs"]) * steps_per_epoch))
    if name == "piecewise":
        factor = float(cfg["factor"])
        bounds = {int(round(e * steps_per_epoch)): factor for e in cfg["boundaries_epochs"]}
        main = optax.piecewise_constant_schedule(
            lr, {b - warmup: f for b, f in bounds.items() if b > warmup}
        )
    elif name == "cosine":
        main = optax.cosine_decay_schedule(
            lr, max(1, total_steps - warmup), alpha=float(cfg["end_lr"]) / lr
        )
    elif name == "poly":
        main = optax.polynomial_schedule(
            lr,
            float(cfg["end_lr"]),
            float(cfg["power"]),
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
    """``cfg``: an `OptimizerConfig` (name sgd | adamw | rmsprop, ...; ``accumulate_steps``
    k > 1 wraps it in optax.MultiSteps). SGD's and RMSProp's decay is coupled (added to the
    gradient, as torch.optim does); AdamW's is decoupled. ``frozen`` path prefixes get exactly
    zero updates."""
    cfg = OptimizerConfig.from_config(cfg, "optimizer").to_dict()
    name = cfg["name"]
    wd = float(cfg["weight_decay"])
    decay_all = bool(cfg["decay_bn_and_bias"])
    mask = lambda p: _decay_mask(p, decay_all)  # noqa: E731
    parts = []
    if float(cfg["clip_norm"]) > 0:
        parts.append(optax.clip_by_global_norm(float(cfg["clip_norm"])))
    if name == "sgd":
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask))
        parts.append(
            optax.sgd(
                schedule,
                momentum=float(cfg["momentum"]) or None,
                nesterov=bool(cfg["nesterov"]),
            )
        )
    elif name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=float(cfg["b1"]),
                b2=float(cfg["b2"]),
                eps=float(cfg["eps"]),
                weight_decay=wd,
                mask=mask,
            )
        )
    elif name == "rmsprop":
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask))
        parts.append(
            optax.rmsprop(
                schedule,
                decay=float(cfg["rms_decay"]),
                eps=float(cfg["eps"]),
                eps_in_sqrt=bool(cfg["eps_in_sqrt"]),
                momentum=float(cfg["rms_momentum"]) or None,
            )
        )
    else:
        raise ValueError(f"unknown optimizer {name!r}; use sgd, adamw or rmsprop")
    tx = optax.chain(*parts)
    tx = freeze(tx, list(frozen)) if frozen else tx
    k = int(cfg["accumulate_steps"] or 1)
    # Gradient accumulation: the mean gradient of k batches, one update every k steps.
    return optax.MultiSteps(tx, every_k_schedule=k) if k > 1 else tx
