"""FTL UpdateStats / Transfer (§3.3 Eq. 5-7, Alg. 1) against float64 brute force."""

import jax.numpy as jnp
import numpy as np
import pytest

from hfrjax.recipes.ftl import statistics as st


def toy_data(seed=0, num_classes=9, dim=7, offset=0.0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 30, size=num_classes)
    sizes[0] = 0  # a class without samples
    labels = rng.permutation(np.repeat(np.arange(num_classes), sizes))
    centres = 3 * rng.normal(size=(num_classes, dim)) + offset
    mix = rng.normal(size=(dim, dim))
    g = centres[labels] + rng.normal(size=(len(labels), dim)) @ mix
    g_bar = g + 0.3 * rng.normal(size=g.shape)
    yaw = rng.uniform(-80, 80, size=len(labels))
    yaw[rng.random(len(labels)) < 0.3] = np.nan
    return labels, g, g_bar, yaw, sizes


def brute_force(labels, g, g_bar, yaw, regular, bound):
    """Eq. 5 and Eq. 6 written as the paper's loops, float64."""
    num_classes, dim = len(regular), g.shape[1]
    centres = np.full((num_classes, dim), np.nan)
    v = np.zeros((dim, dim))
    for i in range(num_classes):
        members = np.flatnonzero(labels == i)
        if len(members) == 0:
            continue
        omega = [k for k in members if np.isnan(yaw[k]) or abs(yaw[k]) + abs(-yaw[k]) <= 2 * bound]
        if omega:
            centres[i] = sum(g[k] + g_bar[k] for k in omega) / (2 * len(omega))
        else:
            centres[i] = g[members].mean(axis=0)
        if regular[i]:
            for k in members:
                e = (g[k] - centres[i])[:, None]
                v += e @ e.T
    return centres, v


def stream(labels, g, g_bar, yaw, regular, bound, splits, k=3):
    m = st.init_moments(len(regular), g.shape[1], regular, max_abs_yaw=bound)
    for part in np.array_split(np.arange(len(labels)), splits):
        out = st.accumulate(m, g[part], labels[part], flipped=g_bar[part], yaw=yaw[part])
        assert out is m
    return st.finalize(m, num_components=k)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_streaming_equals_one_shot_float64(offset):
    labels, g, g_bar, yaw, sizes = toy_data(offset=offset)
    regular = st.regular_classes(sizes, max_images=12)
    centres, v = brute_force(labels, g, g_bar, yaw, regular, bound=30.0)
    for splits in (1, 7, len(labels)):
        stats = stream(labels, g, g_bar, yaw, regular, 30.0, splits)
        np.testing.assert_allclose(stats.centres, centres.astype(np.float32), rtol=1e-6)
        np.testing.assert_allclose(stats.covariance, v, rtol=1e-9, atol=1e-9 * np.abs(v).max())
        np.testing.assert_array_equal(stats.sizes, sizes)
    assert np.isnan(stats.centres[0]).all()


def test_centres_with_flips_and_yaw_bound_by_hand():
    g = np.array([[1.0, 0.0], [3.0, 0.0], [100.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    g_bar = g + np.array([1.0, 1.0])
    labels = np.array([0, 0, 0, 1, 1])
    yaw = np.array([10.0, np.nan, -60.0, 50.0, -45.0])  # class 1: every sample beyond 30
    m = st.init_moments(2, 2, np.array([True, False]), max_abs_yaw=30.0)
    st.accumulate(m, g, labels, flipped=g_bar, yaw=yaw)
    stats = st.finalize(m, num_components=1)
    # Class 0: samples 0 (|yaw| 10) and 1 (unknown) with their flips; sample 2 (60°) left out.
    np.testing.assert_allclose(stats.centres[0], [(1 + 2 + 3 + 4) / 4, (0 + 1 + 0 + 1) / 4])
    # Class 1 falls back to the plain mean of g.
    np.testing.assert_allclose(stats.centres[1], [0.0, 3.0])
    assert int(stats.fallback_classes) == 1
    # V takes every sample of the regular class 0, the outlier included, around c_0 = (2.5, .5).
    e = g[:3] - np.array([2.5, 0.5])
    np.testing.assert_allclose(stats.covariance, e.T @ e)
    no_bound = st.init_moments(2, 2, np.array([True, False]))
    st.accumulate(no_bound, g, labels, flipped=g_bar, yaw=yaw)
    np.testing.assert_allclose(
        st.finalize(no_bound, 1).centres[0], np.concatenate([g[:3], g_bar[:3]]).mean(0), rtol=1e-6
    )
    no_flip = st.init_moments(2, 2, np.array([True, False]))
    st.accumulate(no_flip, g, labels)
    np.testing.assert_allclose(st.finalize(no_flip, 1).centres[0], g[:3].mean(0), rtol=1e-6)


def test_pca_basis_against_eigh_and_energy():
    labels, g, g_bar, yaw, sizes = toy_data(seed=1)
    regular = st.regular_classes(sizes, max_images=5)
    stats = stream(labels, g, g_bar, yaw, regular, 45.0, 4, k=3)
    values, vectors = np.linalg.eigh(stats.covariance)
    top = vectors[:, ::-1][:, :3]
    dots = np.abs(np.sum(top * stats.basis, axis=0))
    np.testing.assert_allclose(dots, 1.0, atol=1e-6)  # equal up to sign
    np.testing.assert_allclose(stats.eigenvalues, values[::-1], rtol=1e-10, atol=1e-10)
    assert float(stats.energy_kept) == pytest.approx(values[::-1][:3].sum() / values.sum())
    np.testing.assert_allclose(stats.basis.T @ stats.basis, np.eye(3), atol=1e-6)
    k95 = st.components_for_energy(stats.eigenvalues, 0.95)
    shares = np.cumsum(values[::-1]) / values.sum()
    assert shares[k95 - 1] >= 0.95 and (k95 == 1 or shares[k95 - 2] < 0.95)
    full = st.principal_basis(stats.covariance, g.shape[1])
    assert full[2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_components"):
        st.principal_basis(stats.covariance, g.shape[1] + 1)


def test_transfer_keeps_ur_centre_and_moves_variation():
    rng = np.random.default_rng(2)
    dim, k = 6, 3
    centres = rng.normal(size=(5, dim)).astype(np.float32)
    basis = np.linalg.qr(rng.normal(size=(dim, k)))[0].astype(np.float32)
    g = rng.normal(size=(8, dim)).astype(np.float32)
    reg_y = rng.integers(0, 3, size=8)
    ur_y = rng.integers(3, 5, size=8)
    out = np.asarray(st.transfer_features(jnp.asarray(g), reg_y, ur_y, centres, basis))
    # The variation along Q moves over: Qᵀ(g̃ − c_i) = Qᵀ(g_j − c_j) ...
    np.testing.assert_allclose(
        (out - centres[ur_y]) @ basis, (g - centres[reg_y]) @ basis, atol=1e-5
    )
    # ... and nothing else: g̃ − c_i lies in span(Q).
    resid = out - centres[ur_y]
    np.testing.assert_allclose(resid - resid @ basis @ basis.T, 0.0, atol=1e-5)
    # Transferring a whole regular class around its mean keeps the UR centre.
    members = rng.normal(size=(10, dim)).astype(np.float32)
    c = centres.copy()
    c[0] = members.mean(0)
    moved = np.asarray(st.transfer_features(members, np.zeros(10, int), np.full(10, 4), c, basis))
    np.testing.assert_allclose(moved.mean(0), c[4], atol=1e-5)
    bad = np.asarray(st.transfer_features(g[:1], np.array([7]), np.array([3]), centres, basis))
    assert np.isnan(bad).all()  # class 7 does not exist: no silent clipping


def test_hard_list_against_brute_force():
    labels, g, g_bar, yaw, sizes = toy_data(seed=3)
    regular = st.regular_classes(sizes, max_images=10)
    stats = stream(labels, g, g_bar, yaw, regular, 20.0, 3)
    ids = 1000 + np.arange(len(labels))
    parts = np.array_split(np.arange(len(labels)), 5)
    d = np.concatenate([st.sample_distances(stats.centres, g[p], labels[p]) for p in parts])
    hard = st.hard_sample_indices(d, labels, stats.regular, ids)
    expected = []
    for i in np.flatnonzero(regular):
        members = np.flatnonzero(labels == i)
        dist = np.linalg.norm(g[members] - stats.centres[i].astype(np.float64), axis=1)
        expected += list(ids[members[dist > dist.mean()]])
    np.testing.assert_array_equal(hard, np.sort(expected))
    assert len(hard) > 0 and not np.isin(labels[hard - 1000], np.flatnonzero(~regular)).any()


def test_ur_rule_and_bad_input():
    sizes = st.class_sizes(np.array([0, 0, 1, 2, 2, 2]), 4)
    np.testing.assert_array_equal(sizes, [2, 1, 3, 0])
    ur = st.under_represented(sizes, max_images=2)
    np.testing.assert_array_equal(ur, [True, True, False, False])
    regular = st.regular_classes(sizes, max_images=2)
    np.testing.assert_array_equal(regular, [False, False, True, False])
    np.testing.assert_array_equal(st.under_represented(np.array([20, 21])), [True, False])
    m = st.init_moments(3, 2, np.ones(3, bool))
    with pytest.raises(ValueError, match=r"labels\[1\] = 3"):
        st.accumulate(m, np.zeros((2, 2)), np.array([0, 3]))
    with pytest.raises(ValueError, match="flipped must have shape"):
        st.accumulate(m, np.zeros((2, 2)), np.array([0, 1]), flipped=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        st.accumulate(m, np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(ValueError, match="regular must have shape"):
        st.init_moments(3, 2, np.ones(2, bool))
