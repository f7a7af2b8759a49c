"""Networks of the SSN, CSAN and FTL recipes: LightCNN + pixel selection blocks, truncated
VGG16 + cross-spectral attention (against a PyTorch definition), FTL's Enc/Dec/R/FC."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hfrjax.models import get_model, lightcnn29v2, list_models
from hfrjax.models.convert import convert_state_dict
from hfrjax.models.cross_spectral_attention import csan, csan_param_labels
from hfrjax.models.ftl_modules import FTL_GROUPS, ftl, ftl_param_labels
from hfrjax.models.layers import MFM
from hfrjax.models.lightcnn import Group, ResBlock, v2_pool
from hfrjax.models.registry import dummy_input
from hfrjax.models.saliency import (
    initial_masks,
    lightcnn29v2_psb,
    merge_mask_params,
    saliency_param_labels,
    split_mask_params,
)
from hfrjax.models.vgg import (
    vgg16_conv3,
    vgg_config_from_torch_state_dict,
    vgg_params_from_torch_state_dict,
)

try:
    import torch

    from hfrjax.models.torch_reference_vgg import TorchCSAN, TorchVGG16Conv3
except ImportError:  # pragma: no cover - torch is an optional test dependency
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")

SIG1 = 1.0 / (1.0 + np.exp(-1.0))  # σ(1), the gate of a fresh indicator


def abstract_variables(model, x=None, **kwargs):
    x = dummy_input(model) if x is None else x
    return jax.eval_shape(
        functools.partial(model.init, train=False, **kwargs), jax.random.key(0), x
    )


def random_variables(model, seed=0, x=None):
    """Variables drawn with numpy (no threefry compiles): kernels ~ N(0, 1/fan_in), biases
    ~ N(0, 0.1), BN scales ~ 1 + N(0, .1), running vars ~ U(.5, 1.5), masks ~ N(1, 1)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        keys = [getattr(p, "key", None) for p in path]
        name, shape = keys[-1], leaf.shape
        if "masks" in keys:
            value = 1.0 + rng.normal(size=shape)
        elif name == "kernel":
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.1 * rng.normal(size=shape)
        elif name == "var":
            value = rng.uniform(0.5, 1.5, size=shape)
        elif name == "alpha":
            value = rng.uniform(0.0, 0.5, size=shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_variables(model, x))


@functools.lru_cache(maxsize=None)
def jit_apply(model, **kwargs):
    """One compiled ``model.apply`` per (model, keyword arguments); modules are hashable."""
    return jax.jit(functools.partial(model.apply, **kwargs))


def max_abs(tree):
    return max(float(np.abs(np.asarray(v)).max()) for v in jax.tree.leaves(tree))


def one_update(tx, params):
    """``params`` after one step of optimizer ``tx`` with all-ones gradients (one compile)."""

    @jax.jit
    def step(p):
        updates, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
        return optax.apply_updates(p, updates)

    return step(params)


def images(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def leaves_with_paths(tree):
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_registry_names():
    assert {"lightcnn29v2_psb", "vgg16_conv3", "csan", "ftl"} <= set(list_models())


# =================================================================== SSN (LightCNN + PSB)

SSN_TINY = dict(layers=(1, 1, 1, 1), channels=(4, 6, 8, 4, 4), embedding_dim=8, input_size=32)


@functools.partial(jax.jit, static_argnames="after_pool")
def lightcnn_by_hand(params, x, gates, *, after_pool=False):
    """LightCNN-29v2 assembled from its parts with the block outputs multiplied by
    ``gates[b]`` (a scalar or a [B, H, W, C] array): the definition of SSN Eq. 4 applied to
    LightCNN. Returns (embedding, gated block outputs)."""
    c, layers = SSN_TINY["channels"], SSN_TINY["layers"]
    x = v2_pool(MFM(c[0], 5, 1, 2).apply({"params": params["conv1"]}, x))
    blocks = []
    for stage in range(4):
        for i in range(layers[stage]):
            x = ResBlock(x.shape[-1]).apply({"params": params[f"block{stage + 1}_{i}"]}, x)
        x = Group(c[stage + 1]).apply({"params": params[f"group{stage + 1}"]}, x)
        pooled = stage != 2
        if pooled and after_pool:
            x = v2_pool(x)
        x = x * gates[stage]
        blocks.append(x)
        if pooled and not after_pool:
            x = v2_pool(x)
    x = x.reshape(x.shape[0], -1)
    return x @ params["fc"]["kernel"] + params["fc"]["bias"], blocks


@pytest.fixture(scope="module")
def ssn_setup():
    plain = lightcnn29v2(**SSN_TINY)
    net = random_variables(plain)["params"]
    x = images((4, 32, 32, 1))
    return plain, net, x


def test_psb_none_is_lightcnn(ssn_setup):
    plain, net, x = ssn_setup
    model = lightcnn29v2_psb(saliency="none", **SSN_TINY)
    template = abstract_variables(model)["params"]
    assert jax.tree.structure(template) == jax.tree.structure(net)
    expected = jit_apply(plain)({"params": net}, x)
    np.testing.assert_array_equal(jit_apply(model)({"params": net}, x), expected)
    by_hand, _ = lightcnn_by_hand(net, x, [1.0] * 4)  # the hand-built reference is LightCNN
    np.testing.assert_allclose(by_hand, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "saliency, after_pool", [("shared", False), ("split", False), ("split", True)]
)
def test_fresh_masks_scale_each_block_by_sigmoid_one(ssn_setup, saliency, after_pool):
    """Masks at 1 = LightCNN with every block output times σ(1); with biases that is not
    σ(1)^4 times LightCNN's output (the layers are affine, not homogeneous)."""
    plain, net, x = ssn_setup
    model = lightcnn29v2_psb(saliency=saliency, psb_after_pool=after_pool, **SSN_TINY)
    masks = initial_masks(model)
    rows = 1 if saliency == "shared" else 2
    assert set(masks) == {"block1", "block2", "block3", "block4"}
    assert all(m.shape[0] == rows and np.all(np.asarray(m) == 1.0) for m in masks.values())
    params = merge_mask_params(masks, net)
    modality = jnp.array([0, 1, 1, 0])
    out, blocks = jit_apply(model, return_blocks=True)({"params": params}, x, modality)
    expected, expected_blocks = lightcnn_by_hand(net, x, [SIG1] * 4, after_pool=after_pool)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    for got, want, mask in zip(blocks, expected_blocks, masks.values()):
        assert got.shape == want.shape == (4, *mask.shape[1:])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    plain_out = np.asarray(jit_apply(plain)({"params": net}, x))
    assert not np.allclose(out, SIG1**4 * plain_out, rtol=1e-3, atol=1e-4)
    assert not np.allclose(out, plain_out, rtol=1e-3, atol=1e-4)


def test_without_biases_fresh_masks_scale_output_by_sigmoid_one_to_the_n(ssn_setup):
    """MFM, v2 pooling and the residual sum are positively homogeneous: with zero biases,
    σ(1) after each of the 4 blocks multiplies the embedding by σ(1)^4."""
    plain, net, x = ssn_setup
    unbiased = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if p[-1].key == "bias" else v, net
    )
    model = lightcnn29v2_psb(saliency="split", **SSN_TINY)
    params = merge_mask_params(initial_masks(model), unbiased)
    out = jit_apply(model)({"params": params}, x, jnp.array([1, 0, 1, 0]))
    expected = SIG1**4 * np.asarray(jit_apply(plain)({"params": unbiased}, x), np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_split_masks_gate_each_image_by_its_modality(ssn_setup):
    _, net, x = ssn_setup
    model = lightcnn29v2_psb(saliency="split", **SSN_TINY)
    params = random_variables(model, seed=3)["params"]
    params = merge_mask_params(split_mask_params(params)[0], net)
    modality = np.array([1, 0, 0, 1])
    gates = [
        1.0 / (1.0 + np.exp(-np.asarray(params["masks"][f"block{b}"])[modality]))
        for b in range(1, 5)
    ]
    out = jit_apply(model)({"params": params}, x, jnp.asarray(modality))
    expected, _ = lightcnn_by_hand(net, x, [jnp.asarray(g) for g in gates])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_nir_loss_updates_only_nir_masks():
    model = lightcnn29v2_psb(saliency="split", **SSN_TINY)
    params = random_variables(model, seed=4)["params"]
    x = images((3, 32, 32, 1), seed=5)
    modality = jnp.array([1, 0, 1])  # nir, vis, nir

    @jax.jit
    @jax.grad
    def grad_of_one_modality(p, only):  # gradient of the loss of the images of one modality
        emb = model.apply({"params": p}, x, modality)
        return jnp.sum(jnp.where(modality == only, jnp.sum(emb**2, axis=1), 0.0))

    for own, other in ((1, 0), (0, 1)):
        grads = grad_of_one_modality(params, own)
        for block, g in grads["masks"].items():
            g = np.asarray(g)
            assert np.all(g[other] == 0.0), (own, block)
            assert np.any(g[own] != 0.0), (own, block)
        assert max_abs(grads["conv1"]) > 0


def test_shared_mode_has_one_indicator_for_both_modalities(ssn_setup):
    _, net, x = ssn_setup
    model = lightcnn29v2_psb(saliency="shared", **SSN_TINY)
    params = random_variables(model, seed=6)["params"]
    assert all(m.shape[0] == 1 for m in params["masks"].values())
    apply = jit_apply(model)
    vis = apply({"params": params}, x, jnp.zeros(4, jnp.int32))
    nir = apply({"params": params}, x, jnp.ones(4, jnp.int32))
    np.testing.assert_array_equal(vis, nir)
    np.testing.assert_allclose(apply({"params": params}, x), vis, rtol=1e-6)  # no modality
    gates = [1.0 / (1.0 + np.exp(-np.asarray(m[0]))) for m in params["masks"].values()]
    expected, _ = lightcnn_by_hand(net, x, [jnp.asarray(g) for g in gates])
    shared = merge_mask_params(params["masks"], net)
    np.testing.assert_allclose(apply({"params": shared}, x), expected, rtol=1e-5, atol=1e-5)


def test_mask_parameter_group_helpers():
    model = lightcnn29v2_psb(saliency="split", **SSN_TINY)
    params = random_variables(model)["params"]
    masks, network = split_mask_params(params)
    assert set(masks) == {"block1", "block2", "block3", "block4"}
    assert "masks" not in network and "fc" in network
    merged = merge_mask_params(masks, network)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    labels = leaves_with_paths(saliency_param_labels(params))
    assert {v for k, v in labels.items() if k.startswith("masks/")} == {"masks"}
    assert {v for k, v in labels.items() if not k.startswith("masks/")} == {"network"}
    # AFS mask step: an optimizer over the labels moves the masks and nothing else.
    tx = optax.multi_transform(
        {"masks": optax.sgd(1.0), "network": optax.set_to_zero()},
        saliency_param_labels(params),
    )
    new = one_update(tx, params)
    for key in params:
        assert (max_abs(jax.tree.map(np.subtract, new[key], params[key])) > 0) == (key == "masks")
    with pytest.raises(ValueError, match="already contain"):
        merge_mask_params(masks, merged)


def test_psb_input_errors(ssn_setup):
    _, _, x = ssn_setup
    model = lightcnn29v2_psb(saliency="split", **SSN_TINY)
    params = random_variables(model)["params"]
    with pytest.raises(ValueError, match="needs modality"):
        model.apply({"params": params}, x)
    with pytest.raises(ValueError, match="one per image"):
        model.apply({"params": params}, x, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="saliency must be one of"):
        lightcnn29v2_psb(saliency="both")
    assert get_model("lightcnn29v2_psb", saliency="shared", **SSN_TINY).saliency == "shared"
    assert model.takes_modality and csan().takes_modality and not hasattr(ftl(), "takes_modality")


# ====================================================================== CSAN (VGG + attention)

VGG_TINY = (4, 8, 16)


def test_vgg16_conv3_parameter_count_matches_torchvision_layout():
    # torchvision vgg16().features[:16]: conv1_1, conv1_2, conv2_1, conv2_2, conv3_1..conv3_3.
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    expected = sum(cin * cout * 9 + cout for cin, cout in convs)
    assert expected == 1_735_488
    variables = abstract_variables(vgg16_conv3())
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables)) == expected
    assert sorted(variables["params"], key=lambda k: int(k.split("_")[1])) == [
        f"features_{i}" for i in (0, 2, 5, 7, 10, 12, 14)
    ]
    if torch is not None:
        ref = TorchVGG16Conv3()
        assert sum(p.numel() for p in ref.parameters()) == expected


@needs_torch
@pytest.mark.parametrize("final_pool", [False, True])
def test_vgg_matches_torch_reference(final_pool):
    torch.manual_seed(0)
    ref = TorchVGG16Conv3(VGG_TINY, final_pool=final_pool).eval()
    sd = dict(ref.state_dict())
    config = vgg_config_from_torch_state_dict(sd)
    assert config == dict(widths=VGG_TINY, in_channels=3)
    model = vgg16_conv3(final_pool=final_pool, input_size=24, **config)
    # Layers past conv3_3 and the classifier of a full torchvision vgg16 are dropped.
    full = dict(sd, **{"features.17.weight": torch.zeros(1), "classifier.0.bias": torch.zeros(1)})
    variables = vgg_params_from_torch_state_dict({f"module.{k}": v for k, v in full.items()}, model)
    x = np.random.default_rng(0).normal(size=(2, 24, 16, 3)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    out = model.apply(variables, jnp.asarray(x))
    assert out.shape == ((2, 3, 2, 16) if final_pool else (2, 6, 4, 16))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    bad = dict(sd)
    del bad["features.12.weight"]
    with pytest.raises(ValueError, match="features.12.weight"):
        vgg_params_from_torch_state_dict(bad, model)


@needs_torch
def test_csan_matches_torch_reference():
    torch.manual_seed(1)
    ref = TorchCSAN(dim=8, widths=VGG_TINY, final_pool=True).eval()
    with torch.no_grad():  # non-trivial biases
        for p in ref.parameters():
            if p.ndim == 1:
                p.normal_(0.0, 0.1)
    model = csan(dim=8, backbone_widths=VGG_TINY, input_size=32)
    variables = convert_state_dict(abstract_variables(model), ref.state_dict())
    x = np.random.default_rng(2).normal(size=(2, 32, 16, 3)).astype(np.float32)
    with torch.no_grad():
        emb, attention, out = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    got, parts = model.apply(variables, jnp.asarray(x), return_parts=True)
    np.testing.assert_allclose(got, emb.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(parts["attention"], attention.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(parts["out"], out.numpy(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def csan_setup():
    model = csan(dim=8, backbone_widths=VGG_TINY, input_size=32)
    variables = random_variables(model, seed=7)
    x = images((3, 32, 16, 3), seed=8)
    return model, variables, x


def test_csan_attention_shapes_and_log_softmax_rows(csan_setup):
    model, variables, x = csan_setup
    emb, parts = jit_apply(model, return_parts=True)(variables, x)
    positions = (32 // 8) * (16 // 8)  # block 3's pool: /8
    assert emb.shape == (3, positions * 8) and emb.dtype == jnp.float32
    for name in ("rgb", "ir", "common", "out"):
        assert parts[name].shape == (3, positions, 8)
    a = np.asarray(parts["attention"], np.float64)
    assert a.shape == (3, positions, positions)
    assert np.all(a <= 0.0)
    np.testing.assert_allclose(np.log(np.exp(a).sum(-1)), 0.0, atol=1e-6)
    # Eq. 2-3 recomputed in float64 from the subspace features.
    rgb, ir, common = (np.asarray(parts[k], np.float64) for k in ("rgb", "ir", "common"))
    assert np.all(np.abs(rgb) <= 1.0)  # tanh (Eq. 1)
    s = np.einsum("bpc,bqc->bpq", rgb, ir) / np.sqrt(8)
    s -= s.max(-1, keepdims=True)
    np.testing.assert_allclose(a, s - np.log(np.exp(s).sum(-1, keepdims=True)), atol=1e-5)
    np.testing.assert_allclose(parts["out"], a @ common, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb, (a @ common).reshape(3, -1), rtol=1e-5, atol=1e-5)
    # Without block 3's pool: the conv3_3 map itself (/4).
    plain = csan(dim=8, backbone_widths=VGG_TINY, backbone_pool=False, input_size=32)
    assert jax.eval_shape(plain.apply, variables, x).shape == (3, 8 * 4 * 8)


def test_csan_subspace_gradient_isolation(csan_setup):
    model, variables, x = csan_setup
    params = variables["params"]

    @jax.jit
    @jax.grad
    def grad_of(p, modality, weight):  # gradient of the weighted per-image losses
        return jnp.sum(weight * jnp.sum(model.apply({"params": p}, x, modality) ** 2, axis=1))

    def largest(modality, weight=(1.0, 1.0, 1.0)):
        grads = grad_of(params, jnp.asarray(modality), jnp.asarray(weight))
        return {group: max_abs(tree) for group, tree in grads.items()}

    for grad in (largest([0, 0, 0]), largest([0, 1, 1], weight=[1.0, 0.0, 0.0])):
        # RGB images only (the second: the RGB image of a mixed batch).
        assert grad["subspace_ir"] == 0.0
        assert grad["subspace_rgb"] > 0 and grad["subspace_common"] > 0
        assert grad["backbone"] == 0.0  # frozen backbone
    grad = largest([1, 3, 1])  # nir and thermal both count as infrared
    assert grad["subspace_rgb"] == 0.0
    assert grad["subspace_ir"] > 0 and grad["subspace_common"] > 0
    trainable = csan(dim=8, backbone_widths=VGG_TINY, freeze_backbone=False, input_size=32)
    unfrozen = jax.jit(jax.grad(lambda p: jnp.sum(trainable.apply({"params": p}, x) ** 2)))
    grad = {group: max_abs(tree) for group, tree in unfrozen(params).items()}
    assert grad["backbone"] > 0  # freeze_backbone is what stops it
    assert grad["subspace_rgb"] > 0 and grad["subspace_ir"] > 0  # test time: nothing stopped
    # Stopping gradients leaves the values alone: an image's embedding ignores its label.
    np.testing.assert_allclose(
        jit_apply(model)(variables, x, jnp.array([0, 1, 0])),
        jit_apply(model)(variables, x),
        rtol=1e-6,
    )


def test_csan_parameter_groups_and_published_subspace_count():
    model = csan()
    params = abstract_variables(model)["params"]
    assert set(params) == {"backbone", "subspace_rgb", "subspace_ir", "subspace_common"}
    head = sum(
        int(np.prod(v.shape))
        for k, t in params.items()
        if k != "backbone"
        for v in jax.tree.leaves(t)
    )
    assert head == 98_688  # CSAN Table V, 128 channels
    labels = csan_param_labels(params)
    assert set(jax.tree.leaves(labels["backbone"])) == {"backbone"}
    assert set(jax.tree.leaves(labels["subspace_ir"])) == {"attention"}
    with pytest.raises(ValueError, match="one per image"):
        small = csan(dim=4, backbone_widths=VGG_TINY, input_size=16)
        small.apply(random_variables(small), jnp.zeros((2, 16, 16, 3)), jnp.zeros(3, int))


# ============================================================================ FTL modules

FTL_TINY = dict(encoder_widths=(4, 8), filter_side=2, filter_widths=(8, 4, 4, 8))


@pytest.fixture(scope="module")
def ftl_setup():
    model = ftl(num_classes=5, input_size=16, **FTL_TINY)
    variables = random_variables(model, seed=9)
    return model, variables, images((3, 16, 16, 3), seed=10)


def test_ftl_shapes_and_round_trip(ftl_setup):
    model, variables, x = ftl_setup
    out = jit_apply(model, method="forward_all")(variables, x)
    assert out["g"].shape == out["f"].shape == (3, 320)
    assert out["logits"].shape == (3, 5)
    assert out["reconstruction"].shape == x.shape
    np.testing.assert_allclose(jit_apply(model)(variables, x), out["f"], rtol=1e-6)
    # FC is Wᵀf without bias (Eq. 2).
    w = np.asarray(variables["params"]["fc"]["kernel"], np.float64)
    np.testing.assert_allclose(out["logits"], np.asarray(out["f"], np.float64) @ w, rtol=1e-5)
    assert set(variables["params"]["fc"]) == {"kernel"}
    # The paper's 100x100 crops (grey here): Dec's output is cropped back to the input size.
    grey = ftl(input_size=100, in_channels=1, **FTL_TINY)
    shapes = jax.eval_shape(
        functools.partial(grey.apply, method="forward_all"),
        abstract_variables(grey),
        jax.ShapeDtypeStruct((2, 100, 100, 1), jnp.float32),
    )
    assert shapes["reconstruction"].shape == (2, 100, 100, 1)
    assert shapes["g"].shape == (2, 320) and "logits" not in shapes


def test_ftl_parameter_groups_are_separable(ftl_setup):
    """Each part runs on its own group's variables alone (a missing variable is an error in
    flax), so Enc, Dec, R and FC can be trained, frozen and checkpointed separately."""
    model, variables, x = ftl_setup
    params, stats = variables["params"], variables["batch_stats"]
    assert set(params) == set(FTL_GROUPS) and set(stats) == {"enc", "dec"}

    def only(*groups):
        out = {"params": {k: params[k] for k in groups}}
        bn = {k: stats[k] for k in groups if k in stats}
        return dict(out, batch_stats=bn) if bn else out

    out = jit_apply(model, method="forward_all")(variables, x)
    g, f = out["g"], out["f"]
    encode = jit_apply(model, method="encode")
    np.testing.assert_allclose(encode(only("enc"), x), g, atol=1e-6)
    rec = jit_apply(model, method="decode")(only("dec"), g)
    np.testing.assert_allclose(rec, out["reconstruction"], rtol=1e-5, atol=1e-5)
    filtered = jit_apply(model, method="filter_features")(only("filter"), g)
    np.testing.assert_allclose(filtered, f, rtol=1e-5, atol=1e-6)
    logits = jit_apply(model, method="classify")(only("fc"), f)
    np.testing.assert_allclose(logits, out["logits"], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="enc"):  # encode really reads the enc group
        encode(only("dec", "filter", "fc"), x)
    labels = ftl_param_labels(params)
    assert {k: set(jax.tree.leaves(t)) for k, t in labels.items()} == {k: {k} for k in FTL_GROUPS}
    # Stage 1 of FTL Alg. 1 (Enc, Dec frozen): an optimizer over the labels moves R and FC only.
    tx = optax.multi_transform(
        {
            "enc": optax.set_to_zero(),
            "dec": optax.set_to_zero(),
            "filter": optax.sgd(1.0),
            "fc": optax.sgd(1.0),
        },
        labels,
    )
    new = one_update(tx, params)
    changed = {k for k in params if max_abs(jax.tree.map(np.subtract, new[k], params[k])) > 0}
    assert changed == {"filter", "fc"}
    # Training mode updates the BN statistics of Enc and Dec only.
    _, updates = jax.eval_shape(
        functools.partial(model.apply, train=True, method="forward_all", mutable=["batch_stats"]),
        variables,
        x,
    )
    assert set(updates["batch_stats"]) == {"enc", "dec"}


def test_ftl_iresnet_trunk():
    model = ftl(
        trunk="iresnet",
        trunk_kwargs=dict(layers=[1, 1, 1, 1], base_width=4),
        num_classes=3,
        **FTL_TINY,
    )
    variables = abstract_variables(model)
    assert {"conv1", "layer1_0", "fc", "features"} <= set(variables["params"]["enc"])
    assert variables["params"]["enc"]["fc"]["kernel"].shape == (4 * 8 * 2 * 2, 320)
    assert variables["params"]["dec"]["fc"]["kernel"].shape == (320, 8 * (32 // 4) ** 2)
    shapes = jax.eval_shape(
        lambda v, x: model.apply(v, x, method="forward_all"),
        variables,
        jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
    )
    assert shapes["g"].shape == (2, 320) and shapes["reconstruction"].shape == (2, 32, 32, 3)
    assert get_model("ftl", trunk="iresnet", trunk_kwargs=dict(depth=18)).trunk_kwargs == (
        ("depth", 18),
    )


def test_ftl_errors(ftl_setup):
    model, variables, _ = ftl_setup
    with pytest.raises(ValueError, match="trunk must be one of"):
        ftl(trunk="vgg")
    with pytest.raises(ValueError, match="may not set"):
        ftl(trunk="iresnet", trunk_kwargs=dict(embedding_dim=128))
    with pytest.raises(ValueError, match="multiple of 16"):
        ftl(trunk="iresnet", input_size=100)
    with pytest.raises(ValueError, match="only apply to trunk='iresnet'"):
        ftl(trunk_kwargs=dict(depth=18))
    with pytest.raises(ValueError, match=r"expects \[B, 16, 16, 3\]"):
        model.apply(variables, jnp.zeros((1, 28, 28, 3)), method="encode")
    no_fc = ftl(**FTL_TINY)
    with pytest.raises(ValueError, match="no classifier"):
        no_fc.apply(random_variables(no_fc), jnp.zeros((1, 320)), method="classify")
