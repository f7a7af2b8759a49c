"""TOPLight's two evaluation modes: re-identification (Rank-k, mAP, mINP; TOPLight §4.1) and
face recognition (TAR@FAR, Rank-1; §4.5), and a train function that runs both.

The loop's own evaluation (``eval.data_dir``) is the face protocol (`hfrjax.eval.protocols`).
`reid_evaluation` adds the re-id metrics of `hfrjax.eval.reid` after training:
* on a converted re-id benchmark (SYSU-MM01, RegDB): `reid.evaluate_reid` under the
  benchmark's own rules, per search mode and direction;
* on a face protocol whose gallery holds one image per identity (the synthetic NIR-VIS set,
  CASIA-style lists), ``gallery="all"`` builds a re-id gallery from *every* gallery-modality
  image of each fold's test identities, so that mAP and mINP measure more than the first hit
  (with one relevant image, AP equals the reciprocal rank).

`train_and_evaluate(config, workdir)` = `trainer.train` + `reid_evaluation` for
``toplight_vi`` configs with ``reid_eval.data_dir``; it writes ``reid.json`` to the workdir and
merges the re-id metrics into the returned evaluation result (per fold, names prefixed
``reid/``), so that `hfrjax.sweep.run_sweep(..., train_fn=train_and_evaluate)` tabulates both
modes in one row (``launch/toplight_tables.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hfrjax.data.dataset import Dataset
from hfrjax.data.protocol import Protocol
from hfrjax.eval import metrics
from hfrjax.eval import reid as reid_lib
from hfrjax.eval.protocols import embed_keys
from hfrjax.fileio import write_text_atomic

REID_JSON = "reid.json"


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


def reid_evaluation(embed_fn: Callable, reid_cfg, image_size=None) -> dict[str, dict]:
    """{label: result} for every search mode x direction of ``reid_cfg`` (a
    `task.ReidEvalConfig`); labels are "reid" plus "[mode]" / "[direction]" when several."""
    modes = list(reid_cfg.modes) or [None]
    directions = list(reid_cfg.directions)
    if not directions:
        raise ValueError("reid_eval.directions is empty")
    folds = list(reid_cfg.folds) if reid_cfg.folds else None
    out = {}
    for mode in modes:
        for direction in directions:
            label = "reid" + (f"[{mode}]" if len(modes) > 1 else "") + (
                f"[{direction}]" if len(directions) > 1 else ""
            )
            if reid_cfg.gallery == "all":
                if mode is not None:
                    raise ValueError("reid_eval.gallery='all' takes no modes")
                out[label] = all_images_gallery_reid(
                    embed_fn, reid_cfg.data_dir, folds=folds, direction=direction,
                    batch_size=reid_cfg.batch_size, image_size=image_size,
                )
            else:
                out[label] = reid_lib.evaluate_reid(
                    embed_fn, reid_cfg.data_dir, mode=mode, direction=direction, folds=folds,
                    batch_size=reid_cfg.batch_size, image_size=image_size,
                )
    return out


def merge_results(face: dict | None, reid: dict[str, dict]) -> dict | None:
    """The face result with each re-id result's per-fold metrics added as ``label/name``
    (folds matched by number; re-id results over other folds are left out of the merge and
    stay in ``face["reid"]``). Without a face result: the re-id results alone, merged."""
    results = dict(reid)
    if face is None:
        if not results:
            return None
        first = next(iter(results.values()))
        face = {"direction": first.get("direction"), "metrics": [],
                "folds": [{"fold": f["fold"], "metrics": {}} for f in first["folds"]]}
    merged = dict(face, folds=[dict(f, metrics=dict(f["metrics"])) for f in face["folds"]])
    names = list(merged.get("metrics") or [])
    by_fold = {f["fold"]: f for f in merged["folds"]}
    for label, res in results.items():
        got = {f["fold"]: f["metrics"] for f in res["folds"]}
        if set(got) != set(by_fold):
            continue
        for k, fold in by_fold.items():
            fold["metrics"].update({f"{label}/{n}": v for n, v in got[k].items()})
        names += [f"{label}/{n}" for n in res["metrics"]]
    merged["metrics"] = names
    merged["mean"], merged["std"] = metrics.aggregate([f["metrics"] for f in merged["folds"]])
    merged["reid"] = {label: {"mean": r["mean"], "std": r["std"], "mode": r.get("mode"),
                              "direction": r.get("direction")} for label, r in results.items()}
    return merged


def train_and_evaluate(config: Any, workdir: str):
    """`hfrjax.train.trainer.train`, then the re-id evaluation of a ``toplight_vi`` config
    with ``reid_eval.data_dir`` (module docstring). Returns the trainer's result with
    ``eval_results`` replaced by the merged face + re-id result."""
    from hfrjax.tasks import parse_config
    from hfrjax.train import trainer

    result = trainer.train(config, workdir)
    task, _, task_cfg = parse_config(config)
    reid_cfg = getattr(task_cfg, "reid_eval", None)
    if task.name != "toplight_vi" or reid_cfg is None or not reid_cfg.data_dir:
        return result
    reid = reid_evaluation(result.embedder, reid_cfg, task_cfg.input.image_size)
    write_text_atomic(Path(workdir) / REID_JSON, json.dumps(reid, indent=1, default=float) + "\n")
    face = result.eval_results
    if face is not None and "folds" not in face:  # A complete run returns only the means:
        path = Path(workdir) / "eval.json"  # the full result is the loop's eval.json.
        face = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    result.eval_results = merge_results(face, reid)
    return result
