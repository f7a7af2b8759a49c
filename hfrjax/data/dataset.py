"""A dataset on disk: TFRecord shards, their index sidecars and a ``dataset.json`` descriptor.

Layout of a dataset directory (what every converter and the synthetic generator write)::

    DIR/dataset.json                      DatasetInfo below
    DIR/data-00000-of-00008.tfrecord      tf.train.Example shards (see tfrecord.py)
    DIR/data-00000-of-00008.tfrecord.index
    DIR/protocols/...                     optional evaluation protocol (see protocol.py)

`RecordTable` concatenates the index sidecars into flat arrays (shard, offset, label, modality,
key, yaw) so samplers and protocol filters work on metadata alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hfrjax.data import tfrecord

INFO_FILE = "dataset.json"


@dataclasses.dataclass
class DatasetInfo:
    """What a dataset directory holds; saved as ``dataset.json``."""

    name: str
    shards: list[str]  # File names relative to the dataset directory.
    num_images: int
    class_names: list[str]  # Identity name of each label, in label order.
    modalities: dict[str, int]  # Images per modality.
    image_size: tuple[int, int]  # (height, width) of the stored crops.
    image_format: str = "jpeg"
    description: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / INFO_FILE
        d = dataclasses.asdict(self)
        d["num_classes"] = self.num_classes
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(d, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "DatasetInfo":
        path = Path(directory) / INFO_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: {directory} is not an hfrjax dataset "
                "directory (generate one with `hfrjax synth` or `hfrjax convert`)"
            )
        from hfrjax.fileio import read_json

        d = read_json(path)
        d.pop("num_classes", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"{path}: unknown fields {sorted(unknown)}")
        d["image_size"] = tuple(d["image_size"])
        return cls(**d)


@dataclasses.dataclass
class RecordTable:
    """Flat per-record metadata of a whole dataset, from the index sidecars."""

    shard_paths: list[str]
    shard: np.ndarray  # int32 [N], index into shard_paths.
    offset: np.ndarray  # int64 [N]
    label: np.ndarray  # int64 [N]
    modality: np.ndarray  # str [N]
    key: np.ndarray  # object [N]
    record: np.ndarray  # int64 [N], record number within its shard (for error messages).
    # float64 [N]: head yaw in degrees where the records carry it (synthetic sets), NaN
    # elsewhere; None when constructed without it (then all NaN).
    yaw: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.yaw is None:
            self.yaw = np.full(len(self.offset), np.nan)

    def __len__(self) -> int:
        return len(self.offset)

    @classmethod
    def load(cls, shard_paths: Sequence[str | os.PathLike], where: str = "") -> "RecordTable":
        if not shard_paths:
            raise ValueError(
                f"{where or 'the dataset'} lists no shards: it holds no records to read "
                "(was the conversion interrupted before writing any shard?)"
            )
        indexes = [tfrecord.ShardIndex.load(p) for p in shard_paths]
        return cls(
            shard_paths=[str(p) for p in shard_paths],
            shard=np.concatenate([np.full(len(ix), i, np.int32) for i, ix in enumerate(indexes)]),
            offset=np.concatenate([ix.offsets for ix in indexes]),
            label=np.concatenate([ix.labels for ix in indexes]),
            modality=np.concatenate([ix.modalities.astype(str) for ix in indexes]),
            key=np.concatenate([np.asarray(ix.keys, dtype=object) for ix in indexes]),
            record=np.concatenate([np.arange(len(ix), dtype=np.int64) for ix in indexes]),
            yaw=np.concatenate([ix.yaw for ix in indexes]),
        )

    def subset(self, rows: np.ndarray) -> "RecordTable":
        """The records at ``rows`` (indices or a boolean mask)."""
        return dataclasses.replace(
            self,
            shard=self.shard[rows],
            offset=self.offset[rows],
            label=self.label[rows],
            modality=self.modality[rows],
            key=self.key[rows],
            record=self.record[rows],
            yaw=self.yaw[rows],
        )

    def select_keys(self, keys: Sequence[str], *, what: str = "list") -> "RecordTable":
        """The records with the given sample keys, in the given order.

        Raises a ValueError naming the first few keys that are not in the dataset.
        """
        pos = {k: i for i, k in enumerate(self.key)}
        missing = [k for k in keys if k not in pos]
        if missing:
            raise ValueError(
                f"{len(missing)} key(s) of {what} are not in the dataset, e.g. {missing[:5]}"
            )
        return self.subset(np.asarray([pos[k] for k in keys], np.int64))


@dataclasses.dataclass
class Dataset:
    """A dataset directory opened for reading: its info and record table."""

    directory: Path
    info: DatasetInfo
    records: RecordTable

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "Dataset":
        directory = Path(directory)
        info = DatasetInfo.load(directory)
        paths = [directory / s for s in info.shards]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} shard(s) listed in {directory / INFO_FILE} are "
                f"missing, e.g. {missing[:3]}"
            )
        records = RecordTable.load(paths, where=str(directory / INFO_FILE))
        if len(records) != info.num_images:
            raise ValueError(
                f"{directory}: index sidecars list {len(records)} records but "
                f"{INFO_FILE} says {info.num_images}"
            )
        bad = (records.label < 0) | (records.label >= info.num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{records.shard_paths[records.shard[i]]} record #{records.record[i]} "
                f"(key {records.key[i]!r}): label {records.label[i]} out of range "
                f"[0, {info.num_classes})"
            )
        return cls(directory, info, records)
