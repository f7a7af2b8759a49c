"""CSAN's blockwise distance passes: float32 GEMM with float64 answers, one block vs many,
bounded temporaries (the clustering must scale to RegDB and SYSU sizes)."""

import tracemalloc

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import cdist

from hfrjax.recipes.csan import clustering, distances, filtering, pseudo_labels

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def blobs(rng, ids, per, dim, noise):
    centres = rng.normal(size=(ids, dim))
    return np.repeat(centres, per, 0) + noise * rng.normal(size=(ids * per, dim))


def brute_nearest(q, r, qg=None, rg=None):
    d = cdist(q.astype(np.float64), r.astype(np.float64), "sqeuclidean")
    if qg is not None:
        d[qg[:, None] == rg[None, :]] = np.inf
    j = np.argmin(d, axis=1)
    best = d[np.arange(len(q)), j]
    return np.where(np.isfinite(best), j, -1), best


def test_float32_nearest_equals_float64_at_near_ties():
    """Pairs of references 1e-9 apart (far below float32 resolution): the float32 GEMM cannot
    tell them apart, the float64 re-scoring must pick the nearer one."""
    rng = np.random.default_rng(0)
    dim = 64
    q = rng.normal(size=(40, dim)).astype(np.float32)
    base = q[rng.permutation(40)[:30]].astype(np.float64) + 0.3 * rng.normal(size=(30, dim))
    twin = base.copy()
    twin[:, 0] += np.where(rng.random(30) < 0.5, 1e-9, -1e-9)  # a hair nearer or farther
    r = np.concatenate([base, twin, rng.normal(size=(20, dim))])
    q64 = q.astype(np.float64)
    ref_j, ref_d = brute_nearest(q64, r)
    for block in (10**6, 7 * len(r)):
        j, d = distances.nearest(q64, r, block_entries=block)
        np.testing.assert_array_equal(j, ref_j)
        np.testing.assert_allclose(d, ref_d, rtol=1e-12, atol=1e-12)
        j64, _ = distances.nearest(q64, r, block_entries=block, dtype=np.float64)
        np.testing.assert_array_equal(j64, ref_j)


def test_nearest_excludes_own_group_and_marks_rows_with_nothing_left():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    g = rng.integers(0, 5, size=50)
    g[-3:] = 9  # queries of a group the references do not hold
    r, rg = x[:47], g[:47]
    j, d = distances.nearest(x, r, query_groups=g, reference_groups=rg, block_entries=100)
    ref_j, ref_d = brute_nearest(x, r, g, rg)
    np.testing.assert_array_equal(j, ref_j)
    np.testing.assert_allclose(d, ref_d, rtol=1e-6)
    only = np.zeros(4, int)
    j, d = distances.nearest(x[:4], x[:4], query_groups=only, reference_groups=only)
    assert (j == -1).all() and np.isinf(d).all()
    with pytest.raises(ValueError, match="feature sizes differ"):
        distances.nearest(x, x[:, :3])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blockwise_merge_equals_one_block(dtype):
    """All n² distances cached in one block vs blocks of a few rows recomputed on refresh:
    the same merges (and both equal scipy's single linkage)."""
    rng = np.random.default_rng(2)
    x = blobs(rng, 30, 6, 5, 0.5).astype(dtype)
    n = len(x)
    start = clustering.agglomerative_clustering(x, 120, dtype=dtype)
    for neighbours in (2, 16):
        one, many = {}, {}
        a = clustering.merge_step(
            x, start, 100, neighbours=neighbours, block_entries=n * n, dtype=dtype, stats=one
        )
        b = clustering.merge_step(
            x, start, 100, neighbours=neighbours, block_entries=3 * n, dtype=dtype, stats=many
        )
        assert one["cached"] and not many["cached"]
        np.testing.assert_array_equal(a, b)
        if neighbours == 2:
            assert many["refreshes"] > 0  # the refresh path ran
        ref = fcluster(linkage(x.astype(np.float64), "single"), 20, "maxclust")
        pairs = np.unique(np.stack([a, ref], 1), axis=0)
        assert len(pairs) == len(np.unique(a)) == 20
    ta = clustering.cluster_spanning_tree(x, start, neighbours=3, block_entries=n * n, dtype=dtype)
    tb = clustering.cluster_spanning_tree(x, start, neighbours=3, block_entries=2 * n, dtype=dtype)
    np.testing.assert_array_equal(ta[0], tb[0])
    np.testing.assert_array_equal(ta[1], tb[1])
    np.testing.assert_allclose(ta[2], tb[2], rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_blockwise_silhouette_and_vote_equal_one_block():
    rng = np.random.default_rng(3)
    x = blobs(rng, 12, 8, 6, 0.7)
    labels = clustering.agglomerative_clustering(x, 15)
    one = filtering.silhouette_samples(x, labels, block_entries=len(x) ** 2)
    many = filtering.silhouette_samples(x, labels, block_entries=5 * len(x))
    np.testing.assert_allclose(many, one, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(one, sklearn_metrics.silhouette_samples(x, labels), atol=1e-10)
    f32 = filtering.silhouette_samples(x.astype(np.float32), labels, dtype=np.float32)
    np.testing.assert_allclose(f32, one, atol=1e-5)
    ir = x + 0.2 * rng.normal(size=x.shape)
    cluster = np.concatenate([labels, labels])
    both = np.concatenate([x, ir])
    results = [pseudo_labels.vote(both, cluster, len(x), b) for b in (len(x) ** 2, 3 * len(x))]
    (r1, link1, table1, nb1), (r2, link2, table2, nb2) = results
    for u, v in ((r1.nearest_ir, r2.nearest_ir), (link1, link2), (table1, table2), (nb1, nb2)):
        np.testing.assert_array_equal(u, v)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_block_size_caps_memory():
    """n = 1,500: all distances would be 18 MB in float64; blocks of 2**14 entries keep every
    pass far below that, while one block of n² holds them (the cached path)."""
    rng = np.random.default_rng(4)
    x = blobs(rng, 300, 5, 4, 0.3)
    n = len(x)
    full = n * n * 8
    labels = np.repeat(np.arange(300), 5)
    small = 1 << 14
    steps = {
        "merge": lambda b: clustering.merge_step(x, np.arange(n), n // 2, block_entries=b),
        "silhouette": lambda b: filtering.silhouette_samples(x, labels, block_entries=b),
        "nearest": lambda b: distances.nearest(x, x[::-1], block_entries=b),
    }
    for name, fn in steps.items():
        peak = _peak_bytes(lambda: fn(small))
        assert peak < full / 4, (name, peak, full)
    assert _peak_bytes(lambda: steps["merge"](n * n)) >= full  # one block: the cached matrix


def test_block_rows_and_errors():
    assert distances.block_rows_for(100, 1000) == 10
    assert distances.block_rows_for(10**6, 10) == 1  # at least one row
    with pytest.raises(ValueError, match="block_entries"):
        distances.block_rows_for(10, 0)
