"""Normalised linear classifier head, its initialisation from given rows, and freezing.

Layout convention used throughout ``hfrjax.losses``: classifier weights are [C, D], one row
per class (as PyTorch ``nn.Linear.weight`` / arcface_torch's PartialFC), so a row can be set
directly from a class-mean embedding (MEC) or copied from a pretrained classifier (SSC).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfrjax.losses.margin import concrete_or_none, cosine_logits, l2_normalize

Array = jax.Array
PathPredicate = Callable[[tuple[str, ...]], bool]


class NormalizedClassifier(nn.Module):
    """cos(theta) [B, C] (float32) between L2-normalised inputs and L2-normalised rows of the
    ``weight`` parameter [C, D]; feed the result to ``margin_softmax_loss_from_cosine``.

    ``matmul_dtype`` (e.g. bfloat16) only affects the matmul; accumulation is float32.
    """

    num_classes: int
    matmul_dtype: Any = None
    param_dtype: Any = jnp.float32
    weight_init: Callable[..., Array] = nn.initializers.normal(stddev=0.01)  # as PartialFC

    @nn.compact
    def __call__(self, embeddings: Array) -> Array:
        weight = self.param(
            "weight", self.weight_init, (self.num_classes, embeddings.shape[-1]), self.param_dtype
        )
        return cosine_logits(embeddings, weight, self.matmul_dtype)


def rows_initializer(rows: Array, normalize: bool = True) -> Callable[..., Array]:
    """A flax initializer returning ``rows`` [C, D] (e.g. ``NormalizedClassifier(C,
    weight_init=rows_initializer(class_means))``); the requested shape must match."""
    fixed = l2_normalize(rows) if normalize else jnp.asarray(rows, jnp.float32)

    def init(key: Any, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        del key
        if tuple(shape) != fixed.shape:
            raise ValueError(
                f"classifier rows have shape {fixed.shape}, the head asks for {tuple(shape)}"
            )
        return fixed.astype(dtype)

    return init


def classifier_params_from_rows(rows: Array, normalize: bool = True) -> dict[str, Array]:
    """``{'weight': rows}`` params for ``NormalizedClassifier`` (rows [C, D], float32);
    normalised by default so the stored rows are unit vectors."""
    chex.assert_rank(rows, 2)
    rows = l2_normalize(rows) if normalize else jnp.asarray(rows, jnp.float32)
    return {"weight": rows}


def class_mean_rows(
    embeddings: Array,
    labels: Array,
    num_classes: int,
    *,
    normalize_inputs: bool = False,
    normalize: bool = True,
) -> Array:
    """Per-class mean embedding [C, D] (float32): the MEC classifier of seed 1.

    ``normalize_inputs`` L2-normalises each embedding before averaging; ``normalize``
    L2-normalises the resulting rows. A class without samples raises ``ValueError`` when
    labels are concrete (its row would be zero).
    """
    chex.assert_rank(embeddings, 2)
    chex.assert_shape(labels, (embeddings.shape[0],))
    x = l2_normalize(embeddings) if normalize_inputs else jnp.asarray(embeddings, jnp.float32)
    sums = jax.ops.segment_sum(x, labels, num_segments=num_classes)
    counts = jax.ops.segment_sum(
        jnp.ones_like(labels, jnp.float32), labels, num_segments=num_classes
    )
    host_counts = concrete_or_none(counts)
    if host_counts is not None:
        empty = np.flatnonzero(host_counts == 0)
        if empty.size:
            raise ValueError(f"{empty.size} classes have no samples, e.g. class {empty[0]}")
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    return l2_normalize(means) if normalize else means


def _path_str(path: tuple[Any, ...]) -> tuple[str, ...]:
    out = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                out.append(str(getattr(entry, attr)))
                break
        else:
            out.append(str(entry))
    return tuple(out)


def _as_predicate(frozen: Sequence[str] | PathPredicate) -> tuple[PathPredicate, list[str]]:
    if callable(frozen):
        return frozen, []
    if isinstance(frozen, str):
        frozen = [frozen]
    prefixes = [tuple(p.strip("/").split("/")) for p in frozen]

    def predicate(path: tuple[str, ...]) -> bool:
        return any(path[: len(p)] == p for p in prefixes)

    return predicate, list(frozen)


def freeze_labels(params: chex.ArrayTree, frozen: Sequence[str] | PathPredicate) -> chex.ArrayTree:
    """Pytree of ``'frozen'`` / ``'trainable'`` labels matching ``params``.

    ``frozen`` is a list of '/'-separated path prefixes (``"head"`` freezes everything under
    ``params['head']``, ``"head/weight"`` one leaf) or a predicate on the path tuple. A
    prefix that matches no parameter raises ``ValueError`` (a typo would otherwise leave
    the classifier silently trainable).
    """
    predicate, patterns = _as_predicate(frozen)
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if predicate(_path_str(path)) else "trainable", params
    )
    for pattern in patterns:
        single, _ = _as_predicate([pattern])
        leaves = jax.tree_util.tree_leaves_with_path(params)
        if not any(single(_path_str(path)) for path, _ in leaves):
            raise ValueError(f"frozen path {pattern!r} matches no parameter")
    return labels


def freeze(
    tx: optax.GradientTransformation, frozen: Sequence[str] | PathPredicate
) -> optax.GradientTransformation:
    """Wrap ``tx`` so parameters selected by ``frozen`` get exactly zero updates.

    Uses ``optax.multi_transform`` with ``optax.set_to_zero()`` for the frozen partition, so
    the frozen leaves also get no optimizer state, no weight decay and no momentum; after
    ``optax.apply_updates`` they are bit-identical to before. (Their gradients are still
    computed; wrap them in ``jax.lax.stop_gradient`` in the loss to save that work.)
    """
    return optax.multi_transform(
        {"trainable": tx, "frozen": optax.set_to_zero()},
        lambda params: freeze_labels(params, frozen),
    )
