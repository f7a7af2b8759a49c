"""Loss tests against independent float64 numpy (and, if available, PyTorch) references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hfrjax.losses import (
    MARGIN_PRESETS,
    NormalizedClassifier,
    class_mean_rows,
    classifier_params_from_rows,
    combined_margin_logits,
    cosine_logits,
    freeze,
    freeze_labels,
    get_margin_preset,
    l2_sp_regularizer,
    margin_softmax_loss,
    margin_softmax_loss_from_cosine,
    margin_target,
    ml2_regularizer,
    rows_initializer,
)

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

# (s, m1, m2, m3): ArcFace, CosFace, InsightFace combined, SphereFace-style m1 > 1 and m1 < 1.
CONFIGS = {
    "arcface": (64.0, 1.0, 0.5, 0.0),
    "cosface": (64.0, 1.0, 0.0, 0.4),
    "combined": (64.0, 1.0, 0.3, 0.2),
    "sphere_m1_1.35": (32.0, 1.35, 0.0, 0.0),
    "m1_0.9_combined": (64.0, 0.9, 0.4, 0.15),
    "sphere_m1_4": (16.0, 4.0, 0.0, 0.0),
}


# ---------------------------------------------------------- float64 numpy reference


def np_target(cos, m1, m2, m3):
    """Independent reference, written in terms of the angle theta = arccos(cos)."""
    cos = np.clip(np.asarray(cos, np.float64), -1.0, 1.0)
    theta = np.arccos(cos)
    theta_star = (math.pi - m2) / m1  # where m1*theta + m2 reaches pi
    if theta_star >= math.pi:
        out = np.cos(m1 * theta + m2)
    elif m1 == 1.0:  # InsightFace ArcFace: th = cos(pi - m), mm = sin(pi - m) * m
        out = np.where(theta < math.pi - m2, np.cos(theta + m2), cos - math.sin(math.pi - m2) * m2)
    else:
        mm = max(math.sin(theta_star) * (math.pi - theta_star), 1.0 + math.cos(theta_star))
        out = np.where(theta < theta_star, np.cos(m1 * theta + m2), cos - mm)
    return out - m3


def np_normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_logits(emb, weights, labels, s, m1, m2, m3):
    cos = np_normalize(emb) @ np_normalize(weights).T
    logits = s * cos
    rows = np.arange(len(labels))
    logits[rows, labels] = s * np_target(cos[rows, labels], m1, m2, m3)
    return logits


def np_loss(emb, weights, labels, s, m1, m2, m3):
    logits = np_logits(emb, weights, labels, s, m1, m2, m3)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def make_batch(seed=0, batch=8, dim=16, classes=12, hard=True):
    """Random batch; with ``hard`` half of the samples point *away* from their class row,
    so cos(theta_y) is close to -1 and theta_y + m > pi (the ArcFace fallback branch)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(batch, dim)).astype(np.float32) * 3.0
    weights = rng.normal(size=(classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, size=batch).astype(np.int32)
    labels[: batch // 2] = np.arange(batch // 2)  # distinct classes for the hard half
    if hard:
        for i in range(batch // 2):
            weights[labels[i]] = -emb[i] / 3.0 + 0.05 * i * rng.normal(size=dim)
    return emb, weights, labels


def test_batch_exercises_the_fallback_branch():
    emb, weights, labels = make_batch()
    cos_y = (np_normalize(emb) @ np_normalize(weights).T)[np.arange(len(labels)), labels]
    assert (cos_y < math.cos(math.pi - 0.5)).sum() >= 3  # ArcFace th
    assert (cos_y > 0).sum() + (cos_y < 0).sum() == len(labels)


# ------------------------------------------------------------------------ forward


@pytest.mark.parametrize("name", list(CONFIGS))
def test_margin_loss_matches_numpy(name):
    s, m1, m2, m3 = CONFIGS[name]
    emb, weights, labels = make_batch()
    loss, logits = margin_softmax_loss(
        emb, weights, labels, s=s, m1=m1, m2=m2, m3=m3, return_logits=True
    )
    assert loss.dtype == jnp.float32 and logits.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(logits), np_logits(emb, weights, labels, s, m1, m2, m3), rtol=1e-5, atol=2e-4
    )
    np.testing.assert_allclose(
        float(loss), np_loss(emb, weights, labels, s, m1, m2, m3), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_margin_target_matches_numpy_and_is_monotone(name):
    _, m1, m2, m3 = CONFIGS[name]
    cos = np.linspace(-1.0, 1.0, 20001)
    out = np.asarray(margin_target(jnp.asarray(cos, jnp.float32), m1, m2, m3), np.float64)
    np.testing.assert_allclose(out, np_target(cos.astype(np.float32), m1, m2, m3), atol=2e-5)
    # Non-decreasing in cos(theta) (i.e. non-increasing in theta) over the whole range.
    assert np.all(np.diff(out) >= -1e-5)
    assert np.isfinite(out).all()


def test_arcface_fallback_is_insightface_formula():
    m = 0.5
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    cos = jnp.asarray([th + 1e-3, th - 1e-3, -1.0, 0.3], jnp.float32)
    out = np.asarray(margin_target(cos, 1.0, m, 0.0))
    np.testing.assert_allclose(out[0], math.cos(math.acos(th + 1e-3) + m), atol=1e-5)
    np.testing.assert_allclose(out[1:3], np.asarray(cos[1:3]) - mm, atol=1e-6)
    np.testing.assert_allclose(out[3], math.cos(math.acos(0.3) + m), atol=1e-6)


def test_cosface_and_plain_logits():
    emb, weights, labels = make_batch(hard=False)
    cos = np.asarray(cosine_logits(emb, weights))
    logits = np.asarray(combined_margin_logits(jnp.asarray(cos), labels, 64.0, 1.0, 0.0, 0.4))
    expected = 64.0 * cos
    expected[np.arange(len(labels)), labels] -= 64.0 * 0.4
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-5)
    # No margin at all == normalised softmax.
    plain = np.asarray(combined_margin_logits(jnp.asarray(cos), labels, 10.0, 1.0, 0.0, 0.0))
    np.testing.assert_allclose(plain, 10.0 * cos, rtol=1e-6)


def test_presets():
    assert get_margin_preset("arcface").as_kwargs() == dict(s=64.0, m1=1.0, m2=0.5, m3=0.0)
    assert get_margin_preset("cosface").as_kwargs() == dict(s=64.0, m1=1.0, m2=0.0, m3=0.4)
    assert get_margin_preset("rethinking_pretrain").as_kwargs() == dict(
        s=64.0, m1=1.0, m2=0.0, m3=0.4
    )
    assert get_margin_preset("rethinking_finetune").m3 == 0.6
    assert get_margin_preset("rethinking_finetune_lightcnn").m3 == 0.8
    with pytest.raises(KeyError):
        get_margin_preset("nope")
    emb, weights, labels = make_batch()
    for cfg in MARGIN_PRESETS.values():
        assert np.isfinite(float(margin_softmax_loss(emb, weights, labels, **cfg.as_kwargs())))


# ------------------------------------------------------------------------ gradients


def _np_grad_fd(fun, x, eps=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (fun(plus) - fun(minus)) / (2 * eps)
    return grad


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphere_m1_1.35"])
def test_margin_loss_gradient_matches_finite_differences(name):
    s, m1, m2, m3 = CONFIGS[name]
    emb, weights, labels = make_batch(batch=6, dim=5, classes=7)
    emb64, w64 = emb.astype(np.float64), weights.astype(np.float64)
    g_emb, g_w = jax.grad(
        lambda e, w: margin_softmax_loss(e, w, labels, s=s, m1=m1, m2=m2, m3=m3), argnums=(0, 1)
    )(jnp.asarray(emb), jnp.asarray(weights))
    fd_emb = _np_grad_fd(lambda e: np_loss(e, w64, labels, s, m1, m2, m3), emb64)
    fd_w = _np_grad_fd(lambda w: np_loss(emb64, w, labels, s, m1, m2, m3), w64)
    scale = max(np.abs(fd_emb).max(), np.abs(fd_w).max())
    np.testing.assert_allclose(np.asarray(g_emb), fd_emb, atol=2e-4 * scale, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(g_w), fd_w, atol=2e-4 * scale, rtol=1e-3)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("name", ["arcface", "cosface", "combined"])
def test_margin_loss_gradient_matches_torch(name):
    """Against a float64 torch version of InsightFace's ArcFace/CosFace (th/sinmm form)."""
    s, m1, m2, m3 = CONFIGS[name]
    emb, weights, labels = make_batch(batch=8, dim=16, classes=12)
    e = torch.tensor(emb, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(weights, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels, dtype=torch.long)
    cos = torch.nn.functional.normalize(e) @ torch.nn.functional.normalize(w).T
    rows = torch.arange(len(labels))
    target = cos[rows, y]
    if m2 > 0:
        sin = torch.sqrt(1.0 - target**2)
        cos_m = target * math.cos(m2) - sin * math.sin(m2)
        target = torch.where(
            target > math.cos(math.pi - m2), cos_m, target - math.sin(math.pi - m2) * m2
        )
    target = target - m3
    logits = cos.clone()
    logits[rows, y] = target
    loss = torch.nn.functional.cross_entropy(s * logits, y)
    loss.backward()

    value, grads = jax.value_and_grad(
        lambda e, w: margin_softmax_loss(e, w, labels, s=s, m1=m1, m2=m2, m3=m3), argnums=(0, 1)
    )(jnp.asarray(emb), jnp.asarray(weights))
    np.testing.assert_allclose(float(value), loss.item(), rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, (e.grad.numpy(), w.grad.numpy())):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_gradients_finite_at_cos_plus_minus_one():
    """cos = +-1 exactly (sin = 0): sqrt/arccos slopes are infinite there."""
    cos = jnp.asarray([-1.0, -0.9999999, 0.0, 0.9999999, 1.0], jnp.float32)

    @jax.jit
    def all_grads(c):  # one compilation for every config
        return {
            name: jax.vmap(jax.grad(lambda x, m=cfg[1:]: margin_target(x, *m)))(c)
            for name, cfg in CONFIGS.items()
        }

    for name, grads in all_grads(cos).items():
        assert np.isfinite(np.asarray(grads)).all(), name
    # End to end: embeddings exactly on / opposite to their class rows.
    emb = np.eye(4, dtype=np.float32)
    weights = np.concatenate([np.eye(4), -np.eye(4)]).astype(np.float32)
    labels = jnp.asarray([0, 1, 6, 7])
    grads = jax.grad(lambda e, w: margin_softmax_loss(e, w, labels), argnums=(0, 1))(emb, weights)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


# ------------------------------------------------------------------- dtype, labels


def test_bf16_inputs_give_float32_loss_close_to_f32():
    emb, weights, labels = make_batch(hard=False)
    ref = float(margin_softmax_loss(emb, weights, labels))
    loss = margin_softmax_loss(
        jnp.asarray(emb, jnp.bfloat16), jnp.asarray(weights, jnp.bfloat16), labels
    )
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), ref, rtol=3e-2)
    loss_bf16_matmul = margin_softmax_loss(emb, weights, labels, matmul_dtype=jnp.bfloat16)
    assert loss_bf16_matmul.dtype == jnp.float32
    np.testing.assert_allclose(float(loss_bf16_matmul), ref, rtol=3e-2)


def test_large_scale_is_numerically_stable():
    emb, weights, labels = make_batch(hard=False)
    loss = margin_softmax_loss(emb, weights, labels, s=1e4, m2=0.5)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(
        float(loss), np_loss(emb, weights, labels, 1e4, 1.0, 0.5, 0.0), rtol=1e-4
    )


def test_out_of_range_labels_raise_eagerly_and_give_nan_under_jit():
    emb, weights, labels = make_batch(classes=12)
    for bad_value in (-1, 12):
        bad = labels.copy()
        bad[3] = bad_value
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 12\)"):
            margin_softmax_loss(emb, weights, bad)
        jitted = jax.jit(lambda e, w, y: margin_softmax_loss(e, w, y))
        assert np.isnan(float(jitted(emb, weights, bad)))
    with pytest.raises(TypeError, match="integers"):
        margin_softmax_loss(emb, weights, labels.astype(np.float32))
    # A [D, C] weight matrix (wrong layout) is caught by the shape check.
    with pytest.raises(AssertionError):
        margin_softmax_loss(emb, weights.T, labels)


def test_loss_from_cosine_and_classifier_agree():
    emb, weights, labels = make_batch()
    params = {"params": classifier_params_from_rows(weights)}
    cos = NormalizedClassifier(num_classes=weights.shape[0]).apply(params, jnp.asarray(emb))
    assert cos.shape == (len(labels), weights.shape[0]) and cos.dtype == jnp.float32
    assert float(jnp.abs(cos).max()) <= 1.0 + 1e-6
    a = margin_softmax_loss_from_cosine(cos, labels, **get_margin_preset("arcface").as_kwargs())
    b = margin_softmax_loss(emb, weights, labels, **get_margin_preset("arcface").as_kwargs())
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


# ----------------------------------------------------------------------- regularisers


def test_ml2_regularizer_matches_numpy():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(5, 7)).astype(np.float32)
    w = rng.normal(size=(3, 7)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    f64, w64 = f.astype(np.float64), w.astype(np.float64)
    expected = np.mean(
        [np.sum((w64 @ f64[i]) ** 2) for i in range(5)]
    )  # |W^T f|^2, W as [D, C] in the paper
    np.testing.assert_allclose(float(ml2_regularizer(f, w)), expected, rtol=1e-5)
    expected_b = np.mean([np.sum((w64 @ f64[i] + b) ** 2) for i in range(5)])
    np.testing.assert_allclose(float(ml2_regularizer(f, w, b)), expected_b, rtol=1e-5)
    # Not the product of the separate norms.
    assert not np.isclose(float(ml2_regularizer(f, w)), np.mean(np.sum(f64**2, 1)) * np.sum(w64**2))


def test_l2_sp_regularizer_matches_numpy():
    rng = np.random.default_rng(1)
    params = {"a": rng.normal(size=(3, 4)), "b": {"c": rng.normal(size=(5,))}}
    anchor = jax.tree.map(lambda x: x + rng.normal(size=x.shape), params)
    expected = sum(
        np.sum((p - a) ** 2) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor))
    )
    np.testing.assert_allclose(float(l2_sp_regularizer(params, anchor)), expected, rtol=1e-5)


# -------------------------------------------------------------- classifier / freezing


def test_class_mean_rows():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(20, 6)).astype(np.float32)
    labels = np.repeat(np.arange(4), 5)
    rows = np.asarray(class_mean_rows(emb, labels, 4))
    expected = np_normalize(np.stack([emb[labels == c].mean(0) for c in range(4)]))
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
    rows_n = np.asarray(class_mean_rows(emb, labels, 4, normalize_inputs=True))
    expected_n = np_normalize(np.stack([np_normalize(emb[labels == c]).mean(0) for c in range(4)]))
    np.testing.assert_allclose(rows_n, expected_n, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no samples"):
        class_mean_rows(emb, labels, 5)


def test_frozen_classifier_is_bit_identical_after_updates():
    """MEC/SSC fine-tuning: a frozen classifier initialised from given rows never moves,
    even with momentum and decoupled weight decay in the optimizer, while the rest trains."""
    rng = np.random.default_rng(3)
    rows = class_mean_rows(rng.normal(size=(24, 8)), np.repeat(np.arange(6), 4), 6)
    params = {
        "backbone": {"kernel": jnp.asarray(rng.normal(size=(10, 8)), jnp.float32)},
        "head": classifier_params_from_rows(rows),
    }
    before = jax.tree.map(np.array, params)
    x = jnp.asarray(rng.normal(size=(12, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 6, size=12))

    def loss_fn(p):
        cos = NormalizedClassifier(6).apply({"params": p["head"]}, x @ p["backbone"]["kernel"])
        return margin_softmax_loss_from_cosine(cos, labels, s=64.0, m1=1.0, m2=0.0, m3=0.6)

    tx = freeze(
        optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9)), ["head"]
    )
    state = tx.init(params)
    step = jax.jit(lambda p, s: _sgd_step(tx, loss_fn, p, s))
    for _ in range(3):
        params, state = step(params, state)

    np.testing.assert_array_equal(
        np.asarray(params["head"]["weight"]).view(np.uint32),
        before["head"]["weight"].view(np.uint32),
    )
    assert not np.allclose(np.asarray(params["backbone"]["kernel"]), before["backbone"]["kernel"])
    # The gradient itself is non-zero: freezing happens in the optimizer, not by accident.
    assert float(jnp.abs(jax.grad(loss_fn)(params)["head"]["weight"]).max()) > 0


def _sgd_step(tx, loss_fn, params, state):
    grads = jax.grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_freeze_labels_paths_and_typos():
    params = {"backbone": {"conv": {"kernel": 1.0}}, "head": {"weight": 2.0}}
    assert freeze_labels(params, ["head"]) == {
        "backbone": {"conv": {"kernel": "trainable"}},
        "head": {"weight": "frozen"},
    }
    assert freeze_labels(params, "backbone/conv") == {
        "backbone": {"conv": {"kernel": "frozen"}},
        "head": {"weight": "trainable"},
    }
    assert freeze_labels(params, lambda path: path[-1] == "weight")["head"]["weight"] == "frozen"
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze_labels(params, ["classifier"])


def test_rows_initializer_builds_a_classifier_from_rows():
    rows = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    head = NormalizedClassifier(5, weight_init=rows_initializer(rows))
    params = head.init(jax.random.key(0), jnp.zeros((1, 3)))
    np.testing.assert_allclose(
        np.asarray(params["params"]["weight"]), np_normalize(rows), rtol=1e-6
    )
    with pytest.raises(ValueError, match="shape"):
        NormalizedClassifier(4, weight_init=rows_initializer(rows)).init(
            jax.random.key(0), jnp.zeros((1, 3))
        )
