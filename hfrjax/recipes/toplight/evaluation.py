"""TOPLight's two evaluation modes: re-identification (Rank-k, mAP, mINP; TOPLight §4.1) and
face recognition (TAR@FAR, Rank-1; §4.5), both run by the training loop.

The loop's protocol evaluation (``eval.data_dir``) is the face mode (`hfrjax.eval.protocols`).
The re-id mode (``reid_eval``) is the ``toplight_vi`` task's evaluators (`reid_evaluators`,
`hfrjax.train.task.TaskSetup.evaluators`), one per search mode x direction, which the loop
runs with its own evaluation and merges into ``eval.json`` as ``reid/Rank-1``, ``reid/mAP``
... (per fold), so `hfrjax.train.trainer.train`, ``launch/train.py`` and the standard sweep
(``launch/sweep.py``) give both modes in one result and one table row:
* on a converted re-id benchmark (SYSU-MM01, RegDB): `reid.evaluate_reid` under the
  benchmark's own rules, per search mode and direction;
* on a face protocol whose gallery holds one image per identity (the synthetic NIR-VIS set,
  CASIA-style lists), ``gallery="all"`` builds a re-id gallery from *every* gallery-modality
  image of each fold's test identities, so that mAP and mINP measure more than the first hit
  (with one relevant image, AP equals the reciprocal rank).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from hfrjax.config import ConfigError
from hfrjax.data.dataset import Dataset
from hfrjax.data.protocol import Protocol
from hfrjax.eval import metrics
from hfrjax.eval import reid as reid_lib
from hfrjax.eval.protocols import embed_keys


def _fold_ids(protocol: Protocol, folds: Sequence[int] | None) -> list[int]:
    ids = list(range(1, protocol.num_folds + 1)) if folds is None else [int(k) for k in folds]
    bad = [k for k in ids if not 1 <= k <= protocol.num_folds]
    if bad or not ids:
        raise ValueError(f"folds {bad or ids} are not in 1..{protocol.num_folds} of "
                         f"{protocol.name!r}")
    return ids


def all_images_gallery_reid(
    embed_fn: Callable,
    dataset_dir: str,
    *,
    folds: Sequence[int] | None = None,
    direction: str = "probe->gallery",
    batch_size: int = 64,
    image_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Re-id metrics per fold with the gallery grown to every image of the gallery modality
    of the fold's test identities (module docstring); image-level CMC, nothing ignored.
    ``direction`` "probe->gallery" (the fold's probes are the queries) or "gallery->probe"."""
    if direction not in ("probe->gallery", "gallery->probe"):
        raise ValueError(f"direction must be 'probe->gallery' or 'gallery->probe', got "
                         f"{direction!r}")
    protocol, dataset = Protocol.load(dataset_dir), Dataset.open(dataset_dir)
    records = dataset.records
    lists = {}
    for k in _fold_ids(protocol, folds):
        fold = protocol.fold(k)
        test_ids = np.unique(records.select_keys(fold.gallery, what=f"gallery of fold {k}").label)
        sel = (records.modality == protocol.gallery_modality) & np.isin(records.label, test_ids)
        gallery = [str(x) for x in records.key[sel]]
        probes = list(fold.probe)
        lists[k] = (probes, gallery) if direction == "probe->gallery" else (gallery, probes)
    distinct = list(dict.fromkeys(x for q, g in lists.values() for x in (*q, *g)))
    emb = embed_keys(embed_fn, dataset, distinct, batch_size, image_size=image_size)
    row = {key: i for i, key in enumerate(distinct)}
    label = dict(zip(distinct, records.select_keys(distinct).label.tolist()))
    names = [*(f"Rank-{r}" for r in reid_lib.RANKS), "mAP", "mINP"]
    per_fold = []
    for k, (q, g) in lists.items():
        scores = reid_lib.reid_scores(
            emb[[row[x] for x in q]] @ emb[[row[x] for x in g]].T,
            np.asarray([label[x] for x in q]),
            np.asarray([label[x] for x in g]),
        )
        values = scores.summary()
        per_fold.append({"fold": k, "num_queries": len(q), "num_gallery": len(g),
                         "metrics": {n: values[n] for n in names}})
    mean, std = metrics.aggregate([f["metrics"] for f in per_fold])
    return {"protocol": protocol.name, "dataset": str(dataset_dir), "mode": "all-images gallery",
            "direction": direction, "metrics": names, "folds": per_fold, "mean": mean,
            "std": std}


def reid_labels(reid_cfg) -> dict[str, tuple[str | None, str]]:
    """{label: (search mode, direction)} of ``reid_cfg`` (a `task.ReidEvalConfig`), none
    without ``data_dir``; labels are "reid" plus "[mode]" / "[direction]" when several. Each
    label names a loop evaluator, so its metrics reach ``eval.json`` as "label/Rank-1" ..."""
    if reid_cfg.gallery not in ("protocol", "all"):
        raise ConfigError(f"reid_eval.gallery must be 'protocol' or 'all', got "
                          f"{reid_cfg.gallery!r}")
    if not reid_cfg.data_dir:
        return {}
    modes = list(reid_cfg.modes) or [None]
    directions = list(reid_cfg.directions)
    if not directions:
        raise ConfigError("reid_eval.directions is empty")
    if reid_cfg.gallery == "all" and modes != [None]:
        raise ConfigError(f"reid_eval.gallery='all' takes no modes, got {tuple(modes)}")
    return {
        "reid" + (f"[{mode}]" if len(modes) > 1 else "")
        + (f"[{direction}]" if len(directions) > 1 else ""): (mode, direction)
        for mode in modes
        for direction in directions
    }


def reid_result(embed_fn: Callable, reid_cfg, mode: str | None, direction: str,
                image_size=None) -> dict[str, Any]:
    """One search mode x direction of ``reid_cfg``: `all_images_gallery_reid` for
    ``gallery="all"``, else the benchmark's own rules (`hfrjax.eval.reid.evaluate_reid`)."""
    folds = list(reid_cfg.folds) if reid_cfg.folds else None
    if reid_cfg.gallery == "all":
        return all_images_gallery_reid(
            embed_fn, reid_cfg.data_dir, folds=folds, direction=direction,
            batch_size=reid_cfg.batch_size, image_size=image_size,
        )
    return reid_lib.evaluate_reid(
        embed_fn, reid_cfg.data_dir, mode=mode, direction=direction, folds=folds,
        batch_size=reid_cfg.batch_size, image_size=image_size,
    )


def reid_evaluators(reid_cfg, image_size=None) -> dict[str, Callable]:
    """The loop evaluators (`hfrjax.train.task.TaskSetup.evaluators`) of ``reid_cfg``: one
    ``fn(hook_ctx, state, step) -> result`` per label of `reid_labels`, embedding with the
    state's parameters (BN in inference mode), as the loop's face protocol does. The
    evaluators of one evaluation (the same state) share one embedder: one compilation."""
    last: list = [None, None]  # [state, its embedder]

    def evaluator(mode, direction):
        def fn(hctx, state, step):
            if last[0] is not state:
                last[:] = [state, hctx.embedder(state)]
            return reid_result(last[1], reid_cfg, mode, direction, image_size)

        return fn

    return {label: evaluator(*md) for label, md in reid_labels(reid_cfg).items()}
