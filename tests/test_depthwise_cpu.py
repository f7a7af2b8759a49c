"""`grouped_conv_cpu` (custom-vjp depthwise / few-channel grouped conv for XLA:CPU) against a
float64 numpy grouped conv and its hand-derived gradients, and MobileFaceNet built on it against
the same model on ``lax.conv_general_dilated``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfrjax.models import get_model
from hfrjax.models.depthwise_cpu import grouped_conv_cpu


def np_grouped_conv(x, k, stride, padding, groups):
    """float64 reference: y[n,h,w,g,o] = sum_{i,j,c} xpad[n,s*h+i,s*w+j,g,c] k[i,j,c,g,o]."""
    n, _, _, c_in = x.shape
    kh, kw, g_in, c_out = k.shape
    g_out = c_out // groups
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    h = (xp.shape[1] - kh) // stride + 1
    w = (xp.shape[2] - kw) // stride + 1
    k5 = k.reshape(kh, kw, g_in, groups, g_out)
    y = np.zeros((n, h, w, groups, g_out))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i : i + stride * h : stride, j : j + stride * w : stride]
            y += np.einsum("nhwgc,cgo->nhwgo", patch.reshape(n, h, w, groups, g_in), k5[i, j])
    return y.reshape(n, h, w, c_out)


def np_grouped_conv_grads(x, k, dy, stride, padding, groups):
    """(dx, dk) of <dy, conv(x, k)>: scatter-add of dy * k into the padded input, and the
    correlation of each tap's input patch with dy."""
    n, hx, wx, c_in = x.shape
    kh, kw, g_in, c_out = k.shape
    g_out = c_out // groups
    _, h, w, _ = dy.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dxp = np.zeros_like(xp)
    k5 = k.reshape(kh, kw, g_in, groups, g_out)
    dy5 = dy.reshape(n, h, w, groups, g_out)
    dk = np.zeros_like(k5)
    for i in range(kh):
        for j in range(kw):
            sl = (slice(None), slice(i, i + stride * h, stride), slice(j, j + stride * w, stride))
            patch = xp[sl].reshape(n, h, w, groups, g_in)
            dk[i, j] = np.einsum("nhwgc,nhwgo->cgo", patch, dy5)
            dxp[sl] += np.einsum("nhwgo,cgo->nhwgc", dy5, k5[i, j]).reshape(n, h, w, c_in)
    dx = dxp[:, padding : padding + hx, padding : padding + wx]
    return dx, dk.reshape(kh, kw, g_in, c_out)


@pytest.mark.parametrize(
    "size,c_in,c_out,kernel,stride,padding,groups",
    [
        ((7, 7), 6, 6, 3, 1, 1, 6),  # depthwise, odd size
        ((8, 8), 6, 6, 3, 1, 1, 6),  # depthwise, even size
        ((7, 9), 6, 6, 3, 2, 1, 6),  # depthwise, stride 2, odd sizes
        ((8, 6), 6, 6, 3, 2, 1, 6),  # depthwise, stride 2, even sizes
        ((8, 8), 6, 6, 3, 2, 0, 6),  # depthwise, stride 2, no padding
        ((2, 3), 6, 6, 3, 2, 1, 6),  # stride 2 on a tiny map: some taps read only padding
        ((7, 7), 6, 6, 3, 1, 0, 6),  # depthwise, no padding
        ((8, 8), 8, 8, 3, 1, 1, 4),  # 2 channels per group (MobileFaceNet's stem_dw)
        ((7, 7), 8, 8, 3, 2, 1, 4),  # 2 per group, stride 2, odd
        ((6, 6), 8, 8, 3, 2, 0, 4),  # 2 per group, stride 2, no padding, even
        ((7, 8), 9, 9, 3, 2, 1, 3),  # 3 per group (rotations by 1 and 2)
        ((7, 7), 6, 12, 3, 1, 1, 3),  # 2 in, 4 out per group
        ((5, 5), 6, 6, 5, 1, 0, 6),  # GDC: the kernel spans the whole map
    ],
)
def test_grouped_conv_cpu_matches_float64_reference(
    size, c_in, c_out, kernel, stride, padding, groups
):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *size, c_in))
    k = rng.normal(size=(kernel, kernel, c_in // groups, c_out))
    want = np_grouped_conv(x, k, stride, padding, groups)
    dy = rng.normal(size=want.shape)
    dx_want, dk_want = np_grouped_conv_grads(x, k, dy, stride, padding, groups)

    f = functools.partial(grouped_conv_cpu, stride=stride, padding=padding, groups=groups)
    y, vjp = jax.vjp(jax.jit(f), jnp.float32(x), jnp.float32(k))
    dx, dk = vjp(jnp.float32(dy))
    assert y.shape == want.shape and dx.shape == x.shape and dk.shape == k.shape
    assert y.dtype == dx.dtype == dk.dtype == jnp.float32
    # float32 rounding of sums of up to kh * kw * g_in (forward) or n * h * w (dk) terms.
    for got, ref in ((y, want), (dx, dx_want), (dk, dk_want)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_grouped_conv_cpu_matches_lax_conv_in_float64():
    """Exact agreement (to float64 rounding) with XLA's own grouped conv and its autodiff."""
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, 9, 8, 8)))
        k = jnp.asarray(rng.normal(size=(3, 3, 2, 8)))

        def lax_conv(a, b):
            return jax.lax.conv_general_dilated(
                a,
                b,
                (2, 2),
                ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=4,
            )

        y0, vjp0 = jax.vjp(lax_conv, x, k)
        y1, vjp1 = jax.vjp(lambda a, b: grouped_conv_cpu(a, b, 2, 1, 4), x, k)
        dy = jnp.asarray(rng.normal(size=y0.shape))
        for a, b in zip((y1, *vjp1(dy)), (y0, *vjp0(dy))):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_grouped_conv_cpu_rejects_a_kernel_that_does_not_fit():
    x = jnp.zeros((1, 5, 5, 6))
    with pytest.raises(ValueError, match=r"groups does not fit"):
        grouped_conv_cpu(x, jnp.zeros((3, 3, 4, 6)), 1, 1, 3)  # 3 groups of 2 inputs, not 4
    with pytest.raises(ValueError, match=r"groups does not fit"):
        grouped_conv_cpu(x, jnp.zeros((3, 3, 2, 7)), 1, 1, 3)  # 7 outputs over 3 groups


def _random_variables(model, x, seed=0):
    """Random variables drawn with numpy into the abstract tree (no flax initialisers: compiling
    threefry for every parameter would dominate the test's time)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, size=leaf.shape)
        elif name == "alpha":
            value = rng.uniform(0.0, 0.5, size=leaf.shape)
        else:
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("old", ["conv", pytest.param("shifts", marks=pytest.mark.slow)])
def test_mobilefacenet_train_step_fused_matches_other_impls(old):
    """jit(grad) of a train-mode MobileFaceNet (batch statistics) with the fused grouped convs
    (stem_dw's 2-channel groups, stride-1 and stride-2 depthwise, the GDC head) against the
    same model on lax convs and on the autodiffed shifted slices: loss, updated batch statistics
    and every parameter gradient."""
    kw = dict(blocks=(1, 1, 1, 1), width_mult=0.125, embedding_dim=8, input_size=32)
    fused = get_model("mobilefacenet", grouped_impl="fused", **kw)
    other = get_model("mobilefacenet", grouped_impl=old, **kw)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = _random_variables(fused, x)
    assert jax.tree.structure(variables) == jax.tree.structure(_random_variables(other, x))

    def loss_fn(model):
        def loss(params):
            out, new_state = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(jnp.sin(out)), new_state

        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    (l_f, s_f), g_f = loss_fn(fused)(variables["params"])
    (l_o, s_o), g_o = loss_fn(other)(variables["params"])
    np.testing.assert_allclose(l_f, l_o, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves((s_f, g_f)), jax.tree.leaves((s_o, g_o))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(b).max())))
    # The stem_dw (2 channels per group) kernel gradient is not trivially zero.
    assert float(np.abs(g_f["stem_dw"]["conv"]["kernel"]).max()) > 1e-3


def test_grouped_conv_cpu_bfloat16_keeps_dtype_and_accuracy():
    """bfloat16 activations (mixed-precision training): outputs and gradients stay bfloat16, and
    the kernel gradient (a sum of n * h * w = 2048 products) is accurate to bfloat16 rounding of
    the inputs."""
    rng = np.random.default_rng(2)
    # Positive values: the sums grow to ~500, where a bfloat16 running sum would drop most of
    # each ~0.25 product.
    x = rng.uniform(size=(8, 16, 16, 4))
    k = rng.normal(size=(3, 3, 1, 4))
    y_ref = np_grouped_conv(x, k, 1, 1, 4)
    dy = rng.uniform(size=y_ref.shape)
    xb, kb, dyb = (jnp.asarray(a, jnp.bfloat16) for a in (x, k, dy))
    # Reference on the bfloat16-rounded values, in float64.
    x64, k64, dy64 = (np.asarray(a, np.float64) for a in (xb, kb, dyb))
    _, dk_want = np_grouped_conv_grads(x64, k64, dy64, 1, 1, 4)
    y, vjp = jax.vjp(jax.jit(lambda a, b: grouped_conv_cpu(a, b, 1, 1, 4)), xb, kb)
    dx, dk = vjp(dyb)
    assert y.dtype == dx.dtype == dk.dtype == jnp.bfloat16
    scale = np.abs(dk_want).max()
    np.testing.assert_allclose(np.float64(dk), dk_want, rtol=0, atol=1e-2 * scale)


def test_grouped_impl_auto_is_fused_on_cpu_and_unknown_names_fail():
    from hfrjax.models.layers import resolve_grouped_impl

    want = "fused" if jax.default_backend() == "cpu" else "conv"
    assert resolve_grouped_impl("auto") == want
    assert resolve_grouped_impl("conv") == "conv"
    with pytest.raises(ValueError, match=r"grouped conv impl must be one of .* got 'fast'"):
        resolve_grouped_impl("fast")
