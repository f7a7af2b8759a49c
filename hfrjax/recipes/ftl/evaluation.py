"""FTL's hold-out evaluation (Yin et al., "Feature Transfer Learning for Face Recognition with
Under-Represented Data", §4.3, Table 1; Fig. 1b).

* Nearest-centre rank-1 on the hold-out set, separately for the regular and the UR classes,
  on the rich feature g and the identity feature f: the gallery of a class is the centre of its
  training images (the normalised mean of their normalised, flip-fused features); a probe is
  right when its nearest centre (cosine) is its own class. The gallery holds every hold-out
  class, so all training sets are scored against the same gallery; a class the training set
  lacks (the UR classes of 10K0K) takes its training images from ``gallery_dir``.
* LFW-style verification (10 folds, InsightFace's protocol) of g and f on a pair pack.
* The classifier weight norm of each class against its number of training images, before
  (after pretraining) and after FTL, as a PNG (the paper's Fig. 1b observation).
* `evaluate_trained`: all of it for trained variables; the ``ftl`` task runs it as the loop's
  evaluator ``holdout`` (metrics ``holdout/<metric>`` in the loop's ``eval.json``).

Which hold-out classes are regular: the first ``regular_classes`` labels (the hold-out
``dataset.json`` extra, as the synthetic long-tailed sets and `subsets` write it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hfrjax.data import augment, pipeline
from hfrjax.data.dataset import Dataset
from hfrjax.data.verification_pack import load_pack
from hfrjax.eval.embedding import l2_normalize
from hfrjax.eval.verification import verification_accuracy

FEATURES = ("f", "g")
METRICS = tuple(
    f"{m}_{x}" for x in FEATURES for m in ("verify", "rank1_regular", "rank1_ur")
)
PACK_FILE = "verification.bin"
PLOT_FILE = "weight_norms.png"
EVAL_FILE = "ftl_eval.json"  # The whole hold-out result, unprefixed names.
EVALUATOR = "holdout"  # The task's evaluator: eval.json metrics "holdout/<metric>".

FeatureFn = Callable[[np.ndarray], dict]  # uint8 images -> {"g": [B, D], "f": [B, D]} raw


def features_function(network):
    """(params, model_state, images) -> {"g", "f"}: Enc and R with running BN statistics."""
    from hfrjax.train.step import model_inputs

    def fn(params, model_state, images):
        variables = {"params": params, **model_state}
        g = network.apply(variables, model_inputs(images), train=False, method="encode")
        return {"g": g, "f": network.apply(variables, g, method="filter_features")}

    return fn


def _fused(fn: FeatureFn, images: np.ndarray, flip: bool) -> dict[str, np.ndarray]:
    out = {k: np.asarray(v, np.float64) for k, v in fn(images).items()}
    if flip:
        mirrored = fn(np.ascontiguousarray(images[:, :, ::-1]))
        out = {k: v + np.asarray(mirrored[k], np.float64) for k, v in out.items()}
    return out


def embed_keys(
    fn: FeatureFn, dataset: Dataset, keys, batch_size: int, *, image_size=None, channels=3,
    flip=True,
) -> dict[str, np.ndarray]:
    """L2-normalised, flip-fused g and f of a dataset's ``keys``, in order."""
    parts: dict[str, list] = {k: [] for k in FEATURES}
    for batch in pipeline.iter_eval_batches(
        dataset, list(keys), batch_size, image_size=image_size, channels=channels
    ):
        valid = np.asarray(batch["valid"], bool)
        out = _fused(fn, np.asarray(batch["image"]), flip)
        for k in FEATURES:
            parts[k].append(out[k][valid])
    return {k: l2_normalize(np.concatenate(v)) for k, v in parts.items()}


def class_centres(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes, centres): per class the normalised mean of its (normalised) features."""
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), features.shape[1]))
    np.add.at(sums, inverse, np.asarray(features, np.float64))
    return classes, l2_normalize(sums, dtype=np.float64)


def nearest_centre_correct(
    probes: np.ndarray, probe_labels: np.ndarray, centres: np.ndarray, centre_labels: np.ndarray
) -> np.ndarray:
    """Per probe: whether its most similar centre (cosine) is its own class."""
    scores = np.asarray(probes, np.float64) @ np.asarray(centres, np.float64).T
    return np.asarray(centre_labels)[np.argmax(scores, axis=1)] == np.asarray(probe_labels)


def holdout_regular(holdout: Dataset) -> np.ndarray:
    """[classes] bool: which hold-out classes are regular (module docstring)."""
    extra = holdout.info.extra
    if "regular_classes" not in extra:
        raise ValueError(
            f"{holdout.directory}/dataset.json has no extra.regular_classes: not an FTL "
            "hold-out set (the synthetic long-tailed presets and `subsets` write one)"
        )
    return np.arange(holdout.info.num_classes) < int(extra["regular_classes"])


def gallery_sources(
    names: list[str], train_dir: str, gallery_dir: str = ""
) -> list[tuple[Dataset, list[str], np.ndarray]]:
    """(dataset, keys, hold-out class of each key) covering every name: the training set's
    images, then ``gallery_dir``'s for the names it lacks."""
    out, missing = [], list(range(len(names)))
    for directory in [d for d in (train_dir, gallery_dir) if d]:
        ds = Dataset.open(directory)
        index = {n: i for i, n in enumerate(ds.info.class_names)}
        have = [c for c in missing if names[c] in index]
        if have:
            label_to_class = {index[names[c]]: c for c in have}
            rows = np.flatnonzero(np.isin(ds.records.label, list(label_to_class)))
            cls = np.asarray([label_to_class[int(y)] for y in ds.records.label[rows]])
            out.append((ds, list(ds.records.key[rows]), cls))
        missing = [c for c in missing if names[c] not in index]
    if missing:
        raise ValueError(
            f"{len(missing)} hold-out classes have no training images in {train_dir}"
            + (f" or {gallery_dir}" if gallery_dir else " (set holdout.gallery_dir)")
            + f", e.g. {[names[c] for c in missing[:5]]}"
        )
    return out


def verify_pack(
    fn: FeatureFn, path: str, batch_size: int, image_size: tuple[int, int]
) -> dict[str, dict]:
    """Verification of g and f on a pack, each image fused with its mirror."""
    images, issame = load_pack(path)
    parts: dict[str, list] = {k: [] for k in FEATURES}
    for start in range(0, len(images), batch_size):
        chunk = [augment.decode_image(b, size=image_size) for b in images[start : start + batch_size]]
        out = _fused(fn, np.stack(chunk), True)
        for k in FEATURES:
            parts[k].append(out[k])
    return {
        k: verification_accuracy(l2_normalize(np.concatenate(v)), issame) for k, v in parts.items()
    }


def evaluate_holdout(
    fn: FeatureFn,
    *,
    train_dir: str,
    holdout_dir: str,
    gallery_dir: str = "",
    pack: str = "",
    batch_size: int = 128,
    image_size: tuple[int, int] | None = None,
    channels: int = 3,
    flip: bool = True,
) -> dict[str, Any]:
    """{"metrics": {name: fraction}, "counts": {...}, "verification": {...}} (module doc)."""
    holdout = Dataset.open(holdout_dir)
    names = list(holdout.info.class_names)
    regular = holdout_regular(holdout)
    kw = dict(image_size=image_size, channels=channels, flip=flip)
    probes = embed_keys(fn, holdout, list(holdout.records.key), batch_size, **kw)
    probe_classes = np.asarray(holdout.records.label)
    gallery = {k: [] for k in FEATURES}
    gallery_classes = []
    for ds, keys, cls in gallery_sources(names, train_dir, gallery_dir):
        feats = embed_keys(fn, ds, keys, batch_size, **kw)
        for k in FEATURES:
            gallery[k].append(feats[k])
        gallery_classes.append(cls)
    gallery_classes = np.concatenate(gallery_classes)
    metrics, counts = {}, {
        "probes_regular": int(regular[probe_classes].sum()),
        "probes_ur": int((~regular[probe_classes]).sum()),
        "gallery_classes": len(names),
        "gallery_images": len(gallery_classes),
    }
    for k in FEATURES:
        classes, centres = class_centres(np.concatenate(gallery[k]), gallery_classes)
        right = nearest_centre_correct(probes[k], probe_classes, centres, classes)
        is_reg = regular[probe_classes]
        metrics[f"rank1_regular_{k}"] = float(right[is_reg].mean()) if is_reg.any() else float("nan")
        metrics[f"rank1_ur_{k}"] = float(right[~is_reg].mean()) if (~is_reg).any() else float("nan")
    pack = pack or str(Path(holdout_dir) / PACK_FILE)
    verification = {}
    if Path(pack).exists():
        size = tuple(image_size) if image_size else tuple(holdout.info.image_size)
        verification = verify_pack(fn, pack, batch_size, size)
        for k in FEATURES:
            metrics[f"verify_{k}"] = float(verification[k]["accuracy"])
    ordered = {m: metrics[m] for m in METRICS if m in metrics}
    return {"metrics": ordered, "counts": counts, "verification": verification}


def evaluate_trained(
    cfg, model_cfg: dict, params, model_state, extra, mesh, workdir: str | Path, step: int
) -> dict:
    """The hold-out evaluation of trained variables (``cfg``: the task's `FTLConfig`): a
    one-"fold" result in the protocol format with the counts, verification details and
    weight norms beside it; written to ``workdir/ftl_eval.json`` with ``weight_norms.png``."""
    import jax

    from hfrjax import models
    from hfrjax.fileio import write_text_atomic
    from hfrjax.recipes.ftl import statistics
    from hfrjax.recipes.ftl.device import MeshFunction

    h = cfg.holdout
    if not h.data_dir:
        raise ValueError("no hold-out set: set holdout.data_dir (or eval.data_dir in a sweep)")
    network = models.get_model(model_cfg["name"], **model_cfg["kwargs"])
    fn = MeshFunction(features_function(network), params, model_state, mesh)
    size = model_cfg["kwargs"]["input_size"]
    r = evaluate_holdout(
        fn,
        train_dir=cfg.input.data_dir,
        holdout_dir=h.data_dir,
        gallery_dir=h.gallery_dir,
        pack=h.pack,
        batch_size=h.batch_size,
        image_size=(size, size),
        channels=cfg.input.channels,
        flip=h.flip,
    )
    _, class_ids, _ = pipeline.select_train_records(cfg.input)
    kernel = np.asarray(params["fc"]["kernel"])
    sizes = statistics.class_sizes(class_ids, kernel.shape[1])
    after = np.linalg.norm(kernel, axis=0)
    before = None
    if extra and int(np.asarray(extra.get("stats_version", 0))) > 0:
        before = np.asarray(extra["fc_norm_pretrained"])
    ur_max = cfg.stats.ur_max_images
    norms = {"after": weight_norm_summary(after, sizes, ur_max)}
    if before is not None:
        norms["before"] = weight_norm_summary(before, sizes, ur_max)
    workdir = Path(workdir)
    if h.plot and jax.process_index() == 0:
        plot_weight_norms(
            workdir / PLOT_FILE, sizes, after, before, ur_max_images=ur_max,
            title=f"FTL mode {cfg.mode}: classifier weight norm vs class size",
        )
    metrics = r["metrics"]
    result = {
        "protocol": "ftl_holdout",
        "direction": "vis->vis",
        "metrics": list(metrics),
        "folds": [{"fold": 1, "metrics": metrics}],
        "mean": dict(metrics),
        "std": {k: 0.0 for k in metrics},
        "step": int(step),
        "mode": cfg.mode,
        "train_dir": cfg.input.data_dir,
        "holdout_dir": h.data_dir,
        "counts": r["counts"],
        "weight_norms": norms,
        "verification": {
            k: {n: v for n, v in res.items() if n in ("accuracy", "accuracy_std", "threshold")}
            for k, res in r["verification"].items()
        },
    }
    result = _jsonable(result)
    if jax.process_index() == 0:
        write_text_atomic(workdir / EVAL_FILE, json.dumps(result, indent=1) + "\n")
    return result


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


# ------------------------------------------------------------------------------------------
# Classifier weight norms (Fig. 1b).


def weight_norm_summary(
    norms: np.ndarray, sizes: np.ndarray, ur_max_images: int
) -> dict[str, float]:
    """Mean row norm of regular and UR classes and their ratio (UR / regular)."""
    norms, sizes = np.asarray(norms, np.float64), np.asarray(sizes)
    ur = (sizes >= 1) & (sizes <= ur_max_images)
    reg = sizes > ur_max_images
    out = {
        "mean_norm_regular": float(norms[reg].mean()) if reg.any() else float("nan"),
        "mean_norm_ur": float(norms[ur].mean()) if ur.any() else float("nan"),
    }
    out["ratio_ur_to_regular"] = out["mean_norm_ur"] / out["mean_norm_regular"]
    return out


def plot_weight_norms(
    path: str | Path,
    sizes: np.ndarray,
    after: np.ndarray,
    before: np.ndarray | None = None,
    *,
    ur_max_images: int = 20,
    title: str = "",
) -> Path:
    """PNG: classifier row norm ‖w_c‖ against the class's training images, per class (points)
    and per class size (means, lines); ``before`` (after pretraining) beside ``after``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = np.asarray(sizes)
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    rng = np.random.default_rng(0)
    jitter = sizes * (1 + 0.04 * rng.standard_normal(len(sizes)))
    series = [("after FTL" if before is not None else "final", after, "C1")]
    if before is not None:
        series.insert(0, ("after pretraining (before FTL)", before, "C0"))
    for label, norms, colour in series:
        norms = np.asarray(norms)
        ax.scatter(jitter, norms, s=6, alpha=0.35, color=colour, label=label)
        uniq = np.unique(sizes)
        ax.plot(uniq, [norms[sizes == u].mean() for u in uniq], color=colour, lw=1.5)
    ax.axvline(ur_max_images + 0.5, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("classifier weight norm ‖w‖")
    ax.set_title(title or "Classifier weight norm against class size")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
