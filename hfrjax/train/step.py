"""Loss functions of a train state and the jitted, sharded train and embedding steps.

A loss function has the signature ``loss_fn(params, batch_stats, batch, rng) ->
(loss, (metrics, new_batch_stats))``; recipes compose their own (source regularisation,
information bottleneck, ...) from the core one below and reuse `make_train_step`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hfrjax.data.augment import normalize_images
from hfrjax.losses import (
    MarginConfig,
    cosine_logits,
    l2_normalize,
    l2_sp_regularizer,
    margin_softmax_loss_from_cosine,
)
from hfrjax.losses import sharded as sharded_lib
from hfrjax.train.mesh import batch_sharding, replicated
from hfrjax.train.state import TrainState

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[dict, Any]]]


def model_inputs(images: jax.Array) -> jax.Array:
    """uint8 images -> [-1, 1] float32; float images are taken as already normalised."""
    return normalize_images(images) if images.dtype == jnp.uint8 else images


def apply_backbone(
    backbone: nn.Module,
    params: Any,
    batch_stats: Any,
    images: jax.Array,
    train: bool,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, Any]:
    """Embeddings and (when training) the updated batch statistics."""
    variables = {"params": params, "batch_stats": batch_stats}
    x = model_inputs(images)
    if train:
        emb, updates = backbone.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
        )
        return emb, updates["batch_stats"]
    return backbone.apply(variables, x, train=False), batch_stats


ROW_MASK = "_row_mask"  # Aux metric key: Partial FC's sampled classifier rows (not logged).


@dataclasses.dataclass(frozen=True)
class ShardedHead:
    """A classifier whose rows are sharded over the mesh's ``model`` axis.

    ``num_classes`` real classes (the weight may carry padding rows up to a multiple of the
    model axis, see `losses.sharded.padded_num_classes`); ``sample_rate`` < 1 turns on Partial
    FC (the step then updates only the sampled rows and their optimizer state).
    """

    mesh: Mesh
    num_classes: int
    sample_rate: float = 1.0


def _margin_loss(emb, weight, labels, margin: MarginConfig, frozen: bool, matmul_dtype=None):
    if frozen:  # Saves the classifier's gradient computation; the optimizer masks too.
        weight = jax.lax.stop_gradient(weight)
    cos = cosine_logits(emb, weight, matmul_dtype)
    loss = margin_softmax_loss_from_cosine(cos, labels, **margin.as_kwargs())
    return loss, jnp.mean(jnp.argmax(cos, -1) == labels)


def _sharded_margin_loss(
    emb, weight, labels, margin: MarginConfig, head: ShardedHead, rng, matmul_dtype=None
):
    """(loss, accuracy or None, row mask or None) with the class-sharded softmax."""
    kw = dict(num_classes=head.num_classes, matmul_dtype=matmul_dtype, **margin.as_kwargs())
    if head.sample_rate < 1.0:
        loss, mask = sharded_lib.partial_fc_loss(
            emb, weight, labels, head.mesh, sample_rate=head.sample_rate, rng=rng, **kw
        )
        return loss, None, mask
    loss, acc = sharded_lib.sharded_margin_softmax_loss(
        emb, weight, labels, head.mesh, return_accuracy=True, **kw
    )
    return loss, acc, None


def classification_loss(
    backbone: nn.Module,
    margin: MarginConfig,
    *,
    freeze_head: bool = False,
    source_weight: float = 0.0,
    source_margin: MarginConfig | None = None,
    freeze_source_head: bool = True,
    anchor_weight: float = 0.0,
    sharded_head: ShardedHead | None = None,
    matmul_dtype: Any = None,
) -> LossFn:
    """Combined-margin softmax on the normalised classifier ``params["head"]["weight"]``.

    Optional terms (the Rethinking paper's fine-tuning regularisers, usable by any recipe):

    * ``source_weight`` = λ > 0: L += λ · L_cls(source), on ``batch["source"]`` (a batch of the
      source dataset, its own size) against ``params["source_head"]["weight"]`` (the pretrained
      source classifier, frozen unless ``freeze_source_head=False``), with ``source_margin``
      (default: ``margin``). The source images pass through the backbone separately, so each
      batch normalises with its own statistics (the running statistics see both).
    * ``anchor_weight`` = μ > 0 ("RCT"): L += μ · ||θ − θ₀||² over the backbone parameters, θ₀ =
      ``params["anchor"]`` (the pretrained backbone, a frozen copy kept in the state).

    ``sharded_head``: the main classifier is class-sharded (``jax.shard_map`` softmax, or
    Partial FC, `hfrjax.losses.sharded`) instead of replicated. ``matmul_dtype`` (e.g.
    bfloat16) is the dtype of the classifier's cosine matmul, accumulated in float32.
    """
    source_margin = margin if source_margin is None else source_margin

    def loss_fn(params, batch_stats, batch, rng):
        emb, new_bs = apply_backbone(
            backbone, params["backbone"], batch_stats, batch["image"], True, rng
        )
        weight = params["head"]["weight"]
        if sharded_head is None:
            loss, acc = _margin_loss(emb, weight, batch["label"], margin, freeze_head, matmul_dtype)
            metrics = {"loss/cls": loss, "train_accuracy": acc}
        else:
            if freeze_head:
                weight = jax.lax.stop_gradient(weight)
            loss, acc, mask = _sharded_margin_loss(
                emb,
                weight,
                batch["label"],
                margin,
                sharded_head,
                jax.random.fold_in(rng, 2),
                matmul_dtype,
            )
            metrics = {"loss/cls": loss}
            if acc is not None:
                metrics["train_accuracy"] = acc
            if mask is not None:
                metrics[ROW_MASK] = mask
        if source_weight:
            src = batch["source"]
            src_emb, new_bs = apply_backbone(
                backbone, params["backbone"], new_bs, src["image"], True, jax.random.fold_in(rng, 1)
            )
            src_loss, src_acc = _margin_loss(
                src_emb,
                params["source_head"]["weight"],
                src["label"],
                source_margin,
                freeze_source_head,
            )
            loss = loss + source_weight * src_loss
            metrics.update({"loss/source": src_loss, "source_accuracy": src_acc})
        if anchor_weight:
            anchor = jax.lax.stop_gradient(params["anchor"])
            penalty = l2_sp_regularizer(params["backbone"], anchor)
            loss = loss + anchor_weight * penalty
            metrics["loss/anchor_l2"] = penalty
        return loss, (metrics, new_bs)

    return loss_fn


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    schedule: optax.Schedule | None = None,
    state_sharding: Any = None,
) -> Callable:
    """``step(state, batch) -> (state, metrics)``, jitted over ``mesh`` with the state donated.

    ``state_sharding``: a sharding pytree for the state (default: replicated), e.g. with the
    classifier rows over ``model`` (`mesh.state_sharding`). A loss that reports Partial FC's
    sampled rows (aux metric ``ROW_MASK``) gets the optimizer step undone on the other rows.
    A step whose loss or gradient is not finite leaves the state unchanged and reports
    ``finite = False``; the trainer turns that into an error that names the step.
    """
    state_sharding = replicated(mesh) if state_sharding is None else state_sharding

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (metrics, new_bs)), grads = grad_fn(state.params, state.batch_stats, batch, rng)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        row_mask = metrics.pop(ROW_MASK, None)
        if row_mask is not None:
            new_params, new_opt = sharded_lib.masked_head_update(
                state.params, new_params, state.opt_state, new_opt, row_mask
            )
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = state.replace(
            step=state.step + 1, params=new_params, batch_stats=new_bs, opt_state=new_opt
        )
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return new_state, metrics

    return jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
    )


def make_embed_step(backbone: nn.Module, mesh: Mesh, *, train: bool = False) -> Callable:
    """``embed(params, batch_stats, images) -> L2-normalised embeddings``.

    ``train=False``: eval-mode BN (running statistics). ``train=True``: BN normalises with the
    batch's own statistics (the updated running statistics are discarded, dropout stays off
    via a fixed key): how the Rethinking paper's official code computes MEC class means.
    """

    def embed(params, batch_stats, images):
        rng = jax.random.key(0) if train else None
        emb, _ = apply_backbone(backbone, params, batch_stats, images, train=train, rng=rng)
        return l2_normalize(emb)

    return jax.jit(
        embed,
        in_shardings=(replicated(mesh), replicated(mesh), batch_sharding(mesh)),
        out_shardings=replicated(mesh),
    )
