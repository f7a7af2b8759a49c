"""Shared machinery of the set writers: seeding, image encoding, records and dataset.json
provenance, parallel map, progress.

Each identity is rendered from its own child of ``np.random.SeedSequence(seed)``, addressed
by a path (set, kind, identity, ...), so the output is byte-identical for any number of worker
processes and growing a set only appends identities.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import simplejpeg
from absl import logging
from PIL import Image

from hfrjax.data import tfrecord


def seed_sequence(seed: int, *path: int) -> np.random.SeedSequence:
    """The SeedSequence reached from ``seed`` by spawning along ``path`` (set, kind, id, ...).

    Equivalent to nested ``SeedSequence.spawn`` but addressable, so identity i is the same
    however many identities a set has and whichever process renders it.
    """
    return np.random.SeedSequence(seed, spawn_key=path)


def encode_image(image: np.ndarray, image_format: str, jpeg_quality: int = 92) -> bytes:
    """Encodes uint8 [H, W, C] (C = 1 or 3) as JPEG (simplejpeg) or PNG (Pillow)."""
    if image_format == "jpeg":
        colorspace = "GRAY" if image.shape[-1] == 1 else "RGB"
        return simplejpeg.encode_jpeg(
            np.ascontiguousarray(image),
            quality=jpeg_quality,
            colorspace=colorspace,
            colorsubsampling="420",
        )
    if image_format == "png":
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            buf, format="PNG", compress_level=1
        )
        return buf.getvalue()
    raise ValueError(f"unsupported image format {image_format!r} (jpeg or png)")


def identity_name(spec, index: int) -> str:
    """The name of identity ``index`` of a set: ``{spec.id_prefix}{index:05d}``."""
    return f"{spec.id_prefix}{index:05d}"


def identity_names(spec) -> list[str]:
    """The names of all ``spec.num_ids`` identities of a set (`identity_name`)."""
    return [identity_name(spec, i) for i in range(spec.num_ids)]


def sample_key(identity: str, modality: str, index: int) -> str:
    """Sample keys are ``<identity>/<modality>/<nnn>``."""
    return f"{identity}/{modality}/{index:03d}"


class Record(NamedTuple):
    """One encoded image of an identity, as `write_identity` stores it."""

    modality: str
    key: str
    image: bytes
    yaw: float | None = None  # Head yaw in degrees; None: not stored.


def write_identity(
    writer: tfrecord.ShardedWriter,
    dataset: str,
    label: int,
    identity: str,
    records: Iterable[Record],
    formats: Mapping[str, str],
) -> int:
    """Writes one identity's records (image format by modality); returns how many."""
    n = 0
    for r in records:
        writer.write(
            tfrecord.Sample(
                image=r.image,
                label=label,
                modality=r.modality,
                identity=identity,
                key=r.key,
                dataset=dataset,
                image_format=formats[r.modality],
                yaw=r.yaw,
            )
        )
        n += 1
    return n


def provenance(spec, preset: str, seed: int, set_index: int) -> dict[str, Any]:
    """The first entries of a generated set's dataset.json ``extra``: how it was made."""
    return {
        "generator": "hfrjax.data.synthetic",
        "preset": preset,
        "seed": seed,
        "identity_prefix": spec.id_prefix,
        "set_index": set_index,
    }


class Progress:
    """Logs images done and images/s at most every few seconds."""

    def __init__(self, what: str, total: int, every_s: float = 5.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            logging.info(
                "synth %s: %d/%d images (%.0f images/s)", self.what, self.done, self.total, rate
            )

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def clear_shards(directory: Path) -> None:
    """Removes shards of an earlier run so the directory only holds what dataset.json lists."""
    for path in directory.glob(f"data-*-of-*{tfrecord.SHARD_SUFFIX}*"):
        path.unlink()


def set_directory(directory: Path) -> Path:
    """``directory``, created if need be and without the shards of an earlier run."""
    directory.mkdir(parents=True, exist_ok=True)
    clear_shards(directory)
    return directory


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Mapper:
    """Context manager yielding an ordered ``imap(fn, items)``: in-process for one worker,
    else a pool of spawned processes (spawn: safe when the caller already runs JAX threads)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def __enter__(self):
        if self.workers == 1:
            return map
        self.pool = multiprocessing.get_context("spawn").Pool(self.workers)
        return lambda fn, items: self.pool.imap(fn, items, chunksize=2)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is not None:
            if exc_type is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
