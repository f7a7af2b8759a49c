"""Running a dataset's k-fold HFR protocol: embed, score, report mean ± std over folds.

`evaluate_protocol` embeds every distinct image once (the folds of CASIA NIR-VIS 2.0 style
protocols share most images, so caching by key makes 10-fold evaluation about 10x cheaper),
then per fold scores probes against the gallery blockwise (`metrics.score_blocks`) and
reports TAR@FAR, Rank-k, EER and AUC; `format_table` renders the result as Markdown.

Directions (modalities named as in the protocol, e.g. "nir" probes and "vis" gallery):
  "nir->vis"  the protocol as written: probe list vs gallery list;
  "vis->nir"  roles swapped: the gallery list are the probes, the probe list the gallery;
  "vis->vis"  sanity check without the domain gap: gallery list vs the *other* images of the
              gallery modality of the same identities (from the dataset's records).
The generic aliases "probe->gallery", "gallery->probe" and "gallery->gallery" work whatever
the protocol's modalities.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from hfrjax.data.dataset import Dataset
from hfrjax.data.protocol import Fold, Protocol
from hfrjax.eval import embedding, metrics
from hfrjax.eval.embedding import l2_normalize

EmbedFn = Callable[[np.ndarray], Any]  # uint8 images [B, H, W, C] -> embeddings [B, D].
ImageTransform = Callable[[np.ndarray], np.ndarray]  # uint8 [B, H, W, C] -> same shape.


# --------------------------------------------------------------------------------------------
# Embedding.


def embed_keys(
    embed_fn: EmbedFn,
    dataset: Dataset,
    keys: Sequence[str],
    batch_size: int,
    *,
    image_size: tuple[int, int] | None = None,
    channels: int = 3,
    flip_fuse: bool = False,
    transform: ImageTransform | None = None,
    num_threads: int = 2,
) -> np.ndarray:
    """L2-normalised embeddings [N, D] of the given sample keys, in order.

    ``embed_fn`` (``fn(images)`` or ``fn(images, modality)``) always sees full batches of
    ``batch_size`` uint8 images (the last one padded, so a jitted model compiles once);
    ``transform`` (e.g. an occlusion) is applied first; ``flip_fuse`` adds the mirrored
    images' embeddings before normalising. See `hfrjax.eval.embedding`.
    """
    return embedding.embed_records(
        embed_fn,
        dataset,
        keys,
        batch_size,
        image_size=image_size,
        channels=channels,
        flip=flip_fuse,
        transform=transform,
        num_threads=num_threads,
    )


# --------------------------------------------------------------------------------------------
# Protocol evaluation.


def _directions(protocol: Protocol) -> dict[str, str]:
    p, g = protocol.probe_modality, protocol.gallery_modality
    d = {
        "gallery->gallery": "gallery",
        f"{g}->{g}": "gallery",
        "gallery->probe": "reverse",
        f"{g}->{p}": "reverse",
        "probe->gallery": "forward",
        f"{p}->{g}": "forward",
    }
    return d


def _fold_lists(
    protocol: Protocol, dataset: Dataset, fold_id: int, fold: Fold, role: str
) -> tuple[list[str], list[str]]:
    """(probe keys, gallery keys) of a fold for a direction role."""
    if role == "forward":
        probes, gallery = list(fold.probe), list(fold.gallery)
    elif role == "reverse":
        probes, gallery = list(fold.gallery), list(fold.probe)
    else:
        gallery = list(fold.gallery)
        rec = dataset.records
        test_ids = np.unique(rec.select_keys(gallery, what=f"gallery of fold {fold_id}").label)
        gallery_set = set(gallery)
        in_gallery = np.fromiter((k in gallery_set for k in rec.key), bool, len(rec))
        sel = (
            (rec.modality == protocol.gallery_modality) & np.isin(rec.label, test_ids) & ~in_gallery
        )
        probes = [str(k) for k in rec.key[sel]]
        if not probes:
            raise ValueError(
                f"fold {fold_id}: no {protocol.gallery_modality} images of the gallery "
                "identities lie outside the gallery, so a same-modality check has no "
                "probes"
            )
    if not probes or not gallery:
        raise ValueError(
            f"fold {fold_id}: {len(probes)} probe and {len(gallery)} gallery keys; "
            "both lists must be non-empty"
        )
    return probes, gallery


def _embed_cached(
    embed_fn: EmbedFn, dataset: Dataset, keys: Iterable[str], batch_size: int, **kw
) -> tuple[np.ndarray, dict[str, int]]:
    distinct = list(dict.fromkeys(keys))
    return embed_keys(embed_fn, dataset, distinct, batch_size, **kw), {
        k: i for i, k in enumerate(distinct)
    }


def evaluate_protocol(
    embed_fn: EmbedFn,
    dataset_dir: str | os.PathLike,
    *,
    folds: Iterable[int] | None = None,
    direction: str = "nir->vis",
    batch_size: int = 64,
    fars: Sequence[float] = (1e-3, 1e-2),
    image_size: tuple[int, int] | None = None,
    channels: int = 3,
    flip_fuse: bool = False,
    probe_transform: ImageTransform | None = None,
    occlusion: str = "none",
    tar_method: str = "nearest",
    ranks: Sequence[int] = (1,),
    gallery_mode: str = "images",
    block_size: int = 1024,
    pair_scores: str = "exact",
    num_threads: int = 2,
) -> dict[str, Any]:
    """Evaluates ``embed_fn`` on the protocol stored with a dataset; mean ± std over folds.

    ``folds`` are 1-based fold numbers (None: all). ``occlusion`` ("maskTop", "maskBottom", see
    `hfrjax.data.occlusion`) or any ``probe_transform`` alters probe images only (partial-face
    studies). TAR uses `metrics.tar_at_far` with ``tar_method`` ("nearest" is the field's
    convention). Rank-k is closed-set: probes whose identity is not in the gallery are excluded
    from the CMC (their count is reported per fold) but still give impostor pairs.
    ``gallery_mode``: "images" scores every listed gallery image (CASIA's lists already hold
    one image per identity); "template" first fuses each identity's gallery images into one
    template (normalised mean embedding). ``pair_scores="histogram"`` bounds memory for huge
    sets (see `metrics.score_blocks`).

    Returns a dict: "protocol", "direction", "tar_method", "metrics" (ordered names),
    "folds" (list of {"fold", "num_probes", "num_gallery", "num_unmatched_probes",
    "num_genuine", "num_impostor", "metrics": {name: value}, "curves"}), "mean" and "std"
    ({name: value}, population std over folds) and "curves" (fold means). All metric values are
    fractions. Curves (for plots, see `hfrjax.eval.report`): "roc" {"far", "tar"} on a
    log-spaced FAR grid (the exact ROC's largest TAR with FAR <= each grid value, grid points
    below 1 / #impostors dropped), "cmc" {"rank", "rate"} up to rank 20, "scores" {"edges",
    "genuine", "impostor"} pair counts on 256 bins over [-1, 1]; the fold means add
    "tar_std" / "rate_std" and sum the score counts.
    """
    from hfrjax.data import occlusion as occlusion_lib

    if gallery_mode not in GALLERY_MODES:
        raise ValueError(f"gallery_mode must be one of {GALLERY_MODES}, got {gallery_mode!r}")
    if occlusion != "none":
        if probe_transform is not None:
            raise ValueError("give either occlusion or probe_transform, not both")
        probe_transform = occlusion_lib.make_probe_occluder(occlusion)
    protocol = Protocol.load(dataset_dir)
    dataset = Dataset.open(dataset_dir)
    roles = _directions(protocol)
    if direction not in roles:
        raise ValueError(
            f"direction must be one of {sorted(roles)} for protocol "
            f"{protocol.name!r}, got {direction!r}"
        )
    role = roles[direction]
    fold_ids = list(range(1, protocol.num_folds + 1)) if folds is None else [int(k) for k in folds]
    if not fold_ids:
        raise ValueError("no folds to evaluate")
    ranks = sorted({int(r) for r in ranks})
    if ranks and ranks[0] < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if tar_method not in metrics.TAR_METHODS:  # Checked before the (slow) embedding pass.
        raise ValueError(f"tar_method must be one of {metrics.TAR_METHODS}, got {tar_method!r}")
    fars = list(dict.fromkeys(float(f) for f in fars))
    if any(not 0.0 <= f <= 1.0 for f in fars):
        raise ValueError(f"target FARs must lie in [0, 1], got {fars}")
    lists = {k: _fold_lists(protocol, dataset, k, protocol.fold(k), role) for k in fold_ids}

    embed_kw = dict(
        image_size=image_size, channels=channels, flip_fuse=flip_fuse, num_threads=num_threads
    )
    probe_keys = (k for p, _ in lists.values() for k in p)
    gallery_keys = (k for _, g in lists.values() for k in g)
    if probe_transform is None:  # One pass over the union: a key in both roles embeds once.
        emb, index = _embed_cached(
            embed_fn, dataset, [*probe_keys, *gallery_keys], batch_size, **embed_kw
        )
        p_emb, p_index, g_emb, g_index = emb, index, emb, index
    else:
        p_emb, p_index = _embed_cached(
            embed_fn, dataset, probe_keys, batch_size, transform=probe_transform, **embed_kw
        )
        g_emb, g_index = _embed_cached(embed_fn, dataset, gallery_keys, batch_size, **embed_kw)

    names = (
        [f"TAR@FAR={metrics.far_name(f)}" for f in fars]
        + [f"Rank-{r}" for r in ranks]
        + ["EER", "AUC"]
    )
    per_fold = []
    for k in fold_ids:
        probes, gallery = lists[k]
        pl = dataset.records.select_keys(probes, what=f"probe list of fold {k}").label
        gl = dataset.records.select_keys(gallery, what=f"gallery list of fold {k}").label
        gallery_emb = g_emb[[g_index[x] for x in gallery]]
        if gallery_mode == "template":
            gallery_emb, gl = identity_templates(gallery_emb, gl)
        scores = metrics.score_blocks(
            p_emb[[p_index[x] for x in probes]],
            gallery_emb,
            pl,
            gl,
            block_size,
            normalize=False,
            retrieval=False,
            pair_scores=pair_scores,
        )
        if scores.num_genuine == 0:
            raise ValueError(
                f"fold {k} ({direction}): no probe shares an identity with the gallery, "
                "so there are no genuine pairs"
            )
        if scores.num_impostor == 0:
            raise ValueError(
                f"fold {k} ({direction}): every probe-gallery pair is genuine (one "
                "identity), so there are no impostor pairs"
            )
        m = scores.verification_metrics(fars, tar_method)
        curves = _fold_curves(scores, len(gl))
        values = {**m, **{f"Rank-{r}": _rank_rate(scores, r) for r in ranks}}
        per_fold.append(
            {
                "fold": k,
                "num_probes": len(probes),
                "num_gallery": len(gl),
                "num_unmatched_probes": int(np.sum(scores.first_rank == 0)),
                "num_genuine": scores.num_genuine,
                "num_impostor": scores.num_impostor,
                "metrics": {n: values[n] for n in names},
                "curves": curves,
            }
        )
    mean, std = metrics.aggregate([f["metrics"] for f in per_fold])
    return {
        "protocol": protocol.name,
        "dataset": str(dataset_dir),
        "direction": direction,
        "occlusion": occlusion if probe_transform is None or occlusion != "none" else "custom",
        "gallery_mode": gallery_mode,
        "tar_method": tar_method,
        "metrics": names,
        "folds": per_fold,
        "mean": mean,
        "std": std,
        "curves": mean_curves([f["curves"] for f in per_fold]),
    }


# --------------------------------------------------------------------------------------------
# Templates and curves.

GALLERY_MODES = ("images", "template")
FAR_GRID = tuple(float(f) for f in 10.0 ** np.linspace(-6, 0, 61))  # 10 points per decade.
CMC_MAX_RANK = 20
SCORE_BINS = 256


def identity_templates(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One template per identity: the L2-normalised mean of its (unit) embeddings."""
    ids, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((ids.size, emb.shape[1]), np.float64)
    np.add.at(sums, inverse, np.asarray(emb, np.float64))
    return l2_normalize(sums), ids


def _rank_rate(scores: metrics.BlockScores, rank: int) -> float:
    return float(scores.cmc(rank)[rank - 1])


def _fold_curves(scores: metrics.BlockScores, gallery_size: int) -> dict[str, Any]:
    grid = [f for f in FAR_GRID if f * scores.num_impostor >= 1.0]
    tar = scores.tar_at_far(grid, "strict")
    max_rank = min(CMC_MAX_RANK, gallery_size)
    hist = scores.score_histogram(SCORE_BINS)
    return {
        "roc": {"far": grid, "tar": [tar[f] for f in grid]},
        "cmc": {
            "rank": list(range(1, max_rank + 1)),
            "rate": [float(r) for r in scores.cmc(max_rank)],
        },
        "scores": {
            "edges": [float(e) for e in hist.edges],
            "genuine": [int(c) for c in hist.genuine],
            "impostor": [int(c) for c in hist.impostor],
        },
    }


def mean_curves(fold_curves: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Fold means (and population stds) of ROC and CMC on their common grid; summed scores."""
    far = sorted(set.intersection(*(set(c["roc"]["far"]) for c in fold_curves)))
    tars = np.array(
        [[dict(zip(c["roc"]["far"], c["roc"]["tar"]))[f] for f in far] for c in fold_curves]
    )
    rank = min((c["cmc"]["rank"] for c in fold_curves), key=len)
    rates = np.array([c["cmc"]["rate"][: len(rank)] for c in fold_curves])
    scores = fold_curves[0]["scores"]
    return {
        "roc": {
            "far": far,
            "tar": tars.mean(0).tolist(),
            "tar_std": tars.std(0).tolist(),
        },
        "cmc": {
            "rank": list(rank),
            "rate": rates.mean(0).tolist(),
            "rate_std": rates.std(0).tolist(),
        },
        "scores": {
            "edges": list(scores["edges"]),
            "genuine": np.sum([c["scores"]["genuine"] for c in fold_curves], 0).tolist(),
            "impostor": np.sum([c["scores"]["impostor"] for c in fold_curves], 0).tolist(),
        },
    }


# --------------------------------------------------------------------------------------------
# Reporting.


def format_table(results: Mapping[str, Any], metric_names: Sequence[str] | None = None) -> str:
    """Markdown table of mean ± std (percent) per metric: `report.paper_table` without its note.

    ``results`` is one `evaluate_protocol` result or a mapping {row label: result}.
    """
    from hfrjax.eval import report

    return report.paper_table(results, metric_names, note=False)
