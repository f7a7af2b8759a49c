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
whose vertices are the current clusters and whose edge weights are single-linkage distances;
it stops after the step's merges, so only the lightest edges of the minimum spanning tree are
ever needed.  The edges come from each sample's ``neighbours`` nearest samples outside its
cluster, found in one blockwise pass (one GEMM, `hfrjax.recipes.csan.distances`).  A sample
whose listed neighbours have all joined its component is a lower bound (its last listed
distance) until that bound is the lightest candidate; then its list alone is recomputed,
excluding its component — from the cached distance matrix when all n² distances fit in one
block of ``block_entries``, else by a GEMM over those rows.  Memory is O(block_entries +
n · neighbours) beside the features.  With fixed features, merging to a target count in any
number of steps gives the same partition as cutting the single-linkage dendrogram (scipy's
``fcluster(..., "maxclust")``), up to exact distance ties (broken by cluster id).
"""

from __future__ import annotations

import heapq

import numpy as np

from hfrjax.recipes.csan.distances import (
    DEFAULT_BLOCK_ENTRIES,
    as_features,
    block_rows_for,
    squared_distances,
    squared_norms,
)

DEFAULT_NEIGHBOURS = 16
# Rows x columns of one neighbour-selection chunk (its mask and argpartition temporaries).
_SELECT_ENTRIES = 1 << 20


def _as_labels(labels: np.ndarray, n: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


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


def nearest_outside(
    x: np.ndarray,
    x_sq: np.ndarray,
    rows: np.ndarray,
    group: np.ndarray,
    k: int,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
    cache: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For samples ``rows``: their ``k`` nearest samples of another ``group``, ascending
    (squared distance, then index).

    Distances come from ``cache`` (all n² squared distances) when given, else from a GEMM of
    ``block_rows_for(n, block_entries)`` rows at a time.  Returns (indices [r, k], squared
    distances [r, k]); missing entries are -1 / inf.
    """
    n = x.shape[0]
    rows = np.asarray(rows, np.int64)
    kk = min(k, n)
    idx_out = np.full((len(rows), k), -1, np.int64)
    dist_out = np.full((len(rows), k), np.inf)
    step = len(rows) if cache is not None else block_rows_for(n, block_entries)
    select = block_rows_for(n, min(_SELECT_ENTRIES, block_entries))
    for start in range(0, len(rows), max(step, 1)):
        r = rows[start : start + step]
        block = None if cache is not None else squared_distances(x[r], x, x_sq, x_sq[r])
        for s in range(0, len(r), select):
            rs = r[s : s + select]
            d = cache[rs] if cache is not None else block[s : s + select]
            d[group[rs][:, None] == group[None, :]] = np.inf  # (cache[rs] is a copy)
            if kk < n:
                part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            else:
                part = np.broadcast_to(np.arange(n), (len(rs), n))
            pd = np.take_along_axis(d, part, axis=1)
            order = np.lexsort((part, pd), axis=1)
            part = np.take_along_axis(part, order, axis=1)
            pd = np.take_along_axis(pd, order, axis=1)
            part = np.where(np.isfinite(pd), part, -1)
            out = slice(start + s, start + s + len(rs))
            idx_out[out, :kk] = part
            dist_out[out, :kk] = pd
    return idx_out, dist_out


class _Kruskal:
    """Kruskal's algorithm over clusters (single linkage), edges found lazily per sample.

    Heap entries ``(squared distance, kind, lo, hi, sample, version)``: ``kind`` 1 is the
    sample's nearest listed neighbour not yet known to share its component (cluster ids
    ``lo < hi`` of the pair break distance ties); ``kind`` 0 is a sample whose list is
    exhausted, keyed by its last listed distance — a lower bound on its next edge, so it sorts
    first at equal distance and is refreshed before any edge at that distance is accepted.
    An entry whose version is not the sample's current one (its list was recomputed) is
    dropped when popped.

    A refresh recomputes the exhausted samples that bound the next edge and, in the same pass
    (up to one block of rows), those with at most a quarter of their list left outside their
    component: without the cached matrix each pass reads all features, so few large passes
    beat many small ones.
    """

    def __init__(self, x, clusters, neighbours, block_entries):
        self.x, self.clusters = x, clusters
        n = x.shape[0]
        self.k = min(neighbours, n)
        self.block_entries = block_entries
        self.x_sq = squared_norms(x)
        self.cache = None
        if n * n <= block_entries:  # The whole matrix is one block: keep it for refreshes.
            self.cache = squared_distances(x, x, self.x_sq, self.x_sq)
        num_clusters = int(clusters.max()) + 1
        self.root_of = list(range(num_clusters))  # Component (a cluster id) of each cluster.
        self.members = [[c] for c in range(num_clusters)]
        self.refreshes = 0  # Refresh passes and rows (for the benchmark).
        self.refreshed_rows = 0
        self.heap: list = []
        self.ptr = [0] * n
        self.version = [0] * n
        self.idx, self.dist = nearest_outside(
            x, self.x_sq, np.arange(n), clusters, self.k, block_entries, self.cache
        )
        # A list with an empty last entry held every sample outside the group.
        self.complete = ~np.isfinite(self.dist[:, -1])
        self.idx_l, self.dist_l = self.idx.tolist(), self.dist.tolist()
        self.cluster_l = clusters.tolist()
        for i in range(n):
            self._push(i)

    def find(self, c: int) -> int:
        return self.root_of[c]

    def _union(self, a: int, b: int) -> None:
        """Small-to-large: every cluster's component id is looked up in O(1)."""
        if len(self.members[a]) < len(self.members[b]):
            a, b = b, a
        for c in self.members[b]:
            self.root_of[c] = a
        self.members[a].extend(self.members[b])
        self.members[b] = []

    def _push(self, i: int) -> None:
        p = self.ptr[i]
        if p < self.k and self.idx_l[i][p] >= 0:
            ci, cj = self.cluster_l[i], self.cluster_l[self.idx_l[i][p]]
            entry = (self.dist_l[i][p], 1, min(ci, cj), max(ci, cj), i, self.version[i])
        elif self.complete[i]:
            return  # Nothing outside its component at all.
        else:
            entry = (self.dist_l[i][self.k - 1], 0, 0, 0, i, self.version[i])
        heapq.heappush(self.heap, entry)

    def _refresh(self, required: list[int]) -> None:
        component = np.asarray(self.root_of, np.int64)[self.clusters]
        outside = (self.idx >= 0) & (component[np.maximum(self.idx, 0)] != component[:, None])
        low = np.flatnonzero((outside.sum(axis=1) <= self.k // 4) & ~self.complete)
        low = low[np.argsort(self.dist[low, -1], kind="stable")]  # Nearest bounds first.
        cap = max(len(required), block_rows_for(len(self.x), self.block_entries))
        rows = np.unique(np.concatenate([np.asarray(required, np.int64), low]))
        if len(rows) > cap:
            extra = low[~np.isin(low, required)][: cap - len(required)]
            rows = np.unique(np.concatenate([np.asarray(required, np.int64), extra]))
        idx, dist = nearest_outside(
            self.x, self.x_sq, rows, component, self.k, self.block_entries, self.cache
        )
        self.refreshes += 1
        self.refreshed_rows += len(rows)
        self.idx[rows], self.dist[rows] = idx, dist
        self.complete[rows] = ~np.isfinite(dist[:, -1])
        for r, i, d in zip(rows.tolist(), idx.tolist(), dist.tolist()):
            self.idx_l[r], self.dist_l[r] = i, d
            self.ptr[r] = 0
            self.version[r] += 1
            self._push(r)

    def merges(self, count: int):
        """Yields the next ``count`` Kruskal merges as (cluster a, cluster b, squared distance),
        a and b the clusters of the pair's two samples."""
        heap, cluster, root_of, version = self.heap, self.cluster_l, self.root_of, self.version
        done = 0
        while done < count:
            stale = []
            while True:
                if not heap:  # pragma: no cover - a complete graph is connected
                    raise RuntimeError("spanning tree search stalled: no edge leaves a component")
                entry = heapq.heappop(heap)
                i = entry[4]
                if entry[5] != version[i]:
                    continue  # Superseded by a refresh.
                if entry[1] == 0:
                    stale.append(i)
                    continue
                j = self.idx_l[i][self.ptr[i]]
                ri, rj = root_of[cluster[i]], root_of[cluster[j]]
                if ri != rj:
                    break
                self.ptr[i] += 1  # Inside the component now: the next listed neighbour.
                self._push(i)
            if stale:  # Their next edges may be lighter than this one: recompute them first.
                heapq.heappush(heap, entry)
                self._refresh(stale)
                continue
            self._union(ri, rj)
            done += 1
            self.ptr[i] += 1
            self._push(i)
            yield cluster[i], cluster[j], entry[0]


def _prepare(features, labels, neighbours, dtype):
    x = as_features(features, dtype)
    y = relabel_contiguous(_as_labels(labels, x.shape[0]))
    if (y < 0).any():
        bad = int(np.argmax(y < 0))
        raise ValueError(
            f"labels must be non-negative; sample {bad} has label {np.asarray(labels)[bad]}"
        )
    if neighbours < 1:
        raise ValueError(f"neighbours must be >= 1, got {neighbours}")
    return x, y


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
    (cluster_a [K-1], cluster_b [K-1], distance [K-1]) in Kruskal's order (ascending distance,
    ties by cluster ids), a < b, where cluster ids are those of ``relabel_contiguous(labels)``.
    ``dtype=np.float32`` halves the distance work at the cost of exactness at near-ties.
    """
    x, y = _prepare(features, labels, neighbours, dtype)
    k = int(y.max()) + 1
    edges = np.array(list(_Kruskal(x, y, neighbours, block_entries).merges(k - 1)))
    edges = edges.reshape(-1, 3)
    a, b = np.sort(edges[:, :2].astype(np.int64), axis=1).T
    return a, b, np.sqrt(edges[:, 2])


def merge_step(
    features: np.ndarray,
    labels: np.ndarray,
    num_merges: int,
    *,
    neighbours: int = DEFAULT_NEIGHBOURS,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
    dtype=np.float64,
    stats: dict | None = None,
) -> np.ndarray:
    """One agglomeration step (CSAN §III-B): merge the ``num_merges`` closest cluster pairs.

    Pairs are taken in ascending single-linkage distance, skipping a pair already joined by an
    earlier merge of this step, so the number of clusters drops by exactly ``num_merges``.
    Returns labels 0..K-1 (K = clusters before − ``num_merges``) numbered by first sample.
    ``stats`` (optional) receives the number of refresh passes and refreshed rows.
    """
    x, y = _prepare(features, labels, neighbours, dtype)
    num_clusters = int(y.max()) + 1
    if not 0 <= num_merges < num_clusters:
        raise ValueError(
            f"num_merges must be in [0, {num_clusters - 1}] for {num_clusters} clusters, "
            f"got {num_merges}"
        )
    if num_merges == 0:
        return y
    kruskal = _Kruskal(x, y, neighbours, block_entries)
    for _ in kruskal.merges(num_merges):
        pass
    if stats is not None:
        stats.update(
            refreshes=kruskal.refreshes,
            refreshed_rows=kruskal.refreshed_rows,
            cached=kruskal.cache is not None,
        )
    roots = np.asarray(kruskal.root_of, np.int64)
    return relabel_contiguous(roots[y])


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
    x = as_features(features, dtype)
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
