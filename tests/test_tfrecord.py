"""TFRecord framing, Example payloads, index sidecars and corruption handling."""

import struct

import numpy as np
import pytest
from conftest import write_tiny_dataset
from tensorflow_datasets.proto import tf_example_pb2

from hfrjax.data import tfrecord
from hfrjax.data.dataset import Dataset


def _crc32c_reference(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected poly 0x82F63B78), independent of the crc32c pkg."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _independent_read(path):
    """Parses a TFRecord file with struct + the reference CRC; returns the payloads."""
    raw = open(path, "rb").read()
    pos, out = 0, []
    while pos < len(raw):
        (length,) = struct.unpack_from("<Q", raw, pos)
        (len_crc,) = struct.unpack_from("<I", raw, pos + 8)
        assert _mask(_crc32c_reference(raw[pos : pos + 8])) == len_crc
        data = raw[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack_from("<I", raw, pos + 12 + length)
        assert _mask(_crc32c_reference(data)) == data_crc
        out.append(data)
        pos += 16 + length
    return out


def test_crc32c_known_vector():
    # RFC 3720 test vector: 32 bytes of zeros -> 0x8A9136AA.
    assert _crc32c_reference(bytes(32)) == 0x8A9136AA
    assert tfrecord.masked_crc32c(bytes(32)) == _mask(0x8A9136AA)


def test_round_trip_and_independent_reader(tmp_path):
    samples = write_tiny_dataset(tmp_path, num_ids=4, per_modality=2, num_shards=3)
    shards = tfrecord.list_shards(tmp_path, "data")
    assert [p.name for p in shards] == [f"data-0000{i}-of-00003.tfrecord" for i in range(3)]
    ours, theirs = [], []
    for p in shards:
        ours += [tfrecord.decode_example(d) for d in tfrecord.iter_records(p)]
        for payload in _independent_read(p):
            ex = tf_example_pb2.Example.FromString(payload)
            f = ex.features.feature
            theirs.append(
                (
                    f["key"].bytes_list.value[0].decode(),
                    f["label"].int64_list.value[0],
                    f["modality"].bytes_list.value[0].decode(),
                    f["image/encoded"].bytes_list.value[0],
                )
            )
    assert sorted(ours, key=lambda s: s.key) == sorted(samples, key=lambda s: s.key)
    assert sorted(theirs) == sorted((s.key, s.label, s.modality, s.image) for s in samples)
    # Round-robin assignment: shard i holds samples i, i+3, ...
    first = [tfrecord.decode_example(next(tfrecord.iter_records(p))).key for p in shards]
    assert first == [s.key for s in samples[:3]]


def test_index_sidecar_matches_file(tmp_path):
    samples = write_tiny_dataset(tmp_path, num_ids=3, per_modality=2, num_shards=2)
    for s, p in enumerate(tfrecord.list_shards(tmp_path, "data")):
        idx = tfrecord.ShardIndex.load(p)
        raw = open(p, "rb").read()
        expected = samples[s::2]
        assert idx.keys == [x.key for x in expected]
        assert list(idx.labels) == [x.label for x in expected]
        for off, length, x in zip(idx.offsets, idx.lengths, expected):
            assert struct.unpack_from("<Q", raw, off)[0] == length
            assert tfrecord.decode_example(raw[off + 12 : off + 12 + length]) == x


def test_no_temp_files_left_and_abort(tmp_path):
    write_tiny_dataset(tmp_path, num_ids=2, per_modality=1, num_shards=2)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(RuntimeError):
        with tfrecord.ShardedWriter(tmp_path / "x", "data", 2) as w:
            w.write(tfrecord.Sample(b"abc", 0, "vis", "a", "k", "d"))
            raise RuntimeError("crash mid-write")
    assert not list((tmp_path / "x").glob("*"))  # Nothing that looks like a complete shard.


def _corrupt(path, offset):
    raw = bytearray(open(path, "rb").read())
    raw[offset] ^= 0xFF
    open(path, "wb").write(bytes(raw))


def test_corrupt_data_names_file_and_record(tmp_path):
    write_tiny_dataset(tmp_path, num_ids=4, per_modality=2, num_shards=2)
    shard = tfrecord.list_shards(tmp_path, "data")[1]
    idx = tfrecord.ShardIndex.load(shard)
    _corrupt(shard, int(idx.offsets[2]) + 12 + 5)  # Inside the payload of record #2.
    with pytest.raises(tfrecord.CorruptRecordError) as e:
        list(tfrecord.iter_records(shard))
    assert e.value.path == str(shard) and e.value.record == 2
    assert str(shard) in str(e.value) and "record #2" in str(e.value)
    # Skip-and-count mode loses only the bad record.
    stats = tfrecord.CorruptionStats()
    got = list(tfrecord.iter_records(shard, on_corrupt="skip", stats=stats))
    assert len(got) == len(idx) - 1
    assert stats.total == 1 and stats.by_file() == {str(shard): 1}
    assert "skipped 1 corrupt record" in stats.report()


def test_corrupt_length_resyncs_with_index(tmp_path):
    write_tiny_dataset(tmp_path, num_ids=4, per_modality=2, num_shards=1)
    shard = tfrecord.list_shards(tmp_path, "data")[0]
    idx = tfrecord.ShardIndex.load(shard)
    _corrupt(shard, int(idx.offsets[3]) + 1)  # Length field of record #3.
    with pytest.raises(tfrecord.CorruptRecordError, match="record #3.*length CRC"):
        list(tfrecord.iter_records(shard))
    stats = tfrecord.CorruptionStats()
    keys = [
        tfrecord.decode_example(d).key
        for d in tfrecord.iter_records(shard, on_corrupt="skip", stats=stats)
    ]
    assert keys == idx.keys[:3] + idx.keys[4:]
    assert stats.total == 1


def test_truncated_shard(tmp_path):
    write_tiny_dataset(tmp_path, num_ids=2, per_modality=2, num_shards=1)
    shard = tfrecord.list_shards(tmp_path, "data")[0]
    raw = open(shard, "rb").read()
    open(shard, "wb").write(raw[:-7])
    with pytest.raises(tfrecord.CorruptRecordError, match=r"record #7 .*truncated"):
        list(tfrecord.iter_records(shard))
    stats = tfrecord.CorruptionStats()
    assert len(list(tfrecord.iter_records(shard, on_corrupt="skip", stats=stats))) == 7
    assert stats.total == 1


def test_dataset_open_checks(tmp_path):
    write_tiny_dataset(tmp_path, num_ids=3, per_modality=1, num_shards=2)
    ds = Dataset.open(tmp_path)
    assert len(ds.records) == 6 and ds.info.num_classes == 3
    assert set(ds.records.modality) == {"vis", "nir"}
    # A label out of range is reported with file, record and key.
    info = ds.info
    info.class_names = info.class_names[:2]
    info.save(tmp_path)
    with pytest.raises(ValueError, match=r"record #\d+ \(key 'id002/.*label 2 out of range"):
        Dataset.open(tmp_path)
    with pytest.raises(FileNotFoundError, match="not an hfrjax dataset"):
        Dataset.open(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not in the dataset"):
        ds.records.select_keys(["id000/vis/000", "nope"])


def test_sample_validation():
    with pytest.raises(ValueError, match="modality 'rgb'"):
        tfrecord.Sample(b"", 0, "rgb", "a", "k", "d")
    with pytest.raises(ValueError, match="negative label"):
        tfrecord.Sample(b"", -1, "vis", "a", "k", "d")
    np.testing.assert_equal(
        tfrecord.decode_example(
            tfrecord.encode_example(tfrecord.Sample(b"\x00\x01", 7, "nir", "a", "k/1", "d", "png"))
        ).label,
        7,
    )


def test_example_image_is_the_encoded_image():
    s = tfrecord.Sample(b"\xff\xd8 jpeg bytes", 3, "nir", "a", "k/1", "d")
    assert tfrecord.example_image(tfrecord.encode_example(s)) == s.image
    ex = tf_example_pb2.Example()
    ex.features.feature["label"].int64_list.value.append(1)
    with pytest.raises(ValueError, match="lacks features.*image/encoded"):
        tfrecord.example_image(ex.SerializeToString())
