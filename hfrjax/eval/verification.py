"""Pair verification accuracy by the LFW 10-fold protocol, as InsightFace computes it.

InsightFace's ``eval/verification.py`` (the numbers every ArcFace-family paper reports for LFW,
CFP-FP, AgeDB-30):

* embeddings are L2-normalised (flip fusion: the sum of the image's and its mirror's embeddings,
  then normalised); pair i is embeddings 2i and 2i+1;
* distance = squared Euclidean distance of the normalised embeddings, ``sum((e1 - e2)**2)``
  = 2 - 2 cos, in [0, 4]; a pair is called "same" when distance < threshold;
* the pairs are split into 10 contiguous folds (``KFold(10, shuffle=False)``: the first N % 10
  folds hold one pair more); for each fold the threshold in ``np.arange(0, 4, 0.01)`` with the
  best accuracy on the other 9 folds (the smallest on ties, ``np.argmax``) is applied to it;
* accuracy = mean ± population std of the 10 fold accuracies.

VAL@FAR (``val``, ``val_std``, ``far``) follows their ``calculate_val`` on the finer grid
``np.arange(0, 4, 0.001)``: per fold, the threshold where the training folds' FAR reaches
``far_target``, interpolated linearly between the last grid threshold at or below the target
and the next one (their ``interp1d(far, thresholds, kind="slinear")``, which recent SciPy refuses
on the repeated FAR values of a step curve), and threshold 0 when no grid threshold reaches it.

Distances are computed in float64 (InsightFace's float32 can flip pairs lying within ~1e-7 of
a grid threshold; results otherwise agree).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from hfrjax.data import augment
from hfrjax.data.verification_pack import PackError, load_pack
from hfrjax.eval import embedding

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)

EmbedFn = Callable[[np.ndarray], np.ndarray]


def kfold_splits(n: int, nfolds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays of ``sklearn.model_selection.KFold(nfolds, shuffle=False)``
    on ``n`` items; ``nfolds == 1`` trains and tests on everything (InsightFace's ``LFold``)."""
    if nfolds < 1:
        raise ValueError(f"nfolds must be >= 1, got {nfolds}")
    idx = np.arange(n)
    if nfolds == 1:
        return [(idx, idx)]
    if n < nfolds:
        raise ValueError(f"{n} pairs cannot be split into {nfolds} folds")
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    out, start = [], 0
    for s in sizes:
        test = idx[start : start + s]
        out.append((np.concatenate([idx[:start], idx[start + s :]]), test))
        start += s
    return out


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm in float64 (zero rows stay zero)."""
    return embedding.l2_normalize(x, dtype=np.float64)


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [N] of normalised embeddings 2i and 2i+1."""
    e = l2_normalize(embeddings)
    return np.sum(np.square(e[0::2] - e[1::2]), axis=1)


def _counts_below(sorted_dist: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many distances are < each threshold (np.less, as InsightFace predicts "same")."""
    return np.searchsorted(sorted_dist, thresholds, side="left")


def _accuracies(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    tp = _counts_below(np.sort(dist[same]), thresholds)
    fp = _counts_below(np.sort(dist[~same]), thresholds)
    tn = (~same).sum() - fp
    return (tp + tn) / dist.size


def _val_far(dist: np.ndarray, same: np.ndarray, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(VAL, FAR) at each threshold; 0 where a fold has no same (different) pairs."""
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    n_same, n_diff = same.sum(), (~same).sum()
    ta = _counts_below(np.sort(dist[same]), thresholds)
    fa = _counts_below(np.sort(dist[~same]), thresholds)
    val = ta / n_same if n_same else np.zeros(len(thresholds))
    far = fa / n_diff if n_diff else np.zeros(len(thresholds))
    return val, far


def _far_threshold(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """Threshold where the (non-decreasing) FAR curve reaches ``target`` (module docstring)."""
    if far.max() < target:
        return 0.0
    i = int(np.searchsorted(far, target, side="right")) - 1  # Last grid point with FAR <= target.
    if i < 0:
        return float(thresholds[0])
    if i + 1 >= len(far):
        return float(thresholds[i])
    f0, f1 = far[i], far[i + 1]
    return float(thresholds[i] + (target - f0) / (f1 - f0) * (thresholds[i + 1] - thresholds[i]))


def embed_images(
    embed_fn: EmbedFn,
    images: np.ndarray | Sequence[np.ndarray],
    batch_size: int = 64,
    flip: bool = False,
) -> np.ndarray:
    """L2-normalised embeddings [N, D] of uint8 images [N, H, W, 3] in batches of
    ``batch_size`` (the last padded, so a jitted ``embed_fn`` sees one shape); with ``flip``,
    of the sum of each image's and its mirror's embeddings (`hfrjax.eval.embedding`)."""
    return embedding.embed_batches(
        embed_fn, embedding.array_batches(np.asarray(images), batch_size), flip=flip
    )


def verification_accuracy(
    embeddings: np.ndarray | EmbedFn,
    issame: Sequence[bool] | np.ndarray,
    nfolds: int = 10,
    *,
    images: np.ndarray | None = None,
    batch_size: int = 64,
    far_target: float = 1e-3,
) -> dict:
    """The LFW-protocol accuracy of pairs (2i, 2i+1) of ``embeddings`` [2N, D], or of
    ``embed_fn(images)`` when ``embeddings`` is a callable (module docstring).

    Returns accuracy / accuracy_std (over folds), threshold (mean of the folds' chosen
    distance thresholds) and cosine_threshold (1 - threshold / 2), fold_accuracies,
    fold_thresholds, val / val_std / far at ``far_target``, and num_pairs.
    """
    if callable(embeddings):
        if images is None:
            raise ValueError("pass images= when embeddings is an embedding function")
        embeddings = embed_images(embeddings, images, batch_size)
    emb = np.asarray(embeddings, dtype=np.float64)
    same = np.asarray(issame)
    if same.ndim != 1 or not (same.dtype == bool or np.isin(same, (0, 1)).all()):
        raise ValueError(f"issame must be a 1-D list of bools, got {same.dtype} {same.shape}")
    same = same.astype(bool)
    if emb.ndim != 2 or emb.shape[0] != 2 * len(same):
        raise ValueError(
            f"embeddings must be [2N, D] = [{2 * len(same)}, D] for {len(same)} pairs, "
            f"got shape {emb.shape}"
        )
    if not np.isfinite(emb).all():
        raise ValueError("embeddings hold non-finite values")
    dist = pair_distances(emb)
    accs, ths, vals, fars = [], [], [], []
    for train, test in kfold_splits(len(same), nfolds):
        best = int(np.argmax(_accuracies(dist[train], same[train], ACC_THRESHOLDS)))
        th = ACC_THRESHOLDS[best]
        accs.append(float(_accuracies(dist[test], same[test], np.array([th]))[0]))
        ths.append(float(th))
        _, far_train = _val_far(dist[train], same[train], VAL_THRESHOLDS)
        vth = _far_threshold(far_train, VAL_THRESHOLDS, far_target)
        v, f = _val_far(dist[test], same[test], vth)
        vals.append(float(v[0]))
        fars.append(float(f[0]))
    threshold = float(np.mean(ths))
    return {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "threshold": threshold,
        "cosine_threshold": 1.0 - threshold / 2.0,
        "fold_accuracies": accs,
        "fold_thresholds": ths,
        "val": float(np.mean(vals)),
        "val_std": float(np.std(vals)),
        "far": float(np.mean(fars)),
        "far_target": far_target,
        "num_pairs": int(len(same)),
    }


def evaluate_pack(
    embed_fn: EmbedFn,
    path: str | os.PathLike,
    batch_size: int = 64,
    image_size: tuple[int, int] = (112, 112),
    flip: bool = True,
    nfolds: int = 10,
) -> dict:
    """`verification_accuracy` of ``embed_fn`` (uint8 [B, H, W, 3] -> [B, D]) on the InsightFace
    pack at ``path``, images decoded and resized to ``image_size`` = (H, W) one batch at a time,
    flipped embeddings fused when ``flip`` (InsightFace's reported setting)."""
    images, issame = load_pack(path)
    size = tuple(int(s) for s in image_size)

    def decode(sl: slice) -> np.ndarray:
        out = []
        for i in range(*sl.indices(len(images))):
            try:
                out.append(augment.decode_image(images[i], size=size))
            except Exception as e:  # noqa: BLE001 - any decoder failure is the same bad input.
                raise PackError(f"{path}: image {i} cannot be decoded ({e})") from e
        return np.stack(out)

    def batches():
        for start in range(0, len(images), batch_size):
            x = decode(slice(start, min(start + batch_size, len(images))))
            yield from embedding.array_batches(x, batch_size)

    emb = embedding.embed_batches(embed_fn, batches(), flip=flip)
    result = verification_accuracy(emb, issame, nfolds)
    result["pack"] = str(path)
    return result
