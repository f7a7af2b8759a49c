"""Verification, identification and re-identification metrics, computed exactly.

Everything here works on exact sorted scores (no binning, no interpolation except where a
metric is defined by it, e.g. EER on the piecewise-linear ROC). scikit-learn is not needed at
run time; the tests check these functions against it.

Verification (pairs of a probe and a gallery image; genuine = same identity):

* `roc_curve` — the full ROC over every distinct threshold. A group of tied scores moves both
  rates at once (one ROC point per distinct score), exactly like
  ``sklearn.metrics.roc_curve(drop_intermediate=False)``; the first point is (0, 0) at
  threshold +inf.
* `tar_at_far` — TAR at target FARs, two conventions:

  - ``"nearest"`` (default): the field's convention, used by InsightFace's IJB evaluation
    and the Rethinking paper's released code, so numbers are comparable with published tables. Their
    code takes ``sklearn.metrics.roc_curve`` with its default ``drop_intermediate=True``
    (interior points of collinear runs removed), flips it, and takes the first minimum of
    ``|fpr - far|``: the point whose FPR is nearest to the target, no interpolation, and among
    equally near points the one with the largest TPR. We reproduce exactly that,
    collinear-point removal included (decided on integer counts). The removal matters: when
    the target falls inside a horizontal run of the ROC, the nearest remaining point is an
    end of the run, and the right end shares its FPR with the top of the following vertical
    rise, so the reported TAR can exceed the TAR at FPR = target. The chosen point may also
    have FPR above the target.
  - ``"strict"``: the largest TAR among thresholds whose FAR is <= the target, on the full
    ROC (the operating point one could actually deploy). For untied scores never larger than
    "nearest" (a nearest point at or below the target is then the strict point itself).

* `eer` — where FNR = FPR on the piecewise-linear ROC (exact segment intersection).
* `auc` — trapezoidal area under the exact ROC (equals the Mann-Whitney statistic with ties
  counted one half, i.e. ``sklearn.metrics.roc_auc_score``).

Identification / re-identification (a similarity matrix [P, G]):

* `cmc` / `rank1` — rank of the first correct gallery match. Ties are broken
  *pessimistically* by default: an impostor with the same score as the best genuine match is
  ranked ahead of it (so degenerate constant embeddings cannot score Rank-1 = 100%). Probes
  whose identity is absent from the gallery are *excluded* by default (closed-set
  identification); ``unmatched="miss"`` counts them as failures instead.
* `map_minp` — mean average precision and mean inverse negative penalty
  (INP = #positives / rank of the hardest positive), over queries with at least one gallery
  match (the others are skipped). Tied scores are ordered pessimistically too (negatives
  before positives).

Folds: `mean_std` uses the population standard deviation (``np.std``, ddof=0), as the
field's 10-fold tables do.

Large score sets: `score_blocks` computes cosine similarities one probe block at a time under
``jax.jit`` and reduces each block to what the metrics need on the device: per-probe ranks and
AP/INP, and either the exact pair scores or a fine `ScoreHistogram` (bounded memory for
10^10 pairs; metrics of the histogram are exact for the scores quantised to its bin edges).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

TAR_METHODS = ("nearest", "strict")
TIES = ("pessimistic", "optimistic")
UNMATCHED = ("exclude", "miss")

# --------------------------------------------------------------------------------------------
# Input checks.


def _as_scores(x, name: str) -> np.ndarray:
    a = np.asarray(x).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty: a ROC needs at least one score of each kind")
    a = a.astype(np.float64)  # Exact for float16/32 inputs, so distinct scores stay distinct.
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(a)).sum())} non-finite value(s)")
    return a


def _as_similarity(similarity, probe_labels, gallery_labels):
    sim = np.asarray(similarity)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [probes, gallery], got shape {sim.shape}")
    pl = np.asarray(probe_labels).reshape(-1)
    gl = np.asarray(gallery_labels).reshape(-1)
    if sim.shape != (pl.size, gl.size):
        raise ValueError(
            f"similarity has shape {sim.shape} but there are {pl.size} probe and "
            f"{gl.size} gallery labels"
        )
    if not np.isfinite(sim).all():
        raise ValueError(
            f"similarity contains {int((~np.isfinite(sim)).sum())} non-finite value(s)"
        )
    return sim, pl, gl


def _check_choice(value: str, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Verification.


@dataclasses.dataclass(frozen=True)
class _RocCounts:
    """ROC as integer counts: point i accepts the pairs scoring >= thresholds[i]."""

    fp: np.ndarray  # [n] false accepts, non-decreasing, fp[0] = 0 (threshold +inf).
    tp: np.ndarray  # [n] true accepts.
    thresholds: np.ndarray  # [n] decreasing, thresholds[0] = +inf.
    num_impostor: int
    num_genuine: int

    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.num_impostor

    @property
    def tpr(self) -> np.ndarray:
        return self.tp / self.num_genuine

    def drop_intermediate(self) -> "_RocCounts":
        """Removes interior points of collinear runs, as sklearn's default roc_curve does.

        Counts are exact integers, so "collinear" (zero second difference of both counts) is
        decided exactly; the (0, 0) point and the first and last score thresholds always stay.
        """
        if self.fp.size <= 3:  # (0, 0) plus at most two thresholds: nothing to drop.
            return self
        fp, tp = self.fp[1:], self.tp[1:]
        bend = (np.diff(fp, 2) != 0) | (np.diff(tp, 2) != 0)
        keep = np.concatenate([[True, True], bend, [True]])
        return dataclasses.replace(
            self, fp=self.fp[keep], tp=self.tp[keep], thresholds=self.thresholds[keep]
        )


def _roc_counts(genuine_scores, impostor_scores) -> _RocCounts:
    gen = _as_scores(genuine_scores, "genuine_scores")
    imp = _as_scores(impostor_scores, "impostor_scores")
    thresholds = np.unique(np.concatenate([gen, imp]))[::-1]
    # Pairs accepted at threshold t: those scoring >= t. Counting with searchsorted on the
    # sorted scores makes a whole tie group enter at once (one ROC point per distinct score).
    tp = gen.size - np.searchsorted(np.sort(gen), thresholds, side="left")
    fp = imp.size - np.searchsorted(np.sort(imp), thresholds, side="left")
    return _RocCounts(
        fp=np.concatenate([[0], fp]),
        tp=np.concatenate([[0], tp]),
        thresholds=np.concatenate([[np.inf], thresholds]),
        num_impostor=imp.size,
        num_genuine=gen.size,
    )


def roc_curve(
    genuine_scores, impostor_scores, *, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC: (fpr, tpr, thresholds), one point per distinct score plus (0, 0) at +inf.

    Point i accepts every pair with score >= thresholds[i]; thresholds decrease, both rates are
    non-decreasing. Same output as ``sklearn.metrics.roc_curve(labels, scores,
    drop_intermediate=...)`` on the concatenated genuine (label 1) and impostor (label 0)
    scores; the default here keeps every point (sklearn's default drops collinear ones).
    """
    roc = _roc_counts(genuine_scores, impostor_scores)
    if drop_intermediate:
        roc = roc.drop_intermediate()
    return roc.fpr, roc.tpr, roc.thresholds


def _check_fars(fars) -> list[float]:
    fars = [float(f) for f in np.atleast_1d(np.asarray(fars, dtype=np.float64))]
    bad = [f for f in fars if not 0.0 <= f <= 1.0]
    if bad:
        raise ValueError(f"target FARs must lie in [0, 1], got {bad}")
    return fars


def _tar_at_far(roc: _RocCounts, fars, method: str) -> dict[float, float]:
    _check_choice(method, TAR_METHODS, "method")
    fars = _check_fars(fars)
    if method == "nearest":
        curve = roc.drop_intermediate()
        fpr, tpr = curve.fpr, curve.tpr
    else:
        fpr, tpr = roc.fpr, roc.tpr
    out = {}
    for far in fars:
        if method == "nearest":
            # The field flips the curve and takes the first minimum of |fpr - far|: on the
            # unflipped curve that is the last minimum, i.e. the largest TPR among equally near.
            i = fpr.size - 1 - int(np.argmin(np.abs(fpr[::-1] - far)))
        else:
            i = int(np.searchsorted(fpr, far, side="right")) - 1  # Last point with FPR <= far.
        out[far] = float(tpr[i])
    return out


def tar_at_far(
    genuine_scores, impostor_scores, fars: float | Iterable[float], method: str = "nearest"
) -> dict[float, float]:
    """{far: TAR}. Default ``"nearest"`` is the field's convention (comparable with published
    numbers, see the module docstring); ``"strict"`` is the largest TAR whose FAR really is
    <= the target."""
    return _tar_at_far(_roc_counts(genuine_scores, impostor_scores), fars, method)


def eer_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where FPR = 1 - TPR on the piecewise-linear ROC.

    fpr + tpr - 1 is non-decreasing along the ROC, from -1 at (0, 0) to +1 at (1, 1), so the
    crossing is unique; it is found exactly on the segment that brackets it.
    """
    fpr, tpr = np.asarray(fpr, np.float64), np.asarray(tpr, np.float64)
    g = fpr + tpr - 1.0
    i = int(np.argmax(g >= 0.0))
    if g[i] == 0.0 or i == 0:
        return float(fpr[i])
    t = -g[i - 1] / (g[i] - g[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def eer(genuine_scores, impostor_scores) -> float:
    """Equal error rate (a fraction in [0, 0.5] for a better-than-chance scorer)."""
    fpr, tpr, _ = roc_curve(genuine_scores, impostor_scores)
    return eer_from_roc(fpr, tpr)


def auc_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under a ROC."""
    fpr, tpr = np.asarray(fpr, np.float64), np.asarray(tpr, np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def auc(genuine_scores, impostor_scores) -> float:
    """Area under the exact ROC (= P(genuine > impostor) + P(tie) / 2)."""
    fpr, tpr, _ = roc_curve(genuine_scores, impostor_scores)
    return auc_from_roc(fpr, tpr)


def far_name(far: float) -> str:
    """Compact label of a FAR: 1e-3 -> "1e-3", 0.05 -> "5e-2"."""
    mantissa, exponent = f"{float(far):e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def verification_metrics(
    genuine_scores, impostor_scores, fars: Iterable[float] = (1e-3, 1e-2), method: str = "nearest"
) -> dict[str, float]:
    """TAR@FAR for each far, EER and AUC from one ROC; keys "TAR@FAR=1e-3", "EER", "AUC"."""
    return _metrics_from_roc(_roc_counts(genuine_scores, impostor_scores), fars, method)


def pair_scores(similarity, probe_labels, gallery_labels) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) scores of a dense similarity matrix, in row-major pair order."""
    sim, pl, gl = _as_similarity(similarity, probe_labels, gallery_labels)
    same = pl[:, None] == gl[None, :]
    return sim[same], sim[~same]


# --------------------------------------------------------------------------------------------
# Identification (CMC).


def first_match_ranks(
    similarity, probe_labels, gallery_labels, ties: str = "pessimistic"
) -> np.ndarray:
    """1-based rank of each probe's best-scoring correct gallery match; 0 if it has none.

    rank = 1 + #(impostor gallery items scoring above the best genuine one), where "above"
    includes equal scores when ``ties="pessimistic"``.
    """
    _check_choice(ties, TIES, "ties")
    sim, pl, gl = _as_similarity(similarity, probe_labels, gallery_labels)
    same = pl[:, None] == gl[None, :]
    best = np.where(same, sim, -np.inf).max(axis=1, initial=-np.inf)
    ahead = sim >= best[:, None] if ties == "pessimistic" else sim > best[:, None]
    ranks = 1 + np.sum(ahead & ~same, axis=1)
    return np.where(same.any(axis=1), ranks, 0).astype(np.int64)


def cmc_from_ranks(ranks, max_rank: int, unmatched: str = "exclude") -> np.ndarray:
    """CMC curve [max_rank] (entry k-1 = rank-k rate) from `first_match_ranks` (0 = no match)."""
    _check_choice(unmatched, UNMATCHED, "unmatched")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    ranks = np.asarray(ranks).reshape(-1)
    if unmatched == "exclude":
        ranks = ranks[ranks > 0]
        if ranks.size == 0:
            raise ValueError("no probe has a correct match in the gallery; CMC is undefined")
    elif ranks.size == 0:
        raise ValueError("no probes")
    hits = np.bincount(ranks[ranks > 0], minlength=max_rank + 1)[1 : max_rank + 1]
    return np.cumsum(hits) / ranks.size


def cmc(
    similarity,
    probe_labels,
    gallery_labels,
    max_rank: int = 20,
    *,
    ties: str = "pessimistic",
    unmatched: str = "exclude",
) -> np.ndarray:
    """Cumulative match characteristic: [max_rank] identification rates (fractions)."""
    ranks = first_match_ranks(similarity, probe_labels, gallery_labels, ties)
    return cmc_from_ranks(ranks, max_rank, unmatched)


def rank1(
    similarity,
    probe_labels,
    gallery_labels,
    *,
    ties: str = "pessimistic",
    unmatched: str = "exclude",
) -> float:
    """Rank-1 identification rate (fraction)."""
    return float(
        cmc(similarity, probe_labels, gallery_labels, 1, ties=ties, unmatched=unmatched)[0]
    )


# --------------------------------------------------------------------------------------------
# Re-identification (mAP, mINP).


def _ap_inp_from_sorted(sorted_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query (AP, INP, #positives) from positive flags [Q, G] in ranked order."""
    g = sorted_pos.shape[1]
    pos = sorted_pos.astype(np.float64)
    npos = pos.sum(axis=1)
    precision_at_hit = np.cumsum(pos, axis=1) / np.arange(1, g + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (pos * precision_at_hit).sum(axis=1) / npos
        last = g - np.argmax(sorted_pos[:, ::-1], axis=1)  # 1-based rank of the hardest positive.
        inp = npos / last
    none = npos == 0
    ap[none], inp[none] = np.nan, np.nan
    return ap, inp, npos.astype(np.int64)


def retrieval_per_query(
    similarity, probe_labels, gallery_labels
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query (AP, INP, #positives); AP and INP are NaN for queries without a match."""
    sim, pl, gl = _as_similarity(similarity, probe_labels, gallery_labels)
    same = pl[:, None] == gl[None, :]
    # Descending score; among equal scores negatives first (pessimistic).
    order = np.lexsort((same, -sim), axis=-1)
    return _ap_inp_from_sorted(np.take_along_axis(same, order, axis=1))


def mean_over_matched(ap, inp) -> tuple[float, float]:
    """(mAP, mINP) over the queries with a match (NaN entries are the skipped ones)."""
    ap, inp = np.asarray(ap, np.float64), np.asarray(inp, np.float64)
    ok = ~np.isnan(ap)
    if not ok.any():
        raise ValueError("no query has a match in the gallery; mAP/mINP are undefined")
    return float(ap[ok].mean()), float(inp[ok].mean())


def map_minp(similarity, probe_labels, gallery_labels) -> tuple[float, float]:
    """(mAP, mINP) as fractions; queries with no gallery match are skipped."""
    ap, inp, _ = retrieval_per_query(similarity, probe_labels, gallery_labels)
    return mean_over_matched(ap, inp)


# --------------------------------------------------------------------------------------------
# Folds.


def mean_std(values: Iterable[float], ddof: int = 0) -> tuple[float, float]:
    """(mean, std) over folds; ddof=0 is the population std (np.std), as the field reports."""
    v = np.asarray(list(values), np.float64)
    if v.size == 0:
        raise ValueError("mean_std of no values")
    if v.size <= ddof:
        raise ValueError(f"{v.size} value(s) are too few for ddof={ddof}")
    return float(v.mean()), float(v.std(ddof=ddof))


def aggregate(
    per_fold: Sequence[Mapping[str, float]], ddof: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-fold metric dicts -> ({name: mean}, {name: std}); every fold must have every name."""
    if not per_fold:
        raise ValueError("aggregate of no folds")
    names = list(per_fold[0])
    for i, m in enumerate(per_fold):
        if set(m) != set(names):
            raise ValueError(f"fold #{i} has metrics {sorted(m)}, fold #0 has {sorted(names)}")
    mean, std = {}, {}
    for n in names:
        mean[n], std[n] = mean_std([m[n] for m in per_fold], ddof)
    return mean, std


# --------------------------------------------------------------------------------------------
# Score histograms: the bounded-memory reduction of very many pairs.

SCORE_RANGE = (-1.0, 1.0)  # Cosine similarities.
DEFAULT_HISTOGRAM_BINS = 1 << 20  # Quantisation step 2 / 2^20 ~ 1.9e-6 in cosine.


def _bin_index(scores, bins: int, lo: float = SCORE_RANGE[0], hi: float = SCORE_RANGE[1]):
    """Bin of each score on a uniform grid over [lo, hi) (out-of-range scores are clamped).

    Written once with array methods so numpy (tests) and jax (device) quantise identically:
    float32 arithmetic in both.
    """
    xp = jnp if isinstance(scores, jax.Array) else np
    x = (scores.astype(xp.float32) - xp.float32(lo)) * xp.float32(bins / (hi - lo))
    return xp.clip(xp.floor(x).astype(xp.int32), 0, bins - 1)


@dataclasses.dataclass(frozen=True)
class ScoreHistogram:
    """Genuine and impostor pair counts on a uniform score grid.

    The metrics computed from it are the exact metrics of the scores *quantised down to their
    bin's lower edge*: every ROC point is a bin edge, and each quantity differs from the
    unquantised one only through pairs that share a bin (with 2^20 bins over [-1, 1] the step is
    1.9e-6 in cosine, far below what separates operating points in practice).
    """

    edges: np.ndarray  # [bins + 1] float64, ascending.
    genuine: np.ndarray  # [bins] int64.
    impostor: np.ndarray  # [bins] int64.

    @property
    def num_bins(self) -> int:
        return int(self.genuine.size)

    def coarsen(self, num_bins: int) -> "ScoreHistogram":
        """Sums groups of adjacent bins (``num_bins`` must divide the current count)."""
        if num_bins < 1 or self.num_bins % num_bins:
            raise ValueError(f"cannot coarsen {self.num_bins} bins to {num_bins}")
        f = self.num_bins // num_bins
        return ScoreHistogram(
            edges=self.edges[::f],
            genuine=self.genuine.reshape(num_bins, f).sum(1),
            impostor=self.impostor.reshape(num_bins, f).sum(1),
        )

    @classmethod
    def from_scores(
        cls, genuine_scores, impostor_scores, bins: int, score_range=SCORE_RANGE
    ) -> "ScoreHistogram":
        """Histogram of exact scores with the same quantiser as the device path."""
        lo, hi = score_range
        counts = [
            np.bincount(_bin_index(np.asarray(x), bins, lo, hi).reshape(-1), minlength=bins)
            for x in (genuine_scores, impostor_scores)
        ]
        return cls(
            np.linspace(lo, hi, bins + 1), counts[0].astype(np.int64), counts[1].astype(np.int64)
        )


def _roc_counts_from_histogram(hist: ScoreHistogram) -> _RocCounts:
    """The ROC of the quantised scores: thresholds at the lower edges of non-empty bins."""
    occupied = np.flatnonzero((hist.genuine > 0) | (hist.impostor > 0))[::-1]  # Descending.
    if hist.genuine.sum() == 0 or hist.impostor.sum() == 0:
        raise ValueError(
            f"score histogram has {int(hist.genuine.sum())} genuine and "
            f"{int(hist.impostor.sum())} impostor pairs: a ROC needs both"
        )
    tp = np.cumsum(hist.genuine[::-1])[::-1][occupied]  # Pairs in bins >= i.
    fp = np.cumsum(hist.impostor[::-1])[::-1][occupied]
    return _RocCounts(
        fp=np.concatenate([[0], fp]),
        tp=np.concatenate([[0], tp]),
        thresholds=np.concatenate([[np.inf], hist.edges[occupied]]),
        num_impostor=int(hist.impostor.sum()),
        num_genuine=int(hist.genuine.sum()),
    )


def verification_metrics_from_histogram(
    hist: ScoreHistogram, fars: Iterable[float] = (1e-3, 1e-2), method: str = "nearest"
) -> dict[str, float]:
    """`verification_metrics` of the quantised scores held by ``hist``."""
    return _metrics_from_roc(_roc_counts_from_histogram(hist), fars, method)


def _metrics_from_roc(roc: _RocCounts, fars, method: str) -> dict[str, float]:
    out = {f"TAR@FAR={far_name(f)}": v for f, v in _tar_at_far(roc, list(fars), method).items()}
    out["EER"] = eer_from_roc(roc.fpr, roc.tpr)
    out["AUC"] = auc_from_roc(roc.fpr, roc.tpr)
    return out


# --------------------------------------------------------------------------------------------
# Blockwise scoring.

PAIR_SCORES = ("exact", "histogram")


@dataclasses.dataclass
class BlockScores:
    """What `score_blocks` returns; per-probe arrays follow the probe order.

    Pair scores come either exactly (``genuine`` / ``impostor``, row-major (probe, gallery)
    order) or as a `ScoreHistogram` (``histogram``), per `score_blocks`' ``pair_scores``.
    """

    genuine: np.ndarray | None  # [n_genuine] scores of same-identity pairs.
    impostor: np.ndarray | None  # [n_impostor] scores of different-identity pairs.
    histogram: ScoreHistogram | None
    first_rank: np.ndarray  # [P] 1-based rank of the first correct match; 0 = none in gallery.
    average_precision: np.ndarray | None  # [P], NaN where no match (None if not computed).
    inp: np.ndarray | None  # [P] inverse negative penalty, NaN where no match.
    num_positives: np.ndarray  # [P] gallery items sharing the probe's identity.

    @property
    def num_genuine(self) -> int:
        if self.histogram is not None:
            return int(self.histogram.genuine.sum())
        return int(self.genuine.size)

    @property
    def num_impostor(self) -> int:
        if self.histogram is not None:
            return int(self.histogram.impostor.sum())
        return int(self.impostor.size)

    def _roc(self) -> _RocCounts:
        if self.histogram is not None:
            return _roc_counts_from_histogram(self.histogram)
        return _roc_counts(self.genuine, self.impostor)

    def verification_metrics(
        self, fars: Iterable[float] = (1e-3, 1e-2), method: str = "nearest"
    ) -> dict[str, float]:
        return _metrics_from_roc(self._roc(), fars, method)

    def tar_at_far(self, fars: Iterable[float], method: str = "nearest") -> dict[float, float]:
        return _tar_at_far(self._roc(), list(fars), method)

    def score_histogram(self, num_bins: int) -> ScoreHistogram:
        """A (coarse) histogram of the pair scores, e.g. for plotting."""
        if self.histogram is not None and self.histogram.num_bins % num_bins == 0:
            return self.histogram.coarsen(num_bins)
        if self.histogram is not None:
            raise ValueError(f"{num_bins} does not divide {self.histogram.num_bins} bins")
        return ScoreHistogram.from_scores(self.genuine, self.impostor, num_bins)

    def cmc(self, max_rank: int, unmatched: str = "exclude") -> np.ndarray:
        return cmc_from_ranks(self.first_rank, max_rank, unmatched)

    def map_minp(self) -> tuple[float, float]:
        if self.average_precision is None:
            raise ValueError("score_blocks ran with retrieval=False; no AP/INP were computed")
        return mean_over_matched(self.average_precision, self.inp)


from hfrjax.losses.margin import l2_normalize as _l2_normalize  # noqa: E402 - one normaliser.

_l2_normalize_jit = jax.jit(_l2_normalize)


@functools.partial(
    jax.jit, static_argnames=("normalize", "pessimistic", "retrieval", "keep_sim", "bins")
)
def _score_block(
    probe: jax.Array,
    probe_labels: jax.Array,
    num_valid: jax.Array,
    gallery: jax.Array,
    gallery_labels: jax.Array,
    *,
    normalize: bool,
    pessimistic: bool,
    retrieval: bool,
    keep_sim: bool,
    bins: int,
):
    """One probe block [b, D] against the whole gallery [G, D] -> reductions (and the block).

    Rows at or beyond ``num_valid`` are padding; they are excluded from the histograms.
    """
    if normalize:
        probe = _l2_normalize(probe)
    sim = jnp.matmul(probe, gallery.T, precision=jax.lax.Precision.HIGHEST)
    same = probe_labels[:, None] == gallery_labels[None, :]
    best = jnp.max(jnp.where(same, sim, -jnp.inf), axis=1, keepdims=True)
    ahead = (sim >= best) if pessimistic else (sim > best)
    npos = jnp.sum(same, axis=1)
    rank = jnp.where(npos > 0, 1 + jnp.sum(ahead & ~same, axis=1), 0)
    out = {"rank": rank, "npos": npos}
    if keep_sim:
        out["sim"] = sim
    if bins:
        # One bincount over [impostor bins | genuine bins]; padding rows carry weight 0.
        valid = (jnp.arange(sim.shape[0]) < num_valid)[:, None]
        idx = _bin_index(sim, bins) + bins * same.astype(jnp.int32)
        weight = jnp.broadcast_to(valid, sim.shape).astype(jnp.int32)
        counts = jnp.bincount(idx.reshape(-1), weight.reshape(-1), length=2 * bins)
        out["impostor_hist"], out["genuine_hist"] = counts[:bins], counts[bins:]
    if retrieval:
        g = sim.shape[1]
        # Lexicographic sort: descending score, then negatives before positives (pessimistic).
        _, sorted_pos = jax.lax.sort((-sim, same.astype(jnp.int32)), dimension=1, num_keys=2)
        pos = sorted_pos.astype(jnp.float32)
        hits = jnp.cumsum(pos, axis=1)
        n = jnp.maximum(npos, 1).astype(jnp.float32)
        ap = jnp.sum(pos * hits / jnp.arange(1, g + 1, dtype=jnp.float32), axis=1) / n
        last = g - jnp.argmax(sorted_pos[:, ::-1], axis=1)
        inp = npos.astype(jnp.float32) / last.astype(jnp.float32)
        out["ap"] = jnp.where(npos > 0, ap, jnp.nan)
        out["inp"] = jnp.where(npos > 0, inp, jnp.nan)
    return out


def score_blocks(
    probe_emb,
    gallery_emb,
    probe_labels,
    gallery_labels,
    block_size: int = 1024,
    *,
    normalize: bool = True,
    ties: str = "pessimistic",
    retrieval: bool = True,
    pair_scores: str = "exact",
    bins: int = DEFAULT_HISTOGRAM_BINS,
) -> BlockScores:
    """Cosine-scores every probe against the gallery, one jitted probe block at a time.

    Only one [block_size, G] similarity block exists on the device at a time (the gallery stays
    there whole); each block is reduced on the device to per-probe first-match ranks (CMC) and,
    with ``retrieval=True``, AP and INP. Pair scores for the ROC:

    * ``pair_scores="exact"`` copies each block to the host and keeps every genuine and impostor
      score (memory grows with P x G: right for protocol-sized sets, e.g. 10^7 pairs);
    * ``pair_scores="histogram"`` never copies a block: the device bins it into ``bins``
      genuine and impostor counts, accumulated on the host in int64, so memory is
      O(block_size x G + bins) whatever P is (100k x 100k = 10^10 pairs in a few hundred MB).
      Metrics then come from the quantised scores (`ScoreHistogram`).

    The last block is padded to ``block_size`` so the step compiles once. ``normalize=False``
    uses raw dot products (embeddings already unit-norm).
    """
    _check_choice(ties, TIES, "ties")
    _check_choice(pair_scores, PAIR_SCORES, "pair_scores")
    probe = np.asarray(probe_emb, np.float32)
    gallery = np.asarray(gallery_emb, np.float32)
    pl = np.asarray(probe_labels).reshape(-1)
    gl = np.asarray(gallery_labels).reshape(-1)
    if probe.ndim != 2 or gallery.ndim != 2 or probe.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"embeddings must be [P, D] and [G, D], got {probe.shape} and {gallery.shape}"
        )
    if pl.size != probe.shape[0] or gl.size != gallery.shape[0]:
        raise ValueError(
            f"{probe.shape[0]} probe / {gallery.shape[0]} gallery embeddings but "
            f"{pl.size} / {gl.size} labels"
        )
    if probe.shape[0] == 0 or gallery.shape[0] == 0:
        raise ValueError(f"nothing to score: {probe.shape[0]} probes, {gallery.shape[0]} gallery")
    for name, e in (("probe", probe), ("gallery", gallery)):
        if not np.isfinite(e).all():
            raise ValueError(f"{name} embeddings contain non-finite values")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if pair_scores == "histogram" and bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if not (np.issubdtype(pl.dtype, np.integer) and np.issubdtype(gl.dtype, np.integer)):
        raise ValueError(f"labels must be integers, got {pl.dtype} and {gl.dtype}")
    lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    if min(pl.min(), gl.min()) < lo or max(pl.max(), gl.max()) > hi:
        raise ValueError("labels must fit in int32 (they are compared on the device)")
    exact = pair_scores == "exact"

    p = probe.shape[0]
    b = min(block_size, p)
    gallery_dev = jnp.asarray(gallery)
    if normalize:
        gallery_dev = _l2_normalize_jit(gallery_dev)
    gl_dev = jnp.asarray(gl.astype(np.int32))
    ranks, npos, aps, inps, genuine, impostor = [], [], [], [], [], []
    hist_g = hist_i = None
    if not exact:
        hist_g, hist_i = np.zeros(bins, np.int64), np.zeros(bins, np.int64)
    for start in range(0, p, b):
        n = min(b, p - start)
        blk = np.zeros((b, probe.shape[1]), np.float32)
        blk[:n] = probe[start : start + n]
        lab = np.zeros((b,), np.int32)
        lab[:n] = pl[start : start + n]
        out = jax.device_get(
            _score_block(
                jnp.asarray(blk),
                jnp.asarray(lab),
                jnp.int32(n),
                gallery_dev,
                gl_dev,
                normalize=normalize,
                pessimistic=ties == "pessimistic",
                retrieval=retrieval,
                keep_sim=exact,
                bins=0 if exact else bins,
            )
        )
        if exact:
            sim = out["sim"][:n]
            same = pl[start : start + n, None] == gl[None, :]
            genuine.append(sim[same])
            impostor.append(sim[~same])
        else:
            hist_g += out["genuine_hist"]
            hist_i += out["impostor_hist"]
        ranks.append(out["rank"][:n])
        npos.append(out["npos"][:n])
        if retrieval:
            aps.append(out["ap"][:n])
            inps.append(out["inp"][:n])
    histogram = None
    if not exact:
        histogram = ScoreHistogram(np.linspace(*SCORE_RANGE, bins + 1), hist_g, hist_i)
    return BlockScores(
        genuine=np.concatenate(genuine) if exact else None,
        impostor=np.concatenate(impostor) if exact else None,
        histogram=histogram,
        first_rank=np.concatenate(ranks).astype(np.int64),
        average_precision=np.concatenate(aps).astype(np.float64) if retrieval else None,
        inp=np.concatenate(inps).astype(np.float64) if retrieval else None,
        num_positives=np.concatenate(npos).astype(np.int64),
    )
