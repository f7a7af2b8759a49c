"""Blockwise Euclidean distances for CSAN's pseudo-labels: one GEMM per pass, bounded blocks.

Single linkage (CSAN §III-B), the silhouette (Eq. 7) and cross-spectral voting (Alg. 1 lines
20-31) all need Euclidean distances among thousands of high-dimensional features (RegDB:
4,120 images per modality).  Squared distances are ``‖a‖² + ‖b‖² − 2 a·bᵀ``, so a pass over
all pairs is one matrix product (GEMM), done ``block_rows_for(n)`` rows at a time: no
temporary holds more than ``block_entries`` distances, whatever the number of samples.

`nearest` gets float64 answers from a float32 product: a float32 GEMM finds, per query,
every reference whose distance lies within the float32 rounding bound of the smallest one
(Higham, "Accuracy and Stability of Numerical Algorithms", §3.1: an inner product of length d
is off by at most γ_d·|a|·|b|, γ_d = d·u / (1 − d·u)), and only those few are re-scored in
float64.
"""

from __future__ import annotations

import numpy as np

# Entries of one distance block: 32M = 128 MB in float32, so a RegDB modality's whole matrix
# (4,120² ≈ 17M) is one block; larger sets are processed in blocks of this size.
DEFAULT_BLOCK_ENTRIES = 1 << 25
# float32 re-scoring: candidates per query beyond which a block is recomputed in float64, and
# the feature entries converted to float64 at a time (small enough to stay in cache).
_MAX_CANDIDATES = 8
_RESCORE_ENTRIES = 1 << 19


def as_features(features: np.ndarray, dtype=np.float64) -> np.ndarray:
    """``features`` as a finite [n, d] array of ``dtype`` (no copy when it already is);
    ``dtype=None`` keeps a floating dtype (float64 for others)."""
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [n, d] array, got shape {x.shape}")
    if dtype is None:
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    x = x.astype(dtype, copy=False)
    if not np.all(np.isfinite(x)):
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise ValueError(f"features contain NaN/inf (first at sample {bad})")
    return x


def block_rows_for(n_columns: int, block_entries: int = DEFAULT_BLOCK_ENTRIES) -> int:
    """Rows of a distance block against ``n_columns`` samples that fit ``block_entries``."""
    if block_entries < 1:
        raise ValueError(f"block_entries must be >= 1, got {block_entries}")
    return max(1, int(block_entries) // max(1, int(n_columns)))


def squared_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def squared_distances(
    a: np.ndarray,
    b: np.ndarray,
    b_sq: np.ndarray | None = None,
    a_sq: np.ndarray | None = None,
) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)] via ‖a‖² + ‖b‖² − 2 a·b, clipped at 0,
    in the dtype of ``a`` and ``b`` (one GEMM)."""
    if a_sq is None:
        a_sq = squared_norms(a)
    if b_sq is None:
        b_sq = squared_norms(b)
    d = a @ b.T
    d *= -2.0
    d += a_sq[:, None]
    d += b_sq[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def _rounding_bound(dim: int) -> float:
    """Relative bound on a float32 squared distance: |d̂ − d| ≤ bound · (‖a‖ + ‖b‖)².

    The product's error is ≤ γ_d ‖a‖‖b‖ (Higham §3.1) and rounding the inputs to float32
    adds ≤ 2u‖a‖‖b‖ (u = 2⁻²⁴); with 2‖a‖‖b‖ ≤ (‖a‖+‖b‖)²/2 and the three float32 additions
    (≤ 3u(‖a‖+‖b‖)²) this is ≤ (γ_d/2 + 4u)(‖a‖+‖b‖)²; the bound doubles it for margin.
    """
    u = float(np.finfo(np.float32).eps) / 2
    gamma = dim * u / (1.0 - dim * u)
    return gamma + 8 * u


def squared_norms64(x: np.ndarray) -> np.ndarray:
    """Float64 squared norms of the rows of ``x`` (float32 products are exact in float64;
    einsum converts in small buffers, so no float64 copy of ``x`` is made)."""
    return np.einsum("ij,ij->i", x, x, dtype=np.float64)


def nearest(
    queries: np.ndarray,
    references: np.ndarray,
    *,
    query_groups: np.ndarray | None = None,
    reference_groups: np.ndarray | None = None,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """(index, float64 squared distance) of each query's nearest reference, blockwise.

    With groups, a query ignores the references of its own group (index -1 and distance inf
    if none is left).  Ties go to the smaller reference index.  The answer equals a float64
    computation for ``dtype=np.float32`` too: candidates within the float32 rounding bound of
    each row's minimum are re-scored in float64 (module docstring).
    """
    exact = np.dtype(dtype) == np.float64
    work = np.float64 if exact else np.float32
    q = as_features(queries, work)
    r = as_features(references, work)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"feature sizes differ: queries {q.shape[1]}, references {r.shape[1]}")
    # Float64 originals for re-scoring (float32 inputs are exact in float64).
    q_orig = np.asarray(queries)
    r_orig = np.asarray(references)
    q_sq, r_sq = squared_norms64(q_orig), squared_norms64(r_orig)
    grouped = query_groups is not None
    if grouped:
        qg, rg = np.asarray(query_groups), np.asarray(reference_groups)
    r_norm_max = float(np.sqrt(r_sq.max()))
    bound = _rounding_bound(q.shape[1])
    idx = np.full(len(q), -1, np.int64)
    dist = np.full(len(q), np.inf)
    step = block_rows_for(len(r), block_entries)
    r_sq_w = r_sq.astype(work)
    for start in range(0, len(q), step):
        rows = slice(start, min(len(q), start + step))
        d = squared_distances(q[rows], r, r_sq_w, q_sq[rows].astype(work))
        if grouped:
            d[qg[rows][:, None] == rg[None, :]] = np.inf
        j = np.argmin(d, axis=1)
        best = d[np.arange(len(j)), j].astype(np.float64)
        if not exact:
            margin = 2 * bound * (np.sqrt(q_sq[rows]) + r_norm_max) ** 2
            # Rows whose every entry is excluded (best = inf) have no candidates.
            limit = np.where(np.isfinite(best), best + margin, -1.0).astype(d.dtype)
            limit = np.nextafter(limit, np.inf, dtype=d.dtype)  # Rounded up, never down.
            cand_r, cand_c = np.nonzero(d <= limit[:, None])
            if len(cand_r) > _MAX_CANDIDATES * len(j):  # Near-ties everywhere: float64 block.
                d = squared_distances(
                    q_orig[rows].astype(np.float64), r_orig.astype(np.float64), r_sq, q_sq[rows]
                )
                if grouped:
                    d[qg[rows][:, None] == rg[None, :]] = np.inf
                j = np.argmin(d, axis=1)
                best = d[np.arange(len(j)), j]
            else:
                j, best = _rescore(
                    q_orig[rows], r_orig, q_sq[rows], r_sq, cand_r, cand_c, block_entries
                )
        ok = np.isfinite(best)
        idx[rows] = np.where(ok, j, -1)
        dist[rows] = best
    return idx, dist


def _rescore(q, r, q_sq, r_sq, cand_r, cand_c, block_entries):
    """Float64 squared distances of the candidate pairs (row ``cand_r`` of ``q``, row
    ``cand_c`` of ``r``); per row of ``q`` the smallest, ties to the smaller column.  Rows
    without a candidate get distance inf."""
    d = np.empty(len(cand_r))
    chunk = block_rows_for(q.shape[1], min(block_entries, _RESCORE_ENTRIES))
    for s in range(0, len(cand_r), chunk):
        i, c = cand_r[s : s + chunk], cand_c[s : s + chunk]
        dot = np.einsum("ij,ij->i", q[i], r[c], dtype=np.float64)
        d[s : s + chunk] = q_sq[i] + r_sq[c] - 2.0 * dot
    np.maximum(d, 0.0, out=d)
    j = np.zeros(len(q), np.int64)
    best = np.full(len(q), np.inf)
    order = np.lexsort((cand_c, d, cand_r))
    rr, cc, dd = cand_r[order], cand_c[order], d[order]
    first = np.ones(len(rr), bool)
    first[1:] = rr[1:] != rr[:-1]
    j[rr[first]], best[rr[first]] = cc[first], dd[first]
    return j, best
