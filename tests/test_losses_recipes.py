"""Recipe losses (TOPLight, SSN, CSAN, FTL) against float64 numpy references, hand-derived
gradients and known values."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hfrjax.losses import (
    JensenShannonCritic,
    LogisticDomainClassifier,
    batch_hard_triplet_loss,
    csan_loss,
    fake_domain_loss,
    ftl_loss,
    grad_reverse,
    identity_consistency_loss,
    information_bottleneck_loss,
    jensen_shannon_mi,
    logistic_domain_loss,
    marginal_permutation,
    mi_critic_loss,
    ml2_regularizer,
    pairwise_euclidean_distances,
    pixel_channel_sparsity,
    pseudo_triplet_loss,
    reconstruction_loss,
    task_oriented_pretraining_loss,
)

# ------------------------------------------------------------------ float64 references


def np_softplus(x):
    x = np.asarray(x, np.float64)
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def np_dist(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def np_batch_hard(emb, labels, margin, modalities=None, cross=False, soft=False, mask=None):
    """Brute force: loop over anchors, collect candidate positives and negatives."""
    n = len(labels)
    d = np_dist(emb, emb)
    mask = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    losses = []
    for a in range(n):
        if not mask[a]:
            continue
        pos, neg = [], []
        for j in range(n):
            if j == a or not mask[j]:
                continue
            if cross and modalities[j] == modalities[a]:
                continue
            (pos if labels[j] == labels[a] else neg).append(d[a, j])
        if not pos or not neg:
            continue
        diff = max(pos) - min(neg)
        losses.append(np_softplus(diff) if soft else max(diff + margin, 0.0))
    return (float(np.mean(losses)) if losses else 0.0), len(losses)


def np_ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    m = logits.max(1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
    return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def np_bce(logits, targets):
    z = np.asarray(logits, np.float64)
    t = np.asarray(targets, np.float64)
    return float(np.mean(t * np_softplus(-z) + (1 - t) * np_softplus(z)))


# ---------------------------------------------------------------- gradient reversal


def test_grad_reverse_is_identity_forward():
    x = jax.random.normal(jax.random.key(0), (3, 4))
    tree = {"a": x, "b": (x * 2, jnp.ones(2, jnp.bfloat16))}
    out = grad_reverse(tree, 0.7)
    np.testing.assert_array_equal(out["a"], x)
    np.testing.assert_array_equal(out["b"][0], x * 2)
    assert out["b"][1].dtype == jnp.bfloat16


@pytest.mark.parametrize("lam", [1.0, 0.25, 3.0])
def test_grad_reverse_backward_is_minus_lambda_times_gradient(lam):
    x = jax.random.normal(jax.random.key(1), (5,))

    # f(x) = sum(sin(2 * GRL(x^2))): forward sum(sin(2 x^2)); by hand the chain rule gives
    # d/dx = -lam * cos(2 x^2) * 2 * 2x (the GRL flips the cotangent reaching x^2).
    def f(x):
        return jnp.sum(jnp.sin(2.0 * grad_reverse(x**2, lam)))

    x64 = np.asarray(x, np.float64)
    np.testing.assert_allclose(f(x), np.sum(np.sin(2 * x64**2)), rtol=1e-5)
    hand = -lam * np.cos(2 * x64**2) * 2.0 * 2.0 * x64
    np.testing.assert_allclose(jax.grad(f)(x), hand, rtol=1e-5, atol=1e-6)
    # Without the GRL the same function has the opposite gradient, scaled by 1/lam.
    plain = jax.grad(lambda x: jnp.sum(jnp.sin(2.0 * x**2)))(x)
    np.testing.assert_allclose(jax.grad(f)(x), -lam * plain, rtol=1e-5, atol=1e-6)


def test_grad_reverse_traced_lambda_and_no_gradient_to_lambda():
    x = jnp.arange(3.0)
    step = jax.jit(jax.grad(lambda x, lam: jnp.sum(3.0 * grad_reverse(x, lam)), argnums=(0, 1)))
    gx, glam = step(x, 0.5)
    np.testing.assert_allclose(gx, [-1.5] * 3)
    assert float(glam) == 0.0
    gx, _ = step(x, 2.0)  # same compiled function, another lambda
    np.testing.assert_allclose(gx, [-6.0] * 3)
    g16 = jax.grad(lambda x: jnp.sum(grad_reverse(x, 2.0)).astype(jnp.float32))(
        jnp.ones(2, jnp.bfloat16)
    )
    assert g16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(g16, np.float32), [-2.0, -2.0])
    with pytest.raises(ValueError, match="scalar"):
        grad_reverse(x, jnp.ones(2))


# ------------------------------------------------------------------ triplet


def test_pairwise_euclidean_distances_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 8)), rng.normal(size=(4, 8))
    np.testing.assert_allclose(pairwise_euclidean_distances(a, b), np_dist(a, b), rtol=1e-5)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_triplet_matches_brute_force(cross, soft):
    rng = np.random.default_rng(10 + 2 * cross + soft)
    fn = jax.jit(
        batch_hard_triplet_loss,
        static_argnames=("margin", "cross_modality", "soft_margin", "return_num_anchors"),
    )
    for trial in range(4):
        n = 24
        emb = rng.normal(size=(n, 6)).astype(np.float32)
        labels = rng.integers(0, 5, n)
        modalities = rng.integers(0, 2, n)
        mask = rng.random(n) > 0.15 if trial % 2 else None
        got, count = fn(
            emb,
            labels,
            margin=0.3,
            modalities=modalities,
            cross_modality=cross,
            soft_margin=soft,
            mask=mask,
            return_num_anchors=True,
        )
        want, want_count = np_batch_hard(emb, labels, 0.3, modalities, cross, soft, mask)
        assert int(count) == want_count
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_batch_hard_triplet_modes_differ_and_edge_cases():
    # Two identities 1 apart, two modalities 3 apart: plain mining finds the negative of the
    # anchor's own modality (distance 1), cross-modality mining only the other modality's
    # (distance ~3.16), so the losses differ.
    emb = np.array([[0, 0], [0.1, 0], [1, 0], [1.1, 0], [0, 3], [0.1, 3], [1, 3], [1.1, 3]], float)
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    modality = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    plain = batch_hard_triplet_loss(emb, labels, margin=0.5, modalities=modality)
    cross = batch_hard_triplet_loss(
        emb, labels, margin=0.5, modalities=modality, cross_modality=True
    )
    want_plain = np_batch_hard(emb, labels, 0.5, modality, False)[0]
    want_cross = np_batch_hard(emb, labels, 0.5, modality, True)[0]
    np.testing.assert_allclose(plain, want_plain, rtol=1e-5)
    np.testing.assert_allclose(cross, want_cross, rtol=1e-5)
    assert float(plain) != pytest.approx(float(cross))
    # No positive anywhere: loss 0 with zero anchors, finite gradients.
    loss, count = batch_hard_triplet_loss(emb[:4:2], labels[:4:2], return_num_anchors=True)
    assert float(loss) == 0.0 and int(count) == 0
    grad = jax.grad(lambda e: batch_hard_triplet_loss(e, labels, margin=0.3))(jnp.asarray(emb))
    assert np.isfinite(np.asarray(grad)).all()
    with pytest.raises(ValueError, match="modalities"):
        batch_hard_triplet_loss(emb, labels, cross_modality=True)
    with pytest.raises(ValueError, match="labels"):
        batch_hard_triplet_loss(emb, labels[:3])


# ------------------------------------------------------------- TOPLight domain losses


def test_logistic_domain_loss_matches_numpy():
    rng = np.random.default_rng(3)
    z = rng.normal(size=7) * 3
    d = rng.integers(0, 2, 7)
    np.testing.assert_allclose(logistic_domain_loss(z, d), np_bce(z, d), rtol=1e-6)
    one_label = logistic_domain_loss(z[:, None], 1)
    np.testing.assert_allclose(one_label, np_bce(z, np.ones(7)), rtol=1e-6)
    with pytest.raises(ValueError, match="labels must lie"):
        logistic_domain_loss(z, np.full(7, 2))


def test_fake_domain_loss_reverses_only_the_final_feature_gradient():
    rng = np.random.default_rng(4)
    mid = jnp.asarray(rng.normal(size=(4, 3, 3, 5)), jnp.float32)  # Block4 map, NHWC
    final = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)  # Block7 feature
    clf = LogisticDomainClassifier()
    p_mid = clf.init(jax.random.key(0), mid)["params"]
    p_fin = clf.init(jax.random.key(1), final)["params"]
    lam = 0.6

    def loss(p_mid, p_fin, mid, final):
        return fake_domain_loss(
            lambda x: clf.apply({"params": p_mid}, x),
            lambda x: clf.apply({"params": p_fin}, x),
            mid,
            final,
            1,
            reversal_scale=lam,
        )

    def plain(p_mid, p_fin, mid, final):  # the same sum without the GRL
        return logistic_domain_loss(clf.apply({"params": p_mid}, mid), 1) + logistic_domain_loss(
            clf.apply({"params": p_fin}, final), 1
        )

    # Value: L_d on pooled mid features + L_d on final features (numpy).
    w_m, b_m = np.asarray(p_mid["logit"]["kernel"])[:, 0], float(p_mid["logit"]["bias"][0])
    w_f, b_f = np.asarray(p_fin["logit"]["kernel"])[:, 0], float(p_fin["logit"]["bias"][0])
    pooled = np.asarray(mid, np.float64).mean(axis=(1, 2))
    final64 = np.asarray(final, np.float64)
    want = np_bce(pooled @ w_m + b_m, np.ones(4)) + np_bce(final64 @ w_f + b_f, np.ones(4))
    np.testing.assert_allclose(loss(p_mid, p_fin, mid, final), want, rtol=1e-5)

    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(p_mid, p_fin, mid, final)
    h = jax.jit(jax.grad(plain, argnums=(0, 1, 2, 3)))(p_mid, p_fin, mid, final)
    for a, b in zip(jax.tree.leaves(g[:3]), jax.tree.leaves(h[:3])):  # classifiers, mid: normal
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(g[3], -lam * h[3], rtol=1e-5, atol=1e-7)  # final: reversed


def test_identity_consistency_uses_one_shared_classifier():
    rng = np.random.default_rng(5)
    f1, f2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    w, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    y = rng.integers(0, 3, 6)
    want = np_ce(f1 @ w.T + b, y) + np_ce(f2 @ w.T + b, y)
    got = identity_consistency_loss(f1, f2, w, y, b)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Both paths train the same rows: the weight gradient is the sum of the two paths'.
    grad_w = jax.jit(jax.grad(lambda w, a, c: identity_consistency_loss(a, c, w, y, b)))
    w32 = jnp.asarray(w, jnp.float32)
    gw, g1, g2 = grad_w(w32, f1, f2), grad_w(w32, f1, f1), grad_w(w32, f2, f2)
    np.testing.assert_allclose(gw, (g1 + g2) / 2, rtol=1e-5, atol=1e-6)
    assert float(task_oriented_pretraining_loss(got, 0.5, 0.25)) == pytest.approx(float(got) + 0.75)
    with pytest.raises(ValueError, match="labels must lie"):
        identity_consistency_loss(f1, f2, w, np.full(6, 3))


# ------------------------------------------------------------------- SSN mutual information


@pytest.mark.parametrize("centered", [True, False])
def test_jensen_shannon_mi_matches_numpy(centered):
    rng = np.random.default_rng(6)
    tj, tm = rng.normal(size=9) * 4, rng.normal(size=9) * 4
    want = np.mean(-np_softplus(-tj)) - np.mean(np_softplus(tm))
    want += 2 * math.log(2) if centered else 0.0
    np.testing.assert_allclose(jensen_shannon_mi(tj, tm, centered=centered), want, rtol=1e-6)
    # Known values: T = 0 everywhere (the optimum for independent inputs) reads 0 (centered)
    # or -2 log 2; perfectly separated scores approach the maximum 2 log 2 (or 0).
    zero = jensen_shannon_mi(jnp.zeros(4), jnp.zeros(4), centered=centered)
    sep = jensen_shannon_mi(jnp.full(4, 30.0), jnp.full(4, -30.0), centered=centered)
    assert float(zero) == pytest.approx(0.0 if centered else -2 * math.log(2), abs=1e-6)
    assert float(sep) == pytest.approx(2 * math.log(2) if centered else 0.0, abs=1e-6)


def test_marginal_permutation_is_a_group_preserving_derangement():
    groups = jnp.array([0, 1, 0, 0, 1, 1, 0, 1, 1])
    perm = np.asarray(marginal_permutation(jax.random.key(0), 9, groups))
    assert sorted(perm) == list(range(9))
    assert (perm != np.arange(9)).all()
    np.testing.assert_array_equal(np.asarray(groups)[perm], groups)
    again = marginal_permutation(jax.random.key(0), 9, groups)
    np.testing.assert_array_equal(perm, again)
    others = {tuple(np.asarray(marginal_permutation(jax.random.key(k), 9))) for k in range(8)}
    assert len(others) > 1
    jitted = jax.jit(marginal_permutation, static_argnums=1)(jax.random.key(3), 9)
    assert (np.asarray(jitted) != np.arange(9)).all()
    with pytest.raises(ValueError, match="at least 2"):
        marginal_permutation(jax.random.key(0), 1)


def test_critic_shapes_and_order_invariance():
    critic = JensenShannonCritic(p_features=(8,), q_features=(4, 4))
    p = jax.random.normal(jax.random.key(0), (6, 4, 4, 2))  # a block output
    q = jax.random.normal(jax.random.key(1), (6, 10))
    perm = marginal_permutation(jax.random.key(2), 6)
    variables = jax.jit(lambda: critic.init(jax.random.key(3), p, q, perm, train=False))()
    apply = jax.jit(lambda v, q, perm: critic.apply(v, p, q, perm, mutable=["batch_stats"])[0])
    joint, marg = apply(variables, q, perm)
    assert joint.shape == marg.shape == (6,)
    # The marginal score of pair (i, perm[i]) equals the joint score of p_i with q_perm[i]:
    # shuffling Q after its branch equals Fig. 4's shuffling before it.
    joint_shuffled, _ = apply(variables, q[perm], jnp.arange(6))
    np.testing.assert_allclose(marg, joint_shuffled, rtol=1e-5, atol=1e-6)


def _critic_readings(head_features, steps=200, batch=64):
    """Trains a tiny critic with optax on fresh batches of 2-d Gaussian pairs, once with q
    independent of p and once with q = p (both runs vmapped: one compilation), and returns
    the two MI readings on a fresh batch of 4096 pairs (running BatchNorm statistics)."""
    critic = JensenShannonCritic(p_features=(16,), q_features=(16,), head_features=head_features)
    tx = optax.adam(1e-2)

    def pairs(key, n, identical):
        kp, kq = jax.random.split(key)
        p = jax.random.normal(kp, (n, 2))
        return p, jnp.where(identical, p, jax.random.normal(kq, (n, 2)))

    def train_and_read(identical):
        p0, q0 = pairs(jax.random.key(0), batch, identical)
        variables = critic.init(jax.random.key(0), p0, q0, jnp.arange(batch), train=False)
        params, stats = variables["params"], variables["batch_stats"]

        def loss_fn(params, stats, key):
            kd, kp = jax.random.split(key)
            p, q = pairs(kd, batch, identical)
            (tj, tm), new = critic.apply(
                {"params": params, "batch_stats": stats},
                p,
                q,
                marginal_permutation(kp, batch),
                train=True,
                mutable=["batch_stats"],
            )
            return mi_critic_loss(jensen_shannon_mi(tj, tm)), new["batch_stats"]

        def step(carry, key):
            params, stats, opt = carry
            (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, key)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), stats, opt), None

        keys = jax.random.split(jax.random.key(1), steps)
        (params, stats, _), _ = jax.lax.scan(step, (params, stats, tx.init(params)), keys)
        p, q = pairs(jax.random.key(99), 4096, identical)
        perm = marginal_permutation(jax.random.key(98), 4096)
        tj, tm = critic.apply({"params": params, "batch_stats": stats}, p, q, perm, train=False)
        return jensen_shannon_mi(tj, tm)

    readings = jax.jit(jax.vmap(train_and_read))(jnp.array([False, True]))
    return float(readings[0]), float(readings[1])


def test_trained_critic_reads_zero_for_independent_and_high_for_identical_inputs():
    mi_independent, mi_identical = _critic_readings(head_features=(16,))
    assert abs(mi_independent) < 0.05, mi_independent
    # The centred JS estimate is bounded by 2 log 2 ~= 1.386.
    assert 1.0 < mi_identical <= 2 * math.log(2) + 1e-6, mi_identical


@pytest.mark.slow
def test_single_fc_critic_of_fig4_is_additive_and_blind_to_identity():
    # Documents why JensenShannonCritic has a hidden head layer by default: with Fig. 4's
    # single FC after the concatenation, T(p, q) = a(p) + b(q) and even q = p reads ~0.
    _, mi_identical = _critic_readings(head_features=())
    assert mi_identical < 0.2, mi_identical


def test_information_bottleneck_signs():
    # Minimising L_ib lowers I(X; Y1) and raises I(Y1; Y4) (SSN Eq. 5).
    g = jax.grad(information_bottleneck_loss, argnums=(0, 1))(0.3, 0.8)
    assert (float(g[0]), float(g[1])) == (1.0, -1.0)
    assert float(information_bottleneck_loss(0.3, 0.8, beta=0.5)) == pytest.approx(-0.1)
    # Critics ascend every estimate.
    gc = jax.grad(mi_critic_loss, argnums=(0, 1))(0.3, 0.8)
    assert (float(gc[0]), float(gc[1])) == (-1.0, -1.0)


# ------------------------------------------------------------------- CSAN


def np_pseudo_triplet(rgb, rgb_c, ir, ir_c, link, margin, rgb_mask, ir_mask):
    """Brute force of CSAN Eq. 4 with the voting links: loop over RGB anchors."""
    d_ri, d_rr = np_dist(rgb, ir), np_dist(rgb, rgb)

    def active(k):
        return rgb_mask[k] and rgb_c[k] >= 0 and link[rgb_c[k]] >= 0

    losses = []
    for a in range(len(rgb)):
        if not active(a):
            continue
        target = link[rgb_c[a]]
        pos = [d_ri[a, j] for j in range(len(ir)) if ir_mask[j] and ir_c[j] == target]
        neg = [d_rr[a, k] for k in range(len(rgb)) if active(k) and rgb_c[k] != rgb_c[a]]
        if pos and neg:
            losses.append(max(max(pos) - min(neg) + margin, 0.0))
    return (float(np.mean(losses)) if losses else 0.0), len(losses)


def test_pseudo_triplet_loss_matches_brute_force():
    rng = np.random.default_rng(7)
    fn = jax.jit(pseudo_triplet_loss, static_argnames=("margin", "return_num_anchors"))
    for trial in range(5):
        n_rgb, n_ir, n_clusters = 14, 12, 6
        rgb = rng.normal(size=(n_rgb, 5)).astype(np.float32)
        ir = rng.normal(size=(n_ir, 5)).astype(np.float32)
        rgb_c = rng.integers(-1, n_clusters, n_rgb)
        ir_c = rng.integers(-1, 5, n_ir)
        link = rng.integers(-1, 5, n_clusters)  # -1: the RGB cluster sits out (no majority)
        rgb_mask = rng.random(n_rgb) > 0.1
        ir_mask = rng.random(n_ir) > 0.1
        got, count = fn(
            rgb, rgb_c, ir, ir_c, link, margin=1.0, rgb_mask=rgb_mask, ir_mask=ir_mask,
            return_num_anchors=True,
        )
        want, want_count = np_pseudo_triplet(rgb, rgb_c, ir, ir_c, link, 1.0, rgb_mask, ir_mask)
        assert int(count) == want_count
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pseudo_triplet_hand_case_and_errors():
    # RGB cluster 0 (two samples) linked to IR cluster 1; RGB cluster 1 sits out; RGB
    # cluster 2 linked to IR cluster 0.
    rgb = np.array([[0.0, 0], [0, 1], [0, 2], [3, 0]])
    rgb_c = np.array([0, 0, 1, 2])
    ir = np.array([[0.0, 3], [4, 0], [9, 9]])
    ir_c = np.array([1, 0, 1])
    link = np.array([1, -1, 0])
    # Anchor 0: farthest positive among IR cluster 1 = (9,9) at sqrt(162); nearest active
    # negative = (3,0) at 3 (the sat-out sample (0,2) is no negative). Anchor 1: positive
    # sqrt(64+81)=sqrt(145), negative sqrt(10). Anchor 3: positive (4,0) at 1, negative
    # (0,1) at sqrt(10).
    m = 0.5
    want = (
        max(math.sqrt(162) - 3 + m, 0) + max(math.sqrt(145) - math.sqrt(10) + m, 0)
        + max(1 - math.sqrt(10) + m, 0)
    ) / 3
    loss, count = pseudo_triplet_loss(rgb, rgb_c, ir, ir_c, link, margin=m, return_num_anchors=True)
    assert int(count) == 3
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    with pytest.raises(ValueError, match="rgb_clusters"):
        pseudo_triplet_loss(rgb, np.array([0, 0, 1, 3]), ir, ir_c, link, margin=m)
    with pytest.raises(ValueError, match="ir_clusters"):
        pseudo_triplet_loss(rgb, rgb_c, ir, np.array([1, -2, 0]), link, margin=m)


def test_pixel_channel_sparsity_and_total():
    rng = np.random.default_rng(8)
    f = rng.normal(size=(5, 4, 3, 2))
    mask = np.array([1, 0, 1, 1, 0], bool)
    per = np.abs(f).reshape(5, -1).sum(1)
    np.testing.assert_allclose(pixel_channel_sparsity(f), per.mean(), rtol=1e-6)
    summed = pixel_channel_sparsity(f, batch_reduction="sum")
    np.testing.assert_allclose(summed, per.sum(), rtol=1e-6)
    np.testing.assert_allclose(pixel_channel_sparsity(f, mask=mask), per[mask].mean(), rtol=1e-6)
    assert float(csan_loss(2.0, 100.0)) == pytest.approx(2.1)
    assert float(csan_loss(2.0, 100.0, sparsity_weight=1e-5)) == pytest.approx(2.001)
    with pytest.raises(ValueError, match="batch_reduction"):
        pixel_channel_sparsity(f, batch_reduction="max")


# ------------------------------------------------------------------- FTL


def test_ml2_regularizer_is_the_classifier_output_norm():
    rng = np.random.default_rng(9)
    f, w, b = rng.normal(size=(6, 5)), rng.normal(size=(4, 5)), rng.normal(size=4)
    out = f @ w.T + b  # W^T f in the paper's notation, one row per sample
    np.testing.assert_allclose(ml2_regularizer(f, w, b), np.mean((out**2).sum(1)), rtol=1e-5)
    # Not the product of separate weight and feature norms.
    separate = np.mean((f**2).sum(1)) * (w**2).sum()
    assert not np.isclose(float(ml2_regularizer(f, w)), separate, rtol=1e-2)


def test_reconstruction_and_ftl_loss_match_numpy():
    rng = np.random.default_rng(11)
    x, xr = rng.random((3, 4, 4, 1)), rng.random((3, 4, 4, 1))
    sse = ((xr - x) ** 2).reshape(3, -1).sum(1)
    np.testing.assert_allclose(reconstruction_loss(xr, x), sse.mean(), rtol=1e-5)
    per_pixel = reconstruction_loss(xr, x, reduction="mean")
    np.testing.assert_allclose(per_pixel, sse.mean() / 16, rtol=1e-5)

    f, w, y = rng.normal(size=(3, 5)), rng.normal(size=(4, 5)), np.array([0, 3, 1])
    total, parts = ftl_loss(f, w, y, reconstructed=xr, images=x)
    logits = f @ w.T
    want = {"softmax": np_ce(logits, y), "recon": sse.mean(), "reg": np.mean((logits**2).sum(1))}
    for k, v in want.items():
        np.testing.assert_allclose(parts[k], v, rtol=1e-5)
    weighted = want["softmax"] + want["recon"] + 0.25 * want["reg"]
    np.testing.assert_allclose(total, weighted, rtol=1e-5)
    # Stage 1 (no images): Eq. 2 + Eq. 3 only.
    total1, parts1 = ftl_loss(f, w, y, alpha_reg=0.5)
    assert float(parts1["recon"]) == 0.0
    np.testing.assert_allclose(total1, want["softmax"] + 0.5 * want["reg"], rtol=1e-5)
    with pytest.raises(ValueError, match="both"):
        ftl_loss(f, w, y, images=x)
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(xr[:2], x)
    with pytest.raises(ValueError, match="labels must lie"):
        ftl_loss(f, w, np.array([0, 4, 1]))


def test_losses_are_jittable():
    rng = np.random.default_rng(12)
    f, w, y = rng.normal(size=(3, 5)), rng.normal(size=(4, 5)), np.array([0, 3, 1])
    total, _ = jax.jit(lambda f, w, y: ftl_loss(f, w, y))(f, w, y)
    assert np.isfinite(float(total))
    v = jax.jit(lambda f1, f2: identity_consistency_loss(f1, f2, w, y))(f, f)
    assert np.isfinite(float(v))
    assert isinstance(LogisticDomainClassifier(), nn.Module)
