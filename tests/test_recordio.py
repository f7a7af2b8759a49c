"""InsightFace RecordIO reader and the .rec -> TFRecord converter, against an independent writer."""

import argparse
import hashlib
import io
import json
import struct
import zlib

import numpy as np
import pytest
from conftest import encode_png
from PIL import Image

from hfrjax.data import tfrecord
from hfrjax.data.convert import recordio
from hfrjax.data.convert.common import ConversionError
from hfrjax.data.dataset import Dataset

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)

# --------------------------------------------------------------------------------------------
# An independent dmlc RecordIO / mxnet IRHeader writer.


def ir_pack(label, image: bytes, id_: int = 0, id2: int = 0) -> bytes:
    """mx.recordio.pack: a scalar label gives flag 0, a sequence gives flag = its length."""
    if isinstance(label, (int, float)):
        return struct.pack("<IfQQ", 0, float(label), id_, id2) + image
    vec = np.asarray(label, np.float32)
    return struct.pack("<IfQQ", vec.size, 0.0, id_, id2) + vec.tobytes() + image


def _part(cflag: int, data: bytes) -> bytes:
    return MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(data)) + data


def dmlc_frame(payload: bytes) -> tuple[bytes, list[int]]:
    """dmlc RecordIOWriter::WriteRecord: split where the magic sits at a 4-aligned offset,
    dropping it; parts cflag 1, 2, ..., 3 (or one cflag-0 part); pad the end to 4 bytes.
    Returns the framed bytes and the cflags written."""
    out, flags, start = [], [], 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i : i + 4] == MAGIC_BYTES:
            flags.append(1 if start == 0 else 2)
            out.append(_part(flags[-1], payload[start:i]))
            start = i + 4
    flags.append(3 if start else 0)
    last = payload[start:]
    out.append(_part(flags[-1], last) + b"\0" * (-len(last) % 4))
    return b"".join(out), flags


def write_pack(directory, records, name="train"):
    """Writes ``records`` [(key, payload)] as NAME.rec + NAME.idx; returns paths, offsets and
    the cflags of each record."""
    directory.mkdir(parents=True, exist_ok=True)
    rec, idx = directory / f"{name}.rec", directory / f"{name}.idx"
    offsets, flags, pos = {}, {}, 0
    with open(rec, "wb") as fh:
        for key, payload in records:
            framed, flags[key] = dmlc_frame(payload)
            offsets[key] = pos
            fh.write(framed)
            pos += len(framed)
    idx.write_text("".join(f"{k}\t{offsets[k]}\n" for k, _ in records))
    return rec, idx, offsets, flags


def encode_jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def png_with_magic(img: np.ndarray, payload_prefix: int) -> bytes:
    """A PNG carrying a tEXt chunk with the magic number twice back to back at a 4-aligned
    payload offset (so dmlc splits it into 3 parts, one empty) and once unaligned (no split).
    ``payload_prefix`` is the number of payload bytes before the PNG (IRHeader and labels)."""
    png = encode_png(img)
    head, tail = png[:33], png[33:]  # Signature + IHDR, then the rest.
    for pad in range(4):
        at = payload_prefix + 33 + 8 + 2 + pad  # chunk length+type, keyword "k\0", padding.
        if at % 4 == 0:
            break
    text = b"k\0" + b"x" * pad + MAGIC_BYTES * 2 + b"y" + MAGIC_BYTES + b"zz"
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + text) & 0xFFFFFFFF)
    return head + chunk + tail


def image_for(key: int, label: int, fmt: str = "png") -> bytes:
    rng = np.random.default_rng(key)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    img[0, 0] = (key, label, 0)
    return encode_jpeg(img) if fmt == "jpeg" else encode_png(img)


def make_pack(
    directory, sizes=(3, 4, 2, 5, 3), *, meta=True, labels=None, bad_key=None, split_key=2
):
    """An MS1M-like pack: identity i has sizes[i] images, stored grouped by identity.

    Odd keys get a vector label [label, 7.0] (flag 2), even keys a scalar one; every third image
    is a JPEG. ``split_key`` carries the magic number inside its payload; ``bad_key`` holds
    bytes that do not decode. Returns (rec, idx, {key: (label, image)}, identity ranges, info).
    """
    labels = list(range(len(sizes))) if labels is None else labels
    base = 1 if meta else 0
    records, expected, ranges, key = [], {}, [], base
    for ident, (n, label) in enumerate(zip(sizes, labels)):
        start = key
        for _ in range(n):
            vector = key % 2 == 1
            prefix = 24 + (8 if vector else 0)
            if key == split_key:
                img = png_with_magic(np.full((16, 16, 3), key, np.uint8), prefix)
            elif key == bad_key:
                img = b"\xff\xd8\xff\xe0" + bytes(40)
            else:
                img = image_for(key, label, "jpeg" if key % 3 == 0 else "png")
            lab = [float(label), 7.0] if vector else float(label)
            records.append((key, ir_pack(lab, img, id_=key)))
            expected[key] = (label, img)
            key += 1
        ranges.append((ident, start, key))
    if meta:
        a = key
        for ident, start, end in ranges:
            records.append((a + ident, ir_pack([float(start), float(end)], b"")))
        records.insert(0, (0, ir_pack([float(a), float(a + len(ranges))], b"")))
    rec, idx, offsets, flags = write_pack(directory, records)
    return rec, idx, expected, ranges, {"offsets": offsets, "flags": flags, "records": records}


def read_dataset(out):
    """Every sample of a converted dataset in global (shard, record) order."""
    ds = Dataset.open(out)
    samples = []
    for shard in ds.info.shards:
        samples += [tfrecord.decode_example(d) for d in tfrecord.iter_records(out / shard)]
    return ds, samples


def dir_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------------------------
# Reader.


def test_reader_round_trip_meta_identities_and_split_record(tmp_path):
    rec, idx, expected, ranges, w = make_pack(tmp_path / "pack")
    assert w["flags"][2] == [1, 2, 3]  # The split record really is split into 3 parts.
    assert all(f == [0] for k, f in w["flags"].items() if k != 2)
    with recordio.RecordIOReader(rec, idx) as r:
        assert len(r) == len(w["records"])
        for key, payload in w["records"]:
            assert r.read(key) == payload
        assert r.image_keys() == sorted(expected)
        assert r.identities() == ranges
        for key, (label, image) in expected.items():
            header, labels, img = r.record(key)
            assert img == image
            assert header.id == key
            if key % 2:
                assert header.flag == 2
                np.testing.assert_array_equal(labels, np.float32([label, 7.0]))
            else:
                assert header.flag == 0 and labels.tolist() == [label]
            assert recordio.class_label(header, labels) == label
            h2, l2 = r.header(key)
            assert h2 == header and l2.tolist() == labels.tolist()
        # The unaligned magic stays inside the image; the aligned ones were re-inserted.
        assert r.record(2)[2].count(MAGIC_BYTES) == 3


def test_reader_pack_without_meta_record(tmp_path):
    rec, idx, expected, _, _ = make_pack(tmp_path / "pack", meta=False)
    with recordio.RecordIOReader(rec, idx) as r:
        assert r.meta is None
        assert r.image_keys() == sorted(expected) and 0 in expected
        assert r.identities() == []
        assert r.record(0)[2] == expected[0][1]


def test_reader_bad_magic_names_file_key_and_offset(tmp_path):
    rec, idx, _, _, w = make_pack(tmp_path / "pack")
    raw = bytearray(rec.read_bytes())
    off = w["offsets"][5]
    raw[off] ^= 0xFF
    # Also break the magic of the split record's second part.
    (length,) = struct.unpack_from("<I", raw, w["offsets"][2] + 4)
    part2 = w["offsets"][2] + 8 + (length & ((1 << 29) - 1))
    assert raw[part2 : part2 + 4] == MAGIC_BYTES
    raw[part2 + 3] ^= 0x01
    rec.write_bytes(bytes(raw))
    with recordio.RecordIOReader(rec, idx) as r:
        with pytest.raises(ConversionError, match=rf"train\.rec: record key 5: bad magic .* {off}"):
            r.read(5)
        with pytest.raises(ConversionError, match=rf"record key 2: bad magic .* offset {part2}"):
            r.read(2)
        assert r.read(4)  # Other records are unaffected.


@pytest.mark.parametrize("line", ["7\tabc", "7 120", "7\t1\t2", "-1\t0"])
def test_reader_malformed_idx_line(tmp_path, line):
    rec, idx, _, _, _ = make_pack(tmp_path / "pack")
    lines = idx.read_text().splitlines()
    lines[3] = line
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError, match=r"train\.idx:4: malformed line"):
        recordio.RecordIOReader(rec, idx)


def test_reader_idx_offset_past_end_and_duplicate_key(tmp_path):
    rec, idx, _, _, _ = make_pack(tmp_path / "pack")
    text = idx.read_text()
    idx.write_text(text + f"99\t{rec.stat().st_size}\n")
    with pytest.raises(ConversionError, match="key 99 points at byte offset .* past the end"):
        recordio.RecordIOReader(rec, idx)
    idx.write_text(text + text.splitlines()[2] + "\n")
    with pytest.raises(ConversionError, match="duplicate key"):
        recordio.RecordIOReader(rec, idx)


def test_unpack_record_truncated_labels():
    with pytest.raises(ValueError, match="flag 3"):
        recordio.unpack_record(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 8)


# --------------------------------------------------------------------------------------------
# Conversion.


def test_convert_round_trip_shuffled_and_deterministic(tmp_path):
    rec, idx, expected, _, _ = make_pack(tmp_path / "pack")
    out = tmp_path / "out"
    summary = recordio.convert_rec(rec, idx, out, num_shards=3, seed=0, progress=False)
    assert summary["num_images"] == len(expected) == 17
    ds, samples = read_dataset(out)
    assert sorted(int(s.key) for s in samples) == sorted(expected)
    for s in samples:
        label, image = expected[int(s.key)]
        assert (s.label, s.image) == (label, image)
        assert (s.identity, s.modality, s.dataset) == (f"id{label}", "vis", "pack")
        assert s.image_format == ("jpeg" if int(s.key) % 3 == 0 else "png")
    # Global shuffle: the seeded permutation of the image keys, split into contiguous slices.
    keys = [int(s.key) for s in samples]
    perm = np.random.default_rng(0).permutation(len(expected))
    assert keys == [sorted(expected)[i] for i in perm]
    assert keys != sorted(keys)
    assert [len(tfrecord.ShardIndex.load(out / s)) for s in ds.info.shards] == [5, 6, 6]
    labels = [s.label for s in samples]
    assert labels != sorted(labels)  # Not grouped by identity.
    # Metadata.
    info = ds.info
    assert info.name == "pack" and info.num_images == 17
    assert info.class_names == [f"id{i}" for i in range(5)]
    assert info.modalities == {"vis": 17} and info.image_size == (16, 16)
    assert info.image_format == samples[0].image_format
    src = info.extra["source"]
    assert src["rec"] == str(rec) and src["idx"] == str(idx) and src["seed"] == 0
    assert src["rec_bytes"] == rec.stat().st_size
    assert src["rec_sha256_first_64mib"] == hashlib.sha256(rec.read_bytes()).hexdigest()
    assert info.extra["conversion"] == {"written": 17, "skipped": {}}
    assert json.loads((out / "conversion.json").read_text()) == info.extra["conversion"]
    assert "label_map" not in info.extra
    # Same seed: byte-identical output (whatever the thread count); another seed: other order.
    again = tmp_path / "again"
    recordio.convert_rec(rec, idx, again, num_shards=3, seed=0, workers=1, progress=False)
    assert dir_bytes(again) == dir_bytes(out)
    other = tmp_path / "other"
    recordio.convert_rec(rec, idx, other, num_shards=3, seed=1, progress=False)
    assert [s.key for s in read_dataset(other)[1]] != [s.key for s in samples]


def test_convert_limit_and_pack_without_meta(tmp_path):
    rec, idx, expected, _, _ = make_pack(tmp_path / "pack", meta=False)
    out = tmp_path / "out"
    recordio.convert_rec(rec, idx, out, num_shards=2, limit=8, name="nometa", progress=False)
    ds, samples = read_dataset(out)
    assert sorted(int(s.key) for s in samples) == list(range(8))  # Keys 0..7 in pack order.
    assert ds.info.class_names == ["id0", "id1", "id2"] and ds.info.name == "nometa"
    assert all(s.image == expected[int(s.key)][1] for s in samples)


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("bad_key", [None, 6])
def test_convert_resumes_after_interruption(tmp_path, monkeypatch, bad_key):
    rec, idx, _, _, _ = make_pack(tmp_path / "pack", bad_key=bad_key)
    kw = dict(num_shards=4, seed=3, on_bad="skip", progress=False)
    reference = tmp_path / "ref"
    recordio.convert_rec(rec, idx, reference, **kw)
    names = [tfrecord.shard_name("data", i, 4) for i in range(4)]
    if bad_key is not None:  # The bad image lies in a shard finished before the crash.
        assert str(bad_key) not in tfrecord.ShardIndex.load(reference / names[1]).keys
        assert json.loads((reference / "conversion.json").read_text())["skipped"] == {
            "undecodable image": {"count": 1, "first": [f"{rec} key {bad_key}"]}
        }

    real = tfrecord.TFRecordWriter
    opened = []

    class CrashingWriter(real):
        """Dies like a killed process while writing shard 2: the tmp file stays behind."""

        def __init__(self, path):
            super().__init__(path)
            opened.append(self.path.name)
            self.n = 0

        def write(self, data, **kw):
            super().write(data, **kw)
            self.n += 1
            if self.path.name == names[2] and self.n == 2:
                raise _Crash("simulated crash")

        def abort(self):
            self._fh.close()  # A killed process does not clean up.
            self._fh = None

    out = tmp_path / "out"
    monkeypatch.setattr(tfrecord, "TFRecordWriter", CrashingWriter)
    with pytest.raises(_Crash):
        recordio.convert_rec(rec, idx, out, **kw)
    assert opened == names[:3]
    assert (out / (names[2] + ".tmp")).exists() and not (out / names[2]).exists()
    assert not (out / "dataset.json").exists()
    mtimes = {n: (out / n).stat().st_mtime_ns for n in names[:2]}

    class CountingWriter(real):
        def __init__(self, path):
            super().__init__(path)
            opened.append(self.path.name)

    opened.clear()
    monkeypatch.setattr(tfrecord, "TFRecordWriter", CountingWriter)
    summary = recordio.convert_rec(rec, idx, out, **kw)
    assert opened == names[2:]  # Finished shards were kept, not rewritten.
    assert summary["shards_kept"] == 2
    assert {n: (out / n).stat().st_mtime_ns for n in names[:2]} == mtimes
    assert dir_bytes(out) == dir_bytes(reference)  # Incl. dataset.json and conversion.json.
    assert not list(out.glob("*.tmp"))

    # A finished run again rewrites nothing; a different seed rewrites everything.
    opened.clear()
    recordio.convert_rec(rec, idx, out, **kw)
    assert opened == []
    recordio.convert_rec(rec, idx, out, **{**kw, "seed": 4})
    assert opened == names
    fresh = tmp_path / "fresh"
    recordio.convert_rec(rec, idx, fresh, **{**kw, "seed": 4})
    assert dir_bytes(out) == dir_bytes(fresh)


def test_convert_resume_redoes_tampered_shard(tmp_path):
    rec, idx, _, _, _ = make_pack(tmp_path / "pack")
    out = tmp_path / "out"
    recordio.convert_rec(rec, idx, out, num_shards=3, progress=False)
    reference = dir_bytes(out)
    shard = out / tfrecord.shard_name("data", 1, 3)
    shard.write_bytes(shard.read_bytes()[:-5])  # Truncated, but the index still lists it all.
    summary = recordio.convert_rec(rec, idx, out, num_shards=3, progress=False)
    assert summary["shards_kept"] == 2
    assert dir_bytes(out) == reference


def test_convert_undecodable_image_raises_or_is_skipped(tmp_path):
    rec, idx, expected, _, _ = make_pack(tmp_path / "pack", bad_key=9)
    with pytest.raises(ConversionError, match=r"train\.rec key 9: cannot decode the image"):
        recordio.convert_rec(rec, idx, tmp_path / "raise", num_shards=2, progress=False)
    out = tmp_path / "skip"
    summary = recordio.convert_rec(rec, idx, out, num_shards=2, on_bad="skip", progress=False)
    assert summary["num_images"] == len(expected) - 1
    ds, samples = read_dataset(out)
    assert sorted(int(s.key) for s in samples) == sorted(k for k in expected if k != 9)
    assert ds.info.extra["conversion"]["skipped"]["undecodable image"]["count"] == 1
    assert ds.info.modalities == {"vis": len(expected) - 1}


def test_convert_label_gaps_error_or_remap(tmp_path):
    rec, idx, expected, _, _ = make_pack(tmp_path / "pack", sizes=(2, 3, 2), labels=[0, 1, 3])
    with pytest.raises(ConversionError, match=r"label 2 has no image.* key 6 \(label 3\)"):
        recordio.convert_rec(rec, idx, tmp_path / "gap", num_shards=2, progress=False)
    out = tmp_path / "remap"
    recordio.convert_rec(rec, idx, out, num_shards=2, remap_labels=True, progress=False)
    ds, samples = read_dataset(out)
    assert ds.info.class_names == ["id0", "id1", "id3"]
    assert ds.info.extra["label_map"] == {"0": 0, "1": 1, "3": 2}
    remap = {0: 0, 1: 1, 3: 2}
    for s in samples:
        label, image = expected[int(s.key)]
        assert (s.label, s.identity, s.image) == (remap[label], f"id{label}", image)


def test_cli_arguments_and_run(tmp_path, capsys):
    rec, _, expected, _, _ = make_pack(tmp_path / "pack")
    parser = argparse.ArgumentParser()
    recordio.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args([str(rec), "--out", str(out), "--shards", "2", "--no_progress"])
    assert recordio.run(args) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == len(expected)
    assert Dataset.open(out).info.num_images == len(expected)
