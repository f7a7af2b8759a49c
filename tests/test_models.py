"""Backbone tests: layouts (parameter counts, PyTorch references), shapes, BN modes, bf16."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfrjax.models import (
    dummy_input,
    get_model,
    iresnet,
    iresnet_config_from_torch_state_dict,
    iresnet_params_from_torch_state_dict,
    lightcnn29v2,
    lightcnn_config_from_torch_state_dict,
    lightcnn_params_from_torch_state_dict,
    list_models,
    mobilefacenet,
    register_model,
)

try:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is an optional test dependency
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")

# Tiny configurations: fast on CPU but structurally complete (every stage, a
# downsampling and a plain block, GDC over a 2x2 map, fc after a 2x2 map).
TINY = {
    "iresnet": dict(layers=(1, 2, 1, 1), base_width=8, embedding_dim=16, input_size=32),
    "mobilefacenet": dict(blocks=(1, 2, 2, 1), width_mult=0.125, embedding_dim=16, input_size=32),
    "lightcnn29v2": dict(
        layers=(1, 2, 1, 1), channels=(8, 12, 16, 8, 8), embedding_dim=16, input_size=32
    ),
}
TINY["ir18"] = dict(base_width=8, embedding_dim=16, input_size=32)
TINY["ir34"] = TINY["ir50"] = TINY["ir100"] = TINY["ir18"]


def n_params(variables) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def abstract_init(model):
    return jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), dummy_input(model)
    )


def fast_init(model, seed=0):
    """Random variables without running flax's initialisers.

    Compiling threefry for every parameter dominates CPU test time, so draw from numpy into
    the abstract variable tree instead: kernels ~ N(0, 1/fan_in), BN scales ~ 1 + N(0, .1),
    PReLU slopes ~ U(0, .5), biases and running means ~ N(0, .1), running vars ~ U(.5, 1.5).
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.1 * rng.normal(size=shape)
        elif name == "alpha":
            value = rng.uniform(0.0, 0.5, size=shape)
        elif name == "var":
            value = rng.uniform(0.5, 1.5, size=shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_init(model))


@functools.lru_cache(maxsize=None)
def jit_apply(model, train: bool):
    """One compiled forward per (model, mode), shared by all tests (modules are hashable)."""
    if train:
        return jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    return jax.jit(functools.partial(model.apply, train=False))


def tiny_input(model, batch=4, seed=1):
    shape = (batch, model.input_size, model.input_size, model.in_channels)
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


# --------------------------------------------------------------------------- registry


def test_registry_lists_all_backbones():
    names = set(list_models())
    assert {"iresnet", "ir18", "ir34", "ir50", "ir100", "mobilefacenet", "lightcnn29v2"} <= names
    with pytest.raises(KeyError, match="unknown model"):
        get_model("resnet-does-not-exist")
    with pytest.raises(ValueError, match="already registered"):
        register_model("ir50")(lambda **kw: None)
    model = get_model("ir18", embedding_dim=128)
    assert model.layers == (2, 2, 2, 2) and model.embedding_dim == 128


# ------------------------------------------------------------------ parameter counts

# Exact counts of this implementation (cross-checked against the PyTorch reference below).
IRESNET_COUNTS = {18: 24_025_088, 34: 34_138_816, 50: 43_590_336, 100: 65_155_648}
# Published in seed 1, Table 2 (millions, 2 decimals). IR100's 65,155,648 sits 648 params
# above the 65.155M rounding boundary, so it prints as 65.16 (65.15 if truncated); the paper's
# 65.15 is matched to its precision, not digit for digit.
PUBLISHED_M = {18: 24.03, 50: 43.59, 100: 65.15}


@pytest.mark.parametrize("depth", [18, 34, 50, 100])
def test_iresnet_param_counts(depth):
    count = n_params(abstract_init(get_model(f"ir{depth}")))
    assert count == IRESNET_COUNTS[depth]
    if depth in PUBLISHED_M:
        assert abs(count / 1e6 - PUBLISHED_M[depth]) < 0.01


def test_other_backbone_param_counts():
    # LightCNN-29v2 without its training classifier fc2: 10.48M, as in seed 1's Table 2.
    assert n_params(abstract_init(lightcnn29v2())) == 10_475_872
    assert round(10_475_872 / 1e6, 2) == 10.48
    # arcface_torch get_mbf(num_features=512): cross-checked against the torch reference.
    assert n_params(abstract_init(mobilefacenet())) == 2_059_520


def test_iresnet_head_bn_scale_is_not_a_parameter():
    variables = abstract_init(iresnet(**TINY["iresnet"]))
    assert set(variables["params"]["features"]) == {"bias"}
    assert set(variables["batch_stats"]["features"]) == {"mean", "var"}


# -------------------------------------------------------------------- output shapes


@pytest.mark.parametrize("name", ["iresnet", "ir18", "mobilefacenet", "lightcnn29v2"])
def test_tiny_forward_shapes(name):
    model = get_model(name, **TINY[name])
    out = jit_apply(model, False)(fast_init(model), tiny_input(model))
    assert out.shape == (4, 16) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize(
    "name, shape",
    [
        ("ir18", (2, 512)),
        ("ir34", (2, 512)),
        ("ir50", (2, 512)),
        ("ir100", (2, 512)),
        ("mobilefacenet", (2, 512)),
        ("lightcnn29v2", (2, 256)),
    ],
)
def test_full_size_output_shapes(name, shape):
    model = get_model(name)
    variables = abstract_init(model)
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), variables, dummy_input(model, 2)
    )
    assert out.shape == shape and out.dtype == jnp.float32
    assert model.input_size == (128 if name == "lightcnn29v2" else 112)


def test_wrong_input_shape_is_rejected():
    model = iresnet(**TINY["iresnet"])
    with pytest.raises(AssertionError):
        jax.eval_shape(
            functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 48, 48, 3))
        )


# ---------------------------------------------------------------- BN train vs eval


@pytest.mark.parametrize("name", ["iresnet", "mobilefacenet"])
def test_train_and_eval_batchnorm_differ(name):
    model = get_model(name, **TINY[name])
    x = tiny_input(model)
    variables = fast_init(model)
    eval_out = jit_apply(model, False)(variables, x)
    train_out, updates = jit_apply(model, True)(variables, x)
    assert not np.allclose(eval_out, train_out, atol=1e-3)
    moved = jax.tree.map(
        lambda a, b: not np.allclose(a, b), variables["batch_stats"], updates["batch_stats"]
    )
    assert all(jax.tree.leaves(moved))
    # Eval mode is deterministic and leaves the running statistics alone.
    np.testing.assert_array_equal(jit_apply(model, False)(variables, x), eval_out)


def test_dropout_is_active_only_in_training():
    model = iresnet(**TINY["iresnet"], dropout=0.4)
    variables, x = fast_init(model), tiny_input(model)
    train = jax.jit(
        lambda v, x, key: model.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )[0]
    )
    assert not np.allclose(
        train(variables, x, jax.random.key(1)), train(variables, x, jax.random.key(2))
    )


# ----------------------------------------------------------------------------- bf16


@pytest.mark.parametrize("name", ["iresnet", "mobilefacenet", "lightcnn29v2"])
def test_bf16_compute_matches_f32(name):
    f32 = get_model(name, **TINY[name])
    bf16 = get_model(name, **TINY[name], dtype=jnp.bfloat16)
    variables, x = fast_init(f32), tiny_input(f32)
    # Same parameter tree, parameters stay float32.
    bf16_vars = abstract_init(bf16)
    assert jax.tree.structure(bf16_vars) == jax.tree.structure(variables)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_vars))
    ref = np.asarray(jit_apply(f32, False)(variables, x))
    out = jit_apply(bf16, False)(variables, x)
    assert out.dtype == jnp.float32
    out = np.asarray(out)
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    cos = np.sum(out * ref, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert rel < 0.05 and cos.min() > 0.995, (rel, cos)


# ------------------------------------------------------ PyTorch reference: IResNet

if torch is not None:
    from hfrjax.models.torch_reference import (  # noqa: F401
        TorchConvBlock,
        TorchDepthWise,
        TorchIBasicBlock,
        TorchIResNet,
        TorchMobileFaceNet,
        randomize_torch,
    )


@needs_torch
@pytest.mark.parametrize("depth", [18, 34, 50, 100])
def test_iresnet_param_count_matches_torch_reference(depth):
    from hfrjax.models import IRESNET_LAYERS

    with torch.device("meta"):
        ref = TorchIResNet(IRESNET_LAYERS[depth])
    trainable = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert trainable == IRESNET_COUNTS[depth]


@needs_torch
def test_mobilefacenet_param_count_matches_torch_reference():
    with torch.device("meta"):
        ref = TorchMobileFaceNet()
    assert sum(p.numel() for p in ref.parameters()) == n_params(abstract_init(mobilefacenet()))


@needs_torch
def test_iresnet_matches_torch_reference():
    cfg = TINY["iresnet"]
    torch.manual_seed(0)
    ref = randomize_torch(
        TorchIResNet(cfg["layers"], cfg["base_width"], cfg["embedding_dim"], cfg["input_size"])
    )
    # Checkpoints saved from DataParallel carry a "module." prefix.
    state_dict = {f"module.{k}": v for k, v in ref.state_dict().items()}
    assert iresnet_config_from_torch_state_dict(state_dict) == dict(cfg, in_channels=3)
    variables = iresnet_params_from_torch_state_dict(state_dict)
    model = iresnet(**cfg)

    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    ref.eval()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    out = np.asarray(jit_apply(model, False)(variables, jnp.asarray(x)))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)

    # Train mode: batch statistics and torch-momentum-0.1 running means agree too.
    ref.train()
    with torch.no_grad():
        expected_train = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    out_train, updates = jit_apply(model, True)(variables, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out_train), expected_train, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(updates["batch_stats"]["layer2_1"]["bn2"]["mean"]),
        ref.layer2[1].bn2.running_mean.numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


@needs_torch
def test_iresnet_converter_rejects_mismatched_state_dict():
    cfg = TINY["iresnet"]
    sd = TorchIResNet(
        cfg["layers"], cfg["base_width"], cfg["embedding_dim"], cfg["input_size"]
    ).state_dict()
    bad = dict(sd)
    del bad["layer3.0.conv1.weight"]
    with pytest.raises(ValueError, match="missing torch key 'layer3.0.conv1.weight'"):
        iresnet_params_from_torch_state_dict(bad, iresnet(**cfg))
    extra = dict(sd, **{"head.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="unexpected torch keys"):
        iresnet_params_from_torch_state_dict(extra, iresnet(**cfg))


# ---------------------------------------------------- PyTorch reference: LightCNN-29v2

if torch is not None:

    class TorchMFM(tnn.Module):
        def __init__(self, cin, cout, k=3, s=1, p=1, linear=False):
            super().__init__()
            self.cout = cout
            self.filter = (
                tnn.Linear(cin, 2 * cout) if linear else tnn.Conv2d(cin, 2 * cout, k, s, p)
            )

        def forward(self, x):
            a, b = torch.split(self.filter(x), self.cout, 1)
            return torch.max(a, b)

    class TorchGroup(tnn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv_a = TorchMFM(cin, cin, 1, 1, 0)
            self.conv = TorchMFM(cin, cout, 3, 1, 1)

        def forward(self, x):
            return self.conv(self.conv_a(x))

    class TorchResBlock(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = TorchMFM(c, c)
            self.conv2 = TorchMFM(c, c)

        def forward(self, x):
            return self.conv2(self.conv1(x)) + x

    class TorchLightCNN29v2(tnn.Module):
        """Official network_29layers_v2 layout, written from its description."""

        def __init__(
            self,
            layers=(1, 2, 3, 4),
            channels=(48, 96, 192, 128, 128),
            num_classes=100,
            input_size=128,
        ):
            super().__init__()
            self.conv1 = TorchMFM(1, channels[0], 5, 1, 2)
            for s in range(4):
                blocks = [TorchResBlock(channels[s]) for _ in range(layers[s])]
                setattr(self, f"block{s + 1}", tnn.Sequential(*blocks))
                setattr(self, f"group{s + 1}", TorchGroup(channels[s], channels[s + 1]))
            side = input_size // 16
            self.fc = tnn.Linear(side * side * channels[4], 256)
            self.fc2 = tnn.Linear(256, num_classes, bias=False)

        @staticmethod
        def pool(x):
            return F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)

        def forward(self, x):
            x = self.pool(self.conv1(x))
            x = self.pool(self.group1(self.block1(x)))
            x = self.pool(self.group2(self.block2(x)))
            x = self.group3(self.block3(x))
            x = self.pool(self.group4(self.block4(x)))
            fc = self.fc(torch.flatten(x, 1))
            return self.fc2(fc), fc


@needs_torch
def test_lightcnn_matches_torch_reference():
    cfg = TINY["lightcnn29v2"]
    torch.manual_seed(0)
    ref = TorchLightCNN29v2(
        cfg["layers"], cfg["channels"], num_classes=7, input_size=cfg["input_size"]
    ).eval()
    state_dict = {f"module.{k}": v for k, v in ref.state_dict().items()}
    config = lightcnn_config_from_torch_state_dict(state_dict)
    assert config == dict(
        layers=(1, 2, 1, 1),
        channels=(8, 12, 16, 8, 8),
        embedding_dim=256,
        input_size=32,
        in_channels=1,
    )
    variables, classifier = lightcnn_params_from_torch_state_dict(
        state_dict, return_classifier=True
    )
    np.testing.assert_array_equal(classifier, ref.fc2.weight.detach().numpy())

    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 1)).astype(np.float32)
    with torch.no_grad():
        _, expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    out = jit_apply(lightcnn29v2(**config), False)(variables, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), expected.numpy(), rtol=1e-4, atol=1e-4)


@needs_torch
def test_lightcnn_full_size_state_dict_converts():
    """Official-size checkpoint layout (8x8x128 flatten, fc2 classifier) converts cleanly."""
    with torch.no_grad():
        ref = TorchLightCNN29v2(num_classes=10)
    variables = lightcnn_params_from_torch_state_dict(
        {f"module.{k}": v for k, v in ref.state_dict().items()}
    )
    assert n_params(variables) == 10_475_872
    fc = variables["params"]["fc"]["kernel"]
    assert fc.shape == (8 * 8 * 128, 256)
    # flax row (h, w, c) <- torch column c*64 + h*8 + w
    h, w, c = 2, 5, 7
    np.testing.assert_array_equal(
        fc[(h * 8 + w) * 128 + c], ref.fc.weight.detach().numpy()[:, c * 64 + h * 8 + w]
    )


@pytest.mark.parametrize(
    "kernel,stride,padding,groups,c_in,c_out",
    [
        ((3, 3), 1, 1, 8, 8, 8),  # Depthwise.
        ((3, 3), 2, 1, 8, 8, 8),  # Depthwise, strided.
        ((3, 3), 1, 1, 4, 8, 8),  # Grouped, 2 channels per group (MobileFaceNet's stem_dw).
        ((7, 7), 1, 0, 6, 6, 6),  # GDC: the kernel spans the whole map.
    ],
)
def test_grouped_conv_shifts_equals_xla_grouped_conv(kernel, stride, padding, groups, c_in, c_out):
    from hfrjax.models.layers import grouped_conv_shifts, torch_padding

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 7, c_in)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel, c_in // groups, c_out)), jnp.float32)
    want = jax.lax.conv_general_dilated(
        x,
        k,
        (stride, stride),
        torch_padding(padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST,
    )
    # Jitted: one compilation instead of an eager dispatch per tap (kh x kw slices).
    shifts = jax.jit(grouped_conv_shifts, static_argnums=(2, 3, 4))
    got = shifts(x, k, stride, padding, groups)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    # Gradients agree too (the reason for the shifts form is a fast backward pass on CPU).
    def f(fn):
        return jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.sin(fn(a, b))), argnums=(0, 1)))

    g_want = f(
        lambda a, b: jax.lax.conv_general_dilated(
            a,
            b,
            (stride, stride),
            torch_padding(padding),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
            precision=jax.lax.Precision.HIGHEST,
        )
    )(x, k)
    g_got = f(lambda a, b: grouped_conv_shifts(a, b, stride, padding, groups))(x, k)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_mobilefacenet_impls_share_parameters_and_outputs():
    from hfrjax.models.layers import GroupedConv

    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
    a = get_model(
        "mobilefacenet", width_mult=0.25, embedding_dim=16, input_size=32, grouped_impl="conv"
    )
    b = get_model(
        "mobilefacenet", width_mult=0.25, embedding_dim=16, input_size=32, grouped_impl="shifts"
    )
    # The same variable tree (names, shapes, dtypes), so checkpoints load into either.
    sa, sb = abstract_init(a), abstract_init(b)
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    assert jax.tree.leaves(sa) == jax.tree.leaves(sb)
    # The same initial values: the impl only changes GroupedConv's forward, so compare its
    # initialisation directly (a full flax init compiles threefry per parameter: ~20 s on CPU).
    y = x[..., :2].repeat(4, -1)  # 8 channels: depthwise (8 groups) and 2-per-group (4).
    for groups in (8, 4):
        layer = lambda impl: GroupedConv(8, (3, 3), groups, padding=1, impl=impl)  # noqa: E731
        va = layer("conv").init(jax.random.key(0), y)
        vb = layer("shifts").init(jax.random.key(0), y)
        np.testing.assert_array_equal(va["params"]["kernel"], vb["params"]["kernel"])
        np.testing.assert_allclose(
            layer("conv").apply(va, y), layer("shifts").apply(va, y), rtol=1e-4, atol=1e-4
        )
    # The same outputs from the same variables, through the whole network.
    v = fast_init(a)
    np.testing.assert_allclose(
        jit_apply(a, False)(v, x), jit_apply(b, False)(v, x), rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow  # About 40 s on 2 cores; CI runs it with -m slow.
def _train_mode_sum_of_squares(model, batch_stats):
    """loss(params, x): sum of squared train-mode embeddings (BN on batch statistics)."""

    def loss(params, x):
        variables = {"params": params, "batch_stats": batch_stats}
        out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out**2)

    return loss


def test_iresnet_remat_keeps_parameters_outputs_and_gradients():
    kw = dict(layers=[1, 1, 1, 1], base_width=4, input_size=16, embedding_dim=8)
    plain, remat = get_model("iresnet", **kw), get_model("iresnet", remat=True, **kw)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
    v = plain.init(jax.random.key(0), x, train=False)
    assert jax.tree.structure(v) == jax.tree.structure(remat.init(jax.random.key(0), x))

    g1 = jax.jit(jax.grad(_train_mode_sum_of_squares(plain, v["batch_stats"])))(v["params"], x)
    g2 = jax.jit(jax.grad(_train_mode_sum_of_squares(remat, v["batch_stats"])))(v["params"], x)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_iresnet_tiny_map_stride_path_keeps_outputs_and_gradients(monkeypatch):
    """Stride-2 convs on maps <= iresnet.TINY_MAP run at stride 1 and are subsampled (an
    XLA:CPU workaround); outputs and gradients must equal the strided conv's."""
    import importlib

    iresnet_lib = importlib.import_module("hfrjax.models.iresnet")

    # Last stage 4x4 -> 2x2; TINY_MAP = 8 also sends stage 3 (8x8 -> 4x4) down the path.
    kw = dict(layers=[1, 1, 1, 1], base_width=4, input_size=32, embedding_dim=8)
    model = get_model("iresnet", **kw)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32, 3)), jnp.float32)
    v = model.init(jax.random.key(0), x, train=False)
    loss = _train_mode_sum_of_squares(model, v["batch_stats"])
    results = []
    for tiny in (8, 0):  # 8: every map <= 8x8 takes the path; 0: none does.
        monkeypatch.setattr(iresnet_lib, "TINY_MAP", tiny)
        results.append(jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(v["params"], x))
    (l1, g1), (l2, g2) = results
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_init_backbone_unoptimised_initialisers_match_the_optimised_build():
    """state.init_backbone compiles initialisers at LLVM level 0 on CPU (they run once): the
    values must equal the default build's to float rounding, and be deterministic."""
    from hfrjax.train import state as state_lib

    bb = get_model("iresnet", layers=(1, 1, 1, 1), base_width=4, embedding_dim=8, input_size=16)
    params, stats = state_lib.init_backbone(bb, jax.random.key(3))
    again, _ = state_lib.init_backbone(bb, jax.random.key(3))
    x = jnp.zeros((2, 16, 16, 3))
    ref = jax.jit(lambda r: bb.init({"params": r, "dropout": r}, x, train=False))(jax.random.key(3))
    assert state_lib.init_compiler_options() == {"xla_backend_optimization_level": 0}
    assert jax.tree.structure(params) == jax.tree.structure(ref["params"])
    for a, b, c in zip(*(jax.tree.leaves(t) for t in (params, ref["params"], again))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a, c)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(ref["batch_stats"])):
        np.testing.assert_array_equal(a, b)
