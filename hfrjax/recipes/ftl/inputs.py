"""Stage-1 inputs of FTL's Alg. 1: batches drawn from row lists that change during training.

Stage 1 eats two batches besides the usual shuffled stream (Yin et al., "Feature Transfer
Learning for Face Recognition with Under-Represented Data", §3.4 and Alg. 1):

* a *regular* batch sampled from the hard list h, which UpdateStats rebuilds before every
  stage 1 (`ListSampler` in ``"rows"`` mode, given a new list and version by the hook);
* a *UR* batch from the under-represented classes, "similar to class-balanced sampling"
  (``"classes"`` mode: each batch takes distinct classes in a seeded per-epoch permutation
  and one image of each).

Both are pure functions of (seed, stream, list version, position), so an input is resumable
from ``{"version", "position"}`` alone: the list itself lives in the checkpointed extra state
(fixed capacity, -1 fill) and is handed back to the input after a restore (`ListSampler.set_list`
with the saved version). Every process reads its slice of each global batch, like the core
pipeline.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import jax
import numpy as np

from hfrjax.data import augment as augment_lib
from hfrjax.data import pipeline, tfrecord
from hfrjax.data.dataset import RecordTable

SAMPLING_MODES = ("rows", "classes")


class RecordImages:
    """Reads, decodes and augments rows of a training `RecordTable` (one thread pool)."""

    def __init__(
        self,
        records: RecordTable,
        class_ids: np.ndarray,
        cfg: pipeline.InputConfig,
        num_threads: int = 4,
    ):
        self.records = records
        self.class_ids = np.asarray(class_ids, np.int32)
        self.cfg = cfg
        self.source = pipeline.RecordSource(records)
        self.modality = np.asarray(
            [pipeline.modality_code(m) for m in records.modality], np.int32
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, num_threads))

    def _image(self, row: int, seed_path: tuple[int, ...]) -> np.ndarray:
        data = self.source[row]
        try:
            sample = tfrecord.decode_example(data)
            img = augment_lib.decode_image(
                sample.image, channels=self.cfg.channels, size=self.cfg.image_size
            )
        except Exception as e:  # noqa: BLE001 - re-raised naming the record.
            raise augment_lib.ImageDecodeError(
                f"cannot decode {self.source.describe(row)}: {e}"
            ) from e
        rng = np.random.default_rng([self.cfg.seed, *seed_path])
        img = augment_lib.augment(img, self.cfg.augment, rng, modality=sample.modality)
        if self.cfg.normalize_on_host:
            img = augment_lib.normalize_images(img)
        return img

    def batch(self, rows: np.ndarray, seed_paths: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
        """{"image", "label" (class ids), "modality"} of ``rows``; image i augmented with the
        generator seeded by ``(input seed, *seed_paths[i])``."""
        rows = np.asarray(rows, np.int64)
        images = list(self._pool.map(self._image, rows.tolist(), seed_paths))
        return {
            "image": np.stack(images),
            "label": self.class_ids[rows],
            "modality": self.modality[rows],
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ListSampler:
    """A resumable input of batches drawn from a versioned row list (module docstring).

    ``mode="rows"``: the sample at global position t is ``rows[perm_e[t mod n]]`` with
    ``perm_e`` the seeded permutation of epoch e = t div n. ``mode="classes"``: the rows are
    grouped by class; position t takes class ``perm_e[t mod #classes]`` and one of its rows
    drawn by a generator seeded with t. ``stream`` separates the seeds of different inputs.
    """

    def __init__(
        self,
        name: str,
        images: RecordImages,
        batch_size: int,
        *,
        mode: str,
        seed: int,
        stream: int,
        mesh=None,
        data_axis: str = "data",
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        if mode not in SAMPLING_MODES:
            raise ValueError(f"input {name!r}: mode must be one of {SAMPLING_MODES}, got {mode!r}")
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f"input {name!r}: batch size {batch_size} must be positive and divisible by "
                f"{process_count} processes"
            )
        self.name, self.images, self.batch_size, self.mode = name, images, batch_size, mode
        self.seed, self.stream, self.mesh, self.data_axis = seed, stream, mesh, data_axis
        self._p, self._local = process_index, batch_size // process_count
        self.version, self.position = 0, 0
        self._list_version: int | None = None
        self._rows = np.zeros(0, np.int64)
        self._groups: list[np.ndarray] = []
        self._perm_cache: tuple[int, np.ndarray] | None = None

    # -- the list ----------------------------------------------------------------------------

    def set_list(self, version: int, rows: np.ndarray, *, restart: bool = True) -> None:
        """Samples from ``rows`` (training-table rows) from now on, as list ``version``.

        ``restart``: a new list, read from position 0. False: the list of the current version
        handed back after a restore; the position is kept.
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.images.records)):
            raise ValueError(
                f"input {self.name!r}: rows outside [0, {len(self.images.records)}) in list "
                f"version {version}"
            )
        if not restart and int(version) != self.version:
            raise ValueError(
                f"input {self.name!r} was restored at list version {self.version}, but the "
                f"state holds version {version}: the checkpoint is inconsistent"
            )
        self._rows, self._list_version = rows, int(version)
        if self.mode == "classes":
            labels = self.images.class_ids[rows]
            order = np.argsort(labels, kind="stable")
            bounds = np.flatnonzero(np.diff(labels[order])) + 1
            self._groups = np.split(rows[order], bounds) if rows.size else []
        self._perm_cache = None
        if restart:
            self.version, self.position = int(version), 0

    @property
    def list_version(self) -> int | None:
        """Version of the list held (None: none yet, e.g. just after ``set_state``)."""
        return self._list_version

    def _units(self) -> int:
        return len(self._groups) if self.mode == "classes" else len(self._rows)

    def _perm(self, epoch: int) -> np.ndarray:
        cached = self._perm_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        perm = np.random.default_rng([self.seed, self.stream, self.version, epoch]).permutation(
            self._units()
        )
        self._perm_cache = (epoch, perm)
        return perm

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """Table rows of the given global sample positions under the current list."""
        n = self._units()
        out = np.empty(len(positions), np.int64)
        for i, t in enumerate(np.asarray(positions, np.int64).tolist()):
            epoch, j = divmod(t, n)
            unit = int(self._perm(epoch)[j])
            if self.mode == "rows":
                out[i] = self._rows[unit]
            else:
                group = self._groups[unit]
                pick = np.random.default_rng([self.seed, self.stream, self.version, t, 1])
                out[i] = group[int(pick.integers(len(group)))]
        return out

    # -- the iterator protocol ---------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        if self._list_version is None or self._list_version != self.version:
            raise RuntimeError(
                f"input {self.name!r} holds no row list for version {self.version} (have "
                f"{self._list_version}); stage 1 of FTL runs only after UpdateStats"
            )
        if self._units() == 0:
            raise RuntimeError(f"input {self.name!r}: row list version {self.version} is empty")
        start = self.position * self.batch_size + self._p * self._local
        positions = np.arange(start, start + self._local)
        rows = self.rows_at(positions)
        batch = self.images.batch(
            rows, [(self.stream, self.version, int(t)) for t in positions.tolist()]
        )
        self.position += 1
        if self.mesh is not None:
            return pipeline.to_global(batch, self.mesh, self.data_axis)
        return batch

    def get_state(self) -> dict[str, int]:
        return {"version": int(self.version), "position": int(self.position)}

    def set_state(self, state: dict[str, int]) -> None:
        """Restores the position; a list of another version must then be handed back."""
        self.version, self.position = int(state["version"]), int(state["position"])
        self._perm_cache = None

    def close(self) -> None:
        self.images.close()


def pad_rows(rows: np.ndarray, capacity: int) -> np.ndarray:
    """int32 [capacity]: ``rows`` then -1 (a list kept in the fixed-shape extra state)."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    if len(rows) > capacity:
        raise ValueError(f"{len(rows)} rows exceed the list capacity {capacity}")
    out = np.full(capacity, -1, np.int32)
    out[: len(rows)] = rows
    return out


def unpad_rows(padded: np.ndarray, count: int) -> np.ndarray:
    """Inverse of `pad_rows` given the stored count; checks the fill."""
    padded = np.asarray(padded)
    count = int(count)
    if not 0 <= count <= len(padded) or (padded[:count] < 0).any():
        raise ValueError(f"a stored row list is inconsistent with its count {count}")
    return padded[:count].astype(np.int64)
