"""The jitted, sharded train step built from a task's `Step` and its optimizers.

``step(state, batches) -> (state, metrics)``: gradients of the step's loss with respect to the
parameter groups of the step's optimizers only; each of those optimizers updates its groups
and its own state; everything else in the state is carried over unchanged. A step whose loss
or gradient is not finite leaves the whole state unchanged and reports ``finite = False``
(the loop turns that into an error naming the step).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hfrjax.data.augment import normalize_images
from hfrjax.train.mesh import batch_sharding, replicated
from hfrjax.train.state import TrainState
from hfrjax.train.task import Optimizer, Step


def model_inputs(images: jax.Array) -> jax.Array:
    """uint8 images -> [-1, 1] float32; float images are taken as already normalised."""
    return normalize_images(images) if images.dtype == jnp.uint8 else images


def apply_model(
    model: nn.Module,
    params: Any,
    model_state: Mapping[str, Any],
    images: jax.Array,
    train: bool,
    rng: jax.Array | None = None,
    **kwargs,
) -> tuple[Any, dict]:
    """``model(images)`` and (when training) the updated model state (e.g. BN statistics)."""
    variables = {"params": params, **model_state}
    x = model_inputs(images)
    if train and model_state:
        out, updates = model.apply(
            variables, x, train=True, mutable=list(model_state), rngs={"dropout": rng}, **kwargs
        )
        return out, {**model_state, **updates}
    rngs = {"dropout": rng} if train else None
    return model.apply(variables, x, train=train, rngs=rngs, **kwargs), dict(model_state)


def make_train_step(
    step: Step,
    optimizers: Mapping[str, Optimizer],
    mesh: Mesh,
    state_sharding: Any = None,
) -> Callable:
    """The jitted update for ``step`` with the state donated (module docstring)."""
    state_sharding = replicated(mesh) if state_sharding is None else state_sharding
    unknown = [o for o in step.optimizers if o not in optimizers]
    if unknown:
        raise ValueError(f"step uses unknown optimizer(s) {unknown}; have {sorted(optimizers)}")
    groups = [g for o in step.optimizers for g in optimizers[o].groups]

    def update(state: TrainState, batches: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_of(trainable):
            params = {**state.params, **trainable}
            return step.loss_fn(params, state.model_state, state.extra, batches, rng)

        trainable = {g: state.params[g] for g in groups}
        (loss, (metrics, new_ms, new_extra)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            trainable
        )
        params, opt_states, counts = dict(state.params), dict(state.opt_states), dict(state.updates)
        metrics = dict(metrics)
        for name in step.optimizers:
            opt = optimizers[name]
            p = {g: state.params[g] for g in opt.groups}
            g = {k: grads[k] for k in opt.groups}
            upd, opt_states[name] = opt.tx.update(g, state.opt_states[name], p)
            params.update(optax.apply_updates(p, upd))
            if opt.schedule is not None:
                key = "lr" if len(optimizers) == 1 else f"lr/{name}"
                metrics[key] = opt.schedule(state.updates[name])
            counts[name] = state.updates[name] + 1
        if step.post_update is not None:
            params, opt_states = step.post_update(state, params, opt_states, metrics)
        metrics = {k: v for k, v in metrics.items() if not k.startswith("_")}
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            model_state=new_ms,
            opt_states=opt_states,
            updates=counts,
            extra=new_extra,
        )
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        return new_state, dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)

    return jax.jit(
        update,
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
    )
