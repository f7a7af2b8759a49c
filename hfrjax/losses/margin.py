"""Combined-margin softmax (SphereFace / ArcFace / CosFace family): SphereFace's multiplicative, ArcFace's additive angular and CosFace's additive cosine margins in one formula, cos(m1·θ + m2) − m3 (ArcFace, Deng et al., CVPR 2019, §3.3).

    logit_j = s * cos(theta_j)                         for j != y
    logit_y = s * (cos(m1 * theta_y + m2) - m3)

with embeddings and classifier rows both L2-normalised (cos(theta) = <x/|x|, w/|w|>).

Handling of m1 * theta + m2 > pi (where cos(.) stops decreasing in theta, so the loss would
reward *moving away* from the class centre):

* m1 == 1 (ArcFace, CosFace and their combinations) -- exactly InsightFace's ``ArcFace``
  module (``arcface_torch/losses.py``, ``easy_margin=False``; the same code is the m1 == 1
  branch of ``CombinedMarginLoss`` in the arcface_torch versions that use ``th``/``sinmm``):
  with th = cos(pi - m2) and mm = sin(pi - m2) * m2,
      target = cos(theta + m2)   if cos(theta) > th
               cos(theta) - mm   otherwise,
  computed as cos*cos(m2) - sin*sin(m2) with true gradients. (Some arcface_torch versions
  instead evaluate arccos/+m2/cos under ``torch.no_grad()``, i.e. no fallback and a
  straight-through gradient; that variant is *not* implemented.) m3 is subtracted after.
* m1 != 1 (SphereFace-style) -- InsightFace's combined margin applies cos(m1*theta + m2)
  without a guard; we use the same construction as ArcFace, generalised: with
  theta* = (pi - m2) / m1 (where the angle reaches pi), th = cos(theta*) and
  mm = max(sin(theta*) * (pi - theta*), 1 + th), fall back to cos(theta) - mm beyond
  theta*. For m1 == 1 this mm is exactly ArcFace's sin(pi - m2) * m2; the max() keeps
  the target monotone (the fallback never exceeds the value -1 reached at theta*).
  No fallback is needed when theta* >= pi.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MarginConfig:
    """Scale and margins of a combined-margin softmax."""

    s: float = 64.0
    m1: float = 1.0
    m2: float = 0.5
    m3: float = 0.0

    def as_kwargs(self) -> dict[str, float]:
        return dataclasses.asdict(self)


MARGIN_PRESETS: dict[str, MarginConfig] = {
    "arcface": MarginConfig(s=64.0, m1=1.0, m2=0.5, m3=0.0),
    "cosface": MarginConfig(s=64.0, m1=1.0, m2=0.0, m3=0.4),
    # InsightFace's example combined margin.
    "combined": MarginConfig(s=64.0, m1=1.0, m2=0.3, m3=0.2),
    # Seed-1 ("Rethinking the domain gap") released code: additive cosine margin, s = 64,
    # m = 0.4 for pretraining, 0.6 for fine-tuning (0.8 for LightCNN).
    "rethinking_pretrain": MarginConfig(s=64.0, m1=1.0, m2=0.0, m3=0.4),
    "rethinking_finetune": MarginConfig(s=64.0, m1=1.0, m2=0.0, m3=0.6),
    "rethinking_finetune_lightcnn": MarginConfig(s=64.0, m1=1.0, m2=0.0, m3=0.8),
}


def get_margin_preset(name: str) -> MarginConfig:
    """Look up a named margin configuration (see ``MARGIN_PRESETS``)."""
    try:
        return MARGIN_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown margin preset {name!r}; known: {sorted(MARGIN_PRESETS)}") from None


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
    """x / max(|x|, eps) in float32 (as ``torch.nn.functional.normalize``)."""
    x = jnp.asarray(x, jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def cosine_logits(embeddings: Array, weights: Array, matmul_dtype: Any = None) -> Array:
    """cos(theta) [B, C] between ``embeddings`` [B, D] and classifier rows ``weights`` [C, D].

    Both are normalised in float32; the matmul runs in ``matmul_dtype`` (default float32;
    bf16 halves the cost for very large C) and accumulates in float32.
    """
    chex.assert_rank([embeddings, weights], 2)
    chex.assert_equal_shape_suffix([embeddings, weights], 1)  # same D: catches a [D, C] matrix
    e, w = l2_normalize(embeddings), l2_normalize(weights)
    if matmul_dtype is not None:
        e, w = e.astype(matmul_dtype), w.astype(matmul_dtype)
    return jnp.einsum("bd,cd->bc", e, w, preferred_element_type=jnp.float32)


def margin_target(cos_theta: Array, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> Array:
    """Target-class cosine after the margin, cos(m1*theta + m2) - m3, with the monotone
    fallback described in the module docstring (elementwise, unscaled, float32)."""
    c = jnp.clip(jnp.asarray(cos_theta, jnp.float32), -1.0, 1.0)
    # The floor inside the sqrt keeps gradients finite at |cos| = 1 (value error <= 1e-6).
    sin = jnp.sqrt(jnp.maximum(1.0 - c * c, 1e-12))
    if m1 == 1.0:
        if m2 == 0.0:
            target = c
        else:
            cos_theta_m = c * math.cos(m2) - sin * math.sin(m2)
            th = math.cos(math.pi - m2)
            mm = math.sin(math.pi - m2) * m2
            target = jnp.where(c > th, cos_theta_m, c - mm)
    else:
        theta = jnp.arctan2(sin, c)  # = arccos(c), without arccos' infinite slope at +-1
        cos_theta_m = jnp.cos(m1 * theta + m2)
        theta_star = (math.pi - m2) / m1
        if theta_star >= math.pi:
            target = cos_theta_m
        else:
            th = math.cos(theta_star)
            mm = max(math.sin(theta_star) * (math.pi - theta_star), 1.0 + th)
            target = jnp.where(theta < theta_star, cos_theta_m, c - mm)
    return target - m3


def concrete_or_none(x: Any) -> np.ndarray | None:
    """Host copy of ``x``, or None when ``x`` is a tracer (inside jit/grad/vmap)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_labels(labels: Array, num_classes: int) -> bool:
    """Raise ``ValueError`` if concrete ``labels`` fall outside [0, num_classes).

    Returns True when the check ran, False when ``labels`` is a tracer (inside ``jit`` the
    values are unknown; the losses then return NaN for bad labels instead).
    """
    host = concrete_or_none(labels)
    if host is None:
        return False
    if not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {host.dtype}")
    bad = (host < 0) | (host >= num_classes)
    if bad.any():
        idx = np.flatnonzero(bad.ravel())
        raise ValueError(
            f"labels must lie in [0, {num_classes}); {idx.size} do not, e.g. labels[{idx[0]}] = "
            f"{host.ravel()[idx[0]]} (min {host.min()}, max {host.max()})"
        )
    return True


# The public functions below check shapes and (concrete) labels on the host, then call
# these jitted cores: eager callers compile once per margin configuration instead of
# dispatching dozens of small ops, and inside a user's jit the cores are simply inlined.
# Margins and scale are static Python floats (they select code paths).


@functools.partial(jax.jit, static_argnames=("s", "m1", "m2", "m3"))
def _margin_logits(
    cos_theta: Array, labels: Array, s: float, m1: float, m2: float, m3: float
) -> Array:
    cos_theta = jnp.asarray(cos_theta, jnp.float32)
    labels = labels.astype(jnp.int32)
    # Only the B target entries need the (more expensive) margin transform.
    cos_y = jnp.take_along_axis(cos_theta, labels[:, None], axis=1, mode="clip")
    target = margin_target(cos_y, m1, m2, m3)
    is_target = jnp.arange(cos_theta.shape[1])[None, :] == labels[:, None]
    return s * jnp.where(is_target, target, cos_theta)


@functools.partial(jax.jit, static_argnames=("s", "m1", "m2", "m3"))
def _loss_from_cosine(
    cos_theta: Array, labels: Array, s: float, m1: float, m2: float, m3: float
) -> tuple[Array, Array]:
    logits = _margin_logits(cos_theta, labels, s, m1, m2, m3)
    labels = labels.astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=1, mode="clip")[:, 0]
    valid = (labels >= 0) & (labels < logits.shape[1])
    return jnp.mean(jnp.where(valid, nll, jnp.nan)), logits


@functools.partial(jax.jit, static_argnames=("s", "m1", "m2", "m3", "matmul_dtype"))
def _loss(
    embeddings: Array,
    weights: Array,
    labels: Array,
    s: float,
    m1: float,
    m2: float,
    m3: float,
    matmul_dtype: Any,
) -> tuple[Array, Array]:
    return _loss_from_cosine(
        cosine_logits(embeddings, weights, matmul_dtype), labels, s, m1, m2, m3
    )


def _check_inputs(cos_or_emb: Array, labels: Array, num_classes: int) -> None:
    chex.assert_rank(cos_or_emb, 2)
    chex.assert_shape(labels, (cos_or_emb.shape[0],))
    check_labels(labels, num_classes)


def combined_margin_logits(
    cos_theta: Array,
    labels: Array,
    s: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
) -> Array:
    """Scaled float32 logits [B, C]: s*cos(theta_j) off-target, s*margin_target at the label.

    ``cos_theta`` [B, C] are cosines (see ``cosine_logits``); ``labels`` [B] integers.
    """
    _check_inputs(cos_theta, labels, cos_theta.shape[1])
    return _margin_logits(cos_theta, labels, float(s), float(m1), float(m2), float(m3))


def margin_softmax_loss_from_cosine(
    cos_theta: Array,
    labels: Array,
    *,
    s: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    return_logits: bool = False,
) -> Array | tuple[Array, Array]:
    """Mean cross-entropy of ``combined_margin_logits`` (log-softmax in float32).

    Labels are range-checked on the host when concrete (``ValueError``). Under ``jit`` they
    cannot be; out-of-range labels then make the returned loss NaN rather than silently
    dropping the target term.
    """
    _check_inputs(cos_theta, labels, cos_theta.shape[1])
    loss, logits = _loss_from_cosine(cos_theta, labels, float(s), float(m1), float(m2), float(m3))
    return (loss, logits) if return_logits else loss


def margin_softmax_loss(
    embeddings: Array,
    weights: Array,
    labels: Array,
    *,
    s: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    return_logits: bool = False,
    matmul_dtype: Any = None,
) -> Array | tuple[Array, Array]:
    """Combined-margin softmax cross-entropy, averaged over the batch.

    Args:
      embeddings: [B, D] backbone features (any float dtype; normalised here in float32).
      weights: [C, D] classifier, one row per class (normalised here).
      labels: [B] integer class ids in [0, C); checked like ``margin_softmax_loss_from_cosine``.
      s, m1, m2, m3: scale and margins as Python floats (defaults: ArcFace; see
        ``MARGIN_PRESETS``).
      return_logits: also return the scaled margin logits [B, C] (float32).
      matmul_dtype: dtype of the cosine matmul (default float32).
    """
    chex.assert_rank([embeddings, weights], 2)
    chex.assert_equal_shape_suffix([embeddings, weights], 1)  # catches a [D, C] matrix
    _check_inputs(embeddings, labels, weights.shape[0])
    loss, logits = _loss(
        embeddings,
        weights,
        labels,
        float(s),
        float(m1),
        float(m2),
        float(m3),
        None if matmul_dtype is None else jnp.dtype(matmul_dtype),
    )
    return (loss, logits) if return_logits else loss
