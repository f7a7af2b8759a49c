"""The input pipeline: TFRecord shards -> grain -> decoded, augmented, batched global arrays.

Two ways to read a dataset directory (see dataset.py):

* ``mode="random_access"`` (default): a grain data source over the shards' offset indexes.
  The *global* order of records is a pure function of (seed, position): an exact global
  shuffle per epoch, or an identity-balanced sampler. Every process reads only its slice of
  each global batch, and per-image augmentation RNGs are keyed by the global position, so the
  global batch is identical whatever the number of processes, and resuming from a saved
  iterator state replays exactly the batches an uninterrupted run would have seen.
* ``mode="streaming"``: grain's TFRecord iter dataset (CRC-checked, see
  `CheckedTFRecordIterDataset`) over the shards of this process (shards are assigned
  disjointly, ``shards[process_index::process_count]``), interleaved, with a window shuffle.
  For datasets too large to index; ordering then depends on the process count.

Samplers (random-access mode):
  "plain"   every record once per epoch, globally shuffled;
  "pk"      P identities x K images per modality in ``modalities`` (triplet-style losses);
  "paired"  P = batch / (2 K) identities with K NIR and K VIS images each (K = 1 default):
            every batch holds both modalities of the same identities.

Joint sources (``InputConfig.joint``, random-access mode only): further datasets whose records
are appended to the primary one's and whose identities get their own block of class ids after
it, one `ClassRange` per dataset ("+target" pretraining). The samplers see only the contiguous
class ids; "pk"/"paired" keep only identities with images in every sampled modality, so a
VIS-only source set drops out of a pk/paired order over ("nir", "vis").

Images leave the host as uint8 unless ``normalize_on_host``; `augment.normalize_images`
maps them to [-1, 1] inside the jitted step.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hfrjax.data import augment as augment_lib
from hfrjax.data import tfrecord
from hfrjax.data.class_ranges import ClassRange, class_rows_for, remap_labels  # noqa: F401
from hfrjax.data.dataset import Dataset, RecordTable
from hfrjax.data.pipeline_rng import augment_rng
from hfrjax.data.sample_order import IdentityBatchOrder, ProcessSlice, plain_order

SAMPLERS = ("plain", "pk", "paired")
MODES = ("random_access", "streaming")


def modality_code(name: str) -> int:
    return tfrecord.MODALITIES.index(name)


# Reading records: hfrjax/data/record_source.py.
from hfrjax.data.record_source import (  # noqa: E402,F401
    CheckedTFRecordIterDataset,
    RecordSource,
)

# --------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class JointSource:
    """A further dataset whose identities join the primary one's in a single classifier.

    For "+target" pretraining (Rethinking the domain gap, §4.2, Table 3): e.g. a NIR-VIS training fold next to the
    VIS source set. Its classes get their own id range (see `ClassRange`), never merged with
    another dataset's even where the raw label numbers coincide.
    """

    data_dir: str
    fold: int | None = None  # Training keys of this protocol fold (1-based).
    keys: tuple[str, ...] | None = None  # Or: exactly these sample keys.
    modalities: tuple[str, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.data_dir, (str, os.PathLike)) or not str(self.data_dir):
            raise ValueError(f"joint source needs a data_dir, got {self.data_dir!r}")
        if self.keys is not None and self.fold is not None:
            raise ValueError(f"joint source {self.data_dir}: give either keys or fold, not both")
        if self.modalities is not None:
            bad = set(self.modalities) - set(tfrecord.MODALITIES)
            if bad:
                raise ValueError(
                    f"joint source {self.data_dir}: unknown modalities {sorted(bad)}; "
                    f"known: {tfrecord.MODALITIES}"
                )

    @classmethod
    def from_dict(cls, d: Any) -> "JointSource":
        """From a dict or ConfigDict; unknown keys are an error (typos)."""
        if isinstance(d, cls):
            return d
        if hasattr(d, "to_dict"):
            d = d.to_dict()
        if not isinstance(d, dict):
            raise ValueError(f"a joint source must be a dict with data_dir etc., got {d!r}")
        d = dict(d)
        from hfrjax.config import check_keys

        check_keys(d, {f.name for f in dataclasses.fields(cls)}, "input.joint[]")
        if "data_dir" not in d:
            raise ValueError(f"joint source {d} has no data_dir")
        d["data_dir"] = str(d["data_dir"])
        for k in ("keys", "modalities"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Everything that decides the stream of training batches."""

    data_dir: str = ""
    batch_size: int = 128  # Global batch size (all processes together).
    keys: tuple[str, ...] | None = None  # Restrict to these sample keys.
    fold: int | None = None  # Restrict to the training keys of this protocol fold (1-based).
    modalities: tuple[str, ...] | None = None  # Restrict to these modalities.
    image_size: tuple[int, int] | None = None  # Resize to (H, W) if the stored crop differs.
    channels: int = 3
    sampler: str = "plain"
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever.
    p: int = 0  # Identities per batch for "pk" (0: batch_size // (K * #modalities)).
    k: int = 1  # Images per identity and modality for "pk" / "paired".
    seed: int = 0
    mode: str = "random_access"
    on_corrupt: str = "raise"  # "raise" or "skip" (skip-and-count).
    augment: augment_lib.AugmentConfig = augment_lib.AugmentConfig()
    normalize_on_host: bool = False
    # Keep each record's decoded (resized, not yet augmented) image in host memory after its
    # first read, so later epochs only augment: for small sets that are read many times (the
    # quickstart's 4,800 crops at 32x32 are 15 MB). Costs num_records x H x W x C bytes per
    # process (each grain worker keeps its own); leave off for large sets.
    cache_decoded: bool = False
    num_threads: int = 2  # grain read threads per process.
    worker_count: int = 0  # grain worker processes (0: in-process).
    shuffle_window: int = 4096  # Streaming mode only.
    cycle_length: int = 4  # Streaming mode only: shards read at once.
    # Further datasets in the same classifier, after the primary one (``data_dir``).
    joint: tuple[JointSource, ...] = ()

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.on_corrupt not in ("raise", "skip"):
            raise ValueError(f"on_corrupt must be 'raise' or 'skip', got {self.on_corrupt!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.mode == "streaming" and self.sampler != "plain":
            raise ValueError(
                f"sampler {self.sampler!r} needs mode='random_access' (it needs the "
                "index of identities); streaming supports only 'plain'"
            )
        if self.joint:
            if self.mode != "random_access":
                raise ValueError(
                    f"joint sources need mode='random_access', got mode={self.mode!r} "
                    f"with joint={[j.data_dir for j in self.joint]}"
                )
            bad = [j for j in self.joint if not isinstance(j, JointSource)]
            if bad:
                raise ValueError(f"input.joint entries must be JointSource, got {bad[0]!r}")
            # One range per dataset, so that a dataset's class ids are unambiguous.
            seen: dict[str, str] = {}
            for d in (self.data_dir, *(j.data_dir for j in self.joint)):
                real = os.path.realpath(d)
                if real in seen:
                    raise ValueError(
                        f"dataset {d} appears twice in input.data_dir/input.joint "
                        f"(also as {seen[real]}); each dataset may be used once"
                    )
                seen[real] = str(d)

    @classmethod
    def from_dict(cls, d: Any) -> "InputConfig":
        """From a dict or ml_collections.ConfigDict; unknown keys are an error (typos)."""
        if isinstance(d, cls):
            return d
        d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
        from hfrjax.config import check_keys

        check_keys(d, {f.name for f in dataclasses.fields(cls)}, "input")
        d["augment"] = augment_lib.AugmentConfig.from_dict(d.get("augment"))
        for k in ("keys", "modalities", "image_size"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        joint = d.get("joint")
        if joint is None:
            d.pop("joint", None)
        else:
            if isinstance(joint, (str, dict)) or hasattr(joint, "to_dict"):
                raise ValueError(f"input.joint must be a list of dicts, got {joint!r}")
            d["joint"] = tuple(JointSource.from_dict(j) for j in joint)
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Per-element processing.


class _Process:
    """(global position, row) -> {"image", "label", "modality"}; reads, decodes, augments."""

    def __init__(
        self, source: RecordSource, label_of_row: np.ndarray, cfg: InputConfig, train: bool
    ):
        self._source, self._labels, self._cfg, self._train = source, label_of_row, cfg, train
        self._modality = np.array([modality_code(m) for m in source.records.modality], np.int32)
        self._decoded: dict[int, np.ndarray] = {}  # input.cache_decoded: row -> decoded image.

    def __getstate__(self) -> dict[str, Any]:
        # grain pickles the dataset for its worker processes (input.worker_count): the record
        # source travels as its table (its lock and open descriptors cannot be pickled) and is
        # rebuilt in the worker.
        state = dict(self.__dict__)
        state["_source"] = (self._source.records, self._source._verify)
        state["_decoded"] = {}  # Each worker fills its own cache.
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        records, verify = state["_source"]
        self.__dict__.update(state, _source=RecordSource(records, verify=verify))

    def _read(self, row: int) -> bytes:
        try:
            return self._source[row]
        except tfrecord.CorruptRecordError:
            if self._cfg.on_corrupt == "raise":
                raise
        # Skip-and-count: substitute the next readable record of the same identity and modality so
        # that batch shapes and balance stay intact; deterministic for a fixed set of bad records.
        r = self._source.records
        tfrecord.CORRUPTION_STATS.add(r.shard_paths[int(r.shard[row])], int(r.record[row]))
        logging.warning("skipping corrupt record %s", self._source.describe(row))
        same = np.nonzero(
            (self._labels == self._labels[row]) & (self._modality == self._modality[row])
        )[0]
        for cand in np.roll(same, -int(np.searchsorted(same, row)) - 1):
            try:
                return self._source[int(cand)]
            except tfrecord.CorruptRecordError:
                continue
        raise ValueError(
            f"every record of label {self._labels[row]} is corrupt "
            f"(first: {self._source.describe(row)})"
        )

    def _decode(self, row: int) -> np.ndarray:
        data = self._read(row)
        cfg = self._cfg
        try:
            image = tfrecord.example_image(data)
            if self._train:  # A single band stays one plane until `augment` replicates it.
                img = augment_lib.decode_native(image, channels=cfg.channels, size=cfg.image_size)
            else:
                img = augment_lib.decode_image(image, channels=cfg.channels, size=cfg.image_size)
        except Exception as e:  # noqa: BLE001 - re-raised with the record named.
            raise augment_lib.ImageDecodeError(
                f"cannot decode {self._source.describe(row)}: {e}"
            ) from e
        return img

    def __call__(self, element: tuple[int, int]) -> dict[str, np.ndarray]:
        t, row = element
        cfg = self._cfg
        img = self._decoded.get(row) if cfg.cache_decoded else None
        if img is None:
            img = self._decode(row)  # A corrupt record's stand-in is cached like any other.
            if cfg.cache_decoded:
                img.setflags(write=False)  # Augmentation returns new arrays; never the cache's.
                self._decoded[row] = img
        modality = self._modality[row]
        if self._train:
            img = augment_lib.augment(
                img,
                cfg.augment,
                augment_rng(cfg.seed, t),
                modality=tfrecord.MODALITIES[modality],
                channels=cfg.channels,
            )
        if cfg.normalize_on_host:
            img = augment_lib.normalize_images(img)
        return {"image": img, "label": np.int32(self._labels[row]), "modality": modality}


# --------------------------------------------------------------------------------------------
# The training pipeline.


@dataclasses.dataclass
class TrainInput:
    """A resumable iterator of global batches plus what the trainer needs to know."""

    iterator: grain.DatasetIterator  # Save/restore with grain.checkpoint.CheckpointSave/Restore.
    num_classes: int
    # Dataset label of each class id (for MEC/SSC and reports). With joint sources this is the
    # concatenation of the ranges' labels: raw labels of different datasets, only unambiguous
    # together with ``class_ranges``.
    class_labels: np.ndarray
    num_records: int
    steps_per_epoch: int
    local_batch_size: int
    mesh: Mesh | None = None
    data_axis: str = "data"
    # Class-id range of each dataset, primary first (one entry without joint sources).
    class_ranges: tuple[ClassRange, ...] = ()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self.iterator)
        return to_global(batch, self.mesh, self.data_axis) if self.mesh is not None else batch

    def get_state(self) -> dict[str, Any]:
        return self.iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.iterator.set_state(state)


def select_records(
    dataset: Dataset, cfg: InputConfig | JointSource
) -> tuple[RecordTable, np.ndarray]:
    """The records (and their rows in the dataset) that ``cfg`` trains on: its keys or fold
    training lists, restricted to its modalities."""
    records = dataset.records
    rows = np.arange(len(records))
    keys = cfg.keys
    if cfg.fold is not None:
        if keys is not None:
            raise ValueError("give either input.keys or input.fold, not both")
        from hfrjax.data.protocol import Protocol

        keys = Protocol.load(dataset.directory).fold(cfg.fold).train_keys
    if keys is not None:
        pos = {k: i for i, k in enumerate(records.key)}
        missing = [k for k in keys if k not in pos]
        if missing:
            raise ValueError(
                f"{len(missing)} requested key(s) are not in {dataset.directory}, "
                f"e.g. {missing[:5]}"
            )
        rows = np.asarray([pos[k] for k in keys], np.int64)
    if cfg.modalities is not None:
        bad = set(cfg.modalities) - set(tfrecord.MODALITIES)
        if bad:
            raise ValueError(f"unknown modalities {sorted(bad)}; known: {tfrecord.MODALITIES}")
        rows = rows[np.isin(records.modality[rows], cfg.modalities)]
    if rows.size == 0:
        raise ValueError(f"no records of {dataset.directory} match keys/modalities of the config")
    return records.subset(rows), rows


def _concat_records(tables: Sequence[RecordTable]) -> RecordTable:
    """One table over several datasets' records; shard indices are shifted onto the joined
    shard path list, so rows of each dataset keep reading their own files."""
    shard_offsets = np.cumsum([0] + [len(t.shard_paths) for t in tables[:-1]])
    return RecordTable(
        shard_paths=[p for t in tables for p in t.shard_paths],
        shard=np.concatenate([t.shard + off for t, off in zip(tables, shard_offsets)]).astype(
            np.int32
        ),
        offset=np.concatenate([t.offset for t in tables]),
        label=np.concatenate([t.label for t in tables]),
        modality=np.concatenate([t.modality for t in tables]),
        key=np.concatenate([t.key for t in tables]),
        record=np.concatenate([t.record for t in tables]),
        yaw=np.concatenate([t.yaw for t in tables]),
    )


def select_train_records(
    cfg: InputConfig,
) -> tuple[RecordTable, np.ndarray, tuple[ClassRange, ...]]:
    """The training records of the primary dataset and every joint source, concatenated in that
    order, with their class ids in one contiguous space and each dataset's `ClassRange`.

    Each dataset's labels are remapped on their own (`remap_labels`) and shifted past the
    previous datasets' classes, so equal raw labels of different datasets stay distinct.
    """
    sources: list[InputConfig | JointSource] = [cfg, *cfg.joint]
    tables, class_ids, ranges = [], [], []
    start = 0
    for src in sources:
        records, _ = select_records(Dataset.open(src.data_dir), src)
        labels, raw = remap_labels(records.label)
        tables.append(records)
        class_ids.append(labels + start)
        ranges.append(ClassRange(str(src.data_dir), src.fold, start, start + len(raw), raw))
        start += len(raw)
    if len(tables) == 1:
        return tables[0], class_ids[0], tuple(ranges)
    return _concat_records(tables), np.concatenate(class_ids), tuple(ranges)


def make_train_input(
    cfg: InputConfig,
    *,
    mesh: Mesh | None = None,
    data_axis: str = "data",
    process_index: int | None = None,
    process_count: int | None = None,
) -> TrainInput:
    """Builds the training pipeline for this process (see module docstring)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if cfg.batch_size % process_count:
        raise ValueError(
            f"global batch {cfg.batch_size} is not divisible by {process_count} processes"
        )
    local_batch = cfg.batch_size // process_count
    if cfg.mode == "streaming":
        dataset = Dataset.open(cfg.data_dir)
        return _make_streaming(
            dataset, cfg, local_batch, mesh, data_axis, process_index, process_count
        )
    records, labels, class_ranges = select_train_records(cfg)
    class_labels = np.concatenate([r.labels for r in class_ranges])
    source = RecordSource(records)
    if cfg.sampler == "plain":
        order = plain_order(len(records), cfg.seed, cfg.shuffle, cfg.num_epochs)
        steps_per_epoch = len(records) // cfg.batch_size
    else:
        mods = cfg.modalities or (
            ("nir", "vis") if cfg.sampler == "paired" else tuple(sorted(set(records.modality)))
        )
        per_id = cfg.k * len(mods)
        p = cfg.p or cfg.batch_size // per_id
        if p * per_id != cfg.batch_size:
            raise ValueError(
                f"sampler {cfg.sampler!r}: P={p} x K={cfg.k} x {len(mods)} modalities "
                f"= {p * per_id} != batch_size {cfg.batch_size}"
            )
        order = IdentityBatchOrder(
            labels, records.modality, mods, p, cfg.k, cfg.seed, cfg.num_epochs
        )
        steps_per_epoch = order.batches_per_epoch
    if steps_per_epoch < 1:
        raise ValueError(f"{len(records)} records cannot fill one batch of {cfg.batch_size}")
    total = len(order) // cfg.batch_size if cfg.num_epochs is not None else (1 << 40)
    ds = ProcessSlice(order, cfg.batch_size, process_index, process_count, total)
    ds = ds.map(_Process(source, labels, cfg, train=True)).batch(local_batch, drop_remainder=True)
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=4 * cfg.num_threads)
    )
    if cfg.worker_count > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
    return TrainInput(
        iter(it_ds),
        int(len(class_labels)),
        class_labels,
        len(records),
        steps_per_epoch,
        local_batch,
        mesh,
        data_axis,
        class_ranges,
    )


def process_shards(shards: Sequence[str], process_index: int, process_count: int) -> list[str]:
    """The shards this process streams: disjoint across processes, covering all of them."""
    if len(shards) < process_count:
        raise ValueError(
            f"{len(shards)} shards cannot be split over {process_count} processes; "
            "write at least one shard per process"
        )
    return list(shards[process_index::process_count])


class _ParseStreamed:
    """Streaming: payload bytes -> element dict (labels straight from the Example)."""

    def __init__(self, cfg: InputConfig, label_map: dict[int, int]):
        self._cfg, self._label_map = cfg, label_map

    def __call__(self, data: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
        sample = tfrecord.decode_example(data)
        try:
            img = augment_lib.decode_image(
                sample.image, channels=self._cfg.channels, size=self._cfg.image_size
            )
        except Exception as e:  # noqa: BLE001
            raise augment_lib.ImageDecodeError(f"cannot decode sample {sample.key!r}: {e}") from e
        img = augment_lib.augment(img, self._cfg.augment, rng, modality=sample.modality)
        if self._cfg.normalize_on_host:
            img = augment_lib.normalize_images(img)
        return {
            "image": img,
            "label": np.int32(self._label_map[sample.label]),
            "modality": np.int32(modality_code(sample.modality)),
        }


def _make_streaming(
    dataset: Dataset,
    cfg: InputConfig,
    local_batch: int,
    mesh,
    data_axis,
    process_index: int,
    process_count: int,
) -> TrainInput:
    if cfg.keys is not None:
        raise ValueError(
            "streaming mode reads whole shards; restrict keys with mode='random_access'"
        )
    records = dataset.records
    if cfg.modalities is not None:
        records = records.subset(np.isin(records.modality, cfg.modalities))
    _, class_labels = remap_labels(records.label)
    label_map = {int(lab): i for i, lab in enumerate(class_labels)}
    shards = process_shards(records.shard_paths, process_index, process_count)
    shard_ds = grain.MapDataset.source(shards)
    if cfg.shuffle:
        shard_ds = shard_ds.shuffle(seed=cfg.seed)
    shard_ds = shard_ds.repeat(cfg.num_epochs).map(
        functools.partial(CheckedTFRecordIterDataset, on_corrupt=cfg.on_corrupt)
    )
    ds = grain.experimental.InterleaveIterDataset(
        shard_ds, cycle_length=min(cfg.cycle_length, len(shards))
    )
    if cfg.modalities is not None:
        wanted = set(cfg.modalities)
        ds = ds.filter(lambda d: tfrecord.decode_example(d).modality in wanted)
    if cfg.shuffle:
        ds = grain.experimental.WindowShuffleIterDataset(
            ds, window_size=cfg.shuffle_window, seed=cfg.seed
        )
    ds = ds.random_map(_ParseStreamed(cfg, label_map), seed=cfg.seed + process_index)
    ds = ds.batch(local_batch, drop_remainder=True)
    steps = len(records) // cfg.batch_size
    # Streaming reads whole shards: no fold restriction was applied, hence fold=None.
    ranges = (ClassRange(str(cfg.data_dir), None, 0, len(class_labels), class_labels),)
    return TrainInput(
        iter(ds),
        len(class_labels),
        class_labels,
        len(records),
        steps,
        local_batch,
        mesh,
        data_axis,
        ranges,
    )


# --------------------------------------------------------------------------------------------
# Evaluation batches and device placement.


def iter_eval_batches(
    dataset: Dataset,
    keys: Sequence[str],
    batch_size: int,
    *,
    image_size: tuple[int, int] | None = None,
    channels: int = 3,
    num_threads: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the given keys in order, no augmentation; the last batch is padded.

    Each batch has "image", "label" (dataset labels), "modality" and "valid" (False on padding).
    """
    records = dataset.records.select_keys(list(keys), what="the evaluation list")
    cfg = InputConfig(
        data_dir=str(dataset.directory),
        batch_size=batch_size,
        image_size=image_size,
        channels=channels,
        num_threads=num_threads,
    )
    n = len(records)
    n_padded = -(-n // batch_size) * batch_size
    process = _Process(RecordSource(records), records.label, cfg, train=False)
    ds = (
        grain.MapDataset.range(n_padded)
        .map(lambda t: dict(process((t, min(t, n - 1))), valid=np.bool_(t < n)))
        .batch(batch_size)
    )
    yield from ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    )


def to_global(
    batch: dict[str, np.ndarray], mesh: Mesh, data_axis: str | tuple[str, ...] = "data"
) -> dict[str, jax.Array]:
    """Process-local batch -> global jax.Arrays sharded along the mesh's data axis."""
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }
