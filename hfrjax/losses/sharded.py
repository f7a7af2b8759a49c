"""Class-sharded combined-margin softmax and Partial FC (``jax.shard_map``).

For millions of identities the classifier [C, D], its optimizer state and the [B, C] logits no
longer fit on one device. Here the rows of the classifier are split over the ``model`` mesh
axis and no device ever holds more than its slice of rows or of logits.

Communication scheme (mesh ``data`` x ``model``; device (d, m)):

* Device (d, m) holds classifier rows ``m * C_local ... (m + 1) * C_local - 1`` (replicated
  over ``data``) and the batch slice of its data row ``d``.
* ``batch_over_model=False`` (default; the trainer's batch layout ``P("data")``): the devices of
  one data row already share the same batch slice B / n_data, so nothing is gathered.
* ``batch_over_model=True`` (arcface_torch's layout: every device embeds its own images, the
  batch is sharded over ``("data", "model")``): the features and labels are all-gathered over
  ``model`` only, giving each device the B / n_data samples of its data row. The backward of
  that all-gather is a reduce-scatter, so each device gets back just its own feature gradient.
  We deliberately do *not* all-gather over ``data`` (arcface_torch's 1-D world does, because
  there every GPU owns a different class slice): on a 2-D mesh the n_data devices holding the
  same class slice would then compute identical logits n_data times.
* Each device computes cos(theta) for its samples x its rows, [B / n_data, C / n_model], puts
  the margin on the target column when the label falls in its slice (global id =
  ``axis_index(model) * C_local + local id``), and the softmax normaliser is assembled with a
  ``pmax`` (stability shift, no gradient) and a ``psum`` over ``model``; the target logit is a
  ``psum`` too. The loss is the mean over the global batch (``psum`` over ``data``).

Per-device memory: classifier and its moments C·D / n_model, logits B·C / (n_data·n_model).
Gradients come from autodiff through ``shard_map`` (psum/all_gather transpose to
broadcast/reduce-scatter; the weight gradient is summed over ``data`` because the weight is
replicated there), so the backward never forms [B, C] either.

The classifier's row count must be divisible by the model axis size (a ``ValueError`` says
so). For any other class count allocate `padded_num_classes` rows and pass ``num_classes``: the
padding rows are then masked out of the softmax (exactly the dense loss over the real rows)
and Partial FC never prefers them over real negatives.

Partial FC (An et al., arcface_torch ``PartialFC``): each step every model shard keeps
``num_sampled = ceil(sample_rate * C_local)`` of its rows -- all its classes present in the
global batch, then random negatives -- and the softmax runs over the kept rows only. The
returned boolean row mask lets ``masked_head_update`` keep the unsampled rows and their
optimizer moments bit-identical (otherwise momentum and weight decay would keep moving them).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from hfrjax.losses.margin import check_labels, concrete_or_none, cosine_logits, margin_target

Array = jax.Array
P = PartitionSpec


# ---------------------------------------------------------------------------------------------
# Per-device pieces (run inside shard_map).


def _local_nll(
    emb: Array,
    rows: Array,
    local_target: Array,
    *,
    s: float,
    m1: float,
    m2: float,
    m3: float,
    model_axis: str,
    matmul_dtype: Any,
    col_valid: Array | None = None,
) -> tuple[Array, Array]:
    """Per-sample NLL [b] and correctness [b] for this device's samples and rows.

    ``local_target`` [b] is the label's column in ``rows`` when it lies in this shard, else -1.
    ``col_valid`` [c] marks real classes; padding rows are left out of the softmax entirely.
    """
    # Rows stored in bfloat16 (half the memory of the classifier and its momentum) are
    # widened here, after Partial FC's gather: only the rows in use get a float32 copy, and the
    # cast's transpose hands their gradient back in the storage dtype.
    rows = rows if rows.dtype == jnp.float32 else rows.astype(jnp.float32)
    # [b, c]: the only [batch, classes] array on the device.
    cos = cosine_logits(emb, rows, matmul_dtype)
    here = local_target >= 0
    col = jnp.where(here, local_target, 0)
    cos_y = jnp.take_along_axis(cos, col[:, None], axis=1)[:, 0]
    # The same margin (and theta + m2 > pi fallback) as the dense loss; garbage where the label
    # is not here, masked out below (margin_target is finite everywhere, so are its gradients).
    target = s * margin_target(cos_y, m1, m2, m3)
    is_target = jnp.arange(cos.shape[1])[None, :] == local_target[:, None]
    logits = jnp.where(is_target, target[:, None], s * cos)
    if col_valid is not None:
        logits = jnp.where(col_valid[None, :], logits, -jnp.inf)
        cos = jnp.where(col_valid[None, :], cos, -jnp.inf)

    # log sum_j exp(logit_j) over all shards; the shift is gradient-free (any shift is exact).
    shift = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=1)), model_axis)
    sum_exp = jax.lax.psum(jnp.sum(jnp.exp(logits - shift[:, None]), axis=1), model_axis)
    log_z = jnp.log(sum_exp) + shift
    target_logit = jax.lax.psum(jnp.where(here, target, 0.0), model_axis)
    nll = log_z - target_logit

    # Accuracy as argmax of cos(theta) (no margin), like the dense training step.
    best = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(cos, axis=1)), model_axis)
    cos_label = jax.lax.psum(jnp.where(here, jax.lax.stop_gradient(cos_y), 0.0), model_axis)
    return nll, cos_label >= best


def _gather_batch(x: Array, axis: str | None, to: str = "varying") -> Array:
    """All-gather the batch over ``axis``. Features stay 'varying' (their gradient comes back as
    a reduce-scatter); labels are gathered 'invarying' so results that depend on them can be
    declared replicated over ``axis``."""
    return x if axis is None else jax.lax.all_gather(x, axis, tiled=True, to=to)


def _mean_over_batch(nll: Array, data_axis: str | None, global_batch: int) -> Array:
    total = jnp.sum(nll)
    if data_axis is not None:
        total = jax.lax.psum(total, data_axis)
    return total / global_batch


# ---------------------------------------------------------------------------------------------
# Host-side checks.


def _resolve_axes(
    mesh: Mesh, data_axis: str | None, model_axis: str
) -> tuple[str | None, int, int]:
    if model_axis not in mesh.shape:
        raise ValueError(f"model_axis {model_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
    if data_axis is not None and data_axis not in mesh.shape:
        data_axis = None  # a mesh without a data axis: batch replicated (1-D model mesh)
    n_data = mesh.shape[data_axis] if data_axis is not None else 1
    return data_axis, n_data, mesh.shape[model_axis]


def _check_shapes(
    embeddings: Array, weight: Array, labels: Array, n_data: int, n_model: int, over_model: bool
) -> None:
    chex.assert_rank([embeddings, weight], 2)
    chex.assert_equal_shape_suffix([embeddings, weight], 1)  # same D: catches a [D, C] matrix
    chex.assert_shape(labels, (embeddings.shape[0],))
    num_classes, batch = weight.shape[0], embeddings.shape[0]
    if num_classes % n_model:
        raise ValueError(
            f"num_classes C={num_classes} is not divisible by the model axis size {n_model}; "
            f"use C divisible by {n_model} (e.g. {-(-num_classes // n_model) * n_model})"
        )
    batch_shards = n_data * (n_model if over_model else 1)
    if batch % batch_shards:
        raise ValueError(
            f"batch size {batch} is not divisible by the {batch_shards} batch shards "
            f"(data={n_data}{f' x model={n_model}' if over_model else ''})"
        )


def _dtype(dtype: Any) -> Any:
    return None if dtype is None else jnp.dtype(dtype)


def _batch_axes(data_axis: str | None, model_axis: str, over_model: bool) -> tuple[str, ...]:
    """Mesh axes the batch dimension is sharded over."""
    return tuple(a for a in (data_axis, model_axis if over_model else None) if a is not None)


# ---------------------------------------------------------------------------------------------
# Full class-sharded softmax.


# Static arguments of the jitted cores (Python floats and names select code paths).
_STATIC = (
    "mesh",
    "s",
    "m1",
    "m2",
    "m3",
    "data_axis",
    "model_axis",
    "over_model",
    "matmul_dtype",
    "num_valid",
)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sharded_loss(
    embeddings,
    weight,
    labels,
    *,
    mesh,
    s,
    m1,
    m2,
    m3,
    data_axis,
    model_axis,
    over_model,
    matmul_dtype,
    num_valid=None,
):
    num_classes, global_batch = weight.shape[0], embeddings.shape[0]
    num_valid = num_classes if num_valid is None else num_valid
    batch_spec = P(_batch_axes(data_axis, model_axis, over_model) or None)
    gather_axis = model_axis if over_model else None

    def per_device(emb, w, lab):
        emb, lab = _gather_batch(emb, gather_axis), _gather_batch(lab, gather_axis, "invarying")
        c_local = w.shape[0]
        local = lab - jax.lax.axis_index(model_axis) * c_local
        local_target = jnp.where((local >= 0) & (local < c_local), local, -1)
        col_valid = None
        if num_valid < num_classes:
            col_valid = jax.lax.axis_index(model_axis) * c_local + jnp.arange(c_local) < num_valid
        nll, correct = _local_nll(
            emb, w, local_target, s=s, m1=m1, m2=m2, m3=m3, model_axis=model_axis,
            matmul_dtype=matmul_dtype, col_valid=col_valid,
        )  # fmt: skip
        valid = (lab >= 0) & (lab < num_valid)  # bad labels -> NaN, as the dense loss
        nll = jnp.where(valid, nll, jnp.nan)
        return (
            _mean_over_batch(nll, data_axis, global_batch),
            _mean_over_batch(correct.astype(jnp.float32), data_axis, global_batch),
        )

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(batch_spec, P(model_axis, None), batch_spec),
        out_specs=(P(), P()),
    )(embeddings, weight, labels.astype(jnp.int32))


def sharded_margin_softmax_loss(
    embeddings: Array,
    weight: Array,
    labels: Array,
    mesh: Mesh,
    *,
    s: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    data_axis: str | None = "data",
    model_axis: str = "model",
    batch_over_model: bool = False,
    return_accuracy: bool = False,
    matmul_dtype: Any = None,
    num_classes: int | None = None,
) -> Array | tuple[Array, Array]:
    """Combined-margin softmax cross-entropy with the classifier rows sharded over ``model``.

    Same value and gradients as ``margin_softmax_loss(embeddings, weight, labels, ...)`` (mean
    over the global batch), without any device holding more than C / n_model rows or
    B·C / (n_data·n_model) logits (see the module docstring for the scheme).

    Args:
      embeddings: [B, D] features, sharded over ``data_axis`` (and ``model_axis`` too when
        ``batch_over_model``).
      weight: [C, D] classifier rows, sharded over ``model_axis``; C divisible by its size.
        float32, or bfloat16 storage: then each device widens its rows (Partial FC: only the
        sampled ones) to float32 for the loss, and the weight gradient comes back in bfloat16.
      labels: [B] integer class ids in [0, C), sharded like ``embeddings``. Concrete labels are
        range-checked (``ValueError``); under ``jit`` a bad label makes the loss NaN.
      mesh: the device mesh with Auto axes (``hfrjax.train.mesh.make_mesh``; inputs are then
        resharded as needed). A mesh without ``data_axis`` (or ``data_axis=None``) replicates
        the batch.
      s, m1, m2, m3: scale and margins (Python floats; see ``MarginConfig.as_kwargs()``).
      batch_over_model: the batch is sharded over (data, model); gathered over model inside.
      return_accuracy: also return the fraction of samples whose label has the largest cosine.
      matmul_dtype: dtype of the cosine matmul (default float32; bfloat16 halves its cost),
        accumulated in float32, as in ``margin_softmax_loss``.
      num_classes: the real number of classes when ``weight`` has extra padding rows (to make
        its row count divisible by the model axis): rows >= num_classes are left out of the
        softmax, so the loss equals the dense loss over the first num_classes rows.
    """
    data_axis, n_data, n_model = _resolve_axes(mesh, data_axis, model_axis)
    _check_shapes(embeddings, weight, labels, n_data, n_model, batch_over_model)
    num_valid = _num_valid(num_classes, weight.shape[0])
    check_labels(labels, num_valid)
    loss, acc = _sharded_loss(
        embeddings,
        weight,
        labels,
        mesh=mesh,
        s=float(s),
        m1=float(m1),
        m2=float(m2),
        m3=float(m3),
        data_axis=data_axis,
        model_axis=model_axis,
        over_model=batch_over_model,
        matmul_dtype=_dtype(matmul_dtype),
        num_valid=num_valid,
    )
    return (loss, acc) if return_accuracy else loss


def _num_valid(num_classes: int | None, rows: int) -> int:
    if num_classes is None:
        return rows
    if not 0 < num_classes <= rows:
        raise ValueError(f"num_classes={num_classes} must lie in [1, {rows}] (the weight's rows)")
    return int(num_classes)


def padded_num_classes(num_classes: int, n_model: int) -> int:
    """The classifier rows to allocate: ``num_classes`` rounded up to a multiple of ``n_model``
    (the extra rows are padding; pass ``num_classes`` to the losses so they are ignored)."""
    return -(-int(num_classes) // int(n_model)) * int(n_model)


# ---------------------------------------------------------------------------------------------
# Partial FC.


def num_sampled_rows(num_classes: int, n_model: int, sample_rate: float) -> int:
    """Rows each model shard keeps: ceil(sample_rate * C_local), at least 1.

    The product is rounded to 6 decimals first so that e.g. 0.1 * 125000 gives 12500, not the
    12501 that float error in 0.1 would produce.
    """
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
    c_local = num_classes // n_model
    return max(1, min(c_local, math.ceil(round(sample_rate * c_local, 6))))


def _check_positives_fit(labels: Any, num_classes: int, n_model: int, num_sampled: int) -> None:
    """Raise if concrete labels put more distinct classes in one shard than it may keep."""
    host = concrete_or_none(labels)
    if host is None:
        return
    c_local = num_classes // n_model
    shard_of = np.unique(host) // c_local
    counts = np.bincount(shard_of, minlength=n_model)
    worst = int(counts.argmax())
    if counts[worst] > num_sampled:
        raise ValueError(
            f"model shard {worst} has {counts[worst]} distinct positive classes in the batch but "
            f"keeps only num_sampled={num_sampled} rows; raise sample_rate (needs "
            f">= {counts[worst] / c_local:.4g}) or lower the batch size"
        )


@functools.partial(jax.jit, static_argnames=_STATIC + ("num_sampled",))
def _partial_fc_loss(
    embeddings,
    weight,
    labels,
    rng,
    *,
    mesh,
    s,
    m1,
    m2,
    m3,
    data_axis,
    model_axis,
    over_model,
    matmul_dtype,
    num_sampled,
    num_valid=None,
):
    num_classes, global_batch = weight.shape[0], embeddings.shape[0]
    num_valid = num_classes if num_valid is None else num_valid
    batch_axes = _batch_axes(data_axis, model_axis, over_model)
    batch_spec = P(batch_axes or None)
    gather_axis = model_axis if over_model else None

    def per_device(emb, w, lab, key):
        emb, lab = _gather_batch(emb, gather_axis), _gather_batch(lab, gather_axis, "invarying")
        c_local = w.shape[0]
        shard = jax.lax.axis_index(model_axis)
        offset = shard * c_local
        # Positives come from the *global* batch so that every data row of this class slice
        # samples the same rows (their weight gradients are summed over data).
        everyone = lab
        for axis in batch_axes:
            if axis != gather_axis:
                everyone = jax.lax.all_gather(everyone, axis, tiled=True, to="invarying")
        rel = everyone - offset
        positive = (
            jnp.zeros((c_local,), bool)
            .at[jnp.where((rel >= 0) & (rel < c_local), rel, c_local)]
            .set(True, mode="drop")
        )
        # Same key on all data rows, a different one per class shard.
        scores = jax.random.uniform(jax.random.fold_in(key, shard), (c_local,))
        scores = jnp.where(positive, 2.0, scores)  # positives first, then random negatives
        real = offset + jnp.arange(c_local) < num_valid
        scores = jnp.where(real, scores, -1.0)  # padding rows last (and masked if drawn)
        _, index = jax.lax.top_k(scores, num_sampled)  # [num_sampled] distinct local rows
        row_mask = jnp.zeros((c_local,), bool).at[index].set(True)
        slot = jnp.full((c_local,), -1, jnp.int32).at[index].set(jnp.arange(num_sampled))

        local = lab - offset
        in_shard = (local >= 0) & (local < c_local)
        local_target = jnp.where(in_shard, slot[jnp.clip(local, 0, c_local - 1)], -1)
        nll, _ = _local_nll(
            emb, w[index], local_target, s=s, m1=m1, m2=m2, m3=m3, model_axis=model_axis,
            matmul_dtype=matmul_dtype, col_valid=real[index] if num_valid < num_classes else None,
        )  # fmt: skip
        # A positive that did not fit into num_sampled rows would silently lose its target
        # term; make the loss NaN instead (the training step then skips the update).
        dropped = jax.lax.psum((in_shard & (local_target < 0)).astype(jnp.int32), model_axis)
        valid = (lab >= 0) & (lab < num_valid) & (dropped == 0)
        nll = jnp.where(valid, nll, jnp.nan)
        return _mean_over_batch(nll, data_axis, global_batch), row_mask

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(batch_spec, P(model_axis, None), batch_spec, P()),
        out_specs=(P(), P(model_axis)),
    )(embeddings, weight, labels.astype(jnp.int32), rng)


def partial_fc_loss(
    embeddings: Array,
    weight: Array,
    labels: Array,
    mesh: Mesh,
    *,
    sample_rate: float,
    rng: Array,
    s: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    data_axis: str | None = "data",
    model_axis: str = "model",
    batch_over_model: bool = False,
    matmul_dtype: Any = None,
    num_classes: int | None = None,
) -> tuple[Array, Array]:
    """Partial FC margin softmax: the softmax of each step runs over a sample of the classes.

    Every model shard keeps ``num_sampled_rows(C, n_model, sample_rate)`` rows (a static
    shape): all of its classes that occur in the global batch, then negatives drawn without
    replacement from ``rng`` (identical across data rows, distinct per shard). Arguments as
    ``sharded_margin_softmax_loss``; ``rng`` is a replicated PRNG key, new every step.

    Returns ``(loss, row_mask)``: the mean loss over the global batch and a boolean [C] mask
    (sharded over ``model``) of the rows used this step; pass it to ``masked_head_update``.
    Unused rows get an exactly zero gradient. ``sample_rate=1`` is exactly
    ``sharded_margin_softmax_loss`` (same computation) with an all-True mask.

    num_sampled must be at least the number of distinct batch classes falling into any one
    shard. Concrete labels are checked (``ValueError``); under ``jit`` an overflow makes the
    loss NaN. It can never overflow when the global batch size is <= num_sampled.
    """
    data_axis, n_data, n_model = _resolve_axes(mesh, data_axis, model_axis)
    _check_shapes(embeddings, weight, labels, n_data, n_model, batch_over_model)
    num_valid = _num_valid(num_classes, weight.shape[0])
    check_labels(labels, num_valid)
    num_classes = weight.shape[0]
    num_sampled = num_sampled_rows(num_classes, n_model, sample_rate)
    margins = dict(
        s=float(s),
        m1=float(m1),
        m2=float(m2),
        m3=float(m3),
        matmul_dtype=_dtype(matmul_dtype),
        num_valid=num_valid,
    )
    if num_sampled == num_classes // n_model:
        loss = _sharded_loss(
            embeddings,
            weight,
            labels,
            mesh=mesh,
            data_axis=data_axis,
            model_axis=model_axis,
            over_model=batch_over_model,
            **margins,
        )[0]
        mask = jax.lax.with_sharding_constraint(
            jnp.ones((num_classes,), bool), jax.sharding.NamedSharding(mesh, P(model_axis))
        )
        return loss, mask
    _check_positives_fit(labels, num_classes, n_model, num_sampled)
    return _partial_fc_loss(
        embeddings,
        weight,
        labels,
        rng,
        mesh=mesh,
        data_axis=data_axis,
        model_axis=model_axis,
        over_model=batch_over_model,
        num_sampled=num_sampled,
        **margins,
    )


# ---------------------------------------------------------------------------------------------
# Restricting the update to the sampled rows.


def masked_row_update(old_rows: Array, new_rows: Array, row_mask: Array) -> Array:
    """``new_rows`` where ``row_mask`` [C] is True, else ``old_rows`` (bit-identical)."""
    chex.assert_equal_shape([old_rows, new_rows])
    chex.assert_shape(row_mask, old_rows.shape[:1])
    mask = row_mask.reshape(row_mask.shape + (1,) * (old_rows.ndim - 1))
    return jnp.where(mask, new_rows, old_rows)


def _key_name(entry: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def masked_head_update(
    old_params: Any,
    new_params: Any,
    old_opt_state: Any,
    new_opt_state: Any,
    row_mask: Array,
    head_path: Sequence[str] = ("head", "weight"),
) -> tuple[Any, Any]:
    """Undo an optimizer step on the classifier rows Partial FC did not sample this step.

    Applies ``masked_row_update`` to the leaf at ``head_path`` of the params and to every
    optimizer-state leaf whose path ends with ``head_path`` and has the head's shape (optax's
    per-parameter moments mirror the params tree, e.g. ``TraceState.trace['head']['weight']``),
    so unsampled rows and their momentum stay bit-identical. Returns (params, opt_state).
    """
    head_path = tuple(head_path)
    old_head = old_params
    for k in head_path:
        old_head = old_head[k]
    shape = jnp.shape(old_head)
    if row_mask.shape != shape[:1]:
        raise ValueError(f"row_mask has shape {row_mask.shape}, the head {head_path} is {shape}")

    def select(path, old, new):
        names = tuple(_key_name(p) for p in path)
        if names[len(names) - len(head_path) :] == head_path and jnp.shape(old) == shape:
            return masked_row_update(old, new, row_mask)
        return new

    params = jax.tree_util.tree_map_with_path(select, old_params, new_params)
    opt_state = jax.tree_util.tree_map_with_path(select, old_opt_state, new_opt_state)
    return params, opt_state
