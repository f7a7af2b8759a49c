"""CSAN pseudo-labels: single-linkage agglomeration and silhouette filtering (§III-B, Eq. 7)."""

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist, pdist, squareform

from hfrjax.recipes.csan import clustering, filtering

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def same_partition(a, b) -> bool:
    """Two labelings are the same partition iff their pair table is a bijection."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def blobs(rng, ids, per, dim, noise):
    centres = rng.normal(size=(ids, dim))
    return np.repeat(centres, per, 0) + noise * rng.normal(size=(ids * per, dim))


@pytest.mark.parametrize("seed", range(6))
def test_matches_scipy_single_linkage_maxclust(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(20, 120)), int(rng.integers(2, 12))
    x = rng.normal(size=(n, d)) if seed % 2 else blobs(rng, n // 5, 5, d, 0.3)[:n]
    n = len(x)
    # Small neighbour lists and blocks force the refresh and blockwise paths.
    for target in sorted({1, 2, 5, n // 3, n // 2, n - 1, n}):
        ours = clustering.agglomerative_clustering(
            x, target, neighbours=int(rng.integers(1, 4)), block_entries=int(rng.integers(n, 5 * n))
        )
        ref = fcluster(linkage(x, "single"), target, "maxclust")
        assert len(np.unique(ours)) == target == len(np.unique(ref))
        assert same_partition(ours, ref), (seed, target)


def test_spanning_tree_weight_equals_scipy_mst():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 6))
    a, b, dist = clustering.cluster_spanning_tree(
        x, np.arange(150), neighbours=2, block_entries=700
    )
    ref = minimum_spanning_tree(squareform(pdist(x))).data
    assert len(dist) == 149 and np.all(np.diff(dist) >= 0)
    np.testing.assert_allclose(np.sort(dist), np.sort(ref), rtol=1e-9)
    # Singletons: cluster ids are sample ids, and each edge weighs its pair's distance.
    np.testing.assert_allclose(dist, np.linalg.norm(x[a] - x[b], axis=1), rtol=1e-9)


def test_cluster_tree_edges_are_single_linkage_distances():
    """From a given partition, each tree edge weighs the closest pair across its clusters."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(90, 4))
    labels = rng.integers(0, 12, size=90)
    labels = clustering.relabel_contiguous(labels)
    a, b, dist = clustering.cluster_spanning_tree(x, labels, neighbours=3)
    k = labels.max() + 1
    full = cdist(x, x)
    single = np.array(
        [[full[np.ix_(labels == i, labels == j)].min() for j in range(k)] for i in range(k)]
    )
    np.fill_diagonal(single, 0)
    np.testing.assert_allclose(dist, single[a, b], rtol=1e-9)
    ref = minimum_spanning_tree(single).data
    np.testing.assert_allclose(np.sort(dist), np.sort(ref), rtol=1e-9)


def test_stepwise_schedule_with_fixed_features_equals_one_cut():
    rng = np.random.default_rng(5)
    x = blobs(rng, 15, 6, 8, 0.4)
    schedule = clustering.merge_schedule(len(x), 15, merge_fraction=0.05)
    assert schedule[-1] == 15 and all(np.diff([len(x)] + schedule) < 0)
    assert len(x) - schedule[0] == int(0.05 * len(x))  # BUC: int(n · mp) per step
    labels = np.arange(len(x))
    for count in schedule:
        labels = clustering.merge_step(x, labels, len(np.unique(labels)) - count)
        assert len(np.unique(labels)) == count
    ref = fcluster(linkage(x, "single"), 15, "maxclust")
    assert same_partition(labels, ref)


def test_merge_step_uses_the_features_it_is_given():
    """A step respects the current clusters even when new features would split them."""
    x = np.array([[0.0], [10.0], [0.1], [10.1], [5.0]])
    labels = np.array([0, 0, 1, 1, 2])  # {0, 10}, {0.1, 10.1}, {5}
    out = clustering.merge_step(x, labels, 1)
    assert same_partition(out, [0, 0, 0, 0, 1])  # closest pair across clusters: 0 – 0.1


def test_relabel_and_errors():
    np.testing.assert_array_equal(
        clustering.relabel_contiguous([7, 3, 7, -1, 3, 9]), [0, 1, 0, -1, 1, 2]
    )
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="target_clusters"):
        clustering.agglomerative_clustering(x, 5)
    with pytest.raises(ValueError, match="num_merges"):
        clustering.merge_step(x, np.arange(4), 4)
    with pytest.raises(ValueError, match="NaN"):
        clustering.agglomerative_clustering(np.array([[0.0], [np.nan]]), 1)
    with pytest.raises(ValueError, match="shape"):
        clustering.merge_step(x, np.arange(3), 1)
    with pytest.raises(ValueError, match="merge_fraction"):
        clustering.merge_schedule(10, 2, 0.0)


def test_silhouette_matches_sklearn():
    rng = np.random.default_rng(6)
    x = blobs(rng, 7, 6, 5, 0.8)
    labels = clustering.agglomerative_clustering(x, 9)
    labels[0] = labels.max() + 1  # a singleton (score 0 by convention)
    ours = filtering.silhouette_samples(x, labels, block_entries=3 * len(x))
    ref = sklearn_metrics.silhouette_samples(x, labels)
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    per_cluster = filtering.cluster_silhouettes(x, labels, block_entries=2 * len(x))
    expected = [ref[labels == c].mean() for c in range(labels.max() + 1)]
    np.testing.assert_allclose(per_cluster, expected, atol=1e-10)


def test_silhouette_ignores_removed_samples():
    rng = np.random.default_rng(7)
    x = blobs(rng, 4, 5, 3, 0.5)
    labels = np.repeat(np.arange(4), 5)
    labels[[2, 11]] = -1
    ours = filtering.silhouette_samples(x, labels)
    keep = labels >= 0
    ref = sklearn_metrics.silhouette_samples(x[keep], labels[keep])
    np.testing.assert_allclose(ours[keep], ref)
    assert np.isnan(ours[~keep]).all()
    with pytest.raises(ValueError, match="2 non-empty"):
        filtering.silhouette_samples(x, np.zeros(len(x), int))


def test_filter_by_size_and_silhouette():
    rng = np.random.default_rng(8)
    spec = (([0, 0], 4), ([10, 0], 4), ([0, 10], 9))
    tight = [c + 0.01 * rng.normal(size=(m, 2)) for c, m in spec]
    loose = [np.array([[30.0, 30.0], [34.0, 30.0], [32.0, 33.0]])]
    single = [np.array([[-20.0, 5.0]])]
    x = np.concatenate(tight + loose + single)
    labels = np.repeat(np.arange(5), [4, 4, 9, 3, 1])
    sil = filtering.cluster_silhouettes(x, labels)
    assert sil[0] > 0.9 and sil[3] > 0.6  # the loose triple is still well separated
    out = filtering.filter_clusters(x, labels, min_size=2, max_size=8, silhouette_threshold=0.6)
    np.testing.assert_array_equal(out.kept, [True, True, False, True, False])  # 9 > max, 1 < min
    np.testing.assert_array_equal(out.sizes, [4, 4, 9, 3, 1])
    np.testing.assert_array_equal(out.labels, np.where(np.isin(labels, [0, 1, 3]), labels, -1))
    strict = filtering.filter_clusters(x, labels, min_size=1, silhouette_threshold=float(sil[3]))
    assert not strict.kept[3]  # "≤ χ" removes: a score equal to the threshold does not pass
    assert not strict.kept[4]  # a singleton scores 0


@pytest.mark.slow
def test_regdb_scale_timing_and_partition():
    """4,120 x 128 (RegDB per modality): seconds, same partition as scipy."""
    import time

    rng = np.random.default_rng(9)
    x = blobs(rng, 412, 10, 128, 0.6)
    start = time.perf_counter()
    ours = clustering.agglomerative_clustering(x, 412)
    elapsed = time.perf_counter() - start
    ref = fcluster(linkage(x, "single"), 412, "maxclust")
    assert same_partition(ours, ref)
    assert elapsed < 20.0
