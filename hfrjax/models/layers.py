"""Small building blocks shared by the backbones.

Everything here exists because flax's stock layer differs from the PyTorch layer the
reference models were trained with (per-channel PReLU, torch BatchNorm defaults, symmetric
conv padding), so that converted PyTorch weights reproduce the original embeddings.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# torch.nn.BatchNorm defaults: eps=1e-5, momentum=0.1 where
#   running = (1 - 0.1) * running + 0.1 * batch,
# which is flax's `momentum=0.9` (ra = momentum * ra + (1 - momentum) * batch).
# One difference remains: torch updates running_var with the *unbiased* batch variance,
# flax with the biased one (factor n / (n - 1)); irrelevant for inference and for the
# typical batch sizes of face recognition training.
TORCH_BN_MOMENTUM = 0.9
TORCH_BN_EPS = 1e-5

BatchNorm = functools.partial(nn.BatchNorm, momentum=TORCH_BN_MOMENTUM, epsilon=TORCH_BN_EPS)


def torch_padding(pad: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric spatial padding as torch's ``Conv2d(padding=pad)``.

    flax's ``'SAME'`` pads asymmetrically for stride 2 on even inputs ((0, 1) instead of
    (1, 1)), which shifts every strided feature map by one pixel relative to PyTorch.
    """
    return ((pad, pad), (pad, pad))


class PReLU(nn.Module):
    """Per-channel PReLU, as ``torch.nn.PReLU(num_parameters=C)``.

    ``flax.linen.PReLU`` learns a single scalar slope; InsightFace backbones learn one per
    channel (this matters for parameter counts and for loading checkpoints).
    """

    init_value: float = 0.25
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        alpha = self.param(
            "alpha", nn.initializers.constant(self.init_value), (x.shape[-1],), self.param_dtype
        )
        alpha = alpha.astype(x.dtype)
        return jnp.where(x >= 0, x, alpha * x)


class MFM(nn.Module):
    """Max-Feature-Map (LightCNN): a conv (or linear) layer with ``2 * features`` outputs
    followed by the elementwise max of the first and second half of the channels.

    The filter submodule is called ``filter`` to mirror the official PyTorch code, whose
    state_dict keys are ``<name>.filter.weight`` / ``<name>.filter.bias``.
    ``kernel_size=None`` makes it the linear (``type=0``) variant.
    """

    features: int
    kernel_size: int | None = 3
    stride: int = 1
    padding: int = 1
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.kernel_size is None:
            y = nn.Dense(
                2 * self.features,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=self.kernel_init,
                name="filter",
            )(x)
        else:
            y = nn.Conv(
                2 * self.features,
                (self.kernel_size, self.kernel_size),
                strides=self.stride,
                padding=torch_padding(self.padding),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=self.kernel_init,
                name="filter",
            )(x)
        first, second = jnp.split(y, 2, axis=-1)
        return jnp.maximum(first, second)
