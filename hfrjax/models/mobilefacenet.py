"""MobileFaceNet, InsightFace ``arcface_torch`` variant (``get_mbf``: blocks (1, 4, 6, 2),
scale 2, 512-d embedding).

Structure: conv3x3/2 stem -> grouped conv3x3 -> three down-sampling depthwise-separable
bottlenecks (1x1 expand + PReLU, depthwise 3x3/2 + PReLU, linear 1x1 projection), each
followed by a stack of residual bottlenecks -> 1x1 conv to 512 -> GDC head (depthwise conv
over the whole final map, i.e. 7x7 at 112 input; BN; flatten; linear without bias; BN).
Every conv is bias-free and followed by BatchNorm (eps 1e-5, torch momentum 0.1).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp

from hfrjax.models.layers import (
    BatchNorm,
    Dtype,
    GroupedConv,
    PReLU,
    grouped_conv_shifts,
    resolve_grouped_impl,
    torch_padding,
)
from hfrjax.models.registry import register_model

# kaiming_normal_(mode='fan_out', nonlinearity='relu'), as arcface_torch initialises.
_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def grouped_conv_depthwise_expanded(
    x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int, groups: int
) -> jnp.ndarray:
    """A grouped conv with a few channels per group as one depthwise conv.

    Output channel (g, o) of group g is sum_c depthwise(x[g, c], kernel[:, :, c, (g, o)]), so
    replicating each input channel over the g_out outputs of its group gives a depthwise conv
    over groups * g_in * g_out channels, whose results are summed over c. Same result as
    `layers.grouped_conv_shifts` (up to float rounding); on XLA:CPU its backward pass is about
    5x faster for MobileFaceNet's stem (64 groups of 2 channels at 56x56), where the per-tap
    batched contraction of `grouped_conv_shifts` is very slow.
    """
    kh, kw, g_in, c_out = kernel.shape
    g_out = c_out // groups
    n, h, w, c_in = x.shape
    if c_in != groups * g_in or c_out % groups:
        raise ValueError(
            f"grouped kernel {kernel.shape} with {groups} groups does not fit {x.shape}"
        )
    width = groups * g_in * g_out
    x = jnp.broadcast_to(x.reshape(n, h, w, groups, g_in, 1), (n, h, w, groups, g_in, g_out))
    k = kernel.reshape(kh, kw, g_in, groups, g_out).transpose(0, 1, 3, 2, 4)
    y = grouped_conv_shifts(
        x.reshape(n, h, w, width), k.reshape(kh, kw, 1, width), stride, padding, width
    )
    return y.reshape(*y.shape[:3], groups, g_in, g_out).sum(4).reshape(*y.shape[:3], c_out)


class FewChannelGroupConv(nn.Module):
    """`layers.GroupedConv` (same "kernel" parameter, shape and initialisation) computed with
    `grouped_conv_depthwise_expanded`; the "shifts" impl for groups of more than one channel
    (the "fused" impl handles those in `layers.GroupedConv` itself)."""

    features: int
    kernel_size: tuple[int, int]
    groups: int
    stride: int = 1
    padding: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        shape = (*self.kernel_size, x.shape[-1] // self.groups, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        return grouped_conv_depthwise_expanded(x, kernel, self.stride, self.padding, self.groups)


class ConvBlock(nn.Module):
    """conv (no bias) -> BN -> PReLU; ``linear=True`` drops the PReLU (LinearBlock)."""

    features: int
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    linear: bool = False
    grouped_impl: str = "auto"  # See layers.GroupedConv.
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        kernel = (self.kernel, self.kernel) if isinstance(self.kernel, int) else tuple(self.kernel)
        few_channels = self.groups > 1 and x.shape[-1] > self.groups  # > 1 channel per group.
        impl = resolve_grouped_impl(self.grouped_impl)
        if few_channels and impl == "shifts":
            x = FewChannelGroupConv(
                self.features,
                kernel,
                self.groups,
                stride=self.stride,
                padding=self.padding,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=_kaiming_fan_out,
                name="conv",
            )(x)
        elif self.groups > 1:
            x = GroupedConv(
                self.features,
                kernel,
                self.groups,
                stride=self.stride,
                padding=self.padding,
                impl=impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=_kaiming_fan_out,
                name="conv",
            )(x)
        else:
            x = nn.Conv(
                self.features,
                kernel,
                strides=self.stride,
                padding=torch_padding(self.padding),
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=_kaiming_fan_out,
                name="conv",
            )(x)
        x = BatchNorm(
            use_running_average=not train, dtype=self.dtype, param_dtype=self.param_dtype, name="bn"
        )(x)
        if not self.linear:
            x = PReLU(param_dtype=self.param_dtype, name="prelu")(x)
        return x


class DepthWise(nn.Module):
    """Depthwise-separable bottleneck: 1x1 to ``groups`` channels, depthwise 3x3 (stride),
    linear 1x1 to ``features``; identity shortcut when ``residual``."""

    features: int
    groups: int
    stride: int = 1
    residual: bool = False
    grouped_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        block = functools.partial(
            ConvBlock,
            grouped_impl=self.grouped_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        y = block(self.groups, 1, name="expand")(x, train)
        y = block(self.groups, 3, stride=self.stride, padding=1, groups=self.groups, name="dw")(
            y, train
        )
        y = block(self.features, 1, linear=True, name="project")(y, train)
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """MobileFaceNet backbone (NHWC input, float32 ``embedding_dim`` output).

    ``scale`` is arcface_torch's channel multiplier (stage widths 64*scale and 128*scale);
    ``width_mult`` additionally scales *every* channel and group count (including the
    hard-coded 64/128/256/512 expansion widths) so tests can build tiny variants.
    ``input_size`` must be a multiple of 16; the GDC kernel covers the final
    ``input_size / 16`` square map. The 1x1 conv + GDC head run in float32 (as arcface_torch
    runs them outside fp16 autocast).
    """

    blocks: Sequence[int] = (1, 4, 6, 2)
    scale: int = 2
    width_mult: float = 1.0
    embedding_dim: int = 512
    input_size: int = 112
    in_channels: int = 3
    grouped_impl: str = "auto"  # "conv" | "shifts" | "fused" | "auto" (fused on CPU): GroupedConv.
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _w(self, channels: int) -> int:
        return max(1, int(round(channels * self.width_mult)))

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        chex.assert_shape(x, (None, self.input_size, self.input_size, self.in_channels))
        if self.input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {self.input_size}")
        w = self._w
        c1, c2 = w(64 * self.scale), w(128 * self.scale)
        gi = self.grouped_impl
        block = functools.partial(
            ConvBlock, grouped_impl=gi, dtype=self.dtype, param_dtype=self.param_dtype
        )
        dw = functools.partial(
            DepthWise, grouped_impl=gi, dtype=self.dtype, param_dtype=self.param_dtype
        )

        def residual_stack(x, channels, groups, n, name):
            for i in range(n):
                x = dw(channels, groups, residual=True, name=f"{name}_{i}")(x, train)
            return x

        x = x.astype(self.dtype)
        x = block(c1, 3, stride=2, padding=1, name="stem")(x, train)
        if self.blocks[0] == 1:
            x = block(c1, 3, padding=1, groups=w(64), name="stem_dw")(x, train)
        else:
            x = residual_stack(x, c1, w(128), self.blocks[0], "stage0")
        x = dw(c1, w(128), stride=2, name="down1")(x, train)
        x = residual_stack(x, c1, w(128), self.blocks[1], "stage1")
        x = dw(c2, w(256), stride=2, name="down2")(x, train)
        x = residual_stack(x, c2, w(256), self.blocks[2], "stage2")
        x = dw(c2, w(512), stride=2, name="down3")(x, train)
        x = residual_stack(x, c2, w(256), self.blocks[3], "stage3")

        head = functools.partial(
            ConvBlock, grouped_impl=gi, dtype=jnp.float32, param_dtype=self.param_dtype
        )
        x = head(w(512), 1, name="conv_sep")(x.astype(jnp.float32), train)
        # GDC: depthwise conv whose kernel spans the whole final map -> 1x1.
        x = head(w(512), x.shape[1:3], groups=w(512), linear=True, name="gdc")(x, train)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(
            self.embedding_dim,
            use_bias=False,
            param_dtype=self.param_dtype,
            kernel_init=_kaiming_fan_out,
            name="fc",
        )(x)
        x = BatchNorm(use_running_average=not train, param_dtype=self.param_dtype, name="features")(
            x
        )
        return x.astype(jnp.float32)


@register_model("mobilefacenet")
def mobilefacenet(
    *,
    blocks: Sequence[int] = (1, 4, 6, 2),
    scale: int = 2,
    width_mult: float = 1.0,
    embedding_dim: int = 512,
    input_size: int = 112,
    in_channels: int = 3,
    grouped_impl: str = "auto",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> MobileFaceNet:
    """InsightFace MobileFaceNet (``get_mbf`` defaults; ``blocks=(2, 8, 12, 4), scale=4``
    gives ``get_mbf_large``)."""
    return MobileFaceNet(
        blocks=tuple(blocks),
        scale=scale,
        width_mult=width_mult,
        embedding_dim=embedding_dim,
        input_size=input_size,
        in_channels=in_channels,
        grouped_impl=grouped_impl,
        dtype=dtype,
        param_dtype=param_dtype,
    )
