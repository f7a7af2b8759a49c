"""The general train state, and how a backbone and a normalised classifier head are built.

``params`` is a dict of named parameter groups (e.g. ``{"backbone", "head"}``, or
``{"network", "masks"}``); each optimizer of a task owns some groups, and its state
sits in ``opt_states[name]`` with its update count in ``updates[name]``. ``model_state``
holds the non-trainable collections (``{"batch_stats": ...}``); ``extra`` is a task-owned
pytree of arrays (pseudo-labels, anchors, PCA bases, class centres). Everything is saved
and restored exactly.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hfrjax import models

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    model_state: dict
    opt_states: dict
    updates: dict
    extra: Any
    rng: jax.Array

    @property
    def batch_stats(self) -> Any:
        return self.model_state.get("batch_stats", {})


def build_backbone(model_cfg: Any, *, compute_dtype: str = "float32", **overrides) -> nn.Module:
    """``model_cfg``: {name, kwargs}; e.g. {name: "iresnet", kwargs: {depth: 18}}."""
    if compute_dtype not in DTYPES:
        raise ValueError(f"compute dtype must be one of {sorted(DTYPES)}, got {compute_dtype!r}")
    kwargs = dict(model_cfg.get("kwargs", {}) or {})
    kwargs.update(overrides)
    kwargs["dtype"] = DTYPES[compute_dtype]
    return models.get_model(model_cfg["name"], **kwargs)


def init_backbone(
    backbone: nn.Module, rng: jax.Array, *, abstract: bool = False
) -> tuple[Any, Any]:
    """(params, batch_stats) of ``backbone``, initialised from ``rng``; with ``abstract``, only
    their shapes and dtypes (``jax.ShapeDtypeStruct``), for weights about to be loaded: no
    initialiser is compiled or run."""
    x = models.dummy_input(backbone, batch_size=2)

    def init(r):
        return backbone.init({"params": r, "dropout": r}, x, train=False)

    if abstract:
        variables = jax.eval_shape(init, rng)
    else:
        variables = jax.jit(init, compiler_options=init_compiler_options())(rng)
    return variables["params"], variables.get("batch_stats", {})


def init_compiler_options() -> dict:
    """XLA options for initialisers, which run once: on CPU, LLVM optimisation level 0
    compiles the random initialisers of a backbone ~3.5x faster (the quickstart model: 2.9 s
    -> 0.8 s of a 2-minute job). Values match the optimised build to float rounding (tested)."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}


def init_head(rng: jax.Array, num_classes: int, dim: int, rows: np.ndarray | None = None) -> dict:
    """Classifier rows: given ``rows`` [C, D] (normalised here) or N(0, 0.01) like PartialFC."""
    if rows is not None:
        rows = np.asarray(rows, np.float32)
        if rows.shape != (num_classes, dim):
            raise ValueError(
                f"classifier rows have shape {rows.shape}, expected ({num_classes}, {dim})"
            )
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        return {"weight": jnp.asarray(rows)}
    return {"weight": 0.01 * jax.random.normal(rng, (num_classes, dim), jnp.float32)}


def create_state(
    params: dict,
    model_state: dict,
    optimizers: dict,
    rng: jax.Array,
    extra: Any = None,
) -> TrainState:
    """A fresh state; ``optimizers`` maps names to `hfrjax.train.task.Optimizer` s."""
    owned: dict[str, str] = {}
    for name, opt in optimizers.items():
        for g in opt.groups:
            if g not in params:
                raise ValueError(
                    f"optimizer {name!r} owns parameter group {g!r}, which does not exist; "
                    f"groups: {sorted(params)}"
                )
            if g in owned:
                raise ValueError(f"parameter group {g!r} is owned by {owned[g]!r} and {name!r}")
            owned[g] = name
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=dict(params),
        model_state=dict(model_state),
        opt_states={n: o.tx.init({g: params[g] for g in o.groups}) for n, o in optimizers.items()},
        updates={n: jnp.zeros((), jnp.int32) for n in optimizers},
        extra={} if extra is None else extra,
        rng=rng,
    )


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
