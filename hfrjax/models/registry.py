"""Backbone registry: build a flax module from a config string.

Configs and CLIs name backbones (``"ir50"``, ``"lightcnn29v2"``); the registry maps those
names to factories so that nothing else needs to import model classes directly.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import flax.linen as nn
import jax.numpy as jnp

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering a factory (function or module class) under ``name``."""

    def decorator(factory: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


# Models registered by a recipe package, imported on first use, so that an export or a workdir
# of that recipe loads in a fresh process (`hfrjax.load_embedder`, launch/evaluate.py).
RECIPE_MODELS = {
    "toplight_dual_routed": "hfrjax.recipes.toplight.network",
    "vgg16_conv3_gap": "hfrjax.recipes.csan.pretrain",
}


def get_model(name: str, **kwargs) -> nn.Module:
    """Instantiate the backbone registered as ``name`` with ``kwargs`` (e.g. ``dtype``,
    ``embedding_dim``, ``input_size``)."""
    if name not in _REGISTRY and name in RECIPE_MODELS:
        import importlib

        importlib.import_module(RECIPE_MODELS[name])
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
    return factory(**kwargs)


def list_models() -> list[str]:
    """Sorted names of all registered backbones."""
    return sorted(_REGISTRY)


def dummy_input(model: nn.Module, batch_size: int = 1) -> jnp.ndarray:
    """A zero NHWC batch of the shape ``model`` expects (for ``init`` / ``eval_shape``).

    Every backbone here exposes ``input_size`` (an int, or (H, W) for non-square inputs such
    as 288x144 person crops) and ``in_channels`` attributes.
    """
    size = model.input_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return jnp.zeros((batch_size, h, w, model.in_channels), jnp.float32)
