"""Fine-grained dependency reconstruction (FDR): TOPLight (Yu et al., CVPR 2023), §3.3.

On a feature map Z [B, H, W, C] (the Block4 output):
* horizontal stripes of height sigma spanning the full width (Eq. 5) and vertical stripes of
  width mu spanning the full height (Eq. 6) are average-pooled to one C-vector per stripe;
* each set is reconstructed to an H x W map by a transposed convolution shared by both
  modalities (Eq. 7-8): kernel sigma x W with stride (sigma, 1) over the (H / sigma) x 1
  stripe column, kernel H x mu with stride (1, mu) over the 1 x (W / mu) stripe row (C -> C
  channels, with bias), i.e. stripe s fills exactly its own rows (columns);
* the two reconstructions are concatenated and channel-shuffled (two groups: h0, v0, h1,
  v1, ...; Eq. 9), and the "shuffle attention" W2 ReLU(W1 GAP(D)) maps the 2C channel means
  to C / ``reduction`` and back to C (Eq. 10; W1, W2 dense layers with bias);
* the result is added to the input (Eq. 11).

Non-divisible maps (e.g. a 14 x 14 Block4 map of a 112 x 112 face with mu = 3): there are
ceil(H / sigma) horizontal and ceil(W / mu) vertical stripes; the last stripe is narrower and
is averaged over the rows (columns) it really covers, and its reconstruction is cropped to
them (the transposed conv output, ceil(H / sigma) * sigma rows, is cut to H). This is what
``torch.nn.AvgPool2d(..., ceil_mode=True)`` followed by ``ConvTranspose2d`` and a crop does.
The transposed-conv kernels span the full width / height, so a model with FDR is tied to
its Block4 map size (hence to its input size).

Table 3 variants: ``horizontal`` (H_s), ``vertical`` (V_s), ``attention`` (SA);
``channel_shuffle=False`` is Table 5(b)'s "SA (w/o cs.)". With SA but neither stripe set
(Table 3 No. 6) the attention reads Z itself. Without SA the reconstructions themselves are
added to Z (an interpretation: the paper does not spell this variant out).

``output`` chooses how the attention result reaches the map:
* ``"channel"`` (default, Eq. 10-11 as written): the C-vector D^ is broadcast over H x W and
  added. Note what this implies: D enters only through GAP(D), and for maps that divide
  evenly into stripes GAP of a reconstruction is an affine function of GAP(Z) (each stripe
  mean is used once, with the same kernel sum), so the stripe branches then only
  re-parametrise the No. 6 variant (a per-channel shift computed from GAP(Z)). Channel
  shuffle before GAP and a dense layer is likewise only a permutation of W1's inputs.
* ``"gated"`` (an interpretation, not in the paper's text): Z + D^ * (sum of the active
  reconstructions, or Z itself without stripes), so the attention re-weights fine-grained
  spatial maps ("the new channel dependencies are established by weighting all the spatial
  maps", §3.3).

``zero_init`` (default True) starts W2 (kernel and bias) at zero, so that inserting FDR into
a pretrained network (Step 3 of §3.1) leaves its function unchanged at the first step.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from hfrjax.models.layers import Dtype


def stripe_means(z: jnp.ndarray, axis: int, size: int) -> jnp.ndarray:
    """Means of consecutive stripes of ``size`` rows (``axis=1``) or columns (``axis=2``)
    of an NHWC map, over the whole other spatial axis: [B, ceil(L / size), C]. A last,
    partial stripe is averaged over the rows (columns) it covers."""
    if axis not in (1, 2):
        raise ValueError(f"stripe axis must be 1 (rows) or 2 (columns), got {axis}")
    if size < 1:
        raise ValueError(f"stripe size must be >= 1, got {size}")
    length = z.shape[axis]
    n = math.ceil(length / size)
    pad = [(0, 0)] * 4
    pad[axis] = (0, n * size - length)
    sums = jnp.sum(jnp.pad(z, pad), axis=3 - axis)  # [B, n * size, C]
    sums = sums.reshape(z.shape[0], n, size, z.shape[-1]).sum(axis=2)
    counts = jnp.minimum(size, length - size * jnp.arange(n)) * z.shape[3 - axis]
    return sums / counts[None, :, None].astype(z.dtype)


def _per_input_channel_normal(key, shape, dtype=jnp.float32):
    """N(0, 1 / C_in): every output pixel of a stripe reconstruction reads one C_in-vector."""
    return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(shape[-2], dtype))


class StripeReconstruction(nn.Module):
    """Pool stripes along ``axis`` and rebuild the H x W map with a transposed conv whose
    kernel covers one stripe (TOPLight Eq. 5-8). Kernel [kh, kw, C, C] in flax's
    ``ConvTranspose`` layout (torch ``ConvTranspose2d.weight`` [C_in, C_out, kh, kw]
    transposed (2, 3, 0, 1)); kh, kw = (sigma, W) for rows, (H, mu) for columns."""

    axis: int
    size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        b, h, w, c = z.shape
        means = stripe_means(z, self.axis, self.size)  # [B, n, C]
        n = means.shape[1]
        kernel_hw = (self.size, w) if self.axis == 1 else (h, self.size)
        kernel = self.param(
            "kernel", _per_input_channel_normal, (*kernel_hw, c, c), self.param_dtype
        )
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        kernel, means = kernel.astype(self.dtype), means.astype(self.dtype)
        if self.axis == 1:  # stripe s -> rows [s * sigma, (s + 1) * sigma)
            y = jnp.einsum("bnc,ijco->bnijo", means, kernel).reshape(b, n * self.size, w, c)
            y = y[:, :h]
        else:  # stripe s -> columns [s * mu, (s + 1) * mu)
            y = jnp.einsum("bnc,ijco->binjo", means, kernel).reshape(b, h, n * self.size, c)
            y = y[:, :, :w]
        return y + bias.astype(self.dtype)


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
    """ShuffleNet channel shuffle: [.., groups * k] -> interleave the groups channel-wise."""
    c = x.shape[-1]
    if c % groups:
        raise ValueError(f"{c} channels do not split into {groups} groups")
    x = x.reshape(*x.shape[:-1], groups, c // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*x.shape[:-2], c)


class FDR(nn.Module):
    """Fine-grained dependency reconstruction (module docstring); [B, H, W, C] -> same."""

    sigma: int = 2
    mu: int = 3
    horizontal: bool = True  # H_s
    vertical: bool = True  # V_s
    attention: bool = True  # SA
    channel_shuffle: bool = True
    reduction: int = 4
    output: str = "channel"  # "channel" (Eq. 10-11 as written) | "gated"
    zero_init: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        if z.ndim != 4:
            raise ValueError(f"FDR expects an NHWC feature map, got shape {z.shape}")
        if not (self.horizontal or self.vertical or self.attention):
            raise ValueError("FDR needs at least one of horizontal, vertical, attention")
        if self.output not in ("channel", "gated"):
            raise ValueError(f"FDR output must be 'channel' or 'gated', got {self.output!r}")
        if self.reduction < 1:
            raise ValueError(f"FDR reduction must be >= 1, got {self.reduction}")
        c = z.shape[-1]
        z = z.astype(self.dtype)
        maps = []
        if self.horizontal:
            maps.append(
                StripeReconstruction(1, self.sigma, self.dtype, self.param_dtype, name="h_rec")(z)
            )
        if self.vertical:
            maps.append(
                StripeReconstruction(2, self.mu, self.dtype, self.param_dtype, name="v_rec")(z)
            )
        if not self.attention:
            return z + sum(maps)
        d = jnp.concatenate(maps, axis=-1) if maps else z
        if self.channel_shuffle and len(maps) > 1:
            d = channel_shuffle(d, len(maps))
        g = jnp.mean(d.astype(jnp.float32), axis=(1, 2))
        g = nn.relu(
            nn.Dense(max(1, c // self.reduction), param_dtype=self.param_dtype, name="fc1")(g)
        )
        init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        d_hat = nn.Dense(
            c,
            param_dtype=self.param_dtype,
            kernel_init=init,
            bias_init=nn.initializers.zeros,
            name="fc2",
        )(g)
        d_hat = d_hat[:, None, None, :].astype(self.dtype)
        if self.output == "gated":
            return z + d_hat * (sum(maps) if maps else z)
        return z + d_hat
