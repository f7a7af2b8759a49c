"""Cluster quality filtering for CSAN pseudo-labels (Alg. 1 lines 4-15, Eq. 7, §IV-C).

Per sample, the silhouette (Rousseeuw 1987, CSAN Eq. 7) is ``(b − a) / max(a, b)`` with ``a``
the mean distance to the other members of its cluster and ``b`` the smallest mean distance to
another cluster; a cluster's score is the mean over its members, and a sample alone in its
cluster scores 0 (the convention of scikit-learn's ``silhouette_samples``).  One pass over all
pairs: each block of rows gets its distances to every sample from one GEMM
(`hfrjax.recipes.csan.distances`) and its per-cluster sums from one product with the sparse
one-hot membership, so no temporary exceeds ``block_entries`` distances (plus the block's
[rows, K] sums) whatever n.

Clusters are then discarded when extremely small or large (§IV-C gives no numbers: bounds are
parameters) or when their silhouette is ≤ χ = 0.6 (Alg. 1 lines 6 and 12).
"""

from __future__ import annotations

import flax
import numpy as np
import scipy.sparse

from hfrjax.recipes.csan.clustering import _as_labels
from hfrjax.recipes.csan.distances import (
    DEFAULT_BLOCK_ENTRIES,
    as_features,
    block_rows_for,
    squared_distances,
    squared_norms,
)

SILHOUETTE_THRESHOLD = 0.6  # χ, CSAN Alg. 1


def silhouette_samples(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
    dtype=np.float64,
) -> np.ndarray:
    """Per-sample silhouette (CSAN Eq. 7), Euclidean, computed blockwise.

    ``labels``: cluster ids 0..K-1 (K ≥ 2); samples with a negative label are left out of the
    computation entirely (they get NaN).  ``dtype``: precision of the distance GEMM
    (float32 halves its cost; scores then differ from float64 by float32 rounding).
    """
    x_all = as_features(features, dtype)
    y_all = _as_labels(labels, x_all.shape[0])
    member = y_all >= 0
    out = np.full(x_all.shape[0], np.nan)
    if not member.any():
        raise ValueError("silhouette needs at least one labelled sample")
    x, y = (x_all, y_all) if member.all() else (x_all[member], y_all[member])
    num_clusters = int(y.max()) + 1
    sizes = np.bincount(y, minlength=num_clusters)
    if np.count_nonzero(sizes) < 2:
        found = np.count_nonzero(sizes)
        raise ValueError(f"silhouette needs at least 2 non-empty clusters, got {found}")
    n = len(y)
    one_hot = scipy.sparse.csr_matrix(
        (np.ones(n, x.dtype), (np.arange(n), y)), shape=(n, num_clusters)
    )
    x_sq = squared_norms(x)
    scores = np.empty(n)
    step = block_rows_for(n, block_entries)
    empty = sizes == 0
    inv_sizes = 1.0 / np.maximum(sizes, 1)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        d = squared_distances(x[rows], x, x_sq, x_sq[rows])
        at = np.arange(d.shape[0])
        d[at, start + at] = 0.0  # Self-distance: exactly 0, not sqrt(rounding noise).
        np.sqrt(d, out=d)
        sums = np.asarray(d @ one_hot, np.float64)  # [block, K] per-cluster distance sums
        del d
        own = y[rows]
        own_size = sizes[own]
        a = sums[at, own] / np.maximum(own_size - 1, 1)
        sums *= inv_sizes[None, :]
        sums[at, own] = np.inf
        sums[:, empty] = np.inf
        b = sums.min(axis=1)
        denom = np.maximum(a, b)
        s = np.where(denom > 0, (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
        scores[rows] = np.where(own_size > 1, s, 0.0)
    out[member] = scores
    return out


def cluster_silhouettes(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
    dtype=np.float64,
) -> np.ndarray:
    """Silhouette of each cluster 0..K-1: the mean of its members' scores (NaN if empty)."""
    y = _as_labels(labels, np.asarray(features).shape[0])
    s = silhouette_samples(features, y, block_entries=block_entries, dtype=dtype)
    member = y >= 0
    num_clusters = int(y[member].max()) + 1
    total = np.bincount(y[member], weights=s[member], minlength=num_clusters)
    count = np.bincount(y[member], minlength=num_clusters)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


@flax.struct.dataclass
class ClusterFilter:
    """Outcome of filtering (arrays only, so it can sit in a checkpointed pytree).

    labels: [n] the input cluster id, or -1 where the sample's cluster was removed.
    kept: [K] whether cluster k survived.  sizes: [K].  silhouette: [K] cluster mean score.
    """

    labels: np.ndarray
    kept: np.ndarray
    sizes: np.ndarray
    silhouette: np.ndarray


def filter_clusters(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    min_size: int = 2,
    max_size: int | None = None,
    silhouette_threshold: float = SILHOUETTE_THRESHOLD,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
    dtype=np.float64,
) -> ClusterFilter:
    """Keep clusters with ``min_size ≤ size ≤ max_size`` and silhouette > χ (Alg. 1 l. 4-15).

    The silhouette is computed on the whole partition before any cluster is removed, as in
    Alg. 1 where every cluster's score is evaluated against the unfiltered clustering.
    """
    x = as_features(features, dtype)
    y = _as_labels(labels, x.shape[0])
    if (y < 0).any():
        bad = int(np.argmax(y < 0))
        raise ValueError(f"labels must be non-negative; sample {bad} has label {y[bad]}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    if max_size is not None and max_size < min_size:
        raise ValueError(f"max_size ({max_size}) must be >= min_size ({min_size})")
    num_clusters = int(y.max()) + 1
    sizes = np.bincount(y, minlength=num_clusters)
    if np.count_nonzero(sizes) >= 2:
        sil = cluster_silhouettes(x, y, block_entries=block_entries, dtype=dtype)
    else:  # one cluster: no neighbour cluster, the score is undefined (and fails χ)
        sil = np.where(sizes > 0, 0.0, np.nan)
    upper = np.inf if max_size is None else max_size
    kept = (sizes >= min_size) & (sizes <= upper) & (sil > silhouette_threshold)
    return ClusterFilter(
        labels=np.where(kept[y], y, -1).astype(np.int64),
        kept=kept,
        sizes=sizes.astype(np.int64),
        silhouette=sil,
    )
