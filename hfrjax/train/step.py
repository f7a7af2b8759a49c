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
from hfrjax.losses import MarginConfig, cosine_logits, l2_normalize, margin_softmax_loss_from_cosine
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


def classification_loss(
    backbone: nn.Module, margin: MarginConfig, *, freeze_head: bool = False
) -> LossFn:
    """Combined-margin softmax on the normalised classifier ``params["head"]["weight"]``."""

    def loss_fn(params, batch_stats, batch, rng):
        emb, new_bs = apply_backbone(
            backbone, params["backbone"], batch_stats, batch["image"], True, rng
        )
        weight = params["head"]["weight"]
        if freeze_head:  # Saves the classifier's gradient computation; the optimizer masks too.
            weight = jax.lax.stop_gradient(weight)
        cos = cosine_logits(emb, weight)
        loss, logits = margin_softmax_loss_from_cosine(
            cos, batch["label"], return_logits=True, **margin.as_kwargs()
        )
        acc = jnp.mean(jnp.argmax(cos, -1) == batch["label"])
        return loss, ({"loss/cls": loss, "train_accuracy": acc}, new_bs)

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


def make_embed_step(backbone: nn.Module, mesh: Mesh) -> Callable:
    """``embed(params, batch_stats, images) -> L2-normalised embeddings`` (eval-mode BN)."""

    def embed(params, batch_stats, images):
        emb, _ = apply_backbone(backbone, params, batch_stats, images, train=False)
        return l2_normalize(emb)

    return jax.jit(
        embed,
        in_shardings=(replicated(mesh), replicated(mesh), batch_sharding(mesh)),
        out_shardings=replicated(mesh),
    )
