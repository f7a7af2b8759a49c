"""The train state and how a face model (backbone + normalised classifier head) is built.

Parameters are ``{"backbone": ..., "head": {"weight": [C, D]}}``: the head is one matrix of
class rows (the layout MEC and SSC write into), used by the margin losses in hfrjax.losses.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfrjax import models

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def build_backbone(model_cfg: Any, *, compute_dtype: str = "float32", **overrides) -> nn.Module:
    """``model_cfg``: {name, kwargs}; e.g. {name: "iresnet", kwargs: {depth: 18}}."""
    if compute_dtype not in DTYPES:
        raise ValueError(f"compute dtype must be one of {sorted(DTYPES)}, got {compute_dtype!r}")
    kwargs = dict(model_cfg.get("kwargs", {}) or {})
    kwargs.update(overrides)
    kwargs["dtype"] = DTYPES[compute_dtype]
    return models.get_model(model_cfg["name"], **kwargs)


def init_backbone(backbone: nn.Module, rng: jax.Array) -> tuple[Any, Any]:
    """(params, batch_stats) of ``backbone``, initialised from ``rng``."""
    x = models.dummy_input(backbone, batch_size=2)
    variables = jax.jit(lambda r: backbone.init({"params": r, "dropout": r}, x, train=False))(rng)
    return variables["params"], variables.get("batch_stats", {})


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
    params: Any, batch_stats: Any, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=rng,
    )


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
