"""Depthwise and few-channel grouped convolutions that XLA:CPU runs fast, forward and backward.

MobileFaceNet (Chen et al., "MobileFaceNets", §3.2, Table 1) is built from 3x3 depthwise convs
and, in arcface_torch's variant, one grouped conv with 2 channels per group. XLA:CPU runs
grouped convolutions (``feature_group_count``) slowly, above all their gradients; a sum of
shifted slices is faster, but its autodiff materialises a full-size tensor per kernel tap. Here
(``jax.custom_vjp``) the forward pass and the input gradient are each one fused elementwise loop
over shifted slices of their input (padded once, or for strided convs tap by tap inside the
loop), and the kernel gradient is kh * kw loops of batch-partial sums followed by one contiguous
reduction:

  forward  y[n, h, w, q] = sum_{i, j} xpad[n, s*h + i, s*w + j, q] k[i, j, q]
  dx                     = the same sum over dy dilated by s and padded by kh - 1 - p, with the
                           spatially flipped kernel
  dk[i, j, q]            = sum_{n, h, w} xpad[n, s*h + i, s*w + j, q] dy[n, h, w, q]

A grouped conv with m input and m output channels per group is m such depthwise terms: output
channel q = g*m + o reads input channel g*m + (o + r) % m through kernel entry
k[i, j, (o + r) % m, q] for r = 0 .. m-1, i.e. depthwise convs of channel-rotated copies of x
(rotated within each group). Each copy is materialised once, so every loop reads contiguous
channels (XLA:CPU does not vectorise the within-group broadcast ``x[..., g, c] * k[c, g, o]``).

Kernels are HWIO [kh, kw, C_in / groups, C_out] as ``lax.conv_general_dilated`` with
``feature_group_count=groups`` and symmetric padding (torch's ``Conv2d(padding=p)``); results
equal it up to float rounding.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

Pads = tuple[tuple[int, int], tuple[int, int]]
NO_PADS: Pads = ((0, 0), (0, 0))


class Padded(NamedTuple):
    """``buf`` zero-padded by ``pads`` in H and W, materialised or not (`_tap` reads both)."""

    buf: jnp.ndarray
    pads: Pads

    def out_hw(self, kh: int, kw: int, stride: int) -> tuple[int, int]:
        (t, b), (left, right) = self.pads
        h = (self.buf.shape[1] + t + b - kh) // stride + 1
        return h, (self.buf.shape[2] + left + right - kw) // stride + 1


def _check(x: jnp.ndarray, kernel: jnp.ndarray, groups: int) -> tuple[int, int, int, int]:
    kh, kw, g_in, c_out = kernel.shape
    if x.ndim != 4 or x.shape[-1] != groups * g_in or c_out % groups:
        raise ValueError(
            f"grouped kernel {kernel.shape} with {groups} groups does not fit NHWC input {x.shape}"
        )
    return kh, kw, g_in, c_out // groups


def _pad_hw(x: jnp.ndarray, pads: Pads, interior: int = 0) -> jnp.ndarray:
    """Pads (or crops, for negative amounts) H and W; ``interior`` zeros between elements."""
    cfg = ((0, 0, 0), (*pads[0], interior), (*pads[1], interior), (0, 0, 0))
    return jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _axis_plan(size: int, lo: int, i: int, stride: int, out: int) -> tuple[int, int, int]:
    """Outputs a0..a1 of a tap at offset i read x[s*a + i - lo] inside x; q0 is a0's index."""
    a0 = max(0, -(-(lo - i) // stride))
    a1 = min(out - 1, (size - 1 - i + lo) // stride)
    return a0, a1, stride * a0 + i - lo


def _tap(xp: Padded, i: int, j: int, h: int, w: int, stride: int, c0: int = 0, c1=None):
    """xpad[:, s*a + i, s*b + j, c0:c1] for a < h, b < w, or None where it is all padding.

    For a padding that is not materialised, this is the strided slice of ``xp.buf`` that the
    tap reads, zero-padded by the few rows and columns it reaches outside: a pad with a single
    user, which XLA fuses into the consuming loop (a padded copy shared by all taps is instead
    written out first)."""
    x, ((lo_h, _), (lo_w, _)) = xp
    (a0, a1, q0), (b0, b1, r0) = (
        _axis_plan(x.shape[1], lo_h, i, stride, h),
        _axis_plan(x.shape[2], lo_w, j, stride, w),
    )
    if a1 < a0 or b1 < b0:
        return None
    end = (x.shape[0], q0 + stride * (a1 - a0) + 1, r0 + stride * (b1 - b0) + 1)
    sl = jax.lax.slice(
        x, (0, q0, r0, c0), (*end, x.shape[3] if c1 is None else c1), (1, stride, stride, 1)
    )
    if (a0, a1, b0, b1) == (0, h - 1, 0, w - 1):
        return sl
    return _pad_hw(sl, ((a0, h - 1 - a1), (b0, w - 1 - b1)))


def padded_rotations(
    a: jnp.ndarray, m: int, pads: Pads, interior: int = 0, sign: int = 1, materialise=True
) -> Padded:
    """[n, H', W', m * C]: ``a`` with its channels rotated within groups of m by sign * r
    (r = 0 .. m-1) side by side, in one buffer, so that the fused loops below read contiguous
    channel ranges (XLA:CPU does not vectorise the within-group gather of a rotation).

    With ``materialise`` (needed for ``interior`` padding) the buffer is padded too; otherwise
    the padding is left to each tap (`_tap`). Which is faster depends on the shape: a padded
    copy costs a pass over memory; per-tap padding makes the loops branchier, but avoids the
    copy, and for strided convs, whose taps each read a quarter of the input, wins clearly."""
    if m > 1:  # One stack over a new axis then the pad: XLA emits it as one loop (a concatenate
        # of separately padded copies costs a pass per copy plus one for the concatenation).
        a5 = a.reshape(*a.shape[:-1], -1, m)
        a = jnp.stack([_roll_groups(a5, sign * r) for r in range(m)], axis=-3)
        a = a.reshape(*a.shape[:-3], -1)
    if materialise or interior:
        return Padded(jax.lax.optimization_barrier(_pad_hw(a, pads, interior)), NO_PADS)
    return Padded(jax.lax.optimization_barrier(a) if m > 1 else a, pads)


def depthwise_sum(xr: Padded, ks: list, stride: int) -> jnp.ndarray:
    """sum_r depthwise_conv(xr[..., r*C:(r+1)*C], ks[r]) with kernels [kh, kw, C]: one fused
    elementwise loop."""
    kh, kw, c = ks[0].shape
    h, w = xr.out_hw(kh, kw, stride)
    out = jnp.zeros((xr.buf.shape[0], h, w, c), xr.buf.dtype)
    for r, k in enumerate(ks):
        for i in range(kh):
            for j in range(kw):
                patch = _tap(xr, i, j, h, w, stride, r * c, (r + 1) * c)
                if patch is not None:
                    out = out + patch * k[i, j]
    return out


def _batch_chunks(n: int, most: int = 8) -> int:
    """The largest divisor of ``n`` up to ``most``: how many batch slices one fused loop sums."""
    return max(r for r in range(1, min(n, most) + 1) if n % r == 0)


def depthwise_kernel_grads(xr: Padded, dy: jnp.ndarray, kh: int, kw: int, stride: int):
    """[m, kh, kw, C]: dk_r[i, j, q] = sum_{n, h, w} xr[n, s*h + i, s*w + j, r*C + q] dy[n, h, w, q]
    for the padded ``xr`` of `padded_rotations`.

    XLA:CPU does not fuse slices into reductions, so reducing each tap's product directly
    materialises every shifted slice (and is then ~4x slower). Instead elementwise loops
    compute each tap's partial sums over up to 8 slices of the batch (the slices fuse there),
    stacked into one tensor 8 / (kh * kw) the size of the input, and one contiguous reduction
    finishes the sum; the optimisation barrier keeps XLA from pulling the products back into
    the reduction.
    """
    n, h, w, c = dy.shape
    m = xr.buf.shape[-1] // c
    chunks = _batch_chunks(n)
    # Sums of n * h * w products: accumulated in float32 even for bfloat16 activations.
    acc = jnp.promote_types(dy.dtype, jnp.float32)
    dy5 = dy.reshape(chunks, n // chunks, h, w, c).astype(acc)
    terms = []
    for r in range(m):
        for i in range(kh):
            for j in range(kw):
                patch = _tap(xr, i, j, h, w, stride, r * c, (r + 1) * c)
                if patch is None:  # The tap reads only padding.
                    terms.append(jnp.zeros((n // chunks, h, w, c), acc))
                    continue
                patch = patch.reshape(chunks, n // chunks, h, w, c).astype(acc)
                part = patch[0] * dy5[0]
                for b in range(1, chunks):
                    part = part + patch[b] * dy5[b]
                terms.append(part)
    partial = jax.lax.optimization_barrier(jnp.stack(terms, axis=3))  # [n / chunks, h, w, T, C]
    return partial.reshape(-1, len(terms) * c).sum(0).reshape(m, kh, kw, c)


def _roll_groups(a5: jnp.ndarray, r: int) -> jnp.ndarray:
    """a5[..., g, o] -> a5[..., g, (o + r) % m] for a5 [..., groups, m]."""
    m = a5.shape[-1]
    if r % m == 0:
        return a5
    if m == 2:  # A reverse, which XLA fuses as plain index arithmetic.
        return jnp.flip(a5, axis=-1)
    return jnp.roll(a5, -r, axis=-1)


def _rotate(a: jnp.ndarray, r: int, m: int) -> jnp.ndarray:
    """a[..., g*m + o] -> a[..., g*m + (o + r) % m] (channels rotated within groups of m)."""
    return _roll_groups(a.reshape(*a.shape[:-1], -1, m), r).reshape(a.shape)


def _rotated_kernels(kernel: jnp.ndarray, groups: int) -> list:
    """ks[r][i, j, g*m + o] = kernel[i, j, (o + r) % m, g*m + o] for r < m: [kh, kw, C] each."""
    kh, kw, m, _ = kernel.shape
    k5 = kernel.reshape(kh, kw, m, groups, m)  # [i, j, c, g, o]
    return [
        jnp.stack([k5[:, :, (o + r) % m, :, o] for o in range(m)], axis=-1).reshape(kh, kw, -1)
        for r in range(m)
    ]


def _forward(x, kernel, stride, padding, groups):
    m = kernel.shape[2]
    pads = ((padding, padding), (padding, padding))
    xr = padded_rotations(x, m, pads, materialise=stride == 1)
    return depthwise_sum(xr, _rotated_kernels(kernel, groups), stride), xr


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _grouped_conv_rotated(x, kernel, stride, padding, groups):
    return _forward(x, kernel, stride, padding, groups)[0]


def _rotated_fwd(x, kernel, stride, padding, groups):
    y, xr = _forward(x, kernel, stride, padding, groups)
    return y, (xr, kernel, x.shape)


def _rotated_bwd(stride, padding, groups, res, dy):
    xr, kernel, x_shape = res
    kh, kw, m, _ = kernel.shape
    ks = _rotated_kernels(kernel, groups)
    # Input gradient: a stride-1 depthwise conv of dy dilated by the stride (interior padding),
    # padded by k - 1 - p in front and by whatever restores x's size behind, with the kernel
    # flipped in space; term r reaches input channel g*m + (o + r) % m, i.e. it is rotated
    # back by -r, which for a channelwise conv can be applied to dy and kernel alike.
    pads = []
    for size, k, out in ((x_shape[1], kh, dy.shape[1]), (x_shape[2], kw, dy.shape[2])):
        lo = k - 1 - padding
        pads.append((lo, size + k - 1 - lo - (stride * (out - 1) + 1)))
    dyr = padded_rotations(dy, m, tuple(pads), interior=stride - 1, sign=-1)
    dx = depthwise_sum(dyr, [_rotate(k[::-1, ::-1], -r, m) for r, k in enumerate(ks)], 1)
    # Kernel gradient: dk[i, j, c, g*m + o] is term r = (c - o) % m's depthwise gradient. Its
    # loops read each tap (kh * kw passes), so a padded copy pays for itself here.
    if xr.pads != NO_PADS:
        xr = Padded(jax.lax.optimization_barrier(_pad_hw(*xr)), NO_PADS)
    dks = depthwise_kernel_grads(xr, dy, kh, kw, stride).reshape(m, kh, kw, groups, m)
    dk = jnp.stack(
        [jnp.stack([dks[(c - o) % m, :, :, :, o] for o in range(m)], axis=-1) for c in range(m)],
        axis=2,
    )  # [i, j, c, g, o]
    return dx.astype(xr.buf.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


_grouped_conv_rotated.defvjp(_rotated_fwd, _rotated_bwd)


def grouped_conv_broadcast(
    x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int, groups: int
) -> jnp.ndarray:
    """Any grouped conv as one elementwise sum over taps and in-group channels (autodiff)."""
    kh, kw, g_in, g_out = _check(x, kernel, groups)
    xp = Padded(_pad_hw(x, ((padding, padding), (padding, padding))), NO_PADS)
    n, (h, w) = x.shape[0], xp.out_hw(kh, kw, stride)
    k = kernel.reshape(kh, kw, g_in, groups, g_out)
    out = None
    for i in range(kh):
        for j in range(kw):
            patch = _tap(xp, i, j, h, w, stride).reshape(n, h, w, groups, g_in)
            for c in range(g_in):
                term = patch[..., c : c + 1] * k[i, j, c]  # [n, h, w, groups, g_out]
                out = term if out is None else out + term
    return out.reshape(n, h, w, groups * g_out)


def grouped_conv_cpu(
    x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int, groups: int
) -> jnp.ndarray:
    """``lax.conv_general_dilated(x, kernel, (stride, stride), ((padding,) * 2,) * 2,
    feature_group_count=groups)`` for NHWC / HWIO, with fused forward and backward passes on
    XLA:CPU for depthwise kernels and groups of m inputs and m outputs (module docstring);
    other group shapes use `grouped_conv_broadcast`."""
    _, _, g_in, g_out = _check(x, kernel, groups)
    if g_in != g_out:
        return grouped_conv_broadcast(x, kernel, stride, padding, groups)
    return _grouped_conv_rotated(x, kernel, stride, padding, groups)
