"""Loss functions of a train state and the jitted, sharded train and embedding steps.

A loss function has the signature ``loss_fn(params, batch_stats, batch, rng) ->
(loss, (metrics, new_batch_stats))``; recipes compose their own (source regularisation,
information bottleneck, ...) from the core one below and reuse `make_train_step`.
"""

from __future__ import annotations

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


def _margin_loss(emb, weight, labels, margin: MarginConfig, frozen: bool):
    if frozen:  # Saves the classifier's gradient computation; the optimizer masks too.
        weight = jax.lax.stop_gradient(weight)
    cos = cosine_logits(emb, weight)
    loss = margin_softmax_loss_from_cosine(cos, labels, **margin.as_kwargs())
    return loss, jnp.mean(jnp.argmax(cos, -1) == labels)


def classification_loss(
    backbone: nn.Module,
    margin: MarginConfig,
    *,
    freeze_head: bool = False,
    source_weight: float = 0.0,
    source_margin: MarginConfig | None = None,
    freeze_source_head: bool = True,
    anchor_weight: float = 0.0,
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
    """
    source_margin = margin if source_margin is None else source_margin

    def loss_fn(params, batch_stats, batch, rng):
        emb, new_bs = apply_backbone(
            backbone, params["backbone"], batch_stats, batch["image"], True, rng
        )
        loss, acc = _margin_loss(emb, params["head"]["weight"], batch["label"], margin, freeze_head)
        metrics = {"loss/cls": loss, "train_accuracy": acc}
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
) -> Callable:
    """``step(state, batch) -> (state, metrics)``, jitted over ``mesh`` with the state donated.

    A step whose loss or gradient is not finite leaves the state unchanged and reports
    ``finite = False``; the trainer turns that into an error that names the step.
    """

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (metrics, new_bs)), grads = grad_fn(state.params, state.batch_stats, batch, rng)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
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
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
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
