"""TOPLight models: MobileNetV3-Large (vs an independent PyTorch definition), the dual-path
network, the uniform soup and the FDR module (vs PyTorch pooling / transposed convs)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfrjax.models import get_model, list_models
from hfrjax.models.dual_path import (
    DualPathMobileNetV3,
    dual_path_mobilenetv3_large,
    dual_path_variables_from_single,
    souped_mobilenetv3_large,
    uniform_soup,
)
from hfrjax.models.fdr import FDR, channel_shuffle, stripe_means
from hfrjax.models.mobilenetv3 import (
    make_divisible,
    mobilenetv3_large,
    mobilenetv3_large_blocks,
    mobilenetv3_params_from_torch_state_dict,
)

try:
    import torch
    import torch.nn.functional as F

    from hfrjax.models.torch_reference_mobilenetv3 import TorchMobileNetV3Large

    torch.set_num_threads(1)  # tiny tensors: worker threads would only spin
except ImportError:  # pragma: no cover - torch is an optional test dependency
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")

# Tiny but complete: every block, every bneck kind; 48 x 32 is non-square.
TINY = dict(width_mult=0.35, input_size=(48, 32), depthwise_impl="conv")
# One model of each kind with the same head, so that compiled functions are shared across
# tests; batches of 3 images (2 visible + 3 infrared for the dual-path models) throughout.
HEAD = dict(imagenet_head=True, num_classes=10, dropout=0.0)
SINGLE = mobilenetv3_large(**HEAD, **TINY)
DUAL = dual_path_mobilenetv3_large(**HEAD, **TINY)
SOUPED = souped_mobilenetv3_large(**HEAD, **TINY)


def n_params(variables) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def images(model, batch=2, seed=1):
    h, w = (model.input_size,) * 2 if isinstance(model.input_size, int) else model.input_size
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(batch, h, w, model.in_channels)), jnp.float32)


@functools.lru_cache(maxsize=None)
def abstract_init(model):
    """Variable shapes (traced once per model: tracing a full network costs ~1 s)."""
    return jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), images(model, 1)
    )


def fast_init(model, seed=0):
    """Random variables drawn in numpy into the abstract tree (no flax initialiser compile)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.1 * rng.normal(size=shape)
        elif name == "var":
            value = rng.uniform(0.5, 1.5, size=shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_init(model))


@functools.lru_cache(maxsize=None)
def jit_apply(model, **static):
    return jax.jit(functools.partial(model.apply, **dict(static)))


# -------------------------------------------------------------------- MobileNetV3-Large


def test_registry_names():
    assert {"mobilenetv3_large", "mobilenetv3_large_dual", "mobilenetv3_large_souped"} <= set(
        list_models()
    )
    assert get_model("mobilenetv3_large_souped").private_blocks == 1
    assert get_model("mobilenetv3_large_dual").private_blocks == 4
    with pytest.raises(ValueError, match="private_blocks"):
        dual_path_mobilenetv3_large(private_blocks=7)
    with pytest.raises(ValueError, match="width_mult"):
        mobilenetv3_large(width_mult=0)


def test_make_divisible_matches_reference_rounding():
    # Values of the MobileNetV2/V3 reference rounding (never >10% below, multiple of 8).
    assert [make_divisible(v) for v in (16, 5.6, 22.4, 33.6, 4, 235.2, 62)] == [
        16, 8, 24, 32, 8, 232, 64,
    ]  # fmt: skip
    assert make_divisible(11) == 16  # 8 would be 27% below


@pytest.mark.parametrize(
    "size, imagenet_head, maps",
    [
        # TOPLight Table 1 at 224 x 224, with the published ImageNet classifier.
        (224, True, [(112, 112, 16), (56, 56, 24), (56, 56, 24), (28, 28, 40), (14, 14, 112), (7, 7, 160)]),
        # A 288 x 144 person crop with the embedding head.
        ((288, 144), False, [(144, 72, 16), (72, 36, 24), (72, 36, 24), (36, 18, 40), (18, 9, 112), (9, 5, 160)]),
    ],
)  # fmt: skip
def test_full_size_layout_and_parameter_count(size, imagenet_head, maps):
    """Block1..7 as TOPLight Table 1; torchvision's mobilenet_v3_large(num_classes=1000)
    has 5,483,032 parameters (5.4M in Howard et al., Table 3)."""
    model = mobilenetv3_large(input_size=size, imagenet_head=imagenet_head)
    variables = abstract_init(model)
    out, inter = jax.eval_shape(
        lambda v, x: model.apply(v, x, return_intermediates=True), variables, images(model, 2)
    )
    assert [inter[f"block{b}"].shape[1:] for b in range(1, 7)] == maps
    assert inter["block7"].shape == (2, 1280) and inter["pre_neck"].shape == (2, 1280)
    assert out.shape == (2, 1000 if imagenet_head else 1280) and out.dtype == jnp.float32
    if imagenet_head:
        assert n_params(variables) == 5_483_032
        if torch is not None:
            assert sum(p.numel() for p in TorchMobileNetV3Large().parameters()) == 5_483_032
    else:  # the 1280 x 1000 classifier swapped for a bias-free 1280-d BN neck
        assert n_params(variables) == 5_483_032 - 1_281_000 + 1280
    specs = mobilenetv3_large_blocks(1.0)
    assert [len(s.bnecks) for s in specs] == [1, 1, 1, 3, 6, 3, 0]
    assert specs[0].stem == 16 and specs[6].last_conv == 960


def test_wrong_input_shape_is_rejected():
    model = mobilenetv3_large(**TINY)
    with pytest.raises(AssertionError):
        jax.eval_shape(
            functools.partial(model.init, train=False),
            jax.random.key(0),
            jnp.zeros((1, 32, 48, 3)),
        )


def randomised_torch_model(width_mult=0.35, num_classes=10, seed=0):
    """Eval-mode torch model with random BN affine parameters and running statistics and
    linear weights large enough that the logits are O(1)."""
    torch.manual_seed(seed)
    model = TorchMobileNetV3Large(num_classes=num_classes, width_mult=width_mult).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, 0.0, 1.0 / m.in_features**0.5)
                m.bias.normal_(0.0, 0.1)
    return model


@needs_torch
def test_torch_parity_on_converted_weights():
    tmodel = randomised_torch_model()
    variables = mobilenetv3_params_from_torch_state_dict(tmodel.state_dict(), SINGLE)
    x = np.asarray(images(SINGLE, 3))
    logits, inter = jit_apply(SINGLE, return_intermediates=True)(variables, jnp.asarray(x))
    with torch.no_grad():
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        ref_logits = tmodel(xt).numpy()
        ref_pre = tmodel.pre_logits(xt).numpy()
        ref_block4 = tmodel.features[:7](xt).numpy().transpose(0, 2, 3, 1)
    assert np.abs(ref_logits).max() > 0.1  # a meaningful comparison
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(inter["block7"]), ref_pre, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(inter["block4"]), ref_block4, atol=1e-4, rtol=0)


@needs_torch
def test_converter_embedding_head_and_errors():
    state = randomised_torch_model().state_dict()
    model = mobilenetv3_large(embedding_dim=16, **TINY)
    variables = mobilenetv3_params_from_torch_state_dict(state, model)
    template = abstract_init(model)
    assert jax.tree.structure(variables) == jax.tree.structure(template)
    # The backbone is loaded (spot checks with the layout changes), the classifier ignored.
    np.testing.assert_array_equal(
        variables["params"]["block4"]["bneck3"]["dw"]["conv"]["kernel"],
        state["features.4.block.1.0.weight"].numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        variables["params"]["block7"]["pre_logits"]["kernel"],
        state["classifier.0.weight"].numpy().T,
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["block5"]["bneck6"]["expand"]["bn"]["var"],
        state["features.7.block.0.1.running_var"].numpy(),
    )
    assert set(variables["params"]["head"]) == {"neck_fc", "neck_bn"}

    bad = dict(state)
    del bad["features.5.block.2.fc1.bias"]
    bad["features.99.weight"] = bad["features.0.0.weight"]
    with pytest.raises(ValueError, match=r"features\.5\.block\.2\.fc1\.bias(.|\n)*features\.99"):
        mobilenetv3_params_from_torch_state_dict(bad, model)
    wide = TorchMobileNetV3Large(num_classes=10, width_mult=0.5).state_dict()
    with pytest.raises(ValueError, match="converted shape"):
        mobilenetv3_params_from_torch_state_dict(wide, model)


# -------------------------------------------------------------------- dual path and soup


def pair(seed=1):
    return images(SINGLE, 2, seed=seed), images(SINGLE, 3, seed=seed + 100)


def test_dual_path_with_copied_weights_equals_single_path():
    """Initialising both paths from one network (TOPLight §4.1) reproduces that network on
    each path."""
    single_vars = fast_init(SINGLE)
    variables = dual_path_variables_from_single(single_vars)
    assert jax.tree.structure(variables) == jax.tree.structure(abstract_init(DUAL))
    for name in ("block1_1", "block1_2", "block4_1", "block4_2", "block5", "head"):
        assert name in variables["params"]
    _, x_ir = pair()
    ref, _ = jit_apply(SINGLE, return_intermediates=True)(single_vars, x_ir)
    (out_vis, out_ir), _ = jit_apply(DUAL, return_intermediates=True)(variables, (x_ir[:2], x_ir))
    np.testing.assert_allclose(out_ir, ref, atol=1e-5)
    np.testing.assert_allclose(out_vis, ref[:2], atol=1e-5)


def test_dual_path_intermediates_per_path():
    variables = fast_init(DUAL)
    x_vis, x_ir = pair()
    (out_vis, out_ir), inter = jit_apply(DUAL, return_intermediates=True)(
        variables, (x_vis, x_ir)
    )
    assert out_vis.shape == (2, 10) and out_ir.shape == (3, 10)
    # Per path: Block4 maps (the fake-domain loss's x_i) and the final features (x^_i).
    assert [f.shape for f in inter["block4"]] == [(2, 6, 4, 16), (3, 6, 4, 16)]
    assert [f.shape for f in inter["block7"]] == [(2, 448), (3, 448)]
    assert set(inter) == {f"block{b}" for b in range(1, 8)} | {"pre_neck"}
    # One path alone gives that path's part of the paired call (eval mode).
    alone, inter_alone = jit_apply(DUAL, path=1, return_intermediates=True)(variables, x_ir)
    np.testing.assert_allclose(alone, out_ir, atol=1e-5)
    np.testing.assert_allclose(inter_alone["block4"], inter["block4"][1], atol=1e-5)
    # Each path has its own Block1-4: the same images differ after Block4 of the two paths.
    _, inter_same = jit_apply(DUAL, return_intermediates=True)(variables, (x_ir[:2], x_ir))
    assert not np.allclose(inter_same["block4"][0], inter_same["block4"][1][:2], atol=1e-3)
    np.testing.assert_allclose(inter_same["block4"][1], inter["block4"][1], atol=1e-6)
    for bad in (2, True):  # True would otherwise pass for path 1
        with pytest.raises(ValueError, match="path must be"):
            DUAL.apply(variables, x_ir, path=bad)
    with pytest.raises(ValueError, match="expected 2 inputs"):
        DUAL.apply(variables, (x_ir,))


def test_dual_path_shared_blocks_normalise_the_concatenated_batch():
    """Training mode: BN in the shared Block5-7 sees both paths' images (the paper feeds the
    concatenation to Block5), BN in the private Block1-4 only its own path's."""
    variables = fast_init(DUAL)
    x_vis, x_ir = pair(seed=1)
    _, x_ir_other = pair(seed=2)
    train = jit_apply(DUAL, train=True, mutable=("batch_stats",), return_intermediates=True)
    ((vis_a, _), inter_a), updates = train(variables, (x_vis, x_ir))
    ((vis_b, _), inter_b), _ = train(variables, (x_vis, x_ir_other))
    np.testing.assert_allclose(inter_a["block4"][0], inter_b["block4"][0], atol=1e-6)
    assert not np.allclose(vis_a, vis_b, atol=1e-3)
    moved = jax.tree.map(
        lambda a, b: not np.allclose(a, b), variables["batch_stats"], updates["batch_stats"]
    )
    assert all(jax.tree.leaves(moved))
    # Evaluation mode: the paths do not interact at all.
    evaluate = jit_apply(DUAL, return_intermediates=True)
    (eval_a, _), _ = evaluate(variables, (x_vis, x_ir))
    (eval_b, _), _ = evaluate(variables, (x_vis, x_ir_other))
    np.testing.assert_allclose(eval_a, eval_b, atol=1e-6)


def test_uniform_soup_is_the_mean_and_keeps_stems():
    variables = fast_init(DUAL)
    souped = uniform_soup(variables)
    for collection in ("params", "batch_stats"):
        tree = souped[collection]
        assert not any(k in tree for k in ("block2_1", "block2_2", "block4_1", "block4_2"))
        for b in (2, 3, 4):
            mean = jax.tree.map(
                lambda a, c: (np.asarray(a, np.float64) + np.asarray(c, np.float64)) / 2,
                variables[collection][f"block{b}_1"],
                variables[collection][f"block{b}_2"],
            )
            jax.tree.map(
                lambda s, m: np.testing.assert_allclose(s, m, rtol=1e-6, atol=1e-7),
                tree[f"block{b}"],
                mean,
            )
        kept = {"block1_1", "block1_2", "block5", "block6", "block7", "head"} & set(tree)
        assert {"block1_1", "block1_2", "block7"} <= kept
        for name in kept:
            jax.tree.map(np.testing.assert_array_equal, tree[name], variables[collection][name])
    assert jax.tree.structure(souped) == jax.tree.structure(abstract_init(SOUPED))
    # A bare params tree works too.
    bare = uniform_soup(variables["params"])
    assert jax.tree.structure(bare) == jax.tree.structure(souped["params"])
    with pytest.raises(KeyError, match="block2_2"):
        uniform_soup({k: v for k, v in variables["params"].items() if k != "block2_2"})


def test_souped_model_equals_dual_model_when_paths_agree():
    """Dual network whose two paths share Block2-4 weights but have different stems: the
    soup changes nothing, so the souped network computes the same function."""
    base, stems = fast_init(DUAL, seed=0), fast_init(DUAL, seed=1)
    variables = {}
    for col, tree in base.items():
        tree = dict(tree)
        for b in (2, 3, 4):
            tree[f"block{b}_2"] = tree[f"block{b}_1"]
        tree["block1_2"] = stems[col]["block1_2"]
        variables[col] = tree
    assert isinstance(SOUPED, DualPathMobileNetV3) and SOUPED.private_blocks == 1
    x = pair(seed=3)
    expected, _ = jit_apply(DUAL, return_intermediates=True)(variables, x)
    got, _ = jit_apply(SOUPED, return_intermediates=True)(uniform_soup(variables), x)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-5)
    # ... and the stems do differ: the same images give different outputs on the two paths.
    _, inter = jit_apply(SOUPED, return_intermediates=True)(
        uniform_soup(variables), (x[1][:2], x[1])
    )
    assert not np.allclose(inter["block1"][0], inter["block1"][1][:2], atol=1e-3)


def test_souped_model_with_fdr_shapes():
    model = souped_mobilenetv3_large(embedding_dim=16, fdr=True, **TINY)
    assert model.fdr.sigma == 2 and model.fdr.mu == 3
    variables = abstract_init(model)
    assert set(variables["params"]["fdr"]) == {"h_rec", "v_rec", "fc1", "fc2"}
    out, inter = jax.eval_shape(
        lambda v, a, b: model.apply(v, (a, b), return_intermediates=True),
        variables,
        images(model, 2),
        images(model, 1),
    )
    assert [o.shape for o in out] == [(2, 16), (1, 16)]
    assert [f.shape for f in inter["fdr"]] == [(2, 6, 4, 16), (1, 6, 4, 16)]


# ----------------------------------------------------------------------------------- FDR


def fdr_variables(module, z, seed=0):
    """Random parameters (fc2 too, so the attention is active) drawn in numpy."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), z)
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: jnp.asarray(0.3 * rng.normal(size=leaf.shape), leaf.dtype), abstract
    )


def torch_fdr(z, params, sigma, mu):
    """TOPLight Eq. 5-11 in float64 PyTorch: AvgPool2d(ceil_mode) stripes, ConvTranspose2d
    reconstruction cropped to H x W, concat, 2-group channel shuffle, W2 ReLU(W1 GAP)."""
    zt = torch.from_numpy(np.asarray(z, np.float64)).permute(0, 3, 1, 2)
    b, c, h, w = zt.shape
    p = jax.tree.map(lambda a: torch.from_numpy(np.asarray(a, np.float64)), params["params"])

    def tconv(pooled, rec, stride):
        weight = rec["kernel"].permute(2, 3, 0, 1)  # flax (kh, kw, in, out) -> torch
        return F.conv_transpose2d(pooled, weight, rec["bias"], stride=stride)[:, :, :h, :w]

    zh = tconv(F.avg_pool2d(zt, (sigma, w), (sigma, w), ceil_mode=True), p["h_rec"], (sigma, 1))
    zv = tconv(F.avg_pool2d(zt, (h, mu), (h, mu), ceil_mode=True), p["v_rec"], (1, mu))
    d = torch.cat([zh, zv], 1).view(b, 2, c, h, w).transpose(1, 2).reshape(b, 2 * c, h, w)
    g = d.mean((2, 3))
    a = torch.relu(g @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    return (zt + a[:, :, None, None]).permute(0, 2, 3, 1).numpy()


@needs_torch
@pytest.mark.parametrize("hw", [(14, 14), (7, 5), (36, 18)])
def test_fdr_matches_torch_reference(hw):
    """Square (a 112 x 112 face's Block4 map), non-divisible, and a 288 x 144 crop's."""
    z = jnp.asarray(np.random.default_rng(0).normal(size=(2, *hw, 8)), jnp.float32)
    module = FDR()
    params = fdr_variables(module, z)
    out = jax.jit(module.apply)(params, z)
    assert out.shape == z.shape
    np.testing.assert_allclose(out, torch_fdr(z, params, 2, 3), atol=1e-5)


def test_stripe_means_partial_last_stripe():
    z = np.random.default_rng(1).normal(size=(2, 7, 5, 3))
    rows = np.asarray(stripe_means(jnp.asarray(z), 1, 2))
    cols = np.asarray(stripe_means(jnp.asarray(z), 2, 3))
    assert rows.shape == (2, 4, 3) and cols.shape == (2, 2, 3)
    np.testing.assert_allclose(rows[:, 1], z[:, 2:4].mean((1, 2)), atol=1e-6)
    np.testing.assert_allclose(rows[:, 3], z[:, 6:7].mean((1, 2)), atol=1e-6)  # 1 row only
    np.testing.assert_allclose(cols[:, 1], z[:, :, 3:5].mean((1, 2)), atol=1e-6)  # 2 columns


def test_channel_shuffle_interleaves_groups():
    x = jnp.arange(6.0)[None]
    np.testing.assert_array_equal(channel_shuffle(x, 2), [[0, 3, 1, 4, 2, 5]])


def test_fdr_zero_initialised_attention_is_identity():
    module = FDR(zero_init=True)
    apply = jax.jit(module.apply)
    z = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 7, 8)), jnp.float32)
    # rbg keys: compiling threefry for the initialisers would dominate the test's time.
    variables = jax.jit(module.init)(jax.random.key(0, impl="rbg"), z)
    np.testing.assert_array_equal(variables["params"]["fc2"]["kernel"], 0.0)
    np.testing.assert_array_equal(variables["params"]["fc2"]["bias"], 0.0)
    assert np.abs(variables["params"]["h_rec"]["kernel"]).max() > 0  # the rest is random
    np.testing.assert_array_equal(apply(variables, z), z)
    # With the attention's output layer active the module does change its input.
    assert not np.allclose(apply(fdr_variables(module, z), z), z, atol=1e-3)


@pytest.mark.parametrize(
    "options, params",
    [
        (dict(), {"h_rec", "v_rec", "fc1", "fc2"}),  # Table 3 No. 9
        (dict(vertical=False), {"h_rec", "fc1", "fc2"}),  # No. 7
        (dict(horizontal=False), {"v_rec", "fc1", "fc2"}),  # No. 8
        (dict(horizontal=False, vertical=False), {"fc1", "fc2"}),  # No. 6
        (dict(attention=False), {"h_rec", "v_rec"}),
        (dict(output="gated"), {"h_rec", "v_rec", "fc1", "fc2"}),
    ],
)
def test_fdr_variants_shapes(options, params):
    for hw in ((6, 6), (9, 5)):
        z = jnp.ones((2, *hw, 8))
        module = FDR(**options)
        variables = jax.eval_shape(module.init, jax.random.key(0), z)
        assert set(variables["params"]) == params
        assert jax.eval_shape(module.apply, variables, z).shape == z.shape
    kernels = jax.eval_shape(FDR().init, jax.random.key(0), jnp.ones((1, 9, 5, 8)))["params"]
    assert kernels["h_rec"]["kernel"].shape == (2, 5, 8, 8)  # sigma x W
    assert kernels["v_rec"]["kernel"].shape == (9, 3, 8, 8)  # H x mu
    assert kernels["fc1"]["kernel"].shape == (16, 2) and kernels["fc2"]["kernel"].shape == (2, 8)


def test_fdr_rejects_empty_configuration():
    with pytest.raises(ValueError, match="at least one"):
        FDR(horizontal=False, vertical=False, attention=False).init(
            jax.random.key(0), jnp.ones((1, 4, 4, 8))
        )


def test_fdr_channel_output_reads_only_channel_means_on_divisible_maps():
    """The documented property of Eq. 10-11 as written: on maps that divide into whole
    stripes, the added term depends on Z only through its channel means, whereas the
    'gated' interpretation keeps spatial detail."""
    rng = np.random.default_rng(3)
    z1 = rng.normal(size=(1, 6, 6, 8))
    z2 = rng.normal(size=(1, 6, 6, 8))
    z2 = z2 - z2.mean((1, 2), keepdims=True) + z1.mean((1, 2), keepdims=True)  # same means
    z1, z2 = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
    z = jnp.concatenate([z1, z2])
    channel = FDR()
    params = fdr_variables(channel, z1)
    added = np.asarray(jax.jit(channel.apply)(params, z) - z)
    np.testing.assert_allclose(added[0], added[1], atol=1e-5)
    assert np.abs(added).max() > 0.1
    added = np.asarray(jax.jit(FDR(output="gated").apply)(params, z) - z)
    assert not np.allclose(added[0], added[1], atol=1e-3)
