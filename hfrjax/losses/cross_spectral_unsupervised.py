"""CSAN's unsupervised cross-spectral objective: the pseudo-triplet loss (PTL, §III-D,
Eq. 4), the pixel-channel sparsity (PCS, §III-E, Eq. 5) and their sum (Eq. 6).

PTL works on pseudo-labels, never identities. Per modality, samples carry the id of their
intra-domain cluster (-1: no cluster, e.g. removed by the silhouette filter of Alg. 1 lines
4-15). Cross-spectral voting (Alg. 1 lines 20-31) gives a link table ``rgb_to_ir``: for each
RGB cluster the IR cluster its samples voted for by majority, or -1 when there was no
majority; such an RGB cluster sits out the epoch (Alg. 1 line 29 removes it).

For every active RGB anchor a (cluster c, linked IR cluster l = rgb_to_ir[c]):

    L_a = max(0, d(a, p*) - d(a, n*) + beta),   d Euclidean,

with p* the farthest IR sample of cluster l in the batch (the paper does not say which
positive; the hardest, as in batch-hard mining) and n* the closest active RGB sample of a
different cluster ("the closest RGB cluster that does not belong to i": the closest other
sample lies in the nearest other cluster under the closest-pair cluster distance used by the
clustering). PTL is the mean over anchors that have a positive and a negative in the batch.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.losses.margin import concrete_or_none
from hfrjax.losses.triplet import (
    hardest_triplet_terms,
    pairwise_euclidean_distances,
    triplet_mean,
)

Array = jax.Array


def _check_clusters(name: str, clusters: Array, batch: int, limit: int | None) -> None:
    if clusters.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {clusters.shape}")
    host = concrete_or_none(clusters)
    if host is None:
        return
    if not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {host.dtype}")
    bad = host < -1
    if limit is not None:
        bad |= host >= limit
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        upper = "" if limit is None else f" and below {limit} (the link table's length)"
        raise ValueError(f"{name}[{i}] = {host[i]}: cluster ids must be >= -1{upper}")


def pseudo_triplet_loss(
    rgb_embeddings: Array,
    rgb_clusters: Array,
    ir_embeddings: Array,
    ir_clusters: Array,
    rgb_to_ir: Array,
    *,
    margin: float,
    rgb_mask: Array | None = None,
    ir_mask: Array | None = None,
    return_num_anchors: bool = False,
) -> Array | tuple[Array, Array]:
    """CSAN's pseudo-triplet loss (Eq. 4) with the voting links of Alg. 1.

    Args:
      rgb_embeddings: [Br, D] features of the RGB images of the batch (e.g. flattened F_out).
      rgb_clusters: [Br] RGB cluster ids, -1 for a sample without a cluster.
      ir_embeddings: [Bi, D] features of the IR images.
      ir_clusters: [Bi] IR cluster ids, -1 for a sample without a cluster.
      rgb_to_ir: [N_rgb_clusters] IR cluster linked to each RGB cluster, -1 if it sits out.
      margin: beta (the paper gives no value).
      rgb_mask, ir_mask: [Br] / [Bi] bool, False for samples that take no part (padding).
      return_num_anchors: also return how many anchors had a positive and a negative.

    An RGB sample is *active* (may be anchor or negative) when it is unmasked, has a cluster
    and that cluster is linked. Returns 0.0 when no anchor is usable.
    """
    rgb_embeddings, ir_embeddings = jnp.asarray(rgb_embeddings), jnp.asarray(ir_embeddings)
    rgb_clusters, ir_clusters = jnp.asarray(rgb_clusters), jnp.asarray(ir_clusters)
    rgb_to_ir = jnp.asarray(rgb_to_ir)
    chex.assert_rank([rgb_embeddings, ir_embeddings], 2)
    chex.assert_equal_shape_suffix([rgb_embeddings, ir_embeddings], 1)
    chex.assert_rank(rgb_to_ir, 1)
    n_rgb, n_ir = rgb_embeddings.shape[0], ir_embeddings.shape[0]
    num_links = rgb_to_ir.shape[0]
    if num_links == 0:
        raise ValueError("pseudo_triplet_loss: rgb_to_ir is empty (no RGB clusters)")
    _check_clusters("rgb_clusters", rgb_clusters, n_rgb, num_links)
    _check_clusters("ir_clusters", ir_clusters, n_ir, None)
    _check_clusters("rgb_to_ir", rgb_to_ir, num_links, None)

    rgb_ok = jnp.ones((n_rgb,), bool) if rgb_mask is None else jnp.asarray(rgb_mask, bool)
    ir_ok = jnp.ones((n_ir,), bool) if ir_mask is None else jnp.asarray(ir_mask, bool)
    chex.assert_shape(rgb_ok, (n_rgb,))
    chex.assert_shape(ir_ok, (n_ir,))
    loss, count = _pseudo_triplet(
        rgb_embeddings, rgb_clusters, ir_embeddings, ir_clusters, rgb_to_ir, rgb_ok, ir_ok,
        float(margin),
    )
    return (loss, count) if return_num_anchors else loss


@functools.partial(jax.jit, static_argnames=("margin",))
def _pseudo_triplet(
    rgb_embeddings: Array,
    rgb_clusters: Array,
    ir_embeddings: Array,
    ir_clusters: Array,
    rgb_to_ir: Array,
    rgb_ok: Array,
    ir_ok: Array,
    margin: float,
) -> tuple[Array, Array]:
    num_links = rgb_to_ir.shape[0]
    has_cluster = rgb_clusters >= 0
    link = jnp.where(
        has_cluster, jnp.take(rgb_to_ir, jnp.clip(rgb_clusters, 0, num_links - 1)), -1
    )
    # Under jit an out-of-range cluster id cannot raise; it sits out instead.
    link = jnp.where(rgb_clusters < num_links, link, -1)
    active = rgb_ok & has_cluster & (link >= 0)

    d_rgb_ir = pairwise_euclidean_distances(rgb_embeddings, ir_embeddings)
    d_rgb_rgb = pairwise_euclidean_distances(rgb_embeddings, rgb_embeddings)
    ir_usable = (ir_clusters >= 0) & ir_ok
    pos_mask = (ir_clusters[None, :] == link[:, None]) & ir_usable[None, :]
    neg_mask = (rgb_clusters[:, None] != rgb_clusters[None, :]) & active[None, :]
    d_ap, d_an, valid = hardest_triplet_terms(d_rgb_ir, pos_mask, d_rgb_rgb, neg_mask, active)
    return triplet_mean(d_ap, d_an, valid, margin, False)


def pixel_channel_sparsity(
    features: Array, *, mask: Array | None = None, batch_reduction: str = "mean"
) -> Array:
    """L_PCS = ||F_out||_1 (CSAN Eq. 5): the sum of |F_out| over every channel and position of
    one sample, then averaged (``"mean"``, default) or summed (``"sum"``) over the batch.

    Eq. 5 sums over C, H and W (the paper notes that the scale of lambda depends on the size
    of the representation, which a per-element mean would hide). It does not say how the
    batch is reduced; the mean keeps lambda independent of the batch size. ``features``
    [B, ...] (any layout); ``mask`` [B] bool drops samples.
    """
    if batch_reduction not in ("mean", "sum"):
        raise ValueError(f"batch_reduction must be 'mean' or 'sum', got {batch_reduction!r}")
    x = jnp.asarray(features, jnp.float32)
    if x.ndim < 1:
        raise ValueError("pixel_channel_sparsity needs features with a batch axis")
    per_sample = jnp.sum(jnp.abs(x.reshape(x.shape[0], -1)), axis=1)
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        chex.assert_shape(mask, (x.shape[0],))
        per_sample = jnp.where(mask, per_sample, 0.0)
        count = jnp.sum(mask.astype(jnp.float32))
    else:
        count = jnp.asarray(x.shape[0], jnp.float32)
    total = jnp.sum(per_sample)
    return total / jnp.maximum(count, 1.0) if batch_reduction == "mean" else total


def csan_loss(pseudo_triplet: Array, sparsity: Array, *, sparsity_weight: float = 1e-3) -> Array:
    """L_total = L_PTL + lambda * L_PCS (CSAN Eq. 6); lambda = 1e-3 (1e-5 for ARL-VTF)."""
    return pseudo_triplet + sparsity_weight * sparsity
