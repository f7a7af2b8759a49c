"""Reading records for the input pipeline: random access by offset index, and CRC-checked
streaming over whole shards (grain's TFRecord reader with the library's corruption policy)."""

from __future__ import annotations

import os
import threading

import grain
import numpy as np

from hfrjax.data import tfrecord
from hfrjax.data.dataset import RecordTable


class RecordSource:
    """grain random-access data source: row i of a `RecordTable` -> verified payload bytes.

    Uses ``os.pread`` on lazily opened descriptors (one set per process, so it survives
    fork-based grain workers); thread-safe.
    """

    def __init__(self, records: RecordTable, *, verify: bool = True):
        self.records = records
        self._verify = verify
        self._fds: dict[int, int] = {}
        self._pid = -1
        self._lock = threading.Lock()
        self._lengths = self._payload_lengths()

    def _payload_lengths(self) -> np.ndarray:
        # Lengths live in the sidecar; reload per shard (cheap) to keep RecordTable lean.
        lengths = np.zeros(len(self.records), np.int64)
        for s, path in enumerate(self.records.shard_paths):
            rows = np.nonzero(self.records.shard == s)[0]
            if rows.size:
                lengths[rows] = tfrecord.ShardIndex.load(path).lengths[self.records.record[rows]]
        return lengths

    def __len__(self) -> int:
        return len(self.records)

    def _fd(self, shard: int) -> int:
        with self._lock:
            if self._pid != os.getpid():
                self._fds, self._pid = {}, os.getpid()
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = os.open(self.records.shard_paths[shard], os.O_RDONLY)
            return fd

    def __getitem__(self, row: int) -> bytes:
        r = self.records
        shard, offset, record = int(r.shard[row]), int(r.offset[row]), int(r.record[row])
        path = r.shard_paths[shard]
        length = int(self._lengths[row])
        framed = os.pread(self._fd(shard), 12 + length + 4, offset)
        if len(framed) != 16 + length:
            raise tfrecord.CorruptRecordError(
                path, record, offset, f"truncated record ({len(framed)} of {16 + length} bytes)"
            )
        if self._verify:
            if tfrecord.masked_crc32c(framed[:8]) != int.from_bytes(framed[8:12], "little"):
                raise tfrecord.CorruptRecordError(path, record, offset, "length CRC mismatch")
            if int.from_bytes(framed[:8], "little") != length:
                raise tfrecord.CorruptRecordError(
                    path, record, offset, "length disagrees with the index sidecar"
                )
            data = framed[12 : 12 + length]
            if tfrecord.masked_crc32c(data) != int.from_bytes(framed[12 + length :], "little"):
                raise tfrecord.CorruptRecordError(path, record, offset, "data CRC mismatch")
            return data
        return framed[12 : 12 + length]

    def describe(self, row: int) -> str:
        r = self.records
        return (
            f"{r.shard_paths[int(r.shard[row])]} record #{int(r.record[row])} (key {r.key[row]!r})"
        )


class _CheckedTFRecordIterator(grain.DatasetIterator):
    def __init__(self, path: str, on_corrupt: str):
        super().__init__()
        self._reader = tfrecord.TFRecordReader(path, on_corrupt=on_corrupt)

    def __next__(self) -> bytes:
        return next(self._reader)

    def get_state(self) -> dict[str, int]:
        return self._reader.get_state()

    def set_state(self, state: dict[str, int]) -> None:
        self._reader.set_state(state)


class CheckedTFRecordIterDataset(grain.experimental.TFRecordIterDataset):
    """grain's TFRecord iter dataset, with CRC verification and skip-and-count of bad records.

    grain's own reader does not check CRCs (its source has a TODO for it) and its errors do not
    name the file; this subclass keeps its interface and checkpointable offset state.
    """

    def __init__(self, path: str, on_corrupt: str = "raise"):
        super().__init__(path)
        self._on_corrupt = on_corrupt

    def __iter__(self) -> grain.DatasetIterator:
        return _CheckedTFRecordIterator(self._path, self._on_corrupt)


