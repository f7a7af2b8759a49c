"""NIR-VIS benchmark and image-folder converters on tiny fixtures in the distributed layouts."""

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfrjax.data import tfrecord
from hfrjax.data.convert import folders, nirvis
from hfrjax.data.convert.common import ConversionError
from hfrjax.data.dataset import Dataset
from hfrjax.data.protocol import Fold, Protocol
from hfrjax.eval import protocols

SIZE = 16
CASIA_IDS = ["10001", "10002", "10003", "10004", "10005", "10006"]


def _image(value: int, fmt: str, rgb: bool, seed: int = 0) -> bytes:
    """A flat image of grey ``value`` with one random corner pixel (so files differ)."""
    rng = np.random.default_rng(seed)
    img = np.full((SIZE, SIZE, 3) if rgb else (SIZE, SIZE), value, np.uint8)
    img[-1, -1] = rng.integers(0, 256)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format={"jpg": "JPEG", "bmp": "BMP", "png": "PNG"}[fmt])
    return buf.getvalue()


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _read_back(out):
    """All samples of a converted dataset by key, via Dataset.open and the shard reader."""
    ds = Dataset.open(out)
    samples = {}
    for shard in ds.info.shards:
        for payload in tfrecord.iter_records(out / shard):
            s = tfrecord.decode_example(payload)
            samples[s.key] = s
    assert len(samples) == ds.info.num_images == len(ds.records)
    return ds, samples


def _fold_lists(fold: Fold):
    return {"vis": fold.train["vis"], "nir": fold.train["nir"], "g": fold.gallery, "p": fold.probe}


# --------------------------------------------------------------------------------------------
# CASIA NIR-VIS 2.0.


def _casia(root):
    """6 identities in two sessions, 2 VIS (.jpg) + 3 NIR (.bmp) each, 2 folds of
    backslash lists whose extensions are partly wrong, CRLF endings, and ignored dev lists.
    Returns {key: (file, identity, modality)} and the expected fold lists (keys)."""
    files, keys = {}, {}
    for i, ident in enumerate(CASIA_IDS):
        session = "s1" if i < 3 else "s2"
        value = 45 + 30 * i  # Identity coded in the grey level (for the evaluation test).
        for mod, ext, n in (("VIS", "jpg", 2), ("NIR", "bmp", 3)):
            for j in range(1, n + 1):
                rel = f"{session}/{mod}/{ident}/{j:03d}"
                seed = i * 10 + j + (5 if mod == "NIR" else 0)
                p = _write(root / f"{rel}.{ext}", _image(value, ext, mod == "VIS", seed))
                files[rel] = (p, ident, mod.lower())
                keys.setdefault((ident, mod.lower()), []).append(rel)

    def listed(key, i):
        # Windows separators; every other VIS listed as .bmp and NIR as .jpg (the lists lie).
        wrong = i % 2 == 1
        ext = {"VIS": "bmp" if wrong else "jpg", "NIR": "jpg" if wrong else "bmp"}
        return key.replace("/", "\\") + "." + ext[key.split("/")[1]]

    expected = []
    pdir = root / "protocols"
    pdir.mkdir()
    for k, (train, test) in enumerate(
        [(CASIA_IDS[:3], CASIA_IDS[3:]), (CASIA_IDS[::2], CASIA_IDS[1::2])], start=1
    ):
        lists = {
            "vis": [x for t in train for x in keys[(t, "vis")]],
            "nir": [x for t in train for x in keys[(t, "nir")]],
            "g": [keys[(t, "vis")][0] for t in test],
            "p": [x for t in test for x in keys[(t, "nir")]],
        }
        expected.append(lists)
        for name, role in (
            (f"vis_train_{k}", "vis"),
            (f"nir_train_{k}", "nir"),
            (f"vis_gallery_{k}", "g"),
            (f"nir_probe_{k}", "p"),
        ):
            text = "".join(f"{listed(x, i)}\r\n" for i, x in enumerate(lists[role]))
            (pdir / f"{name}.txt").write_bytes(text.encode())
    (pdir / "vis_train_dev.txt").write_text("s9\\VIS\\99999\\001.jpg\n")
    (pdir / "nir_probe_dev.txt").write_text("s9\\NIR\\99999\\001.bmp\n")
    return files, expected


@pytest.fixture
def casia(tmp_path):
    root = tmp_path / "NIR-VIS-2.0"
    files, expected = _casia(root)
    return root, files, expected


def test_casia_round_trip_labels_and_protocol(casia, tmp_path):
    root, files, expected = casia
    out = tmp_path / "out"
    result = nirvis.convert_nirvis("casia-nirvis2", root, out, num_shards=3, progress=False)

    ds, samples = _read_back(out)
    # The dataset holds every file some fold lists; these two VIS images no list names.
    assert set(files) - set(samples) == {"s2/VIS/10004/002", "s2/VIS/10006/002"}
    assert set(samples) <= set(files)
    assert ds.info.class_names == CASIA_IDS
    assert ds.info.modalities == {"vis": 10, "nir": 18}
    for key, (path, ident, mod) in files.items():
        if key not in samples:
            continue
        s = samples[key]
        assert s.image == path.read_bytes()  # Byte-exact, BMP kept as BMP.
        assert (s.identity, s.modality, s.label) == (ident, mod, CASIA_IDS.index(ident))
        assert s.image_format == ("jpeg" if mod == "vis" else "bmp")
        assert s.dataset == "casia-nirvis2"

    proto = Protocol.load(out)
    assert (proto.num_folds, proto.gallery_modality, proto.probe_modality) == (2, "vis", "nir")
    assert [_fold_lists(f) for f in proto.folds] == expected

    want = {"train_ids": 3, "train_vis": 6, "train_nir": 9, "test_ids": 3, "gallery": 3}
    for f in result["folds"]:
        assert {k: f["counts"][k] for k in want} == want
        assert f["counts"]["probes"] == 9
        assert f["counts"]["train_test_shared_ids"] == 0
    assert result["expected"] == nirvis.EXPECTED["casia-nirvis2"]
    assert result["expected"]["probes"] == "~6200"
    assert any("fold 1: train_ids 3 (expected ~357)" in w for w in result["warnings"])
    assert json.loads((out / "conversion.json").read_text()) == json.loads(json.dumps(result))
    table = nirvis.format_table(result)
    assert "~6200" in table and "expected" in table
    # sources.tsv maps each key to the file actually read (the lists' extensions lie).
    rows = (out / "sources.tsv").read_text().splitlines()[1:]
    assert "s1/VIS/10001/001\ts1/VIS/10001/001.jpg\tjpeg" in rows


def test_casia_case_insensitive_paths(casia, tmp_path):
    root, files, _ = casia
    probe = root / "protocols" / "nir_probe_1.txt"
    probe.write_text(probe.read_text().replace("NIR", "nir"))  # Windows lists ignore case.
    nirvis.convert_nirvis("casia-nirvis2", root, tmp_path / "out", progress=False)
    assert Protocol.load(tmp_path / "out").fold(1).probe[0] == "s2/NIR/10004/001"


def test_casia_missing_files_raise_then_skip(casia, tmp_path):
    root, files, expected = casia
    gone = sorted(k for k in files if "/NIR/" in k and k.split("/")[2] in CASIA_IDS[3:])
    assert len(gone) == 9
    gone = gone[:7]
    for k in gone:
        files[k][0].unlink()
    with pytest.raises(ConversionError, match=r"7 file\(s\) listed in .* do not exist") as e:
        nirvis.convert_nirvis("casia-nirvis2", root, tmp_path / "a", progress=False)
    assert "s2/NIR/10004/001" in str(e.value) and "(and 2 more)" in str(e.value)
    assert "nir_probe_1.txt:1" in str(e.value)

    out = tmp_path / "b"
    result = nirvis.convert_nirvis(
        "casia-nirvis2", root, out, on_bad="skip", num_shards=2, progress=False
    )
    assert result["report"]["skipped"]["missing file"]["count"] == 7
    assert result["num_images"] == 28 - 7
    _, samples = _read_back(out)
    proto = Protocol.load(out)
    listed = {x for f in proto.folds for x in (*f.train_keys, *f.gallery, *f.probe)}
    assert listed <= set(samples) and not listed & set(gone)
    assert proto.fold(1).probe == [x for x in expected[0]["p"] if x not in gone]
    assert result["folds"][0]["counts"]["probes"] == 2
    assert any("do not exist" in w for w in result["warnings"])
    assert any("fold 1: removed" in w and "probes 7" in w for w in result["warnings"])


def test_casia_undecodable_raise_then_skip(casia, tmp_path):
    root, files, _ = casia
    bad_key = "s2/NIR/10005/002"
    files[bad_key][0].write_bytes(b"BM" + bytes(range(200)))  # A BMP header and garbage.
    with pytest.raises(ConversionError, match="cannot decode") as e:
        nirvis.convert_nirvis("casia-nirvis2", root, tmp_path / "a", progress=False)
    assert str(files[bad_key][0]) in str(e.value)

    out = tmp_path / "b"
    result = nirvis.convert_nirvis("casia-nirvis2", root, out, on_bad="skip", progress=False)
    skipped = result["report"]["skipped"]["undecodable image"]
    assert skipped == {"count": 1, "first": [str(files[bad_key][0])]}
    _, samples = _read_back(out)
    assert bad_key not in samples and len(samples) == 27
    proto = Protocol.load(out)
    assert bad_key not in proto.fold(1).probe and len(proto.fold(1).probe) == 8
    assert bad_key not in proto.fold(2).probe
    assert any(w.startswith("fold 1: removed") for w in result["warnings"])


def test_casia_list_errors(casia, tmp_path):
    root, _, _ = casia
    (root / "protocols" / "nir_probe_2.txt").unlink()
    with pytest.raises(ConversionError, match=r"fold 2: protocol list\(s\) .*nir_probe_2.txt"):
        nirvis.convert_nirvis("casia-nirvis2", root, tmp_path / "a", progress=False)
    with pytest.raises(ConversionError, match="no protocol lists under"):
        nirvis.convert_nirvis("casia-nirvis2", tmp_path, tmp_path / "b", progress=False)


def test_evaluate_protocol_runs_on_converted_casia(casia, tmp_path):
    root, _, _ = casia
    out = tmp_path / "out"
    nirvis.convert_nirvis("casia-nirvis2", root, out, progress=False)

    def embed(images):  # One-hot of the grey level's 30-wide bin: the identity.
        return np.eye(10, dtype=np.float32)[images[:, 0, 0, 0] // 30]

    res = protocols.evaluate_protocol(embed, out, batch_size=8, num_threads=1)
    assert [f["num_probes"] for f in res["folds"]] == [9, 9]
    assert res["mean"]["Rank-1"] == pytest.approx(1.0)
    assert res["mean"]["EER"] == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------
# LAMP-HQ.


def test_lamp_hq_lists(tmp_path):
    root = tmp_path / "LAMP-HQ"
    labels = ["12", "7", "3", "40", "5", "9"]  # Subject labels as the lists give them.
    keys = {}
    for i, lab in enumerate(labels):
        for mod, ext, n in (("VIS", "jpg", 1), ("NIR", "png", 3)):
            for j in range(n):
                rel = f"images/{mod}/{int(lab):03d}/{int(lab):03d}_{j:02d}"
                _write(root / f"{rel}.{ext}", _image(30 + i, ext, mod == "VIS", i * 7 + j))
                keys.setdefault((lab, mod.lower()), []).append(rel)
    ext = {"vis": "jpg", "nir": "png"}
    expected = []
    for k, (train, test) in enumerate([(labels[:3], labels[3:]), (labels[3:], labels[:3])], 1):
        lists = {
            f"train/train_vis{k}": [(x, t) for t in train for x in keys[(t, "vis")]],
            f"train/train_nir{k}": [(x, t) for t in train for x in keys[(t, "nir")]],
            f"test/gallery_vis{k}": [(x, t) for t in test for x in keys[(t, "vis")]],
            f"test/probe_nir{k}": [(x, t) for t in test for x in keys[(t, "nir")]],
        }
        for name, rows in lists.items():
            mod = "vis" if "vis" in name else "nir"
            text = "".join(f"{x}.{ext[mod]} {t}\n" for x, t in rows)
            _write(root / "Protocols" / f"{name}.txt", text.encode())
        expected.append([[x for x, _ in rows] for rows in lists.values()])

    out = tmp_path / "out"
    result = nirvis.convert_nirvis("lamp-hq", root, out, num_shards=2, progress=False)
    ds, samples = _read_back(out)
    assert ds.info.class_names == ["3", "5", "7", "9", "12", "40"]  # Natural order.
    for (lab, mod), ks in keys.items():
        for x in ks:
            s = samples[x]
            assert (s.identity, s.modality) == (lab, mod)
            assert s.label == ds.info.class_names.index(lab)
            assert s.image == (root / f"{x}.{ext[mod]}").read_bytes()
    proto = Protocol.load(out)
    assert [[f.train["vis"], f.train["nir"], f.gallery, f.probe] for f in proto.folds] == expected
    assert [f["counts"]["probes"] for f in result["folds"]] == [9, 9]
    assert result["expected"]["identities"] == 573

    bad = root / "Protocols" / "test" / "probe_nir1.txt"
    bad.write_text(bad.read_text() + "images/NIR/003/003_00.png\n")
    with pytest.raises(ConversionError, match=r"probe_nir1.txt:10: expected relative_path label"):
        nirvis.convert_nirvis("lamp-hq", root, tmp_path / "b", progress=False)


# --------------------------------------------------------------------------------------------
# Oulu-CASIA NIR-VIS (generated protocol).

OULU_SPEC = nirvis.OuluSpec(num_subjects=4, num_train=2, per_expression=2, num_folds=2)


@pytest.fixture
def oulu(tmp_path):
    """5 subjects x 2 illuminations x 6 expressions x 3 frames per domain; P005 has only one
    VL Fear frame under Strong light, so it cannot be drawn."""
    root = tmp_path / "src" / "OriginalImg"
    n = 0
    for dom in ("NI", "VL"):
        for illum in ("Strong", "Weak"):
            for s in range(1, 6):
                for expr in nirvis.OULU_EXPRESSION_DIRS:
                    frames = 1 if (s, dom, expr, illum) == (5, "VL", "Fear", "Strong") else 3
                    for f in range(frames):
                        n += 1
                        data = _image(10 * s, "jpg", dom == "VL", n)
                        _write(root / dom / illum / f"P{s:03d}" / expr / f"{f:03d}.jpeg", data)
    (root / "NI" / "Strong" / "P001" / "Anger" / "Thumbs.db").write_bytes(b"x")
    return root


def _protocol_files(out):
    """The generated lists (not protocol.json, whose name already holds the seed)."""
    return {p.name: p.read_text() for p in sorted((out / "protocols").glob("*.txt"))}


def test_oulu_generated_protocol(oulu, tmp_path):
    out = tmp_path / "s0"
    result = nirvis.convert_nirvis(
        "oulu-casia", oulu, out, spec=OULU_SPEC, seed=0, num_shards=2, progress=False
    )
    ds, samples = _read_back(out)
    assert len(samples) == 4 * 6 * 2 * 2
    assert "P005" not in ds.info.class_names and len(ds.info.class_names) == 4
    assert all(k.split("/")[1] == "Strong" for k in samples)  # Spec: normal light only.
    for k, s in samples.items():
        assert s.identity == k.split("/")[2]
        assert s.modality == {"NI": "nir", "VL": "vis"}[k.split("/")[0]]
        assert s.image == (oulu / f"{k}.jpeg").read_bytes()
    per = {}
    for k in samples:
        dom, _, subj, expr, _ = k.split("/")
        per[(dom, subj, expr)] = per.get((dom, subj, expr), 0) + 1
    assert set(per.values()) == {2} and len(per) == 2 * 4 * 6

    proto = Protocol.load(out)
    assert proto.num_folds == 2
    for fold in proto.folds:
        train = {samples[x].identity for x in fold.train_keys}
        test = {samples[x].identity for x in (*fold.gallery, *fold.probe)}
        assert len(train) == len(test) == 2 and not train & test
        assert set(fold.gallery) == {
            k for k, s in samples.items() if s.identity in test and s.modality == "vis"
        }
        assert set(fold.probe) == {
            k for k, s in samples.items() if s.identity in test and s.modality == "nir"
        }
    counts = result["folds"][0]["counts"]
    assert {k: counts[k] for k in ("train_ids", "train_vis", "train_nir", "test_ids")} == {
        "train_ids": 2,
        "train_vis": 24,
        "train_nir": 24,
        "test_ids": 2,
    }
    assert (counts["gallery"], counts["probes"]) == (24, 24)
    assert result["expected"] == nirvis.expected_counts("oulu-casia", OULU_SPEC)
    assert not [w for w in result["warnings"] if "expected" in w]  # Matches its spec.
    assert any("P005" in w for w in result["warnings"])
    assert any("non-image" in w for w in result["warnings"])
    assert result["seed"] == 0 and result["spec"]["per_expression"] == 2
    # The generated lists are written out as the protocol files.
    assert (out / "protocols" / "vis_gallery_1.txt").read_text().split() == proto.fold(1).gallery

    again = tmp_path / "s0b"
    nirvis.convert_nirvis("oulu-casia", oulu, again, spec=OULU_SPEC, seed=0, progress=False)
    assert _protocol_files(again) == _protocol_files(out)
    other = tmp_path / "s1"
    nirvis.convert_nirvis("oulu-casia", oulu, other, spec=OULU_SPEC, seed=1, progress=False)
    assert _protocol_files(other) != _protocol_files(out)


def test_oulu_deterministic_shards_and_too_few_subjects(oulu, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        nirvis.convert_nirvis("oulu-casia", oulu, d, spec=OULU_SPEC, num_shards=2, progress=False)
    for name in ("data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord.index"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    spec = nirvis.OuluSpec(num_subjects=5, num_train=2, per_expression=2)
    with pytest.raises(ConversionError, match=r"only 4 subject\(s\).*needs 5.*P005: VL/Fear \(1\)"):
        nirvis.convert_nirvis("oulu-casia", oulu, tmp_path / "c", spec=spec, progress=False)
    with pytest.raises(ConversionError, match="has no NI/ folder"):
        nirvis.convert_nirvis("oulu-casia", oulu / "NI", tmp_path / "d", progress=False)
    with pytest.raises(ConversionError, match=f"has no NI/ folder.*pass {oulu} as the root"):
        nirvis.convert_nirvis("oulu-casia", oulu.parent, tmp_path / "e", progress=False)


# --------------------------------------------------------------------------------------------
# BUAA-VisNir (generated protocol).

BUAA_SPEC = nirvis.BuaaSpec(num_train=2, num_test=3)


def _buaa(root, subjects=6, split_dirs=False):
    for s in range(1, subjects + 1):
        for n in range(1, 19):
            mod = "VIS" if n % 2 else "NIR"
            name = f"{mod}/{(n + 1) // 2}.bmp" if split_dirs else f"{n}.bmp"
            _write(root / str(s) / name, _image(20 * s, "bmp", False, s * 100 + n))
    return root


def test_buaa_generated_protocol(tmp_path):
    root = _buaa(tmp_path / "BUAA")
    out = tmp_path / "s0"
    result = nirvis.convert_nirvis("buaa", root, out, spec=BUAA_SPEC, seed=0, progress=False)
    ds, samples = _read_back(out)
    assert len(ds.info.class_names) == 5 and len(samples) == 5 * 18
    for k, s in samples.items():
        subj, n = k.split("/")
        assert s.identity == subj and s.modality == ("vis" if int(n) % 2 else "nir")
        assert s.image == (root / f"{k}.bmp").read_bytes() and s.image_format == "bmp"
    assert any("drew 5 of them" in w for w in result["warnings"])
    proto = Protocol.load(out)
    fold = proto.fold(1)
    test = sorted({samples[x].identity for x in fold.probe}, key=int)
    train = {samples[x].identity for x in fold.train_keys}
    assert len(test) == 3 and len(train) == 2 and not train & set(test)
    assert fold.gallery == [f"{s}/1" for s in test]  # Neutral frontal VIS.
    assert fold.probe == [f"{s}/{n}" for s in test for n in range(2, 19, 2)]
    assert len(fold.train["vis"]) == len(fold.train["nir"]) == 18
    c = result["folds"][0]["counts"]
    assert (c["test_ids"], c["gallery"], c["probes"]) == (3, 3, 27)
    assert not [w for w in result["warnings"] if "expected" in w]

    same = tmp_path / "s0b"
    nirvis.convert_nirvis("buaa", root, same, spec=BUAA_SPEC, seed=0, progress=False)
    assert _protocol_files(same) == _protocol_files(out)
    outs = []
    for seed in (1, 2, 3):
        d = tmp_path / f"s{seed}x"
        nirvis.convert_nirvis("buaa", root, d, spec=BUAA_SPEC, seed=seed, progress=False)
        outs.append(_protocol_files(d))
    assert any(o != _protocol_files(out) for o in outs)


def test_buaa_modality_folders_and_errors(tmp_path):
    root = _buaa(tmp_path / "BUAA", subjects=5, split_dirs=True)
    out = tmp_path / "out"
    nirvis.convert_nirvis("buaa", root, out, spec=BUAA_SPEC, progress=False)
    _, samples = _read_back(out)
    assert samples["1/VIS/1"].modality == "vis" and samples["1/NIR/1"].modality == "nir"
    assert Protocol.load(out).fold(1).gallery[0].endswith("/VIS/1")
    with pytest.raises(ConversionError, match="5 usable subject folder"):
        nirvis.convert_nirvis(
            "buaa", root, tmp_path / "b", spec=nirvis.BuaaSpec(3, 3), progress=False
        )
    with pytest.raises(ValueError, match="does not apply"):
        nirvis.convert_nirvis("buaa", root, tmp_path / "c", spec=OULU_SPEC, progress=False)
    with pytest.raises(ConversionError, match="inside the input root"):
        nirvis.convert_nirvis("buaa", root, root / "out", spec=BUAA_SPEC, progress=False)


# --------------------------------------------------------------------------------------------
# Users' folders.


def _tree(root):
    files = {
        "Alice/RGB/a1": ("jpg", "vis"),
        "Alice/RGB/a2": ("jpg", "vis"),
        "Alice/IR/a3": ("png", "nir"),
        "Bob/Visible/b1": ("bmp", "vis"),
        "Bob/nir/session2/b2": ("jpg", "nir"),
        "carol/vis/c1": ("png", "vis"),
        "carol/NIR/c2": ("png", "nir"),
    }
    for i, (k, (ext, mod)) in enumerate(files.items()):
        _write(root / f"{k}.{ext}", _image(10 * i, ext, mod == "vis", i))
    (root / "Alice" / "RGB" / "notes.txt").write_text("not an image")
    return files


def test_folder_tree_layout(tmp_path):
    root = tmp_path / "mine"
    files = _tree(root)
    out = tmp_path / "out"
    result = folders.convert_folder(root, out, num_shards=2, progress=False)
    ds, samples = _read_back(out)
    assert ds.info.class_names == ["Alice", "Bob", "carol"]
    assert sorted(samples) == sorted(files)
    for k, (ext, mod) in files.items():
        s = samples[k]
        assert s.image == (root / f"{k}.{ext}").read_bytes()
        assert (s.modality, s.identity) == (mod, k.split("/")[0])
        assert s.label == ds.info.class_names.index(s.identity)
    assert ds.info.image_format == "mixed"
    assert result["modalities"] == {"vis": 4, "nir": 3}
    assert any("non-image" in w for w in result["warnings"])
    assert not (out / "protocols").exists()

    _write(root / "Dan" / "thermal" / "d1.png", _image(1, "png", False))
    res = folders.convert_folder(root, tmp_path / "b", progress=False)
    assert res["modalities"] == {"vis": 4, "nir": 3, "thermal": 1}  # Thermal -> "thermal".
    (root / "Dan" / "thermal" / "d1.png").rename(root / "Dan" / "depth.png")
    (root / "Dan" / "thermal").rmdir()
    with pytest.raises(ConversionError, match=r"1 image\(s\) lie directly"):
        folders.convert_folder(root, tmp_path / "c", progress=False)
    res = folders.convert_folder(root, tmp_path / "d", on_bad="skip", progress=False)
    assert res["report"]["skipped"]["not in an <identity>/<modality>/ folder"]["count"] == 1
    (root / "Dan" / "Depth").mkdir()
    with pytest.raises(ConversionError, match=r"Depth: unknown modality 'Depth'; allowed"):
        folders.convert_folder(root, tmp_path / "e", progress=False)


def test_folder_csv_layout_and_protocol(tmp_path):
    root = tmp_path / "pics"
    for i in range(4):
        _write(root / f"p{i}.jpg", _image(50 * i, "jpg", True, i))
        _write(root / "n" / f"p{i}.bmp", _image(50 * i, "bmp", False, i))
    rows = ["path,identity,modality"]
    rows += [f"p{i}.jpg,person{i % 2},RGB" for i in range(4)]
    rows += [f"n\\p{i}.bmp,person{i % 2},nir" for i in range(4)]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    proto = Protocol(
        "mine",
        [Fold(train={"vis": ["p0"], "nir": ["n/p0"]}, gallery=["p1", "p3"], probe=["n/p1"])],
    )
    out = tmp_path / "out"
    result = folders.convert_folder(
        root, out, layout="csv", csv_path=csv_path, protocol=proto, progress=False
    )
    ds, samples = _read_back(out)
    assert ds.info.class_names == ["person0", "person1"]
    assert samples["n/p3"].identity == "person1" and samples["n/p3"].modality == "nir"
    assert samples["p2"].image == (root / "p2.jpg").read_bytes()
    assert Protocol.load(out).folds == proto.folds
    assert result["folds"][0]["counts"]["gallery_ids"] == 1

    (root / "n" / "p1.bmp").unlink()
    with pytest.raises(ConversionError, match=r"1 file\(s\) listed in .*list.csv do not exist"):
        folders.convert_folder(root, tmp_path / "b", layout="csv", csv_path=csv_path)
    res = folders.convert_folder(
        root,
        tmp_path / "c",
        layout="csv",
        csv_path=csv_path,
        on_bad="skip",
        protocol=proto,
        progress=False,
    )
    assert res["report"]["skipped"]["missing file"]["count"] == 1
    assert Protocol.load(tmp_path / "c").fold(1).probe == []
    assert any("probes 1" in w for w in res["warnings"])

    csv_path.write_text("path,identity,modality\np0.jpg,x,vis\np2.jpg,y,sketch\n")
    with pytest.raises(ConversionError, match=r"list.csv:3: unknown modality 'sketch'"):
        folders.convert_folder(root, tmp_path / "d", layout="csv", csv_path=csv_path)
    csv_path.write_text("file,identity,modality\n")
    with pytest.raises(ConversionError, match=r"list.csv:1: header .* lacks .*'path'"):
        folders.convert_folder(root, tmp_path / "e", layout="csv", csv_path=csv_path)


def test_protocol_naming_unknown_keys_is_an_error(tmp_path):
    root = tmp_path / "mine"
    _tree(root)
    proto = Protocol("p", [Fold(train={"vis": ["Alice/RGB/zz"]}, gallery=[], probe=[])])
    with pytest.raises(ConversionError, match=r"1 key\(s\).*Alice/RGB/zz"):
        folders.convert_folder(root, tmp_path / "out", protocol=proto, progress=False)


# --------------------------------------------------------------------------------------------
# Command line pieces.


def _args(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_arguments_and_run(casia, tmp_path, capsys):
    root, _, _ = casia
    out = tmp_path / "out"
    args = _args(
        nirvis,
        ["--dataset", "casia-nirvis2", "--root", str(root), "--out", str(out), "--shards", "2"],
    )
    assert nirvis.run(args) == 0
    assert "fold" in capsys.readouterr().out
    assert len(Dataset.open(out).info.shards) == 2

    args = _args(nirvis, ["--dataset", "buaa", "--root", str(root), "--out", str(out), "--quiet"])
    assert nirvis.run(args) == 2
    assert "usable subject" in capsys.readouterr().err
    args = _args(
        nirvis, ["--dataset", "lamp-hq", "--root", str(root), "--out", "x", "--num_folds", "2"]
    )
    assert nirvis.run(args) == 2

    pics = tmp_path / "mine"
    _tree(pics)
    args = _args(folders, ["--root", str(pics), "--out", str(tmp_path / "f"), "--on_bad", "skip"])
    assert folders.run(args) == 0
    assert Dataset.open(tmp_path / "f").info.num_images == 7


def test_converted_casia_feeds_the_rethink_configs(casia, tmp_path):
    """`hfrjax convert nirvis` output at {data_root}/casia_nir_vis_2.0 is what
    configs/rethink/casia.py trains on: its input pipeline yields labelled batches."""
    import importlib.util

    from hfrjax import cli
    from hfrjax.data import pipeline

    root, _, _ = casia
    data_root = tmp_path / "data"
    out = data_root / "casia_nir_vis_2.0"
    assert (
        cli.main(
            [
                "convert",
                "nirvis",
                "--dataset",
                "casia-nirvis2",
                "--root",
                str(root),
                "--out",
                str(out),
                "--shards",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    path = Path(__file__).resolve().parents[1] / "configs" / "rethink" / "casia.py"
    spec = importlib.util.spec_from_file_location("casia_cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(f"method=mec,fold=1,data_root={data_root}")
    assert config.input.data_dir == str(out) and config.eval.data_dir == str(out)
    inp = pipeline.InputConfig.from_dict(dict(config.input.to_dict(), batch_size=4))
    batch = next(pipeline.make_train_input(inp, process_index=0, process_count=1))
    assert batch["image"].shape == (4, 112, 112, 3)
    assert set(np.asarray(batch["modality"]).tolist()) <= {0, 1}
