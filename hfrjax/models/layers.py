"""Small building blocks shared by the backbones.

Everything here exists because flax's stock layer differs from the PyTorch layer the
reference models were trained with (per-channel PReLU, torch BatchNorm defaults, symmetric
conv padding), so that converted PyTorch weights reproduce the original embeddings.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hfrjax.models.depthwise_cpu import grouped_conv_cpu

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


def grouped_conv_shifts(
    x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int, groups: int
) -> jnp.ndarray:
    """Grouped conv as a sum over the kh x kw taps of shifted, strided slices.

    Same result as ``lax.conv_general_dilated(..., feature_group_count=groups)`` with an HWIO
    kernel [kh, kw, C_in / groups, C_out] and symmetric ``padding``, built from slices and a
    per-group contraction (a plain multiply for depthwise kernels). XLA:CPU runs grouped
    convolutions, above all their backward pass, very slowly; this form is much faster there
    (see `GroupedConv`).
    """
    kh, kw, g_in, c_out = kernel.shape
    c_in = x.shape[-1]
    if c_in != groups * g_in or c_out % groups:
        raise ValueError(
            f"grouped kernel {kernel.shape} with {groups} groups does not fit input {x.shape}"
        )
    g_out = c_out // groups
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, w = x.shape[0], (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride
            ]
            if g_in == 1 and g_out == 1:
                term = patch * kernel[i, j, 0]
            else:
                k = kernel[i, j].reshape(g_in, groups, g_out)
                term = jnp.einsum(
                    "nhwgk,kgo->nhwgo", patch.reshape(n, h, w, groups, g_in), k
                ).reshape(n, h, w, c_out)
            out = term if out is None else out + term
    return out


GROUPED_IMPLS = ("auto", "conv", "shifts", "fused")


def resolve_grouped_impl(impl: str) -> str:
    """The impl that ``impl`` names: "auto" is "fused" on CPU and "conv" elsewhere (a
    ValueError for an unknown name)."""
    if impl not in GROUPED_IMPLS:
        raise ValueError(f"grouped conv impl must be one of {GROUPED_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "fused" if jax.default_backend() == "cpu" else "conv"
    return impl


class GroupedConv(nn.Module):
    """Grouped conv (no bias) with ``nn.Conv``'s parameter layout (HWIO "kernel").

    ``impl``: "conv" (``lax.conv_general_dilated``), "shifts" (`grouped_conv_shifts`, autodiff),
    "fused" (`depthwise_cpu.grouped_conv_cpu`: a custom vjp whose forward, input gradient and
    kernel gradient are fused loops; the fastest on XLA:CPU), or "auto" (fused on CPU, conv
    elsewhere). Same parameters either way, so checkpoints and the PyTorch converters work
    with all of them.
    """

    features: int
    kernel_size: tuple[int, int]
    groups: int
    stride: int = 1
    padding: int = 0
    impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        impl = resolve_grouped_impl(self.impl)
        shape = (*self.kernel_size, x.shape[-1] // self.groups, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if impl == "shifts":
            return grouped_conv_shifts(x, kernel, self.stride, self.padding, self.groups)
        if impl == "fused":
            return grouped_conv_cpu(x, kernel, self.stride, self.padding, self.groups)
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(self.stride, self.stride),
            padding=torch_padding(self.padding),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )
