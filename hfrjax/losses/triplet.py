"""Batch-hard triplet loss (hardest positive, hardest negative per anchor), with optional
cross-modality mining.

TOPLight §3.4, Eq. 12 uses the "hard-mining triplet loss" of the AGW re-id baseline (Ye et
al., TPAMI 2021, the paper's ref. [42]): for every anchor in a P x K batch, the farthest
sample of its identity and the closest sample of another identity,

    L_tri = mean_a max(0, d(a, p*) - d(a, n*) + m),   d = Euclidean distance.

The paper does not give the margin; 0.3 is AGW's. ``soft_margin`` replaces the hinge by
softplus(d_ap - d_an) (Hermans et al. 2017), an option the paper does not use.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.losses.margin import concrete_or_none

Array = jax.Array

_SQ_EPS = 1e-12  # floor under squared distances: finite sqrt gradients (as AGW's clamp)


def pairwise_euclidean_distances(a: Array, b: Array) -> Array:
    """Euclidean distances [N, M] between rows of ``a`` [N, D] and ``b`` [M, D] (float32).

    Computed as sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12)); identical rows give ~1e-6, not 0,
    which keeps the gradient finite.
    """
    chex.assert_rank([a, b], 2)
    chex.assert_equal_shape_suffix([a, b], 1)
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    sq = (
        jnp.sum(a * a, axis=1)[:, None]
        + jnp.sum(b * b, axis=1)[None, :]
        - 2.0 * jnp.einsum("nd,md->nm", a, b, precision=jax.lax.Precision.HIGHEST)
    )
    return jnp.sqrt(jnp.maximum(sq, _SQ_EPS))


def hardest_triplet_terms(
    dist_pos: Array, pos_mask: Array, dist_neg: Array, neg_mask: Array, anchor_mask: Array
) -> tuple[Array, Array, Array]:
    """Per anchor: farthest allowed positive, closest allowed negative and whether the anchor
    counts (it is allowed and has at least one of each). Invalid anchors get zeros.

    ``dist_pos`` / ``pos_mask`` [A, P], ``dist_neg`` / ``neg_mask`` [A, N], ``anchor_mask`` [A].
    """
    has_pos = jnp.any(pos_mask, axis=1)
    has_neg = jnp.any(neg_mask, axis=1)
    valid = anchor_mask & has_pos & has_neg
    d_ap = jnp.max(jnp.where(pos_mask, dist_pos, -jnp.inf), axis=1)
    d_an = jnp.min(jnp.where(neg_mask, dist_neg, jnp.inf), axis=1)
    # Replace +-inf before any arithmetic so invalid anchors give neither NaN values nor
    # NaN gradients.
    d_ap = jnp.where(valid, d_ap, 0.0)
    d_an = jnp.where(valid, d_an, 0.0)
    return d_ap, d_an, valid


def triplet_mean(
    d_ap: Array, d_an: Array, valid: Array, margin: float, soft_margin: bool
) -> tuple[Array, Array]:
    """Mean over valid anchors of max(0, d_ap - d_an + margin) (or softplus(d_ap - d_an));
    0 when no anchor is valid. Returns (loss, number of valid anchors)."""
    diff = d_ap - d_an
    per_anchor = jax.nn.softplus(diff) if soft_margin else jax.nn.relu(diff + margin)
    count = jnp.sum(valid.astype(jnp.float32))
    loss = jnp.sum(jnp.where(valid, per_anchor, 0.0)) / jnp.maximum(count, 1.0)
    return loss, count.astype(jnp.int32)


def _check_vector(name: str, x: Array, batch: int) -> None:
    if x.shape != (batch,):
        raise ValueError(
            f"{name} must have shape ({batch},) to match the embeddings, got {x.shape}"
        )


def batch_hard_triplet_loss(
    embeddings: Array,
    labels: Array,
    *,
    margin: float = 0.3,
    modalities: Array | None = None,
    cross_modality: bool = False,
    soft_margin: bool = False,
    mask: Array | None = None,
    return_num_anchors: bool = False,
) -> Array | tuple[Array, Array]:
    """Batch-hard triplet loss over one batch (TOPLight §3.4, Eq. 12; AGW's hard mining).

    Args:
      embeddings: [B, D] features (any float dtype; distances in float32).
      labels: [B] integer identities.
      margin: hinge margin m (ignored with ``soft_margin``).
      modalities: [B] integer modality ids (e.g. 0 visible, 1 infrared); required with
        ``cross_modality``.
      cross_modality: mine positives *and* negatives only among samples of a different
        modality than the anchor (visible anchors against infrared samples and vice versa).
        Otherwise any other sample of the batch qualifies (the anchor itself is never its own
        positive).
      soft_margin: use softplus(d_ap - d_an) instead of the hinge.
      mask: [B] bool, False for samples that take no part (padding): neither anchors nor
        positives nor negatives.
      return_num_anchors: also return how many anchors had both a positive and a negative.

    Returns the mean loss over anchors that have at least one positive and one negative
    (0.0 if there is none; ``return_num_anchors`` exposes that case).
    """
    embeddings, labels = jnp.asarray(embeddings), jnp.asarray(labels)
    if modalities is not None:
        modalities = jnp.asarray(modalities)
    chex.assert_rank(embeddings, 2)
    batch = embeddings.shape[0]
    _check_vector("labels", labels, batch)
    if cross_modality and modalities is None:
        raise ValueError("batch_hard_triplet_loss: cross_modality=True needs modalities")
    if modalities is not None:
        _check_vector("modalities", modalities, batch)
    if mask is not None:
        _check_vector("mask", mask, batch)
    host = concrete_or_none(labels)
    if host is not None and not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {host.dtype}")
    mask = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask, bool)
    if modalities is None:
        modalities = jnp.zeros((batch,), jnp.int32)
    loss, count = _batch_hard(
        embeddings, labels, modalities, mask, float(margin), bool(cross_modality), bool(soft_margin)
    )
    return (loss, count) if return_num_anchors else loss


# Jitted core: eager callers compile once per configuration instead of dispatching each
# small op; inside a user's jit it is simply inlined.
@functools.partial(jax.jit, static_argnames=("margin", "cross_modality", "soft_margin"))
def _batch_hard(
    embeddings: Array,
    labels: Array,
    modalities: Array,
    mask: Array,
    margin: float,
    cross_modality: bool,
    soft_margin: bool,
) -> tuple[Array, Array]:
    dist = pairwise_euclidean_distances(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    allowed = ~jnp.eye(labels.shape[0], dtype=bool) & mask[:, None] & mask[None, :]
    if cross_modality:
        allowed = allowed & (modalities[:, None] != modalities[None, :])
    d_ap, d_an, valid = hardest_triplet_terms(dist, same & allowed, dist, ~same & allowed, mask)
    return triplet_mean(d_ap, d_an, valid, margin, soft_margin)
