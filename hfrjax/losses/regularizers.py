"""Regularisers used by the papers' training objectives."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


def ml2_regularizer(features: Array, weights: Array, bias: Array | None = None) -> Array:
    """FTL's m-L2 regulariser (Eq. 3): batch mean of ``|W^T f|^2``.

    It penalises the squared norm of the classifier *output* (the logits), not the weights
    and the features separately. ``weights`` uses this library's classifier layout
    [C, D] (one row per class; the paper's W^T f is ``weights @ f``); ``features`` [B, D];
    an optional ``bias`` [C] is added to the logits before taking the norm. Computed in
    float32.
    """
    chex.assert_rank([features, weights], 2)
    chex.assert_equal_shape_suffix([features, weights], 1)
    logits = jnp.einsum("bd,cd->bc", features.astype(jnp.float32), weights.astype(jnp.float32))
    if bias is not None:
        chex.assert_shape(bias, (weights.shape[0],))
        logits = logits + bias.astype(jnp.float32)
    return jnp.mean(jnp.sum(logits * logits, axis=-1))


def l2_sp_regularizer(params: chex.ArrayTree, anchor: chex.ArrayTree) -> Array:
    """Sum of squared differences between ``params`` and ``anchor`` (same pytree structure).

    The "RCT" fine-tuning baseline of seed 1: an L2 penalty on how far the backbone moves
    from its pretrained values (multiply by the desired coefficient).
    """
    chex.assert_trees_all_equal_shapes(params, anchor)
    sq = jax.tree.map(
        lambda p, a: jnp.sum(jnp.square(p.astype(jnp.float32) - a.astype(jnp.float32))),
        params,
        anchor,
    )
    return sum(jax.tree.leaves(sq), jnp.zeros((), jnp.float32))
