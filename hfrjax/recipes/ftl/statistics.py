"""FTL's UpdateStats and Transfer (Yin et al., "Feature Transfer Learning for Face Recognition
with Under-Represented Data", §3.3 Eq. 5-7 and Alg. 1).

* Class centres (Eq. 5): the mean of each image's rich feature g and its horizontally flipped
  image's feature ḡ over Ω_i = {k : |p_ik| + |p̄_ik| ≤ τ}.  A mirror image has yaw p̄ = −p, so
  the bound is |p| ≤ τ/2 = ``max_abs_yaw``; an unknown yaw (NaN) keeps the sample.  A class
  whose every sample is excluded falls back to the plain mean of its g (counted in
  ``FTLStatistics.fallback_classes``) so every class keeps a centre.
* Shared covariance (Eq. 6): V = Σ over regular classes i, over all their samples k, of
  (g_ik − c_i)(g_ik − c_i)ᵀ, with c_i the Eq. 5 centre.  Accumulated in one pass over batches in
  any order, exactly, in float64, with memory O(C·D + D²): per class the sum of g, the sum over
  Ω of g + ḡ and the counts, plus one global scatter Σ g gᵀ over regular classes, from which
  V = Σ_i [S_i − s_i c_iᵀ − c_i s_iᵀ + m_i c_i c_iᵀ].  Features are shifted by the first batch's
  mean before accumulating, so the expansion does not cancel catastrophically.
* Q = the top-k eigenvectors of V (k = 150 in the paper, "95 % energy"; energy kept reported).
* Hard samples (Alg. 1 UpdateStats): regular-class samples farther from their centre than the
  class's mean distance d_i = (1/m_i) Σ_k ‖g_ik − c_i‖.  Distances need the centres, so they come
  from a second pass (`sample_distances` per batch, O(N) scalars kept) or from stored features.
* Transfer (Eq. 7): g̃ = c_i + Q Qᵀ (g_j − c_j), a jax function.
* A class with ≤ 20 images is under-represented (UR), §4 following Zhang et al.

Accumulation updates the numpy arrays of a `FeatureMoments` in place (copying O(C·D) arrays per
batch would dominate at MS1M scale); everything else is a pure function.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

UR_MAX_IMAGES = 20  # FTL §4: "a class with no more than 20 images is considered as a UR class"
NUM_COMPONENTS = 150  # FTL §3.3: Q ∈ R^{320×150}


def class_sizes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class 0..num_classes-1."""
    y = _check_labels(labels, num_classes, "labels")
    return np.bincount(y, minlength=num_classes).astype(np.int64)


def under_represented(sizes: np.ndarray, max_images: int = UR_MAX_IMAGES) -> np.ndarray:
    """UR mask: classes with 1..max_images images (FTL §4).  Regular: more than max_images."""
    sizes = np.asarray(sizes)
    return (sizes >= 1) & (sizes <= max_images)


def regular_classes(sizes: np.ndarray, max_images: int = UR_MAX_IMAGES) -> np.ndarray:
    """Regular mask: classes with more than ``max_images`` images."""
    return np.asarray(sizes) > max_images


def _check_labels(labels, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise ValueError(f"{name}[{bad}] = {y[bad]} is outside [0, {num_classes})")
    return y.astype(np.int64, copy=False)


def _check_features(x, n: int | None, dim: int, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != dim or (n is not None and x.shape[0] != n):
        expected = f"[{'n' if n is None else n}, {dim}]"
        raise ValueError(f"{name} must have shape {expected}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise ValueError(f"{name} has NaN/inf (row {bad})")
    return x


@flax.struct.dataclass
class FeatureMoments:
    """Running sums of one UpdateStats pass (arrays only; float64; updated in place).

    reference: [D] shift subtracted from every feature (first batch's mean).
    count: [C] samples m_i.  feature_sum: [C, D] Σ_k (g_ik − r).
    centre_sum: [C, D] Σ_{k∈Ω_i} (g_ik − r) (+ (ḡ_ik − r) when flips are given).
    centre_count: [C] vectors in centre_sum.  inlier_images: [C] |Ω_i|.
    scatter: [D, D] Σ over regular samples of (g − r)(g − r)ᵀ.  regular: [C] bool.
    max_abs_yaw: [] the yaw bound (inf: none).  started: [] whether reference is set.
    """

    reference: np.ndarray
    count: np.ndarray
    feature_sum: np.ndarray
    centre_sum: np.ndarray
    centre_count: np.ndarray
    inlier_images: np.ndarray
    scatter: np.ndarray
    regular: np.ndarray
    max_abs_yaw: np.ndarray
    started: np.ndarray


def init_moments(
    num_classes: int,
    dim: int,
    regular: np.ndarray,
    *,
    max_abs_yaw: float | None = None,
) -> FeatureMoments:
    """Empty sums for ``num_classes`` classes of ``dim``-d features.

    ``regular``: [C] bool, the classes whose samples enter V (e.g. `regular_classes` of the
    dataset's class sizes, known before the pass).  ``max_abs_yaw``: τ/2 of Eq. 5 in the units
    of the yaw passed to `accumulate` (None: no bound).
    """
    regular = np.asarray(regular, bool)
    if regular.shape != (num_classes,):
        raise ValueError(f"regular must have shape ({num_classes},), got {regular.shape}")
    if max_abs_yaw is not None and not max_abs_yaw >= 0:
        raise ValueError(f"max_abs_yaw must be >= 0 or None, got {max_abs_yaw}")
    return FeatureMoments(
        reference=np.zeros(dim),
        count=np.zeros(num_classes, np.int64),
        feature_sum=np.zeros((num_classes, dim)),
        centre_sum=np.zeros((num_classes, dim)),
        centre_count=np.zeros(num_classes, np.int64),
        inlier_images=np.zeros(num_classes, np.int64),
        scatter=np.zeros((dim, dim)),
        regular=regular.copy(),
        max_abs_yaw=np.array(np.inf if max_abs_yaw is None else float(max_abs_yaw)),
        started=np.array(False),
    )


def _add_rows(target: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
    """target[labels] += rows, summing repeated labels (sums the batch's few classes first)."""
    if len(labels) == 0:
        return
    uniq, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(uniq),) + rows.shape[1:])
    np.add.at(sums, inverse.reshape(-1), rows)
    target[uniq] += sums


def accumulate(
    moments: FeatureMoments,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    flipped: np.ndarray | None = None,
    yaw: np.ndarray | None = None,
) -> FeatureMoments:
    """Adds one batch to the UpdateStats sums (in place) and returns ``moments``.

    features: [B, D] rich features g of the original images; flipped: [B, D] features ḡ of
    their horizontal flips (Eq. 5; None: centres from g alone); yaw: [B] yaw of the original
    image, NaN where unknown (None: all unknown).
    """
    num_classes, dim = moments.feature_sum.shape
    y = _check_labels(labels, num_classes, "labels")
    g = _check_features(features, len(y), dim, "features")
    g_bar = None if flipped is None else _check_features(flipped, len(y), dim, "flipped")
    if yaw is None:
        yaw_arr = np.full(len(y), np.nan)
    else:
        yaw_arr = np.asarray(yaw, np.float64).reshape(-1)
        if yaw_arr.shape != (len(y),):
            raise ValueError(f"yaw must have shape ({len(y)},), got {np.shape(yaw)}")
    if len(y) == 0:
        return moments
    if not moments.started:
        moments.reference[:] = g.mean(axis=0)
        moments.started[...] = True
    r = moments.reference
    gs = g - r
    np.add.at(moments.count, y, 1)
    _add_rows(moments.feature_sum, y, gs)
    inlier = np.isnan(yaw_arr) | (np.abs(yaw_arr) <= moments.max_abs_yaw)
    yi = y[inlier]
    np.add.at(moments.inlier_images, yi, 1)
    centre_rows = gs[inlier]
    if g_bar is not None:
        centre_rows = centre_rows + (g_bar[inlier] - r)
    _add_rows(moments.centre_sum, yi, centre_rows)
    np.add.at(moments.centre_count, yi, 1 if g_bar is None else 2)
    reg = gs[moments.regular[y]]
    moments.scatter[...] += reg.T @ reg
    return moments


@flax.struct.dataclass
class FTLStatistics:
    """What stage 1 needs (arrays only, so it can live in the checkpointed state).

    centres: [C, D] Eq. 5 centres (NaN rows for classes with no sample in the pass).
    basis: [D, k] Q, top-k eigenvectors of V (each with its largest-magnitude entry positive).
    eigenvalues: [D] of V, descending.  energy_kept: [] Σ top-k / Σ all eigenvalues.
    covariance: [D, D] V (Eq. 6).  sizes: [C] samples per class in the pass.
    regular: [C] classes that entered V.  fallback_classes: [] classes whose centre fell back
    to the plain mean because the yaw bound excluded every sample.
    hard_indices: [h] sample positions of the hard list (filled by `hard_sample_indices`).
    """

    centres: np.ndarray
    basis: np.ndarray
    eigenvalues: np.ndarray
    energy_kept: np.ndarray
    covariance: np.ndarray
    sizes: np.ndarray
    regular: np.ndarray
    fallback_classes: np.ndarray
    hard_indices: np.ndarray


def principal_basis(
    covariance: np.ndarray, num_components: int = NUM_COMPONENTS
) -> tuple[np.ndarray, np.ndarray, float]:
    """(Q [D, k], all eigenvalues descending, energy kept) of a symmetric PSD matrix (§3.3).

    Signs are fixed so that each column's largest-magnitude entry is positive.
    """
    v = np.asarray(covariance, np.float64)
    if v.ndim != 2 or v.shape[0] != v.shape[1]:
        raise ValueError(f"covariance must be square, got shape {v.shape}")
    dim = v.shape[0]
    if not 1 <= num_components <= dim:
        raise ValueError(
            f"num_components must be in [1, {dim}] for {dim}-d features, got {num_components}"
        )
    values, vectors = np.linalg.eigh(0.5 * (v + v.T))
    values, vectors = values[::-1], vectors[:, ::-1]
    basis = vectors[:, :num_components].copy()
    pivot = np.argmax(np.abs(basis), axis=0)
    basis *= np.sign(basis[pivot, np.arange(num_components)])[None, :]
    clipped = np.maximum(values, 0.0)
    total = clipped.sum()
    energy = float(clipped[:num_components].sum() / total) if total > 0 else 1.0
    return basis, values, energy


def components_for_energy(eigenvalues: np.ndarray, energy: float = 0.95) -> int:
    """Smallest k whose top-k eigenvalues hold ``energy`` of the total (§3.3: 150 ≈ 95 %)."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    values = np.maximum(np.sort(np.asarray(eigenvalues, np.float64))[::-1], 0.0)
    total = values.sum()
    if total <= 0:
        return 1
    cumulative = np.cumsum(values) / total
    return int(min(len(values), np.searchsorted(cumulative, energy - 1e-12) + 1))


def finalize(moments: FeatureMoments, num_components: int = NUM_COMPONENTS) -> FTLStatistics:
    """Centres (Eq. 5), V (Eq. 6) and Q from one pass's sums."""
    r = moments.reference
    count = moments.count
    with np.errstate(invalid="ignore", divide="ignore"):
        centres_s = np.where(
            (moments.centre_count > 0)[:, None],
            moments.centre_sum / np.maximum(moments.centre_count, 1)[:, None],
            moments.feature_sum / count[:, None],  # fallback; NaN for empty classes
        )
    fallback = int(np.count_nonzero((moments.centre_count == 0) & (count > 0)))
    reg = moments.regular & (count > 0)
    s, c, m = moments.feature_sum[reg], centres_s[reg], count[reg].astype(np.float64)
    cross = s.T @ c
    v = moments.scatter - cross - cross.T + (c * m[:, None]).T @ c
    v = 0.5 * (v + v.T)
    basis, values, energy = principal_basis(v, num_components)
    return FTLStatistics(
        centres=(centres_s + r).astype(np.float32),
        basis=basis.astype(np.float32),
        eigenvalues=values,
        energy_kept=np.array(energy),
        covariance=v,
        sizes=count.copy(),
        regular=moments.regular.copy(),
        fallback_classes=np.array(fallback),
        hard_indices=np.zeros(0, np.int64),
    )


def sample_distances(centres: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """‖g_k − c_{y_k}‖ for one batch (the second pass of UpdateStats), float64."""
    c = np.asarray(centres, np.float64)
    y = _check_labels(labels, c.shape[0], "labels")
    g = _check_features(features, len(y), c.shape[1], "features")
    return np.linalg.norm(g - c[y], axis=1)


def hard_sample_indices(
    distances: np.ndarray,
    labels: np.ndarray,
    regular: np.ndarray,
    sample_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Hard list h (Alg. 1 UpdateStats): regular-class samples with ‖g − c_i‖ > d_i, where d_i
    is the mean distance over all of class i's samples.

    ``distances``/``labels``: every sample of the pass; ``sample_ids`` (default 0..N-1) name
    them in the returned, ascending list.
    """
    regular = np.asarray(regular, bool)
    y = _check_labels(labels, len(regular), "labels")
    d = np.asarray(distances, np.float64).reshape(-1)
    if d.shape != y.shape:
        raise ValueError(f"distances ({d.shape}) and labels ({y.shape}) differ in length")
    ids = np.arange(len(y)) if sample_ids is None else np.asarray(sample_ids).reshape(-1)
    if ids.shape != y.shape:
        raise ValueError(f"sample_ids ({ids.shape}) and labels ({y.shape}) differ in length")
    total = np.bincount(y, weights=d, minlength=len(regular))
    count = np.bincount(y, minlength=len(regular))
    mean = total / np.maximum(count, 1)
    hard = regular[y] & (d > mean[y])
    return np.sort(ids[hard])


def transfer_features(
    regular_features: jax.Array,
    regular_labels: jax.Array,
    ur_labels: jax.Array,
    centres: jax.Array,
    basis: jax.Array,
) -> jax.Array:
    """Eq. 7 / Alg. 1 Transfer: g̃_k = c_{i_k} + Q Qᵀ (g_k − c_{j_k}).

    Row k moves the variation of regular sample g_k (class j_k = ``regular_labels[k]``) onto
    UR class i_k = ``ur_labels[k]``.  Shapes: [B, D], [B], [B], [C, D], [D, k] -> [B, D].
    A label outside [0, C) yields a NaN row rather than a silently clipped class.
    """
    g = jnp.asarray(regular_features)
    c = jnp.asarray(centres, g.dtype)
    q = jnp.asarray(basis, g.dtype)
    c_j = jnp.take(c, regular_labels, axis=0, mode="fill", fill_value=jnp.nan)
    c_i = jnp.take(c, ur_labels, axis=0, mode="fill", fill_value=jnp.nan)
    return c_i + ((g - c_j) @ q) @ q.T
