"""Same/different thresholds calibrated for a false-accept rate, stored with the model.

A pair is called "same" when its cosine similarity is >= the threshold. For a target FAR the
threshold is the smallest score t with ``#(impostor scores >= t) <= FAR * #impostors`` over
the impostor pairs of a protocol (every probe-gallery pair of different identities, pooled
over the chosen folds), so the FAR achieved on the calibration set never exceeds the target.

The calibration lives next to the model: ``DIR/calibration.json`` for an hfrjax export
directory, ``MODEL.onnx.calibration.json`` / ``MODEL.jaxexport.calibration.json`` for files.
It records the model's fingerprint; a calibration made for other weights is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hfrjax.deploy.backends import EmbeddingModel

CALIBRATION = "calibration.json"


def calibration_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p / CALIBRATION if p.is_dir() else p.with_name(p.name + "." + CALIBRATION)


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """Smallest t with ``mean(impostor >= t) <= far`` (float64; +inf-free: when ``far`` allows
    no impostor at all, t lies just above the highest impostor score)."""
    imp = np.sort(np.asarray(impostor_scores, np.float64).reshape(-1))[::-1]
    if imp.size == 0:
        raise ValueError("no impostor pairs to calibrate on")
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must lie in [0, 1], got {far}")
    allowed = int(np.floor(far * imp.size + 1e-9))  # Impostors allowed at or above t.
    if allowed >= imp.size:
        return float(imp[-1])
    return float(np.nextafter(imp[allowed], np.inf))


def pair_scores_by_label(
    probes: np.ndarray, gallery: np.ndarray, probe_labels, gallery_labels, block: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) cosine scores of every probe-gallery pair, blockwise."""
    pl, gl = np.asarray(probe_labels), np.asarray(gallery_labels)
    gen, imp = [], []
    for s in range(0, len(probes), block):
        sim = probes[s : s + block] @ gallery.T
        same = pl[s : s + block, None] == gl[None, :]
        gen.append(sim[same])
        imp.append(sim[~same])
    return np.concatenate(gen), np.concatenate(imp)


def calibrate(
    model: EmbeddingModel,
    dataset_dir: str | os.PathLike,
    fars: Sequence[float] = (1e-3,),
    *,
    direction: str = "probe->gallery",
    folds: Sequence[int] | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Thresholds for ``fars`` on a dataset's protocol (``direction`` "probe->gallery" as
    written, or "gallery->probe"); returns the calibration record (see `save_calibration`)."""
    from hfrjax.data.dataset import Dataset
    from hfrjax.data.protocol import Protocol
    from hfrjax.eval.protocols import embed_keys

    if direction not in ("probe->gallery", "gallery->probe"):
        raise ValueError(
            f"direction must be 'probe->gallery' or 'gallery->probe', got {direction!r}"
        )
    protocol = Protocol.load(dataset_dir)
    dataset = Dataset.open(dataset_dir)
    fold_ids = list(range(1, protocol.num_folds + 1)) if folds is None else [int(f) for f in folds]
    lists = []
    for k in fold_ids:
        f = protocol.fold(k)
        p, g = (f.probe, f.gallery) if direction == "probe->gallery" else (f.gallery, f.probe)
        lists.append((list(p), list(g)))
    keys = list(dict.fromkeys(k for p, g in lists for k in (*p, *g)))
    emb = embed_keys(
        model.embed,
        dataset,
        keys,
        batch_size,
        image_size=(model.input_size, model.input_size),
        channels=model.channels,
    )
    row = {k: i for i, k in enumerate(keys)}
    rec = dataset.records
    genuine, impostor = [], []
    for k, (p, g) in zip(fold_ids, lists):
        pl = rec.select_keys(p, what=f"probe list of fold {k}").label
        gl = rec.select_keys(g, what=f"gallery list of fold {k}").label
        gen, imp = pair_scores_by_label(
            emb[[row[x] for x in p]], emb[[row[x] for x in g]], pl, gl
        )
        genuine.append(gen)
        impostor.append(imp)
    gen, imp = np.concatenate(genuine), np.concatenate(impostor)
    if gen.size == 0 or imp.size == 0:
        raise ValueError(
            f"{dataset_dir}: {gen.size} genuine and {imp.size} impostor pairs; both are needed"
        )
    entries = []
    for far in fars:
        t = threshold_at_far(imp, float(far))
        entries.append(
            {
                "far": float(far),
                "threshold": t,
                "achieved_far": float(np.mean(imp >= t)),
                "tar": float(np.mean(gen >= t)),
            }
        )
    return {
        "score": "cosine",
        "decision": "same if score >= threshold",
        "model": str(model.path),
        "model_kind": model.kind,
        "model_fingerprint": model.fingerprint(),
        "dataset": str(Path(dataset_dir).absolute()),
        "protocol": protocol.name,
        "direction": direction,
        "folds": fold_ids,
        "num_genuine": int(gen.size),
        "num_impostor": int(imp.size),
        "thresholds": entries,
    }


def save_calibration(model_path: str | os.PathLike, record: dict[str, Any]) -> Path:
    from hfrjax.fileio import write_text_atomic

    return write_text_atomic(
        calibration_path(model_path), json.dumps(record, indent=1, sort_keys=True) + "\n"
    )


def load_threshold(model: EmbeddingModel, far: float | None = None) -> tuple[float, dict] | None:
    """(threshold, its entry) from the model's calibration file, for ``far`` (default: the
    first calibrated FAR); None when the model has no calibration."""
    from hfrjax.fileio import read_json

    path = calibration_path(model.path)
    if not path.exists():
        return None
    record = read_json(path)
    if record.get("model_fingerprint") != model.fingerprint():
        raise ValueError(
            f"{path} was calibrated for other weights than {model.path}; recalibrate with "
            "`hfrjax verify --calibrate DATASET` (or give --threshold)"
        )
    entries = record.get("thresholds", [])
    if not entries:
        return None
    if far is None:
        entry = entries[0]
    else:
        match = [e for e in entries if np.isclose(e["far"], far, rtol=1e-9, atol=0)]
        if not match:
            have = ", ".join(f"{e['far']:g}" for e in entries)
            raise ValueError(
                f"{path} has thresholds for FAR {have}, not {far:g}; calibrate for it with "
                f"`hfrjax verify --calibrate DATASET --far {far:g}`"
            )
        entry = match[0]
    return float(entry["threshold"]), {**entry, "calibration": str(path)}


def copy_calibration(src_model: EmbeddingModel, dst_model: EmbeddingModel) -> Path | None:
    """Carries a calibration over to an exported copy of the same weights (ONNX / serialized
    JAX reproduce the embeddings to ~1e-6), re-keyed to the copy's fingerprint."""
    from hfrjax.fileio import read_json

    src = calibration_path(src_model.path)
    if not src.exists():
        return None
    record = read_json(src)
    if record.get("model_fingerprint") != src_model.fingerprint():
        return None
    record = {
        **record,
        "model": str(dst_model.path),
        "model_kind": dst_model.kind,
        "model_fingerprint": dst_model.fingerprint(),
        "inherited_from": str(src),
    }
    return save_calibration(dst_model.path, record)
