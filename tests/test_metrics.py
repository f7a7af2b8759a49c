"""Metrics against scikit-learn, brute force and hand-computed cases, ties included."""

import numpy as np
import pytest
from sklearn import metrics as skm

from hfrjax.eval import metrics


def _labels_scores(gen, imp):
    return (np.r_[np.ones(len(gen)), np.zeros(len(imp))], np.r_[gen, imp])


def _random_scores(rng, kind, n_gen=300, n_imp=3000):
    if kind == "continuous":
        return rng.normal(1.0, 1.0, n_gen), rng.normal(0.0, 1.0, n_imp)
    # Heavy ties: few distinct integer values shared by both sets.
    return (rng.integers(0, 8, n_gen).astype(float) + 2, rng.integers(0, 10, n_imp).astype(float))


# --------------------------------------------------------------------------------------------
# Hand-computed example.
#   genuine  0.9 0.8 0.4        impostor 0.7 0.4 0.2 0.1
#   threshold  inf  0.9  0.8  0.7  0.4  0.2  0.1
#   TP           0    1    2    2    3    3    3      -> TPR /3
#   FP           0    0    0    1    2    3    4      -> FPR /4
GEN = [0.9, 0.8, 0.4]
IMP = [0.7, 0.4, 0.2, 0.1]


def test_roc_by_hand():
    fpr, tpr, thr = metrics.roc_curve(GEN, IMP)
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.7, 0.4, 0.2, 0.1])
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])


def test_tar_at_far_by_hand_nearest_vs_strict():
    # FAR 0.4: nearest ROC point is FPR 0.5 (distance 0.1 < 0.15) with TAR 1, which exceeds the
    # target; strict stays at FPR 0.25 with TAR 2/3.
    assert metrics.tar_at_far(GEN, IMP, [0.4], "nearest") == {0.4: 1.0}
    assert metrics.tar_at_far(GEN, IMP, [0.4], "strict") == pytest.approx({0.4: 2 / 3})
    # FAR 0.3: both pick FPR 0.25.
    assert metrics.tar_at_far(GEN, IMP, 0.3) == pytest.approx({0.3: 2 / 3})
    # FAR 0: three points have FPR 0; both rules take the largest TPR among them.
    assert metrics.tar_at_far(GEN, IMP, [0.0], "nearest") == pytest.approx({0.0: 2 / 3})
    assert metrics.tar_at_far(GEN, IMP, [0.0], "strict") == pytest.approx({0.0: 2 / 3})


def test_eer_auc_by_hand():
    # Crossing on the segment (0.25, 2/3) -> (0.5, 1): FPR = 2/7, TPR = 5/7.
    assert metrics.eer(GEN, IMP) == pytest.approx(2 / 7)
    # 10.5 of 12 pairs ordered correctly (the 0.4 / 0.4 tie counts one half).
    assert metrics.auc(GEN, IMP) == pytest.approx(10.5 / 12)


def test_perfect_and_reversed_separation():
    assert metrics.eer([2, 3], [0, 1]) == 0.0
    assert metrics.auc([2, 3], [0, 1]) == 1.0
    assert metrics.tar_at_far([2, 3], [0, 1], [0.0, 1e-3], "strict") == {0.0: 1.0, 1e-3: 1.0}
    assert metrics.eer([0, 1], [2, 3]) == 1.0
    assert metrics.auc([0, 1], [2, 3]) == 0.0


# --------------------------------------------------------------------------------------------
# Against scikit-learn and brute force.


@pytest.mark.parametrize("kind", ["continuous", "ties"])
@pytest.mark.parametrize("seed", [0, 1])
def test_roc_matches_sklearn(kind, seed):
    gen, imp = _random_scores(np.random.default_rng(seed), kind)
    fpr, tpr, thr = metrics.roc_curve(gen, imp)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(*_labels_scores(gen, imp), drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])  # sklearn's first threshold: inf.
    assert np.isinf(thr[0])


def test_roc_float32_scores_stay_distinct():
    gen = np.float32([0.5, np.nextafter(np.float32(0.5), np.float32(1))])
    imp = np.float32([0.5])
    _, _, thr = metrics.roc_curve(gen, imp)
    assert len(thr) == 3


@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_auc_matches_sklearn(kind):
    gen, imp = _random_scores(np.random.default_rng(2), kind)
    y, s = _labels_scores(gen, imp)
    assert metrics.auc(gen, imp) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def _insightface_nearest(gen, imp, far):
    """Their rule: sklearn's default ROC, flipped, first minimum of |fpr - far|."""
    fpr, tpr, _ = skm.roc_curve(*_labels_scores(gen, imp))
    fpr, tpr = fpr[::-1], tpr[::-1]
    return tpr[int(np.argmin(np.abs(fpr - far)))]


def _brute_strict(gen, imp, far):
    best = 0.0
    for t in np.unique(np.r_[gen, imp, np.inf]):
        if np.mean(imp >= t) <= far:
            best = max(best, np.mean(gen >= t))
    return best


FARS = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 0.3]


@pytest.mark.parametrize("kind", ["continuous", "ties"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_matches_insightface_rule(kind, seed):
    gen, imp = _random_scores(np.random.default_rng(seed), kind)
    fars = FARS + [0.05, 0.11, 0.5]
    got = metrics.tar_at_far(gen, imp, fars)
    for far in fars:
        assert got[far] == _insightface_nearest(gen, imp, far)


def test_nearest_reproduces_sklearn_collinear_point_removal():
    # Full ROC (fp of 10, tp of 3): (0,0) (0,1) (1,1) (2,1) (3,1) (3,3) (10,3). sklearn's default
    # ROC drops (1,1) and (2,1) (interior of a horizontal run), so for FAR 0.2 the nearest
    # remaining FPR is 0.3, where the largest TAR is 3/3; the full ROC has TAR 1/3 at FPR 0.2.
    gen, imp = [10, 6, 6], [9, 8, 7] + [0] * 7
    assert metrics.tar_at_far(gen, imp, 0.2, "nearest") == {0.2: 1.0}
    assert metrics.tar_at_far(gen, imp, 0.2, "strict") == pytest.approx({0.2: 1 / 3})
    assert _insightface_nearest(np.array(gen), np.array(imp), 0.2) == 1.0
    fpr, tpr, _ = metrics.roc_curve(gen, imp, drop_intermediate=True)
    np.testing.assert_allclose(fpr * 10, [0, 0, 3, 3, 10])
    np.testing.assert_allclose(tpr * 3, [0, 1, 1, 3, 3])


@pytest.mark.parametrize("kind", ["continuous", "ties"])
@pytest.mark.parametrize("seed", [0, 3])
def test_roc_drop_intermediate_matches_sklearn(kind, seed):
    gen, imp = _random_scores(np.random.default_rng(seed), kind)
    fpr, tpr, thr = metrics.roc_curve(gen, imp, drop_intermediate=True)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(*_labels_scores(gen, imp))
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])


@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_strict_matches_brute_force(kind):
    gen, imp = _random_scores(np.random.default_rng(3), kind, 60, 200)
    fars = FARS + [0.05, 0.11, 0.5]
    strict = metrics.tar_at_far(gen, imp, fars, "strict")
    nearest = metrics.tar_at_far(gen, imp, fars, "nearest")
    for far in fars:
        assert strict[far] == pytest.approx(_brute_strict(gen, imp, far))
        if kind == "continuous":  # Without collinear diagonal runs, nearest >= strict.
            assert nearest[far] >= strict[far]


def test_nearest_and_strict_differ_on_ties():
    # Heavy ties make the ROC coarse: FAR targets fall between points.
    gen, imp = _random_scores(np.random.default_rng(4), "ties")
    near = metrics.tar_at_far(gen, imp, FARS, "nearest")
    strict = metrics.tar_at_far(gen, imp, FARS, "strict")
    assert any(near[f] != strict[f] for f in FARS)


@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_eer_lies_on_roc_where_fpr_equals_fnr(kind):
    gen, imp = _random_scores(np.random.default_rng(5), kind)
    e = metrics.eer(gen, imp)
    fpr, tpr, _ = metrics.roc_curve(gen, imp)
    # (e, 1 - e) must lie on one of the ROC's segments.
    p = np.array([e, 1 - e])
    a, b = np.stack([fpr[:-1], tpr[:-1]], 1), np.stack([fpr[1:], tpr[1:]], 1)
    d = b - a
    t = np.clip(np.sum((p - a) * d, 1) / np.maximum(np.sum(d * d, 1), 1e-300), 0, 1)
    dist = np.linalg.norm(a + t[:, None] * d - p, axis=1)
    assert dist.min() < 1e-12
    # And agree with the common brute-force estimate (threshold minimising |FPR - FNR|).
    k = np.argmin(np.abs(fpr - (1 - tpr)))
    assert (
        abs(e - (fpr[k] + 1 - tpr[k]) / 2)
        <= np.abs(np.diff(fpr)).max() + np.abs(np.diff(tpr)).max()
    )


def test_verification_metrics_keys():
    m = metrics.verification_metrics(GEN, IMP, [1e-3, 0.05])
    assert list(m) == ["TAR@FAR=1e-3", "TAR@FAR=5e-2", "EER", "AUC"]
    assert metrics.far_name(1e-5) == "1e-5" and metrics.far_name(0.15) == "1.5e-1"


def test_verification_errors():
    with pytest.raises(ValueError, match="genuine_scores is empty"):
        metrics.roc_curve([], [0.1])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.roc_curve([np.nan], [0.1])
    with pytest.raises(ValueError, match="method"):
        metrics.tar_at_far(GEN, IMP, [1e-3], "interpolate")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.tar_at_far(GEN, IMP, [1.5])


# --------------------------------------------------------------------------------------------
# Identification and re-identification.


def _tie_problem(seed, p=40, g=30, ids=12):
    rng = np.random.default_rng(seed)
    sim = rng.integers(0, 5, (p, g)).astype(np.float32)  # Heavy ties.
    pl = rng.integers(0, ids + 3, p)  # Some probe identities are absent from the gallery.
    gl = rng.integers(0, ids, g)
    return sim, pl, gl


def _brute_ranks(sim, pl, gl, ties):
    ranks = []
    for i in range(len(pl)):
        pos = gl == pl[i]
        if not pos.any():
            ranks.append(0)
            continue
        # Pessimistic: among equal scores impostors come first; optimistic: genuine first.
        key = (
            (lambda j: (-sim[i, j], pos[j]))
            if ties == "pessimistic"
            else (lambda j: (-sim[i, j], not pos[j]))
        )
        order = sorted(range(len(gl)), key=key)
        ranks.append(1 + next(r for r, j in enumerate(order) if pos[j]))
    return np.array(ranks)


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cmc_matches_brute_force(ties, seed):
    sim, pl, gl = _tie_problem(seed)
    ranks = _brute_ranks(sim, pl, gl, ties)
    np.testing.assert_array_equal(metrics.first_match_ranks(sim, pl, gl, ties), ranks)
    matched = ranks[ranks > 0]
    expected = [np.mean(matched <= k) for k in range(1, 11)]
    np.testing.assert_allclose(metrics.cmc(sim, pl, gl, 10, ties=ties), expected)
    assert metrics.rank1(sim, pl, gl, ties=ties) == pytest.approx(expected[0])
    # unmatched="miss": absent identities count as failures.
    miss = [np.sum(matched <= k) / len(pl) for k in range(1, 11)]
    np.testing.assert_allclose(metrics.cmc(sim, pl, gl, 10, ties=ties, unmatched="miss"), miss)


def test_cmc_constant_scores_are_pessimistic():
    sim = np.zeros((3, 4))
    assert metrics.rank1(sim, [0, 1, 2], [0, 1, 2, 3]) == 0.0
    assert metrics.rank1(sim, [0, 1, 2], [0, 1, 2, 3], ties="optimistic") == 1.0


def test_cmc_no_match_anywhere_is_an_error():
    with pytest.raises(ValueError, match="no probe has a correct match"):
        metrics.cmc(np.zeros((2, 2)), [5, 6], [0, 1], 1)


def _brute_ap_inp(sim, pl, gl):
    aps, inps = [], []
    for i in range(len(pl)):
        pos = gl == pl[i]
        if not pos.any():
            continue  # Skipped query.
        order = sorted(range(len(gl)), key=lambda j: (-sim[i, j], pos[j]))
        hit_ranks = [r + 1 for r, j in enumerate(order) if pos[j]]
        aps.append(np.mean([(n + 1) / r for n, r in enumerate(hit_ranks)]))
        inps.append(len(hit_ranks) / hit_ranks[-1])
    return np.mean(aps), np.mean(inps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_minp_match_brute_force_with_ties_and_unmatched(seed):
    sim, pl, gl = _tie_problem(seed)
    assert np.any([not (gl == x).any() for x in pl])  # The skip path is exercised.
    m, inp = metrics.map_minp(sim, pl, gl)
    bm, binp = _brute_ap_inp(sim, pl, gl)
    assert m == pytest.approx(bm) and inp == pytest.approx(binp)


def test_ap_matches_sklearn_without_ties():
    rng = np.random.default_rng(7)
    sim = rng.normal(size=(25, 40))
    pl, gl = rng.integers(0, 6, 25), rng.integers(0, 6, 40)
    ap, _, npos = metrics.retrieval_per_query(sim, pl, gl)
    for i in range(25):
        if npos[i]:
            assert ap[i] == pytest.approx(skm.average_precision_score(gl == pl[i], sim[i]))
        else:
            assert np.isnan(ap[i])


def test_map_minp_by_hand():
    # Query 0: ranked gallery labels [0, 1, 0, 1]: AP = (1/1 + 2/3)/2, INP = 2/3.
    # Query 1 (label 7) has no match and is skipped.
    sim = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    m, inp = metrics.map_minp(sim, [0, 7], [0, 1, 0, 1])
    assert m == pytest.approx((1 + 2 / 3) / 2) and inp == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------
# Folds.


def test_mean_std_population_and_sample():
    v = [0.9, 0.95, 0.97, 0.91]
    assert metrics.mean_std(v) == pytest.approx((np.mean(v), np.std(v)))
    assert metrics.mean_std(v, ddof=1) == pytest.approx((np.mean(v), np.std(v, ddof=1)))
    with pytest.raises(ValueError):
        metrics.mean_std([])


def test_aggregate_folds():
    folds = [{"Rank-1": 0.9, "AUC": 0.99}, {"Rank-1": 0.8, "AUC": 0.97}]
    mean, std = metrics.aggregate(folds)
    assert mean == pytest.approx({"Rank-1": 0.85, "AUC": 0.98})
    assert std == pytest.approx({"Rank-1": 0.05, "AUC": 0.01})
    with pytest.raises(ValueError, match="fold #1"):
        metrics.aggregate([{"a": 1.0}, {"b": 1.0}])


# --------------------------------------------------------------------------------------------
# Blockwise scoring.


def _dense_reference(pe, ge, pl, gl, normalize=True):
    if normalize:
        pe = pe / np.linalg.norm(pe, axis=1, keepdims=True)
        ge = ge / np.linalg.norm(ge, axis=1, keepdims=True)
    return pe.astype(np.float64) @ ge.astype(np.float64).T


@pytest.mark.parametrize("block_size", [1, 5, 64])
def test_blockwise_equals_dense(block_size):
    rng = np.random.default_rng(0)
    pe, ge = (
        rng.normal(size=(37, 16)).astype(np.float32),
        rng.normal(size=(23, 16)).astype(np.float32),
    )
    pl, gl = rng.integers(0, 9, 37), rng.integers(0, 7, 23)  # Labels 7, 8: no gallery match.
    sim = _dense_reference(pe, ge, pl, gl)
    got = metrics.score_blocks(pe, ge, pl, gl, block_size)
    gen, imp = metrics.pair_scores(sim, pl, gl)
    np.testing.assert_allclose(got.genuine, gen, atol=1e-6)
    np.testing.assert_allclose(got.impostor, imp, atol=1e-6)
    np.testing.assert_array_equal(got.first_rank, metrics.first_match_ranks(sim, pl, gl))
    ap, inp, npos = metrics.retrieval_per_query(sim, pl, gl)
    np.testing.assert_array_equal(got.num_positives, npos)
    np.testing.assert_allclose(got.average_precision, ap, rtol=1e-6)
    np.testing.assert_allclose(got.inp, inp, rtol=1e-6)
    assert got.map_minp() == pytest.approx(metrics.map_minp(sim, pl, gl), rel=1e-6)
    np.testing.assert_allclose(got.cmc(5), metrics.cmc(sim, pl, gl, 5))


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_blockwise_equals_dense_with_exact_ties(ties):
    # Small integer embeddings, raw dot products: exact in float32, so ties are real ties.
    rng = np.random.default_rng(1)
    pe = rng.integers(0, 2, (30, 3)).astype(np.float32)
    ge = rng.integers(0, 2, (20, 3)).astype(np.float32)
    pl, gl = rng.integers(0, 6, 30), rng.integers(0, 5, 20)
    sim = pe @ ge.T
    got = metrics.score_blocks(pe, ge, pl, gl, 7, normalize=False, ties=ties)
    np.testing.assert_array_equal(got.first_rank, metrics.first_match_ranks(sim, pl, gl, ties))
    np.testing.assert_array_equal(got.first_rank, _brute_ranks(sim, pl, gl, ties))
    ap, inp, _ = metrics.retrieval_per_query(sim, pl, gl)
    np.testing.assert_allclose(got.average_precision, ap, rtol=1e-6)
    np.testing.assert_allclose(got.inp, inp, rtol=1e-6)
    gen, imp = metrics.pair_scores(sim, pl, gl)
    np.testing.assert_array_equal(got.genuine, gen)
    np.testing.assert_array_equal(got.impostor, imp)


def test_blockwise_histogram_equals_quantised_exact():
    # Several blocks with padding (10 = 4 + 4 + 2): padding rows must not be counted.
    rng = np.random.default_rng(2)
    pe, ge = rng.normal(size=(10, 8)), rng.normal(size=(9, 8))
    pl, gl = np.arange(10) % 4, np.arange(9) % 3
    exact = metrics.score_blocks(pe, ge, pl, gl, 4, retrieval=False)
    got = metrics.score_blocks(pe, ge, pl, gl, 4, retrieval=False, pair_scores="histogram", bins=64)
    assert got.genuine is None and got.average_precision is None
    assert got.num_genuine == exact.genuine.size and got.num_impostor == exact.impostor.size
    want = metrics.ScoreHistogram.from_scores(exact.genuine, exact.impostor, 64)
    np.testing.assert_array_equal(got.histogram.genuine, want.genuine)
    np.testing.assert_array_equal(got.histogram.impostor, want.impostor)
    np.testing.assert_array_equal(got.first_rank, exact.first_rank)
    # Histogram metrics are the exact metrics of the scores moved to their bin's lower edge.
    edges = want.edges
    lower = lambda x: edges[metrics._bin_index(np.asarray(x), 64)]  # noqa: E731
    fars = (0.05, 0.2, 0.5)
    for method in metrics.TAR_METHODS:
        ref = metrics.verification_metrics(
            lower(exact.genuine), lower(exact.impostor), fars, method
        )
        assert got.verification_metrics(fars, method) == pytest.approx(ref, abs=1e-12)
    # With bins fine enough to separate every score, the histogram gives the exact metrics.
    fine = metrics.score_blocks(pe, ge, pl, gl, 4, retrieval=False, pair_scores="histogram")
    assert fine.verification_metrics(fars) == pytest.approx(
        exact.verification_metrics(fars), abs=1e-9
    )


def test_score_histogram_against_sklearn_on_quantised_scores():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    gen = np.clip(rng.normal(0.5, 0.2, 3000), -1, 0.999)
    imp = np.clip(rng.normal(0.0, 0.2, 20000), -1, 0.999)
    hist = metrics.ScoreHistogram.from_scores(gen, imp, 256)
    q = lambda x: hist.edges[metrics._bin_index(x, 256)]  # noqa: E731
    y = np.r_[np.ones(gen.size), np.zeros(imp.size)]
    s = np.r_[q(gen), q(imp)]
    got = metrics.verification_metrics_from_histogram(hist, (1e-3, 1e-2))
    assert got["AUC"] == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = sk.roc_curve(y, s)
    i = len(fpr) - 1 - int(np.argmin(np.abs(fpr[::-1] - 1e-2)))
    assert got["TAR@FAR=1e-2"] == pytest.approx(tpr[i], abs=1e-12)
    coarse = hist.coarsen(16)
    assert coarse.genuine.sum() == gen.size and coarse.edges.size == 17
    np.testing.assert_array_equal(coarse.impostor, hist.impostor.reshape(16, 16).sum(1))
    with pytest.raises(ValueError, match="coarsen"):
        hist.coarsen(100)


def test_score_blocks_errors():
    with pytest.raises(ValueError, match="labels"):
        metrics.score_blocks(np.ones((2, 3)), np.ones((2, 3)), [0], [0, 1])
    with pytest.raises(ValueError, match=r"\[P, D\]"):
        metrics.score_blocks(np.ones((2, 3)), np.ones((2, 4)), [0, 1], [0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.score_blocks(np.full((1, 2), np.nan), np.ones((1, 2)), [0], [0])
    with pytest.raises(ValueError, match="pair_scores"):
        metrics.score_blocks(np.ones((1, 2)), np.ones((1, 2)), [0], [0], pair_scores="approx")
    with pytest.raises(ValueError, match="a ROC needs both"):
        metrics.verification_metrics_from_histogram(
            metrics.ScoreHistogram.from_scores([0.5], np.zeros(0), 8)
        )
