"""InsightFace RecordIO packs (MS1MV2/V3, Glint360K, WebFace) -> a globally shuffled TFRecord set.

Pure Python: the dmlc RecordIO framing and mxnet's ``IRHeader`` are parsed here, so neither
mxnet nor TensorFlow is needed. Format (InsightFace / MXNet RecordIO, as in InsightFace's recognition datasets):

* ``train.idx``: text lines ``key<TAB>byte_offset`` (what ``mx.recordio.MXIndexedRecordIO``
  writes).
* ``train.rec``: records framed as ``uint32 magic 0xced7230a | uint32 lrecord | payload |
  zero padding to a multiple of 4``, with ``cflag = lrecord >> 29`` and ``length = lrecord &
  (2**29 - 1)``. dmlc's writer splits a payload wherever the magic number occurs at a 4-byte
  aligned position inside it: the parts get cflag 1 (first), 2 (middle), 3 (last) and the
  magic word itself is dropped, so the reader re-joins the parts with the magic in between.
* payload: ``IRHeader`` ``<IfQQ`` (flag, label, id, id2); when ``flag > 0`` that many float32
  labels follow; the rest is the encoded image.
* record 0 is a meta record (``flag > 0``, labels ``[a, b]``, no image): keys ``1..a-1`` are
  images, keys ``a..b-1`` are identity records whose labels ``[start, end)`` are that
  identity's image-key range. Packs written by plain mxnet ``im2rec`` (and some third-party
  repacks) have no such record: key 0 is absent or an ordinary image, and every key in the
  ``.idx`` is an image.

Images are stored grouped by identity, so `convert_rec` shuffles them globally with a seeded
permutation and gives shard ``i`` a fixed contiguous slice of it. That makes the output
independent of thread scheduling and lets an interrupted conversion resume: finished shards
(renamed into place only when complete, see `tfrecord.TFRecordWriter`) are verified against
their slice through the index sidecar and kept; everything else is rewritten.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hfrjax.data import augment, tfrecord
from hfrjax.data.convert.common import (
    ConversionError,
    ConversionReport,
    ProgressLine,
    check_image,
    check_on_bad,
    sniff_format,
)
from hfrjax.data.dataset import DatasetInfo

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_LENGTH_MASK = (1 << 29) - 1
IR_HEADER = struct.Struct("<IfQQ")
SHARD_PREFIX = "data"
CHECKSUM_BYTES = 64 << 20  # rec_sha256_first_64mib: a cheap fingerprint of a 100+ GB file.
RESUME_FILE = "resume.json"
REPORT_FILE = "conversion.json"
_CHUNK = 256  # Records per thread-pool task.
_WINDOW = 16  # Tasks in flight at once (bounds the image bytes held in memory).


class IRHeader(NamedTuple):
    """mxnet's ``IRHeader``: flag = number of vector labels (0: scalar ``label``)."""

    flag: int
    label: float
    id: int
    id2: int


def unpack_record(payload: bytes) -> tuple[IRHeader, np.ndarray, bytes]:
    """Splits a record payload into (header, labels, image bytes), like ``mx.recordio.unpack``.

    ``labels`` holds the ``flag`` vector labels when ``flag > 0``, else ``[header.label]``.
    """
    if len(payload) < IR_HEADER.size:
        raise ValueError(f"record payload of {len(payload)} bytes is shorter than the IRHeader")
    header = IRHeader(*IR_HEADER.unpack_from(payload))
    rest = IR_HEADER.size
    if header.flag > 0:
        end = rest + 4 * header.flag
        if end > len(payload):
            raise ValueError(
                f"IRHeader flag {header.flag} announces {header.flag} labels but the payload "
                f"holds only {len(payload) - rest} bytes after the header"
            )
        labels = np.frombuffer(payload, np.float32, header.flag, rest).copy()
        rest = end
    else:
        labels = np.asarray([header.label], np.float32)
    return header, labels, payload[rest:]


def class_label(header: IRHeader, labels: np.ndarray) -> float:
    """An image's class label: the scalar label, or the first of a vector label (InsightFace)."""
    return float(labels[0]) if header.flag > 0 else float(header.label)


def read_idx(idx_path: str | os.PathLike) -> dict[int, int]:
    """Parses a ``.idx`` file into {key: byte offset}; errors name the offending line."""
    out: dict[int, int] = {}
    with open(idx_path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.strip().split("\t")
            try:
                if len(parts) != 2:
                    raise ValueError(f"expected 2 tab-separated fields, got {len(parts)}")
                key, offset = int(parts[0]), int(parts[1])
                if key < 0 or offset < 0:
                    raise ValueError("negative key or offset")
            except ValueError as e:
                raise ConversionError(
                    f"{idx_path}:{lineno}: malformed line {line.rstrip(chr(10))!r} ({e}); "
                    "expected 'key<TAB>byte_offset'"
                ) from None
            if key in out:
                raise ConversionError(f"{idx_path}:{lineno}: duplicate key {key}")
            out[key] = offset
    return out


class RecordIOReader:
    """Random access to an indexed RecordIO pack; thread-safe (``os.pread``, no shared seek)."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = str(rec_path)
        self.idx_path = str(idx_path) if idx_path is not None else default_idx_path(rec_path)
        for p in (self.rec_path, self.idx_path):
            if not os.path.exists(p):
                raise ConversionError(f"RecordIO file {p} does not exist")
        self.offsets = read_idx(self.idx_path)
        self._fd = os.open(self.rec_path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        for key, off in self.offsets.items():
            if off + _FRAME.size > self.size:
                raise ConversionError(
                    f"{self.idx_path}: key {key} points at byte offset {off}, past the end of "
                    f"{self.rec_path} ({self.size} bytes); do the .idx and .rec belong together?"
                )
        self.meta: tuple[int, int] | None = self._read_meta()
        if self.meta is not None:
            a, b = self.meta
            missing = [k for k in range(1, b) if k not in self.offsets]
            if missing:
                raise ConversionError(
                    f"{self.idx_path}: meta record 0 announces image keys 1..{a - 1} and "
                    f"identity keys {a}..{b - 1}, but {len(missing)} are not in the index, "
                    f"e.g. {missing[:5]}"
                )

    def _read_meta(self) -> tuple[int, int] | None:
        # InsightFace's rule is "record 0 with flag > 0"; requiring an empty image as well keeps
        # an im2rec pack whose key 0 is an image with a vector label from being misread.
        if 0 not in self.offsets:
            return None
        header, labels, image = unpack_record(self.read(0))
        if header.flag == 0 or image:
            return None
        if header.flag < 2:
            raise ConversionError(
                f"{self.rec_path}: meta record 0 has {header.flag} label(s), expected [a, b]"
            )
        a, b = (float(x) for x in labels[:2])
        if a != int(a) or b != int(b) or not 1 <= a <= b:
            raise ConversionError(
                f"{self.rec_path}: meta record 0 has labels [{a}, {b}], expected integers "
                "1 <= a <= b (image keys 1..a-1, identity keys a..b-1)"
            )
        return int(a), int(b)

    def __len__(self) -> int:
        return len(self.offsets)

    def _frame(self, key: int, offset: int) -> tuple[int, int]:
        head = os.pread(self._fd, _FRAME.size, offset)
        if len(head) != _FRAME.size:
            raise ConversionError(
                f"{self.rec_path}: record key {key}: truncated frame header at byte offset "
                f"{offset} (file is {self.size} bytes)"
            )
        magic, lrecord = _FRAME.unpack(head)
        if magic != MAGIC:
            raise ConversionError(
                f"{self.rec_path}: record key {key}: bad magic 0x{magic:08x} at byte offset "
                f"{offset}, expected 0x{MAGIC:08x} (corrupt file, or an .idx that does not "
                "belong to this .rec)"
            )
        return lrecord >> 29, lrecord & _LENGTH_MASK

    def read(self, key: int) -> bytes:
        """The payload of record ``key``, with split parts re-joined."""
        try:
            offset = self.offsets[key]
        except KeyError:
            raise KeyError(f"key {key} is not in {self.idx_path}") from None
        parts: list[bytes] = []
        first = True
        while True:
            cflag, length = self._frame(key, offset)
            if (cflag in (0, 1)) != first:
                raise ConversionError(
                    f"{self.rec_path}: record key {key}: part with cflag {cflag} at byte offset "
                    f"{offset} where a {'first' if first else 'continuation'} part was expected"
                )
            data = os.pread(self._fd, length, offset + _FRAME.size)
            if len(data) != length:
                raise ConversionError(
                    f"{self.rec_path}: record key {key}: truncated payload at byte offset "
                    f"{offset} ({len(data)} of {length} bytes present)"
                )
            parts.append(data)
            if cflag in (0, 3):
                return MAGIC_BYTES.join(parts)
            offset += _FRAME.size + ((length + 3) & ~3)
            first = False

    def read_head(self, key: int, n: int) -> bytes:
        """At least the first ``n`` payload bytes of ``key`` (all of it if shorter); one small
        read for whole records, so scanning millions of headers stays cheap."""
        offset = self.offsets[key]
        cflag, length = self._frame(key, offset)
        if cflag == 0 or (cflag == 1 and length >= n):
            data = os.pread(self._fd, min(n, length), offset + _FRAME.size)
            if len(data) == min(n, length):
                return data
        return self.read(key)  # Split within the head, or truncated: the full path reports it.

    def header(self, key: int) -> tuple[IRHeader, np.ndarray]:
        """(IRHeader, labels) of ``key`` without reading its image."""
        head = self.read_head(key, IR_HEADER.size + 8)
        flag = IR_HEADER.unpack_from(head)[0] if len(head) >= IR_HEADER.size else 0
        if flag > 2:
            head = self.read_head(key, IR_HEADER.size + 4 * flag)
        try:
            header, labels, _ = unpack_record(head[: IR_HEADER.size + 4 * flag])
        except ValueError as e:
            raise ConversionError(f"{self.rec_path}: record key {key}: {e}") from None
        return header, labels

    def record(self, key: int) -> tuple[IRHeader, np.ndarray, bytes]:
        """(IRHeader, labels, image bytes) of ``key``."""
        try:
            return unpack_record(self.read(key))
        except ValueError as e:
            raise ConversionError(f"{self.rec_path}: record key {key}: {e}") from None

    def image_keys(self) -> list[int]:
        """Keys of the image records: 1..a-1 with a meta record, else every key in the index."""
        if self.meta is not None:
            return list(range(1, self.meta[0]))
        return sorted(self.offsets)

    def identities(self) -> list[tuple[int, int, int]]:
        """(identity index, start, end) from the identity records a..b-1; [] without a meta
        record (such packs carry identity only in each image's label)."""
        if self.meta is None:
            return []
        a, b = self.meta
        out = []
        for key in range(a, b):
            _, labels = self.header(key)
            if len(labels) < 2:
                raise ConversionError(
                    f"{self.rec_path}: identity record key {key} has {len(labels)} label(s), "
                    "expected [start, end)"
                )
            start, end = int(labels[0]), int(labels[1])
            if not 1 <= start <= end <= a:
                raise ConversionError(
                    f"{self.rec_path}: identity record key {key} has image range "
                    f"[{start}, {end}) outside the image keys 1..{a - 1}"
                )
            out.append((key - a, start, end))
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)


def default_idx_path(rec_path: str | os.PathLike) -> str:
    return str(Path(rec_path).with_suffix(".idx"))


def sha256_head(path: str | os.PathLike, nbytes: int = CHECKSUM_BYTES) -> str:
    """SHA-256 of the first ``nbytes`` of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        left = nbytes
        while left > 0:
            block = fh.read(min(left, 1 << 20))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Conversion.


def _chunks(seq: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _ordered_map(pool: concurrent.futures.Executor, fn, items, window: int) -> Iterator:
    """``pool.map`` in input order with at most ``window`` tasks in flight (bounded memory)."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _scan_labels(
    reader: RecordIOReader,
    keys: Sequence[int],
    pool: concurrent.futures.Executor,
    progress: bool,
) -> np.ndarray:
    """Class label of every key in ``keys`` (headers only), as int64."""

    def scan(chunk: Sequence[int]) -> list[int]:
        out = []
        for key in chunk:
            value = class_label(*reader.header(key))
            if value != int(value) or value < 0:
                raise ConversionError(
                    f"{reader.rec_path}: record key {key}: label {value} is not a non-negative "
                    "integer class id"
                )
            out.append(int(value))
        return out

    line = ProgressLine(len(keys), "scanning labels") if progress else None
    labels: list[int] = []
    for part in _ordered_map(pool, scan, _chunks(keys, 4 * _CHUNK), _WINDOW):
        labels.extend(part)
        if line:
            line.update(len(labels))
    if line:
        line.update(len(labels), force=True)
    return np.asarray(labels, np.int64)


def _label_mapping(
    keys: Sequence[int], labels: np.ndarray, remap: bool, rec_path: str
) -> tuple[np.ndarray, dict[int, int] | None]:
    """Dense labels 0..C-1 for ``labels``; errors on gaps unless ``remap``."""
    uniq = np.unique(labels)
    if len(uniq) == 0 or (uniq == np.arange(len(uniq))).all():
        return uniq, None
    if not remap:
        missing = int(np.argmax(uniq != np.arange(len(uniq))))
        beyond = int(uniq[missing])
        first = int(np.argmax(labels == beyond))
        raise ConversionError(
            f"{rec_path}: labels are not contiguous 0..C-1: label {missing} has no image; first "
            f"key beyond the gap: key {keys[first]} (label {beyond}); pass "
            "remap_labels=True (--remap_labels) to renumber them in sorted order"
        )
    return uniq, {int(old): new for new, old in enumerate(uniq)}


@dataclasses.dataclass
class _Plan:
    """Which keys go to which shard, with their final labels."""

    keys: np.ndarray  # int64 [N] image keys in shuffled order.
    labels: np.ndarray  # int64 [N] dense labels, same order.
    original: np.ndarray  # int64 [N] the pack's labels, same order.
    bounds: list[int]  # Shard i holds keys[bounds[i]:bounds[i + 1]].


def _make_plan(keys: Sequence[int], labels: np.ndarray, mapping, num_shards: int, seed: int):
    order = np.random.default_rng(seed).permutation(len(keys))
    keys_arr = np.asarray(keys, np.int64)[order]
    original = labels[order]
    dense = original if mapping is None else np.asarray([mapping[int(x)] for x in original])
    n = len(keys_arr)
    bounds = [i * n // num_shards for i in range(num_shards + 1)]
    return _Plan(keys_arr, dense.astype(np.int64), original, bounds)


def _shard_complete(
    path: Path,
    keys: np.ndarray,
    labels: np.ndarray,
    reader: RecordIOReader,
    on_bad: str,
    report: ConversionReport,
) -> bool:
    """Whether a finished shard holds exactly this slice (less its undecodable images).

    Keys absent from the shard are re-checked: they must be images that do not decode, which
    are then counted in ``report`` just as the run that wrote the shard counted them.
    """
    if not path.exists() or not tfrecord.index_path(path).exists():
        return False
    try:
        index = tfrecord.ShardIndex.load(path)
    except (ValueError, OSError):
        return False
    if len(index):
        end = int(index.offsets[-1]) + 16 + int(index.lengths[-1])
        if path.stat().st_size != end:
            return False
    elif path.stat().st_size != 0:
        return False
    pos = {str(k): i for i, k in enumerate(keys)}
    rows = [pos.get(k, -1) for k in index.keys]
    if -1 in rows or rows != sorted(rows) or len(set(rows)) != len(rows):
        return False
    if not (index.labels == labels[rows]).all() or not (index.modalities == "vis").all():
        return False
    absent = sorted(set(range(len(keys))) - set(rows))
    local = ConversionReport()
    for i in absent:
        key = int(keys[i])
        _, _, image = reader.record(key)
        if check_image(image, f"{reader.rec_path} key {key}", on_bad, local) is not None:
            return False  # Decodes fine, so the shard is not what this run would write.
    for reason, where in local.skipped.items():
        for w in where:
            report.skip(reason, w)
    report.written += len(index)
    return True


def _load(reader: RecordIOReader, chunk: Sequence[int], on_bad: str):
    """Reads and checks ``chunk``; per key (key, image or None, format, skip report)."""
    out = []
    for key in chunk:
        _, _, image = reader.record(int(key))
        local = ConversionReport()
        fmt = check_image(image, f"{reader.rec_path} key {key}", on_bad, local)
        out.append((int(key), image if fmt else None, fmt, local))
    return out


def convert_rec(
    rec: str | os.PathLike,
    idx: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    num_shards: int,
    seed: int = 0,
    on_bad: str = "raise",
    name: str | None = None,
    limit: int | None = None,
    remap_labels: bool = False,
    workers: int = 4,
    progress: bool = True,
) -> dict:
    """Converts an InsightFace ``.rec``/``.idx`` pack into globally shuffled TFRecord shards.

    ``limit`` keeps the first ``limit`` image keys in pack order (whole leading identities plus
    a partial last one, so labels stay contiguous) for quick trials. Rerunning with the same
    arguments resumes: complete shards that match their slice are kept. ``workers`` threads
    read and decode; the output does not depend on it. Returns a summary dict.
    """
    check_on_bad(on_bad)
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    rec = str(rec)
    idx = str(idx) if idx is not None else default_idx_path(rec)
    out_dir = Path(out_dir)
    name = name or Path(rec).resolve().parent.name or Path(rec).stem
    source = {
        "rec": rec,
        "idx": idx,
        "rec_bytes": None,
        "rec_sha256_first_64mib": None,
        "seed": seed,
    }
    with (
        RecordIOReader(rec, idx) as reader,
        concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool,
    ):
        source["rec_bytes"] = reader.size
        source["rec_sha256_first_64mib"] = sha256_head(rec)
        keys = reader.image_keys()
        if limit is not None:
            keys = keys[:limit]
        if not keys:
            raise ConversionError(f"{idx}: the pack has no image records")
        labels = _scan_labels(reader, keys, pool, progress)
        uniq, mapping = _label_mapping(keys, labels, remap_labels, rec)
        plan = _make_plan(keys, labels, mapping, num_shards, seed)
        del labels

        out_dir.mkdir(parents=True, exist_ok=True)
        params = {
            "source": source,
            "num_shards": num_shards,
            "name": name,
            "limit": limit,
            "remap_labels": remap_labels,
        }
        resume_path = out_dir / RESUME_FILE
        trust = resume_path.exists() and _read_json(resume_path) == params
        _write_json(resume_path, params)

        report = ConversionReport()
        paths = [
            out_dir / tfrecord.shard_name(SHARD_PREFIX, i, num_shards) for i in range(num_shards)
        ]
        line = ProgressLine(len(plan.keys), f"convert {name}") if progress else None
        kept, done = 0, 0
        for i, path in enumerate(paths):
            lo, hi = plan.bounds[i], plan.bounds[i + 1]
            skeys, slabels, sorig = plan.keys[lo:hi], plan.labels[lo:hi], plan.original[lo:hi]
            if trust and _shard_complete(path, skeys, slabels, reader, on_bad, report):
                kept += 1
            else:
                with tfrecord.TFRecordWriter(path) as writer:
                    row = 0
                    load = functools.partial(_load, reader, on_bad=on_bad)
                    for part in _ordered_map(pool, load, _chunks(skeys, _CHUNK), _WINDOW):
                        for key, image, fmt, local in part:
                            for reason, where in local.skipped.items():
                                for w in where:
                                    report.skip(reason, w)
                            if image is not None:
                                writer.write_sample(
                                    tfrecord.Sample(
                                        image=image,
                                        label=int(slabels[row]),
                                        modality="vis",
                                        identity=f"id{int(sorig[row])}",
                                        key=str(key),
                                        dataset=name,
                                        image_format=fmt,
                                    )
                                )
                                report.written += 1
                            row += 1
            done += hi - lo
            if line:
                line.update(done)
        if line:
            line.update(done, force=True)
        if report.written == 0:
            raise ConversionError(f"{rec}: no image could be converted ({report.summary()})")
        image_format, image_size = _first_image(reader, paths)

    extra = {"source": source, "conversion": report.to_json()}
    if mapping is not None:
        extra["label_map"] = {str(k): v for k, v in mapping.items()}
    info = DatasetInfo(
        name=name,
        shards=[p.name for p in paths],
        num_images=report.written,
        class_names=[f"id{int(x)}" for x in uniq],
        modalities={"vis": report.written},
        image_size=image_size,
        image_format=image_format,
        description=f"converted from InsightFace RecordIO {rec}",
        extra=extra,
    )
    info.save(out_dir)
    _write_json(out_dir / REPORT_FILE, report.to_json())
    return {
        "out": str(out_dir),
        "name": name,
        "num_images": report.written,
        "num_classes": info.num_classes,
        "num_shards": num_shards,
        "shards_kept": kept,
        "image_size": list(image_size),
        "image_format": image_format,
        "report": report.summary(),
    }


def _first_image(reader: RecordIOReader, paths: Sequence[Path]) -> tuple[str, tuple[int, int]]:
    """Format and (height, width) of the first written image."""
    for path in paths:
        index = tfrecord.ShardIndex.load(path)
        if len(index):
            _, _, image = reader.record(int(index.keys[0]))
            h, w = augment.decode_image(image).shape[:2]
            return sniff_format(image), (int(h), int(w))
    raise ConversionError(f"no shard in {paths[0].parent} holds an image")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Command line (``hfrjax convert rec``).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hfrjax convert rec``."""
    parser.add_argument("rec", help="InsightFace train.rec")
    parser.add_argument("--idx", default=None, help="its .idx (default: REC with .idx suffix)")
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument(
        "--shards", dest="num_shards", type=int, required=True, help="TFRecord shards"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the global shuffle")
    parser.add_argument("--on_bad", default="raise", choices=["raise", "skip"])
    parser.add_argument("--name", default=None, help="dataset name (default: REC's folder)")
    parser.add_argument("--limit", type=int, default=None, help="first N images only (trials)")
    parser.add_argument(
        "--remap_labels",
        action="store_true",
        help="renumber non-contiguous labels to 0..C-1 (mapping kept in dataset.json)",
    )
    parser.add_argument("--workers", type=int, default=4, help="reader threads")
    parser.add_argument("--no_progress", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Runs the conversion for parsed `add_arguments` args; prints the summary as JSON."""
    summary = convert_rec(
        args.rec,
        args.idx,
        args.out,
        num_shards=args.num_shards,
        seed=args.seed,
        on_bad=args.on_bad,
        name=args.name,
        limit=args.limit,
        remap_labels=args.remap_labels,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=1))
    print(summary["report"], file=sys.stderr)
    return 0
