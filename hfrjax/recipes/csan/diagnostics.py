"""Per-epoch diagnostics of CSAN's pseudo-labels (what a user of an unsupervised method needs).

Counts that need no ground truth: clusters per modality, clusters kept by filtering (Alg. 1
lines 4-15), RGB clusters linked by voting (lines 20-31).  When ground-truth identities exist
(for monitoring only — they never reach training): cluster purity, the fraction of correct
cross-spectral links (the quantity CSAN's Fig. 5a/5b tracks as correct / incorrect clusters),
and NMI / ARI of each modality's clustering.  NMI (arithmetic normalisation) and ARI are
computed here from the contingency table; they equal scikit-learn's
``normalized_mutual_info_score`` / ``adjusted_rand_score``.

Plots use `matplotlib.figure.Figure` with the Agg canvas (never pyplot).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hfrjax.eval.report import save_figure
from hfrjax.recipes.csan.filtering import ClusterFilter
from hfrjax.recipes.csan.voting import VoteResult

MODALITIES = ("rgb", "ir")


def _pair(labels: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and truth of the samples that belong to a cluster (label ≥ 0)."""
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    t = np.asarray(truth).reshape(-1)
    if y.shape != t.shape:
        raise ValueError(f"labels ({y.shape}) and ground truth ({t.shape}) differ in length")
    keep = y >= 0
    return y[keep], t[keep]


def _contingency(labels: np.ndarray, truth: np.ndarray) -> scipy.sparse.csr_matrix:
    _, y = np.unique(labels, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    n = len(y)
    return scipy.sparse.csr_matrix(
        (np.ones(n, np.int64), (y.reshape(-1), t.reshape(-1))),
        shape=(int(y.max(initial=-1)) + 1, int(t.max(initial=-1)) + 1),
    )


def num_clusters(labels: np.ndarray) -> int:
    """Distinct non-negative labels (-1 marks a sample outside every cluster)."""
    y = np.asarray(labels).reshape(-1)
    return int(len(np.unique(y[y >= 0])))


def cluster_purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Σ over clusters of its most common identity's count / clustered samples (NaN if none)."""
    y, t = _pair(labels, truth)
    if len(y) == 0:
        return math.nan
    return float(_contingency(y, t).max(axis=1).sum() / len(y))


def majority_identity(labels: np.ndarray, truth: np.ndarray) -> dict[int, object]:
    """{cluster id: its most common ground-truth identity} (ties: the smaller identity)."""
    y, t = _pair(labels, truth)
    ids, t_inv = np.unique(t, return_inverse=True)
    out = {}
    for c in np.unique(y):
        counts = np.bincount(t_inv.reshape(-1)[y == c], minlength=len(ids))
        out[int(c)] = ids[int(np.argmax(counts))].item()
    return out


def link_accuracy(
    rgb_labels: np.ndarray,
    rgb_truth: np.ndarray,
    ir_labels: np.ndarray,
    ir_truth: np.ndarray,
    link: np.ndarray,
) -> float:
    """Fraction of linked RGB clusters whose majority identity is that of the linked IR
    cluster (NaN when nothing is linked)."""
    link = np.asarray(link).astype(np.int64)
    linked = np.flatnonzero(link >= 0)
    if len(linked) == 0:
        return math.nan
    rgb_id = majority_identity(rgb_labels, rgb_truth)
    ir_id = majority_identity(ir_labels, ir_truth)
    correct = [
        int(c) in rgb_id and int(link[c]) in ir_id and rgb_id[int(c)] == ir_id[int(link[c])]
        for c in linked
    ]
    return float(np.mean(correct))


def normalized_mutual_info(labels: np.ndarray, truth: np.ndarray) -> float:
    """NMI with arithmetic-mean normalisation over the clustered samples (NaN if none)."""
    y, t = _pair(labels, truth)
    if len(y) == 0:
        return math.nan
    table = _contingency(y, t)
    n = float(len(y))
    row = np.asarray(table.sum(axis=1)).reshape(-1) / n
    col = np.asarray(table.sum(axis=0)).reshape(-1) / n
    if len(row) == 1 and len(col) == 1:  # neither labelling splits the data: a perfect match
        return 1.0
    c = table.tocoo()
    p = c.data / n
    mi = float(np.sum(p * (np.log(p) - np.log(row[c.row]) - np.log(col[c.col]))))
    if mi <= 1e-15:
        return 0.0
    h_y = float(-np.sum(row * np.log(row)))
    h_t = float(-np.sum(col * np.log(col)))
    return float(mi / (0.5 * (h_y + h_t)))


def adjusted_rand_index(labels: np.ndarray, truth: np.ndarray) -> float:
    """ARI (Hubert & Arabie) over the clustered samples (NaN if none)."""
    y, t = _pair(labels, truth)
    if len(y) == 0:
        return math.nan
    c = _contingency(y, t)

    def comb2(v: np.ndarray) -> float:
        v = np.asarray(v, np.float64)
        return float(np.sum(v * (v - 1) / 2))

    n = len(y)
    sum_cells = comb2(c.data)
    sum_rows = comb2(np.asarray(c.sum(axis=1)).reshape(-1))
    sum_cols = comb2(np.asarray(c.sum(axis=0)).reshape(-1))
    expected = sum_rows * sum_cols / (n * (n - 1) / 2) if n > 1 else 0.0
    max_index = 0.5 * (sum_rows + sum_cols)
    if max_index == expected:  # both partitions trivial (all singletons or one cluster)
        return 1.0
    return float((sum_cells - expected) / (max_index - expected))


def epoch_diagnostics(
    *,
    rgb_labels: np.ndarray,
    ir_labels: np.ndarray,
    rgb_filter: ClusterFilter,
    ir_filter: ClusterFilter,
    vote: VoteResult,
    rgb_truth: np.ndarray | None = None,
    ir_truth: np.ndarray | None = None,
) -> dict[str, float]:
    """One epoch's record: a flat {name: number} ready for logging and `plot_diagnostics`.

    ``*_labels``: each modality's clustering before filtering; the filters and the vote are
    this epoch's outcomes.  With both ground truths: ``{m}_purity``, ``{m}_nmi``, ``{m}_ari``
    (clustering before filtering), ``{m}_kept_purity`` (kept clusters) and ``link_accuracy``.
    """
    link = np.asarray(vote.link)
    out: dict[str, float] = {
        "rgb_clusters": num_clusters(rgb_labels),
        "ir_clusters": num_clusters(ir_labels),
        "rgb_kept": int(np.count_nonzero(rgb_filter.kept)),
        "ir_kept": int(np.count_nonzero(ir_filter.kept)),
        "rgb_linked": int(np.count_nonzero(link >= 0)),
        "ir_linked": int(len(np.unique(link[link >= 0]))),
    }
    if (rgb_truth is None) != (ir_truth is None):
        raise ValueError("give ground truth for both modalities or for neither")
    if rgb_truth is not None:
        for m, labels, filt, truth in (
            ("rgb", rgb_labels, rgb_filter, rgb_truth),
            ("ir", ir_labels, ir_filter, ir_truth),
        ):
            out[f"{m}_purity"] = cluster_purity(labels, truth)
            out[f"{m}_kept_purity"] = cluster_purity(filt.labels, truth)
            out[f"{m}_nmi"] = normalized_mutual_info(labels, truth)
            out[f"{m}_ari"] = adjusted_rand_index(labels, truth)
        out["link_accuracy"] = link_accuracy(
            rgb_filter.labels, rgb_truth, ir_filter.labels, ir_truth, link
        )
    return out


COUNT_KEYS = ("rgb_clusters", "ir_clusters", "rgb_kept", "ir_kept", "rgb_linked", "ir_linked")
QUALITY_KEYS = (
    "rgb_purity",
    "ir_purity",
    "rgb_kept_purity",
    "ir_kept_purity",
    "link_accuracy",
    "rgb_nmi",
    "ir_nmi",
    "rgb_ari",
    "ir_ari",
)


def plot_diagnostics(
    history: Sequence[Mapping[str, float]],
    path: str | os.PathLike | None = None,
    *,
    title: str = "CSAN pseudo-labels",
) -> Figure:
    """Counts (left) and, when present, ground-truth quality (right) against the epoch.

    ``history``: one `epoch_diagnostics` record per epoch (an ``epoch`` key, if present, is
    the x value; otherwise 1, 2, ...).  Saves a PNG when ``path`` is given.
    """
    if not history:
        raise ValueError("plot_diagnostics needs at least one epoch record")
    epochs = [float(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    quality = [k for k in QUALITY_KEYS if any(k in h for h in history)]
    fig = Figure(figsize=(11.0 if quality else 6.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if quality else 1, squeeze=False)[0]

    def series(key: str) -> np.ndarray:
        return np.array([float(h.get(key, math.nan)) for h in history])

    ax = axes[0]
    for key in COUNT_KEYS:
        if any(key in h for h in history):
            style = "-" if key.startswith("rgb") else "--"
            ax.plot(epochs, series(key), style, marker="o", ms=3, label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("clusters")
    ax.set_title("clusters per modality, kept, linked")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if quality:
        ax = axes[1]
        for key in quality:
            style = "-" if key.startswith("rgb") or key == "link_accuracy" else "--"
            ax.plot(epochs, series(key), style, marker="o", ms=3, label=key.replace("_", " "))
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("epoch")
        ax.set_title("against ground truth (monitoring only)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    if path is not None:
        save_figure(fig, Path(path))
    return fig
