"""TFRecord shards of tf.train.Example: writer, CRC-verifying reader, offset index sidecar.

Framing (identical to TensorFlow's, so `tf.data.TFRecordDataset` reads our files):

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

with ``mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2**32)``. The payload is a
serialized ``tf.train.Example`` built with the protobuf classes that tensorflow-datasets ships
(``tensorflow_datasets.proto.tf_example_pb2``), so TensorFlow itself is never imported.

Each shard ``X.tfrecord`` gets a sidecar ``X.tfrecord.index``: one tab-separated line per
record with its byte offset, framed length, label, modality and sample key, plus a sixth
column ``yaw`` (head yaw in degrees, ``nan`` where unknown) in shards where some record carries
one; shards without yaw keep the five-column layout, byte for byte. The index makes
exact global shuffling (random access), identity-aware samplers and protocol filtering possible
without reading any image bytes, and lets the streaming reader resynchronise after a corrupt
length header. Shards and indexes are written to a temporary name and renamed on close, so a
crashed writer never leaves a half-written shard that looks complete.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal

import crc32c as _crc32c
import numpy as np
from absl import logging
from tensorflow_datasets.proto import tf_example_pb2

MODALITIES = ("vis", "nir", "ir", "thermal")
"""Known modality names: visible light, near infrared (active 780-1100 nm illumination),
infrared of an unspecified band, and long-wave thermal infrared (emitted heat, 8-14 um)."""

SHARD_SUFFIX = ".tfrecord"
INDEX_SUFFIX = ".index"
_INDEX_HEADER = "offset\tlength\tlabel\tmodality\tkey"
_INDEX_HEADER_YAW = _INDEX_HEADER + "\tyaw"
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8

OnCorrupt = Literal["raise", "skip"]


# --------------------------------------------------------------------------------------------
# Framing.


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = _crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """Returns ``data`` wrapped in TFRecord framing."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (length, _FOOTER.pack(masked_crc32c(length)), data, _FOOTER.pack(masked_crc32c(data)))
    )


class CorruptRecordError(ValueError):
    """A record whose framing or CRC is wrong. Names the shard file and record number."""

    def __init__(
        self,
        path: str | os.PathLike,
        record: int,
        offset: int,
        reason: str,
        next_offset: int | None = None,
    ):
        self.path, self.record, self.offset, self.reason = str(path), record, offset, reason
        self.next_offset = next_offset  # Where the next record starts, when the length was sound.
        super().__init__(
            f"corrupt TFRecord {self.path}, record #{record} (byte offset {offset}): {reason}"
        )


# --------------------------------------------------------------------------------------------
# tf.train.Example payloads.


@dataclasses.dataclass(frozen=True)
class Sample:
    """One face image with its metadata, as stored in a tf.train.Example."""

    image: bytes  # Encoded image (JPEG or PNG).
    label: int  # Class id, contiguous within the dataset.
    modality: str  # One of MODALITIES.
    identity: str  # Identity name (e.g. the subject folder).
    key: str  # Unique sample key within the dataset, e.g. "s2/NIR/10153/001".
    dataset: str  # Dataset name.
    image_format: str = "jpeg"
    # Head yaw in degrees where known (synthetic data; FTL §3.3, Eq. 5 drops large-yaw samples
    # from class centres), stored as the float feature "yaw"; None: unknown, not stored.
    yaw: float | None = None

    def __post_init__(self):
        if self.yaw is not None and not np.isfinite(self.yaw):
            raise ValueError(f"sample {self.key!r}: yaw {self.yaw!r} is not a finite number")
        if self.modality not in MODALITIES:
            raise ValueError(f"sample {self.key!r}: modality {self.modality!r} not in {MODALITIES}")
        if self.label < 0:
            raise ValueError(f"sample {self.key!r}: negative label {self.label}")
        if "\t" in self.key or "\n" in self.key:
            raise ValueError(f"sample key {self.key!r} contains a tab or newline")


def encode_example(sample: Sample) -> bytes:
    """Serializes ``sample`` as a tf.train.Example."""
    ex = tf_example_pb2.Example()
    f = ex.features.feature
    f["image/encoded"].bytes_list.value.append(sample.image)
    f["image/format"].bytes_list.value.append(sample.image_format.encode())
    f["label"].int64_list.value.append(int(sample.label))
    f["modality"].bytes_list.value.append(sample.modality.encode())
    f["identity"].bytes_list.value.append(sample.identity.encode())
    f["key"].bytes_list.value.append(sample.key.encode())
    f["dataset"].bytes_list.value.append(sample.dataset.encode())
    if sample.yaw is not None:
        f["yaw"].float_list.value.append(float(sample.yaw))
    return ex.SerializeToString(deterministic=True)  # Map order fixed: byte-identical shards.


def decode_example(data: bytes) -> Sample:
    """Parses a serialized tf.train.Example written by `encode_example`."""
    ex = tf_example_pb2.Example.FromString(data)
    f = ex.features.feature
    try:
        return Sample(
            image=f["image/encoded"].bytes_list.value[0],
            image_format=f["image/format"].bytes_list.value[0].decode(),
            label=int(f["label"].int64_list.value[0]),
            modality=f["modality"].bytes_list.value[0].decode(),
            identity=f["identity"].bytes_list.value[0].decode(),
            key=f["key"].bytes_list.value[0].decode(),
            dataset=f["dataset"].bytes_list.value[0].decode(),
            yaw=float(f["yaw"].float_list.value[0]) if _has_value_of(f, "yaw") else None,
        )
    except IndexError as e:
        missing = [
            k
            for k in (
                "image/encoded",
                "image/format",
                "label",
                "modality",
                "identity",
                "key",
                "dataset",
            )
            if not _has_value(f[k])
        ]
        raise ValueError(f"tf.train.Example lacks features {missing}") from e


def example_image(data: bytes) -> bytes:
    """The encoded image of a serialized tf.train.Example: the input pipeline's hot path,
    which takes label and modality from the index and so skips building a whole `Sample`.

    Errors as `decode_example` (a missing image names the missing features)."""
    try:
        return (
            tf_example_pb2.Example.FromString(data)
            .features.feature["image/encoded"]
            .bytes_list.value[0]
        )
    except IndexError:
        decode_example(data)  # Raises naming the missing features.
        raise


def _has_value_of(features, name: str) -> bool:
    """Whether the feature map has ``name`` with a value (without inserting it)."""
    return name in features and _has_value(features[name])


def _has_value(feature) -> bool:
    kind = feature.WhichOneof("kind")
    return kind is not None and len(getattr(feature, kind).value) > 0


# --------------------------------------------------------------------------------------------
# Offset index sidecar.


def index_path(shard: str | os.PathLike) -> Path:
    return Path(str(shard) + INDEX_SUFFIX)


@dataclasses.dataclass
class ShardIndex:
    """Per-record offsets and metadata of one shard (the ``.index`` sidecar)."""

    offsets: np.ndarray  # int64 [N], byte offset of each framed record.
    lengths: np.ndarray  # int64 [N], payload length in bytes.
    labels: np.ndarray  # int64 [N]
    modalities: np.ndarray  # str [N]
    keys: list[str]
    yaw: np.ndarray | None = None  # float64 [N], degrees; NaN where unknown (None: all NaN).

    def __post_init__(self) -> None:
        if self.yaw is None:
            self.yaw = np.full(len(self.offsets), np.nan)

    def __len__(self) -> int:
        return len(self.offsets)

    @classmethod
    def load(cls, shard: str | os.PathLike) -> "ShardIndex":
        path = index_path(shard)
        if not path.exists():
            raise FileNotFoundError(f"index sidecar {path} of shard {shard} is missing")
        offsets, lengths, labels, modalities, keys, yaws = [], [], [], [], [], []
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\n")
            if header not in (_INDEX_HEADER, _INDEX_HEADER_YAW):
                raise ValueError(
                    f"{path}: bad index header {header!r}, expected {_INDEX_HEADER!r} "
                    f"or {_INDEX_HEADER_YAW!r}"
                )
            fields = header.count("\t") + 1
            for lineno, line in enumerate(fh, start=2):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != fields:
                    raise ValueError(
                        f"{path}:{lineno}: expected {fields} tab-separated fields, got {line!r}"
                    )
                offsets.append(int(parts[0]))
                lengths.append(int(parts[1]))
                labels.append(int(parts[2]))
                modalities.append(parts[3])
                keys.append(parts[4])
                if fields == 6:
                    try:
                        yaws.append(float(parts[5]))
                    except ValueError:
                        raise ValueError(
                            f"{path}:{lineno}: yaw {parts[5]!r} is not a number"
                        ) from None
        return cls(
            np.asarray(offsets, np.int64),
            np.asarray(lengths, np.int64),
            np.asarray(labels, np.int64),
            np.asarray(modalities, dtype=str),
            keys,
            np.asarray(yaws, np.float64) if fields == 6 else None,
        )


# --------------------------------------------------------------------------------------------
# Writing.


class TFRecordWriter:
    """Writes one shard and its index sidecar atomically (temp file + rename on close)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._fh: BinaryIO | None = open(self._tmp, "wb")
        self._offset = 0
        self._index_lines: list[str] = []
        self._yaws: list[float | None] = []

    def write(
        self,
        data: bytes,
        *,
        label: int = -1,
        modality: str = "",
        key: str = "",
        yaw: float | None = None,
    ) -> None:
        """Appends one serialized record; label/modality/key (and yaw, when some record has
        one) go to the index sidecar."""
        if self._fh is None:
            raise ValueError(f"writer for {self.path} is closed")
        framed = frame_record(data)
        self._fh.write(framed)
        self._index_lines.append(f"{self._offset}\t{len(data)}\t{label}\t{modality}\t{key}")
        self._yaws.append(yaw)
        self._offset += len(framed)

    def write_sample(self, sample: Sample) -> None:
        self.write(
            encode_example(sample),
            label=sample.label,
            modality=sample.modality,
            key=sample.key,
            # The float32 value the Example holds, so the index and the record agree.
            yaw=None if sample.yaw is None else float(np.float32(sample.yaw)),
        )

    def _index_text(self) -> str:
        if all(y is None for y in self._yaws):
            lines = [_INDEX_HEADER, *self._index_lines]
        else:
            lines = [_INDEX_HEADER_YAW] + [
                f"{line}\t{'nan' if y is None else repr(float(y))}"
                for line, y in zip(self._index_lines, self._yaws)
            ]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        idx = index_path(self.path)
        idx_tmp = idx.with_name(idx.name + ".tmp")
        idx_tmp.write_text(self._index_text(), encoding="utf-8")
        os.replace(self._tmp, self.path)
        os.replace(idx_tmp, idx)

    def abort(self) -> None:
        """Discards the partial shard."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def shard_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


class ShardedWriter:
    """Spreads samples round-robin over ``num_shards`` shards ``prefix-0000i-of-0000n``."""

    def __init__(self, out_dir: str | os.PathLike, prefix: str, num_shards: int):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.paths = [Path(out_dir) / shard_name(prefix, i, num_shards) for i in range(num_shards)]
        self._writers = [TFRecordWriter(p) for p in self.paths]
        self._count = 0

    def write(self, sample: Sample) -> None:
        self._writers[self._count % len(self._writers)].write_sample(sample)
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def close(self) -> list[Path]:
        for w in self._writers:
            w.close()
        return self.paths

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            for w in self._writers:
                w.abort()


def write_shards(
    samples: Iterable[Sample], out_dir: str | os.PathLike, prefix: str, num_shards: int
) -> list[Path]:
    """Writes ``samples`` round-robin into ``num_shards`` shards; returns their paths."""
    with ShardedWriter(out_dir, prefix, num_shards) as w:
        for s in samples:
            w.write(s)
    return w.paths


# --------------------------------------------------------------------------------------------
# Reading.


class CorruptionStats:
    """Thread-safe record of the corrupt records skipped, per shard file.

    Readers in ``on_corrupt="skip"`` mode add to `CORRUPTION_STATS` (process-local); the input
    pipeline and the training loop report the total. A record met again (next epoch) is
    counted once.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._bad: dict[str, set[int]] = collections.defaultdict(set)

    def add(self, path: str | os.PathLike, record: int) -> None:
        with self._lock:
            self._bad[str(path)].add(int(record))

    @property
    def total(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._bad.values())

    def by_file(self) -> dict[str, int]:
        with self._lock:
            return {p: len(v) for p, v in self._bad.items()}

    def reset(self) -> None:
        with self._lock:
            self._bad.clear()

    def report(self) -> str:
        counts = self.by_file()
        if not counts:
            return "no corrupt records skipped"
        files = ", ".join(f"{Path(p).name}: {n}" for p, n in sorted(counts.items()))
        return f"skipped {sum(counts.values())} corrupt record(s) ({files})"


CORRUPTION_STATS = CorruptionStats()


def read_record_at(
    fh: BinaryIO, path: str | os.PathLike, offset: int, record: int, verify: bool = True
) -> tuple[bytes, int]:
    """Reads the record framed at ``offset``; returns (payload, offset of the next record).

    Raises `CorruptRecordError` naming ``path`` and ``record`` on truncation or CRC mismatch.
    """
    fh.seek(offset)
    header = fh.read(_HEADER.size)
    if len(header) != _HEADER.size:
        raise CorruptRecordError(
            path, record, offset, f"truncated header ({len(header)} of {_HEADER.size} bytes)"
        )
    length, length_crc = _HEADER.unpack(header)
    if verify and masked_crc32c(header[:8]) != length_crc:
        raise CorruptRecordError(path, record, offset, "length CRC mismatch")
    body = fh.read(length + _FOOTER.size)
    if len(body) != length + _FOOTER.size:
        raise CorruptRecordError(
            path,
            record,
            offset,
            f"truncated record ({len(body)} of {length + _FOOTER.size} bytes present)",
        )
    data = body[:length]
    next_offset = offset + _HEADER.size + length + _FOOTER.size
    if verify and masked_crc32c(data) != _FOOTER.unpack_from(body, length)[0]:
        raise CorruptRecordError(path, record, offset, "data CRC mismatch", next_offset)
    return data, next_offset


class TFRecordReader:
    """Sequential, CRC-verifying reader of one shard with a resumable position.

    With ``on_corrupt="skip"`` a corrupt record is logged (file and record number), counted in
    ``stats`` and skipped; after a corrupt *length* the reader resynchronises at the next
    offset listed in the index sidecar, or gives up on the rest of the shard (logged) if there
    is no sidecar.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        verify: bool = True,
        on_corrupt: OnCorrupt = "raise",
        stats: CorruptionStats | None = None,
    ):
        if on_corrupt not in ("raise", "skip"):
            raise ValueError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        self.path = str(path)
        self._fh = open(self.path, "rb")
        self._size = os.fstat(self._fh.fileno()).st_size
        self._verify = verify
        self._on_corrupt = on_corrupt
        self._stats = CORRUPTION_STATS if stats is None else stats
        self._offsets: np.ndarray | None = None
        self.offset = 0
        self.record = 0

    def _next_offset_after(self, record: int) -> int | None:
        if self._offsets is None:
            if not index_path(self.path).exists():
                return None
            self._offsets = ShardIndex.load(self.path).offsets
        return int(self._offsets[record + 1]) if record + 1 < len(self._offsets) else self._size

    def __iter__(self) -> "TFRecordReader":
        return self

    def __next__(self) -> bytes:
        while self.offset < self._size:
            try:
                data, nxt = read_record_at(
                    self._fh, self.path, self.offset, self.record, self._verify
                )
            except CorruptRecordError as e:
                if self._on_corrupt == "raise":
                    raise
                self._stats.add(self.path, self.record)
                nxt = e.next_offset or self._next_offset_after(self.record)
                if nxt is None:
                    logging.warning(
                        "%s; no index sidecar to resynchronise, dropping the rest of the shard", e
                    )
                    self.offset = self._size
                    continue
                logging.warning("%s; skipped", e)
                self.offset, self.record = nxt, self.record + 1
                continue
            self.offset, self.record = nxt, self.record + 1
            return data
        raise StopIteration

    def get_state(self) -> dict[str, int]:
        return {"offset": self.offset, "record": self.record}

    def set_state(self, state: dict[str, int]) -> None:
        self.offset, self.record = int(state["offset"]), int(state["record"])

    def close(self) -> None:
        self._fh.close()

    def __del__(self):
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()


def iter_records(
    path: str | os.PathLike,
    *,
    verify: bool = True,
    on_corrupt: OnCorrupt = "raise",
    stats: CorruptionStats | None = None,
) -> Iterator[bytes]:
    """Yields the payloads of one shard in order (see `TFRecordReader`)."""
    reader = TFRecordReader(path, verify=verify, on_corrupt=on_corrupt, stats=stats)
    try:
        yield from reader
    finally:
        reader.close()


def list_shards(directory: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Sorted shard paths in ``directory`` whose names start with ``prefix``."""
    paths = sorted(Path(directory).glob(f"{prefix}*{SHARD_SUFFIX}"))
    if not paths:
        raise FileNotFoundError(f"no {prefix}*{SHARD_SUFFIX} shards in {directory}")
    return paths
