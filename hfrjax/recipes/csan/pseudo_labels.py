"""CSAN's pseudo-labelling steps on whole-set features, as the task's hook calls them.

Pure numpy functions over L2-normalised embeddings of the training samples (RGB rows first,
then IR rows, as in `hfrjax.recipes.csan.inputs.SampleStore`); the cluster ids of each
modality are its own (0..N_m-1), -1 = no cluster. They compose the package's clustering
(§III-B), filtering (Alg. 1 lines 4-15) and voting (lines 20-31) modules.
"""

from __future__ import annotations

import math

import numpy as np

from hfrjax.recipes.csan import clustering, distances, filtering, voting


def target_count(num_samples: int, target_clusters: int, target_fraction: float) -> int:
    """Clusters to agglomerate one modality into: ``target_clusters`` if set, else
    ``round(target_fraction · num_samples)``, clipped to [1, num_samples]."""
    k = target_clusters if target_clusters > 0 else int(round(target_fraction * num_samples))
    return int(min(max(k, 1), num_samples))


def merge_counts(sizes: tuple[int, int], targets: tuple[int, int], fraction: float) -> np.ndarray:
    """[S, 2]: each modality's cluster count after merge stage 1..S (BUC's ``int(n · mp)``
    merges per stage); the shorter schedule holds its final count."""
    schedules = [clustering.merge_schedule(n, t, fraction) for n, t in zip(sizes, targets)]
    stages = max(len(s) for s in schedules)
    out = np.empty((stages, 2), np.int64)
    for m, (s, n) in enumerate(zip(schedules, sizes)):
        padded = s + [s[-1] if s else n] * (stages - len(s))
        out[:, m] = padded
    return out


def merge_to(features: np.ndarray, labels: np.ndarray, count: int, **kw) -> np.ndarray:
    """One merge stage of one modality: the closest cluster pairs merged until ``count``."""
    current = int(labels.max()) + 1
    if count >= current:
        return clustering.relabel_contiguous(labels)
    return clustering.merge_step(features, labels, current - count, **kw)


def cluster_means(features: np.ndarray, labels: np.ndarray, num_rows: int) -> np.ndarray:
    """[num_rows, D]: the L2-normalised mean feature of each cluster id (zero rows for ids
    without members) — the memory bank's initial centres."""
    ok = labels >= 0
    sums = np.zeros((num_rows, features.shape[1]), np.float64)
    np.add.at(sums, labels[ok], features[ok])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def filter_modality(
    features, labels, *, min_size, max_size_factor, silhouette, block_entries, dtype=np.float64
):
    """Alg. 1 lines 4-15 for one modality; ``max_size_factor`` · mean size bounds "extremely
    large" clusters (0: no bound; §IV-C gives no numbers); ``dtype``: the silhouette's
    distance precision."""
    labels = clustering.relabel_contiguous(labels)
    k = int(labels.max()) + 1
    max_size = None
    if max_size_factor > 0:
        max_size = max(min_size, int(math.ceil(max_size_factor * len(labels) / k)))
    return filtering.filter_clusters(
        features,
        labels,
        min_size=min_size,
        max_size=max_size,
        silhouette_threshold=silhouette,
        block_entries=block_entries,
        dtype=dtype,
    )


def ir_to_rgb_table(link: np.ndarray, num_ir: int) -> np.ndarray:
    """[num_ir]: the RGB cluster each IR cluster is linked to (Alg. 1 line 27: the last RGB
    cluster in order when several voted for it), -1 otherwise."""
    out = np.full(num_ir, -1, np.int64)
    linked = np.flatnonzero(link >= 0)
    np.maximum.at(out, link[linked], linked)
    return out


def nearest_linked_clusters(
    features: np.ndarray, labels: np.ndarray, link: np.ndarray, block_entries: int
) -> np.ndarray:
    """[len(link)]: for each linked RGB cluster the nearest *other* linked RGB cluster under
    the closest-pair (single-linkage) distance of §III-B, -1 when there is none; the hard
    negative cluster of Eq. 4."""
    out = np.full(len(link), -1, np.int64)
    active = (labels >= 0) & (link[np.maximum(labels, 0)] >= 0)
    rows = np.flatnonzero(active)
    if len(np.unique(labels[rows])) < 2:
        return out
    comp = labels[rows]
    x = features if len(rows) == len(labels) else features[rows]
    j, dist = distances.nearest(
        x, x, query_groups=comp, reference_groups=comp, block_entries=block_entries
    )
    ok = np.flatnonzero(j >= 0)
    order = ok[np.lexsort((ok, dist[ok]))]  # Ascending distance, then sample order.
    clusters, first = np.unique(comp[order], return_index=True)
    out[clusters] = comp[j[order[first]]]
    return out


def vote(features: np.ndarray, cluster: np.ndarray, num_rgb: int, block_entries: int):
    """Alg. 1 lines 20-31 on the filtered clusters: (VoteResult over RGB cluster ids 0..N_rgb-1
    padded to N_rgb, IR-to-RGB table [N_ir], nearest linked RGB cluster [N_rgb])."""
    rgb, ir = cluster[:num_rgb], cluster[num_rgb:]
    result = voting.cross_spectral_vote(
        features[:num_rgb], rgb, features[num_rgb:], ir, block_entries=block_entries
    )
    link = np.full(num_rgb, -1, np.int64)
    link[: len(result.link)] = result.link
    neighbour = nearest_linked_clusters(features[:num_rgb], rgb, link, block_entries)
    return result, link, ir_to_rgb_table(link, len(cluster) - num_rgb), neighbour


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool mask of the samples whose identity is held out for validation: a seeded
    ``fraction`` of the identities (at least 2 when ``fraction`` > 0)."""
    ids = np.unique(labels)
    if fraction <= 0:
        return np.zeros(len(labels), bool)
    n = min(len(ids) - 1, max(2, int(round(fraction * len(ids)))))
    if n < 2:
        raise ValueError(
            f"early_stop.holdout_fraction={fraction}: {len(ids)} training identities are too "
            "few to hold out 2 for validation and keep some for training"
        )
    held = np.random.default_rng([seed, 0xDA1]).choice(ids, size=n, replace=False)
    return np.isin(labels, held)


def validation_metric(
    features: np.ndarray, truth: np.ndarray, num_rgb: int, direction: str, metric: str
) -> float:
    """Re-id style retrieval on the held-out identities: IR queries against the RGB gallery
    (``direction="ir->rgb"``) or the swap; returns ``metric`` ("Rank-1", "mAP", ...)."""
    from hfrjax.eval.reid import reid_metrics

    rgb, ir = features[:num_rgb], features[num_rgb:]
    rgb_t, ir_t = truth[:num_rgb], truth[num_rgb:]
    if direction == "ir->rgb":
        q, qt, g, gt = ir, ir_t, rgb, rgb_t
    elif direction == "rgb->ir":
        q, qt, g, gt = rgb, rgb_t, ir, ir_t
    else:
        raise ValueError(f"early_stop.direction must be 'ir->rgb' or 'rgb->ir', got {direction!r}")
    values = reid_metrics(q @ g.T, qt, gt)
    if metric not in values:
        raise ValueError(f"early_stop.metric={metric!r}; choose from {sorted(values)}")
    return float(values[metric])
