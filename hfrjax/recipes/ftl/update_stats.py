"""UpdateStats of FTL's Alg. 1 over a training set: the pass that feeds stage 1.

Yin et al., "Feature Transfer Learning for Face Recognition with Under-Represented Data",
§3.3 and Alg. 1 (UpdateStats): every training image and its mirror go through the (frozen)
encoder; the rich features g, ḡ and the image's yaw are accumulated into `statistics`' one-pass
moments (class centres with flips and the yaw bound, Eq. 5; the shared covariance V of the
regular classes, Eq. 6), Q = top-k eigenvectors of V, and the hard list h (regular samples
farther from their centre than their class's mean distance) from a second look at every g.

Memory is bounded: O(C·D + D²) for the moments; the features of the second look are kept only
while they fit in ``cache_bytes``, else the encoder runs again (two passes).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from hfrjax.data import pipeline
from hfrjax.data.dataset import Dataset, RecordTable
from hfrjax.recipes.ftl import statistics

EncodeFn = Callable[[np.ndarray], np.ndarray]  # uint8 [B, H, W, C] -> g float32 [B, D]


@dataclasses.dataclass
class PassReport:
    """What one UpdateStats pass did (for logs and the README's speed numbers)."""

    images: int
    encoder_images: int  # Images through the encoder (flips and a second pass included).
    seconds: float
    passes: int
    energy_kept: float
    num_hard: int
    fallback_classes: int
    moments_bytes: int

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "images_per_second": self.images_per_second}


def _batches(dataset: Dataset, records: RecordTable, batch_size: int, image_size, channels):
    """(images, table rows) of every record in table order; full batches (padding dropped
    after encoding by the caller through the row count)."""
    start = 0
    for batch in pipeline.iter_eval_batches(
        dataset, list(records.key), batch_size, image_size=image_size, channels=channels
    ):
        valid = np.asarray(batch["valid"], bool)
        n = int(valid.sum())
        yield np.asarray(batch["image"]), np.arange(start, start + n), n
        start += n


def run_update_stats(
    encode: EncodeFn,
    dataset: Dataset,
    records: RecordTable,
    class_ids: np.ndarray,
    num_classes: int,
    regular: np.ndarray,
    *,
    num_components: int,
    max_abs_yaw: float | None,
    flip: bool = True,
    batch_size: int = 256,
    image_size=None,
    channels: int = 3,
    cache_bytes: int = 1 << 30,
) -> tuple[statistics.FTLStatistics, PassReport]:
    """Centres, Q, eigenvalues, energy and the hard list (``hard_indices``: table rows).

    ``records``/``class_ids``: the training table and each row's class id; ``regular``: [C]
    bool, the classes whose samples enter V and the hard list.
    """
    t0 = time.perf_counter()
    class_ids = np.asarray(class_ids, np.int64)
    if len(class_ids) != len(records):
        raise ValueError(f"{len(class_ids)} class ids for {len(records)} records")
    moments = None
    cache: list[np.ndarray] | None = []
    encoded = 0
    for images, rows, n in _batches(dataset, records, batch_size, image_size, channels):
        g = np.asarray(encode(images), np.float32)[:n]
        encoded += len(images)
        g_bar = None
        if flip:
            g_bar = np.asarray(encode(np.ascontiguousarray(images[:, :, ::-1])), np.float32)[:n]
            encoded += len(images)
        if moments is None:
            moments = statistics.init_moments(
                num_classes, g.shape[1], regular, max_abs_yaw=max_abs_yaw
            )
            per_row = g.shape[1] * 4
            if per_row * len(records) > cache_bytes:
                cache = None
        statistics.accumulate(moments, g, class_ids[rows], flipped=g_bar, yaw=records.yaw[rows])
        if cache is not None:
            cache.append(g)
    if moments is None:
        raise ValueError(f"{dataset.directory}: no records to compute FTL statistics from")
    stats = statistics.finalize(moments, num_components)
    passes = 1
    if cache is not None:
        distances = statistics.sample_distances(stats.centres, np.concatenate(cache), class_ids)
    else:
        passes = 2
        parts = []
        for images, rows, n in _batches(dataset, records, batch_size, image_size, channels):
            g = np.asarray(encode(images), np.float32)[:n]
            encoded += len(images)
            parts.append(statistics.sample_distances(stats.centres, g, class_ids[rows]))
        distances = np.concatenate(parts)
    hard = statistics.hard_sample_indices(distances, class_ids, regular)
    stats = dataclasses.replace(stats, hard_indices=hard)
    moment_bytes = sum(
        np.asarray(getattr(moments, f.name)).nbytes for f in dataclasses.fields(moments)
    )
    report = PassReport(
        images=len(records),
        encoder_images=encoded,
        seconds=time.perf_counter() - t0,
        passes=passes,
        energy_kept=float(stats.energy_kept),
        num_hard=len(hard),
        fallback_classes=int(stats.fallback_classes),
        moments_bytes=int(moment_bytes),
    )
    return stats, report
