"""Visible-infrared person re-identification evaluation: CMC, mAP and mINP under the
benchmarks' rules, over trials.

Two rules set re-id apart from face identification (`hfrjax.eval.protocols`), and both follow
the evaluation code the field reports with (``eval_sysu`` / ``eval_regdb`` of AGW, Ye et al.,
TPAMI 2021, and DDAG, Ye et al., ECCV 2020; TOPLight §4.1 and CSAN §IV use their numbers):

* **Ignored gallery images** (`ReidRules.ignore`). SYSU-MM01's cam2 and cam3 film the same
  indoor room, so a cam3 query ignores the cam2 gallery images. The standard code drops *every*
  cam2 image for a cam3 query (``remove = (q_camid == 3) & (g_camids == 2)``, whatever the
  identity; the dataset's own MATLAB evaluation does the same through camera locations
  [1, 2, 2, 4, 5, 6]); ``same_room_scope="identity"`` drops only the query identity's cam2
  images instead (the reading "a query ignores its own identity in the same room").
* **CMC over identities** (``cmc="identity"``, SYSU-MM01). The standard code ranks the
  *distinct* gallery identities in the order of their first appearance, so the rank of a query
  is 1 + the number of other identities with an image scored above its best match. RegDB uses
  the ordinary image-level CMC (``cmc="image"``), where every impostor image counts.

mAP and mINP are image-level in both (AP over the kept gallery ranking; INP = #positives /
rank of the hardest positive, Ye et al., "Deep Learning for Person Re-identification: A Survey
and Outlook", TPAMI 2021). Queries with no kept gallery match are left out of every metric,
as that code does (they add nothing to its CMC sum and are not counted). Scores are
similarities (higher = closer); tied scores are ordered pessimistically, impostors first,
as everywhere in `hfrjax.eval.metrics` (the standard code's unstable ``argsort`` leaves
ties to chance). The per-query work is done by `hfrjax.eval.metrics` on each group of queries
that ignore the same gallery columns.

`evaluate_reid` embeds a converted dataset's query and gallery images once and reports the
metrics per fold (trial) with the mean and population std over the selected trials.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from hfrjax.data.convert.reid import sysu_camera
from hfrjax.data.dataset import Dataset
from hfrjax.data.protocol import Protocol
from hfrjax.eval import metrics
from hfrjax.eval.protocols import EmbedFn, embed_keys

CMC_KINDS = ("image", "identity")
SAME_ROOM_SCOPES = ("camera", "identity")
RANKS = (1, 10, 20)
CMC_MAX_RANK = 20


@dataclasses.dataclass(frozen=True)
class ReidRules:
    """How a re-id benchmark scores a ranking.

    ``same_room``: (query camera, gallery camera) pairs whose gallery images a query of that
    camera ignores; ``same_room_scope``: "camera" ignores all of them (the standard code),
    "identity" only those of the query's identity. ``camera_of`` reads a sample key's camera
    (needed only with ``same_room``).
    """

    name: str
    cmc: str = "image"
    same_room: tuple[tuple[int, int], ...] = ()
    same_room_scope: str = "camera"
    camera_of: Callable[[str], int] | None = None

    def __post_init__(self):
        if self.cmc not in CMC_KINDS:
            raise ValueError(f"cmc must be one of {CMC_KINDS}, got {self.cmc!r}")
        if self.same_room_scope not in SAME_ROOM_SCOPES:
            raise ValueError(
                f"same_room_scope must be one of {SAME_ROOM_SCOPES}, got {self.same_room_scope!r}"
            )
        if self.same_room and self.camera_of is None:
            raise ValueError(f"rules {self.name!r}: same_room needs camera_of")

    def ignore(
        self,
        query_labels: np.ndarray,
        gallery_labels: np.ndarray,
        query_cameras: np.ndarray | None,
        gallery_cameras: np.ndarray | None,
    ) -> np.ndarray:
        """Boolean [Q, G]: the gallery images each query ignores."""
        ignore = np.zeros((len(query_labels), len(gallery_labels)), bool)
        if not self.same_room:
            return ignore
        if query_cameras is None or gallery_cameras is None:
            raise ValueError(f"rules {self.name!r} need query and gallery cameras")
        qc, gc = np.asarray(query_cameras), np.asarray(gallery_cameras)
        for q_cam, g_cam in self.same_room:
            ignore |= (qc == q_cam)[:, None] & (gc == g_cam)[None, :]
        if self.same_room_scope == "identity":
            ignore &= np.asarray(query_labels)[:, None] == np.asarray(gallery_labels)[None, :]
        return ignore


SYSU_RULES = ReidRules("sysu-mm01", cmc="identity", same_room=((3, 2),), camera_of=sysu_camera)
"""SYSU-MM01 as the standard ``eval_sysu`` scores it."""
REGDB_RULES = ReidRules("regdb", cmc="image")
"""RegDB as the standard ``eval_regdb`` scores it (two cameras, nothing ignored)."""
STANDARD_RULES = ReidRules("standard", cmc="image")


def rules_for(protocol_name: str) -> ReidRules:
    """The rules of a converted benchmark's protocol (by name); image-level CMC otherwise."""
    if protocol_name.startswith("sysu-mm01"):
        return SYSU_RULES
    if protocol_name.startswith("regdb"):
        return REGDB_RULES
    return STANDARD_RULES


# --------------------------------------------------------------------------------------------
# Metrics of one similarity matrix.


@dataclasses.dataclass
class ReidScores:
    """Per-query results; rank 0 / NaN AP and INP mark queries without a kept match."""

    first_rank: np.ndarray  # [Q] 1-based rank of the first correct match (identity or image).
    average_precision: np.ndarray  # [Q]
    inp: np.ndarray  # [Q]
    num_ignored: np.ndarray  # [Q] gallery images each query ignored.

    @property
    def num_valid(self) -> int:
        return int(np.sum(self.first_rank > 0))

    def cmc(self, max_rank: int = 20) -> np.ndarray:
        """CMC [max_rank] over the queries with a match (fractions)."""
        return metrics.cmc_from_ranks(self.first_rank, max_rank, "exclude")

    def map_minp(self) -> tuple[float, float]:
        return metrics.mean_over_matched(self.average_precision, self.inp)

    def summary(self, ranks: Sequence[int] = RANKS) -> dict[str, float]:
        """{"Rank-k": ..., "mAP": ..., "mINP": ...} as fractions."""
        curve = self.cmc(max(ranks))
        mean_ap, mean_inp = self.map_minp()
        return {
            **{f"Rank-{r}": float(curve[r - 1]) for r in ranks},
            "mAP": mean_ap,
            "mINP": mean_inp,
        }


def _identity_max(sim: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the best score of each distinct gallery identity: ([Q, U], identities [U])."""
    ids, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    starts = np.searchsorted(inverse.reshape(-1)[order], np.arange(ids.size))
    return np.maximum.reduceat(sim[:, order], starts, axis=1), ids


def reid_scores(
    similarity,
    query_labels,
    gallery_labels,
    query_cameras=None,
    gallery_cameras=None,
    *,
    rules: ReidRules = STANDARD_RULES,
) -> ReidScores:
    """Ranks, AP and INP of every query of a [Q, G] similarity matrix under ``rules``.

    Queries that ignore the same gallery columns are scored together on the kept columns with
    `metrics.first_match_ranks` (on the per-identity best scores when ``rules.cmc`` is
    "identity") and `metrics.retrieval_per_query`.
    """
    sim = np.asarray(similarity, np.float64)
    ql, gl = np.asarray(query_labels).reshape(-1), np.asarray(gallery_labels).reshape(-1)
    if sim.ndim != 2 or sim.shape != (ql.size, gl.size):
        raise ValueError(
            f"similarity has shape {sim.shape} but there are {ql.size} query and {gl.size} "
            "gallery labels"
        )
    if not np.isfinite(sim).all():
        raise ValueError(f"similarity contains {int((~np.isfinite(sim)).sum())} non-finite values")
    ignore = rules.ignore(ql, gl, query_cameras, gallery_cameras)
    patterns, group = np.unique(ignore, axis=0, return_inverse=True)
    group = group.reshape(-1)
    ranks = np.zeros(ql.size, np.int64)
    ap = np.full(ql.size, np.nan)
    inp = np.full(ql.size, np.nan)
    for g, pattern in enumerate(patterns):
        rows, keep = np.flatnonzero(group == g), ~pattern
        if not keep.any():
            continue  # Every gallery image ignored: no match, left out.
        s, labels = sim[np.ix_(rows, keep)], gl[keep]
        if rules.cmc == "identity":
            pooled, ids = _identity_max(s, labels)
            ranks[rows] = metrics.first_match_ranks(pooled, ql[rows], ids)
        else:
            ranks[rows] = metrics.first_match_ranks(s, ql[rows], labels)
        ap[rows], inp[rows], _ = metrics.retrieval_per_query(s, ql[rows], labels)
    return ReidScores(ranks, ap, inp, ignore.sum(axis=1))


def reid_metrics(
    similarity,
    query_labels,
    gallery_labels,
    query_cameras=None,
    gallery_cameras=None,
    *,
    rules: ReidRules = STANDARD_RULES,
    ranks: Sequence[int] = RANKS,
) -> dict[str, float]:
    """{"Rank-1", "Rank-10", "Rank-20", "mAP", "mINP"} (fractions) of one trial; see
    `reid_scores`."""
    scores = reid_scores(
        similarity, query_labels, gallery_labels, query_cameras, gallery_cameras, rules=rules
    )
    if scores.num_valid == 0:
        raise ValueError("no query has a (kept) match in the gallery; re-id metrics are undefined")
    return scores.summary(ranks)


# --------------------------------------------------------------------------------------------
# Protocol evaluation.

_MODALITY_WORDS = {
    "vis": "vis",
    "visible": "vis",
    "rgb": "vis",
    "ir": "ir",
    "thermal": "thermal",
    "lwir": "thermal",
    "nir": "nir",
}


def _role(protocol: Protocol, direction: str) -> str:
    """ "forward" (probe list -> gallery list) or "reverse" for a direction like
    "thermal->visible", "ir->vis", "infrared->visible", "probe->gallery"."""
    parts = [p.strip().lower() for p in direction.split("->")]
    if len(parts) != 2:
        raise ValueError(f"direction must look like 'query->gallery', got {direction!r}")
    if parts == ["probe", "gallery"]:
        return "forward"
    if parts == ["gallery", "probe"]:
        return "reverse"
    g, p = protocol.gallery_modality, protocol.probe_modality

    def modality(word: str) -> str | None:
        if word == "infrared":  # Whichever infrared band the protocol holds.
            return next((m for m in (p, g) if m in ("nir", "ir", "thermal")), None)
        return _MODALITY_WORDS.get(word)

    q, t = modality(parts[0]), modality(parts[1])
    if (q, t) == (p, g):
        return "forward"
    if (q, t) == (g, p):
        return "reverse"
    raise ValueError(
        f"direction {direction!r} does not match protocol {protocol.name!r} "
        f"(probe modality {p!r}, gallery modality {g!r}); use '{p}->{g}' or '{g}->{p}'"
    )


def fold_modes(protocol: Protocol) -> list[str]:
    """The search modes of a protocol's fold names ("all-search/3" -> "all-search"), in order;
    [] when its folds are not named "<mode>/<trial>"."""
    if not protocol.fold_names or not all("/" in n for n in protocol.fold_names):
        return []
    return list(dict.fromkeys(n.split("/")[0] for n in protocol.fold_names))


def _select_folds(protocol: Protocol, mode: str | None, folds: Iterable[int] | None) -> list[int]:
    modes = fold_modes(protocol)
    if mode is None and len(modes) > 1:
        raise ValueError(
            f"protocol {protocol.name!r} holds the search modes {modes}; pass mode= one of them"
        )
    if mode is not None and mode not in modes:
        raise ValueError(f"protocol {protocol.name!r} has modes {modes}, not {mode!r}")
    ids = list(range(1, protocol.num_folds + 1))
    if mode is not None:
        ids = [k for k in ids if protocol.fold_name(k).split("/")[0] == mode]
    if folds is not None:
        wanted = [int(k) for k in folds]
        bad = [k for k in wanted if k not in ids]
        if bad:
            raise ValueError(f"folds {bad} are not among the selected folds {ids}")
        ids = wanted
    if not ids:
        raise ValueError("no folds to evaluate")
    return ids


def evaluate_reid(
    embed_fn: EmbedFn,
    dataset_dir: str | os.PathLike,
    *,
    mode: str | None = None,
    direction: str = "probe->gallery",
    folds: Iterable[int] | None = None,
    rules: ReidRules | None = None,
    batch_size: int = 64,
    image_size: tuple[int, int] | None = None,
    channels: int = 3,
    flip_fuse: bool = False,
    ranks: Sequence[int] = RANKS,
    num_threads: int = 2,
) -> dict[str, Any]:
    """Re-id evaluation of ``embed_fn`` on a converted benchmark's protocol, per trial.

    ``mode`` picks the folds of one search mode ("all-search" / "indoor-search" for SYSU-MM01,
    required there); ``direction`` is "probe->gallery" (SYSU: infrared queries; RegDB:
    "thermal->visible") or the swap ("visible->thermal"); ``rules`` default to the protocol's
    (`rules_for`). Every distinct image is embedded once (L2-normalised, cosine scores).

    Returns {"protocol", "mode", "direction", "rules", "metrics" (names), "folds": [{"fold",
    "name", "num_queries", "num_gallery", "num_valid_queries", "metrics"}], "mean", "std"
    (population std over trials), "curves": {"cmc": {"rank", "rate", "rate_std"}}}; values
    are fractions.
    """
    protocol = Protocol.load(dataset_dir)
    dataset = Dataset.open(dataset_dir)
    rules = rules or rules_for(protocol.name)
    role = _role(protocol, direction)
    fold_ids = _select_folds(protocol, mode, folds)
    ranks = sorted({int(r) for r in ranks})
    if not ranks or ranks[0] < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    lists = {}
    for k in fold_ids:
        f = protocol.fold(k)
        q, g = (f.probe, f.gallery) if role == "forward" else (f.gallery, f.probe)
        if not q or not g:
            raise ValueError(f"fold {protocol.fold_name(k)}: {len(q)} queries, {len(g)} gallery")
        lists[k] = (list(q), list(g))
    distinct = list(dict.fromkeys(x for q, g in lists.values() for x in (*q, *g)))
    emb = embed_keys(
        embed_fn,
        dataset,
        distinct,
        batch_size,
        image_size=image_size,
        channels=channels,
        flip_fuse=flip_fuse,
        num_threads=num_threads,
    )
    row = {key: i for i, key in enumerate(distinct)}
    table = dataset.records.select_keys(distinct, what="the evaluation lists")
    label = dict(zip(distinct, table.label.tolist()))
    camera = (
        {key: rules.camera_of(key) for key in distinct} if rules.camera_of is not None else None
    )
    names = [*(f"Rank-{r}" for r in ranks), "mAP", "mINP"]
    max_rank = max(ranks[-1], CMC_MAX_RANK)
    per_fold, curves = [], []
    for k in fold_ids:
        q, g = lists[k]
        sim = emb[[row[x] for x in q]] @ emb[[row[x] for x in g]].T
        scores = reid_scores(
            sim,
            np.asarray([label[x] for x in q]),
            np.asarray([label[x] for x in g]),
            None if camera is None else np.asarray([camera[x] for x in q]),
            None if camera is None else np.asarray([camera[x] for x in g]),
            rules=rules,
        )
        if scores.num_valid == 0:
            raise ValueError(
                f"fold {protocol.fold_name(k)}: no query has a kept match in the gallery"
            )
        curves.append(scores.cmc(max_rank))
        values = scores.summary(ranks)
        per_fold.append(
            {
                "fold": k,
                "name": protocol.fold_name(k),
                "num_queries": len(q),
                "num_gallery": len(g),
                "num_valid_queries": scores.num_valid,
                "metrics": {n: values[n] for n in names},
            }
        )
    mean, std = metrics.aggregate([f["metrics"] for f in per_fold])
    c = np.stack(curves)
    return {
        "protocol": protocol.name,
        "dataset": str(dataset_dir),
        "mode": mode,
        "direction": direction,
        "rules": {
            "name": rules.name,
            "cmc": rules.cmc,
            "same_room": [list(p) for p in rules.same_room],
            "same_room_scope": rules.same_room_scope,
            "camera_of": getattr(rules.camera_of, "__qualname__", None),
        },
        "metrics": names,
        "folds": per_fold,
        "mean": mean,
        "std": std,
        "curves": {
            "cmc": {
                "rank": list(range(1, c.shape[1] + 1)),
                "rate": c.mean(axis=0).tolist(),
                "rate_std": c.std(axis=0).tolist(),
            }
        },
    }


def format_results(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table {row label: `evaluate_reid` result} -> mean ± std in percent."""
    from hfrjax.eval import report

    return report.paper_table(results, note=False)
