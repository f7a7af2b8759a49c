"""Intra-domain bottom-up agglomerative clustering for CSAN pseudo-labels.

CSAN (Nikhal et al., "Cross-Spectral Attention for Unsupervised RGB-IR Face Verification and
Person Re-identification") §III-B and Alg. 1 lines 2-3: every image starts as its own cluster;
the distance between two clusters is the Euclidean distance of their closest pair of features
(single linkage); at each step a fraction of the most similar cluster pairs is merged, until
the desired number of clusters remains.  The paper leaves the fraction to its reference
method (BUC, Lin et al. AAAI 2019, and its public code): ``int(n · mp)`` merges per step with
``n`` the number of images and ``mp = 0.05`` (`merge_schedule`).

Between steps the reference method trains a memory bank of cluster centres with cross-entropy,
so the features change from one step to the next.  That is a training-loop concern; here a
merge step is a pure function ``(features, current labels, number of merges) -> new labels``.

How a step is computed.  Merging the closest pairs one after the other (skipping pairs that an
earlier merge of the same step already joined, as BUC does) is Kruskal's algorithm on the graph
whose vertices are the current clusters and whose edge weights are single-linkage distances, so
the merges of a step are the lightest edges of that graph's minimum spanning tree.  The tree is
found with Borůvka's algorithm over samples: each round every component takes its nearest
sample outside itself.  Nearest neighbours come from cached k-nearest-neighbour lists that
exclude the sample's own component (refreshed blockwise only for samples whose whole list has
been absorbed into their component), so memory stays O(block · n + n · k) and the O(n² d)
distance work is done a few times, not once per round.  With fixed features, merging to a
target count in any number of steps gives the same partition as cutting the single-linkage
dendrogram (scipy's ``fcluster(..., "maxclust")``), up to exact distance ties.
"""

from __future__ import annotations

import numpy as np

# Entries of one distance block (rows x all samples); 4M float64 = 32 MB.
DEFAULT_BLOCK_ENTRIES = 1 << 22
DEFAULT_NEIGHBOURS = 16


def _as_features(features: np.ndarray, dtype=np.float64) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [n, d] array, got shape {x.shape}")
    x = x.astype(dtype, copy=False)
    if not np.all(np.isfinite(x)):
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise ValueError(f"features contain NaN/inf (first at sample {bad})")
    return x


def _as_labels(labels: np.ndarray, n: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def block_rows_for(n_columns: int, block_entries: int = DEFAULT_BLOCK_ENTRIES) -> int:
    """Rows of a distance block against ``n_columns`` samples that fit ``block_entries``."""
    return max(1, int(block_entries) // max(1, int(n_columns)))


def squared_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)] via ‖a‖² + ‖b‖² − 2 a·b, clipped at 0."""
    a_sq = np.einsum("ij,ij->i", a, a)
    if b_sq is None:
        b_sq = np.einsum("ij,ij->i", b, b)
    d = a @ b.T
    d *= -2.0
    d += a_sq[:, None]
    d += b_sq[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def relabel_contiguous(labels: np.ndarray) -> np.ndarray:
    """Labels 0..K-1 numbered by each cluster's first sample; negative labels stay -1."""
    y = np.asarray(labels).astype(np.int64)
    out = np.full(y.shape, -1, np.int64)
    valid = y >= 0
    if valid.any():
        _, first, inverse = np.unique(y[valid], return_index=True, return_inverse=True)
        rank = np.empty(len(first), np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        out[valid] = rank[inverse]
    return out


def merge_schedule(
    num_samples: int, target_clusters: int, merge_fraction: float = 0.05
) -> list[int]:
    """Cluster counts after each merge step: ``int(merge_fraction · num_samples)`` merges (at
    least one) per step, as in BUC (the reference for CSAN §III-B); the last step stops at
    the target."""
    if not 1 <= target_clusters <= num_samples:
        raise ValueError(
            f"target_clusters must be in [1, num_samples={num_samples}], got {target_clusters}"
        )
    if not 0.0 < merge_fraction <= 1.0:
        raise ValueError(f"merge_fraction must be in (0, 1], got {merge_fraction}")
    per_step = max(1, int(merge_fraction * num_samples))
    counts, k = [], num_samples
    while k > target_clusters:
        k = max(target_clusters, k - per_step)
        counts.append(k)
    return counts


class _DisjointSets:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if ra < rb:
            ra, rb = rb, ra
        self.parent[ra] = rb
        return True

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], np.int64)


def _nearest_outside(
    x: np.ndarray,
    x_sq: np.ndarray,
    rows: np.ndarray,
    component: np.ndarray,
    k: int,
    block_entries: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For samples ``rows``: their k nearest samples outside their own component, ascending.

    Returns (indices [r, k], squared distances [r, k]); missing entries are -1 / inf.
    """
    n = x.shape[0]
    idx_out = np.full((len(rows), k), -1, np.int64)
    dist_out = np.full((len(rows), k), np.inf)
    step = block_rows_for(n, block_entries)
    for start in range(0, len(rows), step):
        r = rows[start : start + step]
        d = squared_distances(x[r], x, x_sq)
        d[component[r][:, None] == component[None, :]] = np.inf
        kk = min(k, n)
        if kk < n:
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        else:
            part = np.tile(np.arange(n), (len(r), 1))
        pd = np.take_along_axis(d, part, axis=1)
        order = np.lexsort((part, pd), axis=1)
        part = np.take_along_axis(part, order, axis=1)
        pd = np.take_along_axis(pd, order, axis=1)
        part[~np.isfinite(pd)] = -1
        idx_out[start : start + len(r), :kk] = part
        dist_out[start : start + len(r), :kk] = pd
    return idx_out, dist_out


def cluster_spanning_tree(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    neighbours: int = DEFAULT_NEIGHBOURS,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
    dtype=np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum spanning tree of the clusters under single linkage (CSAN §III-B distance).

    ``labels``: current cluster id of each sample (any non-negative ints).  Returns
    (cluster_a [K-1], cluster_b [K-1], distance [K-1]) in ascending distance, where cluster ids
    are those of ``relabel_contiguous(labels)``; Kruskal merges follow this order.
    ``dtype=np.float32`` halves the distance work at the cost of exactness at near-ties.
    """
    x = _as_features(features, dtype)
    n = x.shape[0]
    y = _as_labels(labels, n)
    if (y < 0).any():
        bad = int(np.argmax(y < 0))
        raise ValueError(f"labels must be non-negative; sample {bad} has label {y[bad]}")
    clusters = relabel_contiguous(y)
    num_clusters = int(clusters.max()) + 1
    if neighbours < 1:
        raise ValueError(f"neighbours must be >= 1, got {neighbours}")
    x_sq = np.einsum("ij,ij->i", x, x)
    dsu = _DisjointSets(num_clusters)
    component = clusters.copy()  # root cluster id of each sample's component
    k = min(neighbours, n)
    knn_idx, knn_dist = _nearest_outside(x, x_sq, np.arange(n), component, k, block_entries)
    # A list shorter than k held every sample outside the component when it was computed.
    complete = ~np.isfinite(knn_dist[:, -1])
    edges_a, edges_b, edges_d = [], [], []
    num_components = num_clusters
    rows_all = np.arange(n)
    while num_components > 1:
        valid = knn_idx >= 0
        outside = valid & (component[np.where(valid, knn_idx, 0)] != component[:, None])
        has = outside.any(axis=1)
        first = np.argmax(outside, axis=1)
        cand_d = np.where(has, knn_dist[rows_all, first], np.inf)
        cand_j = np.where(has, knn_idx[rows_all, first], -1)
        best = np.full(num_clusters, np.inf)
        np.minimum.at(best, component, cand_d)
        # A sample whose list lies inside its component is at least its k-th distance away
        # from anything outside; refresh it only if that bound could beat the component's best.
        kth = np.where(complete, np.inf, knn_dist[:, -1])
        stale = ~has & (kth < best[component])
        if stale.any():
            rows = np.flatnonzero(stale)
            new_idx, new_dist = _nearest_outside(x, x_sq, rows, component, k, block_entries)
            knn_idx[rows], knn_dist[rows] = new_idx, new_dist
            complete[rows] = ~np.isfinite(new_dist[:, -1])
            ok = new_idx[:, 0] >= 0
            cand_d[rows] = np.where(ok, new_dist[:, 0], np.inf)
            cand_j[rows] = new_idx[:, 0]
        # Each component's lightest outgoing edge (ties: smaller sample index).
        order = np.lexsort((rows_all, cand_d, component))
        comp_sorted = component[order]
        head = np.ones(n, bool)
        head[1:] = comp_sorted[1:] != comp_sorted[:-1]
        picks = order[head]
        picks = picks[np.isfinite(cand_d[picks])]
        picks = picks[np.lexsort((picks, cand_d[picks]))]
        for i in picks:
            j = int(cand_j[i])
            if dsu.union(int(component[i]), int(component[j])):
                edges_a.append(int(clusters[i]))
                edges_b.append(int(clusters[j]))
                edges_d.append(float(cand_d[i]))
                num_components -= 1
        if len(picks) == 0:  # pragma: no cover - a complete graph is always connected
            raise RuntimeError("spanning tree search stalled: no edge leaves any component")
        component = dsu.roots()[clusters]
    a = np.asarray(edges_a, np.int64)
    b = np.asarray(edges_b, np.int64)
    d = np.sqrt(np.asarray(edges_d, np.float64))
    order = np.lexsort((np.maximum(a, b), np.minimum(a, b), d))
    return a[order], b[order], d[order]


def merge_step(
    features: np.ndarray,
    labels: np.ndarray,
    num_merges: int,
    *,
    neighbours: int = DEFAULT_NEIGHBOURS,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
    dtype=np.float64,
) -> np.ndarray:
    """One agglomeration step (CSAN §III-B): merge the ``num_merges`` closest cluster pairs.

    Pairs are taken in ascending single-linkage distance, skipping a pair already joined by an
    earlier merge of this step, so the number of clusters drops by exactly ``num_merges``.
    Returns labels 0..K-1 (K = clusters before − ``num_merges``) numbered by first sample.
    """
    x = _as_features(features, dtype)
    y = relabel_contiguous(_as_labels(labels, x.shape[0]))
    if (y < 0).any():
        raise ValueError("labels must be non-negative (every sample belongs to a cluster)")
    num_clusters = int(y.max()) + 1
    if not 0 <= num_merges < num_clusters:
        raise ValueError(
            f"num_merges must be in [0, {num_clusters - 1}] for {num_clusters} clusters, "
            f"got {num_merges}"
        )
    if num_merges == 0:
        return y
    a, b, _ = cluster_spanning_tree(
        x, y, neighbours=neighbours, block_entries=block_entries, dtype=dtype
    )
    dsu = _DisjointSets(num_clusters)
    for i in range(num_merges):
        dsu.union(int(a[i]), int(b[i]))
    return relabel_contiguous(dsu.roots()[y])


def agglomerative_clustering(
    features: np.ndarray,
    target_clusters: int,
    *,
    labels: np.ndarray | None = None,
    neighbours: int = DEFAULT_NEIGHBOURS,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
    dtype=np.float64,
) -> np.ndarray:
    """Cluster to ``target_clusters`` with fixed features (CSAN Alg. 1 lines 2-3).

    Starts from ``labels`` (default: every image its own cluster).  With features that do not
    change between steps, the fraction-per-step schedule reaches the same partition as one
    step, so this is a single `merge_step`; a training task whose features change between
    steps calls `merge_step` once per entry of `merge_schedule` instead.
    """
    x = _as_features(features, dtype)
    y = np.arange(x.shape[0]) if labels is None else _as_labels(labels, x.shape[0])
    y = relabel_contiguous(y)
    num_clusters = int(y.max()) + 1
    if not 1 <= target_clusters <= num_clusters:
        raise ValueError(
            f"target_clusters must be in [1, {num_clusters}] (clusters now), got {target_clusters}"
        )
    return merge_step(
        x,
        y,
        num_clusters - target_clusters,
        neighbours=neighbours,
        block_entries=block_entries,
        dtype=dtype,
    )
