"""Exports with random weights: what interop checks and throughput benchmarks run on (their
results do not depend on trained values, and ``model.init`` is slow on CPU)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np


def random_variables(model, seed: int) -> dict:
    """Variables of ``model`` drawn with numpy: fan-in-scaled kernels, and BatchNorm statistics
    and scales far from their initial values (so a conversion that drops them shows)."""
    from hfrjax.models import dummy_input

    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), dummy_input(model)
    )
    rng = np.random.default_rng(seed)

    def value(path, s):
        key = jax.tree_util.keystr(path)
        if key.endswith("['mean']"):
            v = 0.1 * rng.standard_normal(s.shape)
        elif key.endswith("['var']"):
            v = 0.5 + rng.random(s.shape)
        elif key.endswith("['scale']"):
            v = 1.0 + 0.2 * rng.standard_normal(s.shape)
        elif len(s.shape) == 1:
            v = 0.1 * rng.standard_normal(s.shape)
        else:
            v = rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))
        return np.asarray(v, np.float32)

    return jax.tree_util.tree_map_with_path(value, dict(shapes))


def random_export(directory: str | Path, name: str, kwargs: dict, seed: int = 0):
    """Writes an hfrjax export of the registered model ``name`` with `random_variables`;
    returns (model, variables)."""
    from hfrjax.models import get_model
    from hfrjax.train.export import export_embedder

    model = get_model(name, **kwargs)
    v = random_variables(model, seed)
    export_embedder(
        directory,
        model_cfg={"name": name, "kwargs": kwargs},
        params=v["params"],
        batch_stats=v.get("batch_stats", {}),
    )
    return model, v
