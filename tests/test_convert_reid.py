"""SYSU-MM01 and RegDB converters on tiny fixtures in each dataset's distributed layout, and
the re-id evaluation running on what they write."""

import argparse
import io
import os
import random
import re

import numpy as np
import pytest
from PIL import Image

from hfrjax.data import tfrecord
from hfrjax.data.convert import reid as convert
from hfrjax.data.convert.common import ConversionError
from hfrjax.data.dataset import Dataset
from hfrjax.data.protocol import Protocol
from hfrjax.eval import protocols as eval_protocols
from hfrjax.eval import reid

H, W = 16, 8  # Person crops are taller than wide.


def _image(value: int, fmt: str, rgb: bool, seed: int) -> bytes:
    """Grey ``value`` plus seeded noise, so files differ and embeddings are not trivial."""
    rng = np.random.default_rng(seed)
    img = np.clip(value + rng.normal(0, 25, (H, W, 3) if rgb else (H, W)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format={"jpg": "JPEG", "bmp": "BMP"}[fmt])
    return buf.getvalue()


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _samples(out):
    ds = Dataset.open(out)
    samples = {}
    for shard in ds.info.shards:
        for payload in tfrecord.iter_records(out / shard):
            s = tfrecord.decode_example(payload)
            samples[s.key] = s
    assert len(samples) == ds.info.num_images
    return ds, samples


# --------------------------------------------------------------------------------------------
# SYSU-MM01.

SYSU_SPLITS = {"train": [1, 2, 3], "val": [4], "test": [5, 6, 7, 8]}
SYSU_CAMS = {  # identity -> cameras holding it (not every identity is in every camera)
    1: [1, 2, 3, 4, 5, 6],
    2: [1, 3, 5],
    3: [2, 3, 4, 6],
    4: [1, 2, 3, 6],
    5: [1, 2, 3, 4, 5, 6],
    6: [1, 3, 5],
    7: [2, 4, 6],
    8: [1, 2, 3],
}
SYSU_IR = (3, 6)


def _sysu(root):
    """The distributed layout: cam1..cam6/<4-digit id>/<4-digit frame>.jpg and exp/*_id.txt.
    Returns {(camera, identity): [key, ...]} in file order."""
    keys = {}
    for pid, cams in SYSU_CAMS.items():
        for cam in cams:
            for j in range(1, 2 + (pid + cam) % 3):
                rel = f"cam{cam}/{pid:04d}/{j:04d}"
                seed = 100 * pid + 10 * cam + j
                _write(root / f"{rel}.jpg", _image(20 + 25 * pid, "jpg", True, seed))
                keys.setdefault((cam, pid), []).append(rel)
    _write(root / "cam1/0009/0001.jpg", _image(250, "jpg", True, 9))  # In no list.
    _write(root / "cam2/0001/Thumbs.db", b"not an image")
    for split, ids in SYSU_SPLITS.items():
        # One line of comma-separated numbers, no trailing newline, as distributed.
        _write(root / f"exp/{split}_id.txt", ",".join(map(str, ids)).encode())
    return keys


@pytest.fixture
def sysu(tmp_path):
    root = tmp_path / "SYSU-MM01"
    return root, _sysu(root)


def _standard_gallery(root, mode, trial):
    """The standard code's process_gallery_sysu, written out here on the fixture's folders."""
    state = random.getstate()
    try:
        random.seed(trial)
        cams = {"all-search": ["cam1", "cam2", "cam4", "cam5"], "indoor-search": ["cam1", "cam2"]}
        ids = open(root / "exp/test_id.txt").read().splitlines()
        ids = ["%04d" % int(y) for y in ids[0].split(",")]
        files = []
        for pid in sorted(ids):
            for cam in cams[mode]:
                d = os.path.join(root, cam, pid)
                if os.path.isdir(d):
                    files.append(random.choice(sorted(d + "/" + f for f in os.listdir(d))))
        return [os.path.relpath(f, root)[: -len(".jpg")] for f in files]
    finally:
        random.setstate(state)


def test_sysu_round_trip_cameras_and_splits(sysu, tmp_path):
    root, keys = sysu
    out = tmp_path / "out"
    result = convert.convert_reid("sysu-mm01", root, out, num_shards=2, progress=False)
    ds, samples = _samples(out)

    assert set(samples) == {k for ks in keys.values() for k in ks}  # 0009 and Thumbs.db left out.
    n_ir = sum(len(v) for (cam, _), v in keys.items() if cam in SYSU_IR)
    assert ds.info.modalities == {"vis": len(samples) - n_ir, "nir": n_ir}
    assert ds.info.class_names == [f"{i:04d}" for i in range(1, 9)]
    for (cam, pid), ks in keys.items():
        for k in ks:
            s = samples[k]
            parsed = convert.parse_sysu_key(k)
            assert (
                (parsed.camera, parsed.identity)
                == (cam, f"{pid:04d}")
                == (
                    convert.sysu_camera(k),
                    s.identity,
                )
            )
            assert s.modality == ("nir" if cam in SYSU_IR else "vis")
            assert ds.info.class_names[s.label] == s.identity
            assert s.image == (root / f"{k}.jpg").read_bytes()
            assert s.image_format == "jpeg"
    assert any("0009" in w for w in result["warnings"])
    assert any("non-image" in w for w in result["warnings"])

    protocol = Protocol.load(out)
    assert protocol.num_folds == 20
    assert protocol.fold_names == [
        f"{m}/{t}" for m in ("all-search", "indoor-search") for t in range(1, 11)
    ]
    train = [1, 2, 3, 4]  # train + val
    want_vis = sorted(
        k for (c, p), ks in keys.items() if p in train and c not in SYSU_IR for k in ks
    )
    want_nir = sorted(k for (c, p), ks in keys.items() if p in train and c in SYSU_IR for k in ks)
    want_probe = sorted(k for (c, p), ks in keys.items() if p >= 5 and c in SYSU_IR for k in ks)
    for k, fold in enumerate(protocol.folds, start=1):
        mode = protocol.fold_name(k).split("/")[0]
        trial = int(protocol.fold_name(k).split("/")[1]) - 1
        assert sorted(fold.train["vis"]) == want_vis
        assert sorted(fold.train["nir"]) == want_nir
        assert sorted(fold.probe) == want_probe
        assert fold.gallery == _standard_gallery(root, mode, trial)
        cams = convert.SYSU_SEARCH_MODES[mode]
        pairs = [(convert.sysu_camera(g), convert.parse_sysu_key(g).identity) for g in fold.gallery]
        assert sorted(pairs) == sorted(
            (c, f"{p:04d}") for (c, p) in keys if p >= 5 and c in cams
        )  # One image per test identity and gallery camera that holds it.
    galleries = {tuple(f.gallery) for f in protocol.folds[:10]}
    assert len(galleries) > 1  # The trials draw different galleries.
    counts = {f["name"]: f["counts"] for f in result["folds"]}
    assert counts["all-search/1"]["train_ids"] == 4
    assert counts["all-search/1"]["test_ids"] == 4
    assert counts["indoor-search/1"]["gallery"] == 6  # 5: cams 1, 2; 6: 1; 7: 2; 8: 1, 2

    # Reproducible: a second conversion writes the same protocol and shards.
    out2 = tmp_path / "out2"
    convert.convert_reid("sysu-mm01", root, out2, num_shards=2, progress=False)
    assert Protocol.load(out2).folds == protocol.folds
    for shard in ds.info.shards:
        assert (out / shard).read_bytes() == (out2 / shard).read_bytes()


def test_sysu_gallery_is_seeded_and_follows_the_standard_draw():
    cands = {(1, 5): ["a", "b", "c"], (2, 5): ["d", "e"], (1, 6): ["f", "g", "h", "i"]}
    first = convert.sysu_gallery(cands, [6, 5], (1, 2), trial=3)
    assert first == convert.sysu_gallery(cands, [5, 6], (1, 2), trial=3)
    state = random.getstate()
    random.seed(3)  # The standard code: identities in order, cameras in order, one choice each.
    want = [random.choice(cands[k]) for k in ((1, 5), (2, 5), (1, 6))]
    random.setstate(state)
    assert first == want
    draws = {tuple(convert.sysu_gallery(cands, [5, 6], (1, 2), trial=t)) for t in range(10)}
    assert len(draws) > 1


def test_sysu_without_val_and_other_seeds(sysu, tmp_path):
    root, keys = sysu
    out = tmp_path / "out"
    convert.convert_reid(
        "sysu-mm01", root, out, include_val=False, trials=2, first_seed=5, progress=False
    )
    protocol = Protocol.load(out)
    assert protocol.fold_names == [
        "all-search/1",
        "all-search/2",
        "indoor-search/1",
        "indoor-search/2",
    ]
    assert not any(
        convert.parse_sysu_key(k).identity == "0004" for k in protocol.folds[0].train_keys
    )
    assert "cam1/0004/0001" in Dataset.open(out).records.key  # Val images are still converted.
    assert protocol.folds[0].gallery == _standard_gallery(root, "all-search", 5)


def test_sysu_bad_input_is_named(sysu, tmp_path):
    root, _ = sysu
    (root / "exp/test_id.txt").write_text("5,6,x7\n")
    with pytest.raises(ConversionError, match=r"test_id.txt:1: 'x7'"):
        convert.convert_reid("sysu-mm01", root, tmp_path / "a", progress=False)
    (root / "exp/test_id.txt").write_text("3,5\n")
    with pytest.raises(ConversionError, match="in both .*train_id.txt and .*test_id.txt"):
        convert.convert_reid("sysu-mm01", root, tmp_path / "b", progress=False)
    (root / "exp/test_id.txt").write_text("5,6,7,8\n")
    (root / "cam4").rename(root / "camera4")
    with pytest.raises(ConversionError, match=r"lacks the camera folder\(s\) \['cam4'\]"):
        convert.convert_reid("sysu-mm01", root, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="not a SYSU-MM01 key"):
        convert.parse_sysu_key("Visible/1/x")
    with pytest.raises(ConversionError, match="inside the input root"):
        convert.convert_reid("sysu-mm01", root, root / "out", progress=False)


def test_sysu_undecodable_image_raises_or_is_skipped(sysu, tmp_path):
    root, keys = sysu
    bad = root / f"{keys[(3, 5)][0]}.jpg"
    bad.write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(ConversionError, match="cannot decode"):
        convert.convert_reid("sysu-mm01", root, tmp_path / "a", progress=False)
    result = convert.convert_reid("sysu-mm01", root, tmp_path / "b", on_bad="skip", progress=False)
    assert result["report"]["skipped"]["undecodable image"]["count"] == 1
    assert keys[(3, 5)][0] not in Protocol.load(tmp_path / "b").folds[0].probe


# --------------------------------------------------------------------------------------------
# RegDB.

REGDB_IDS = [1, 2, 3, 4, 5, 6]
REGDB_TRIALS = {1: ([1, 2, 3], [4, 5, 6]), 2: ([2, 4, 6], [1, 3, 5])}


def _regdb_name(pid, j, letter):
    return f"{'female' if pid % 2 else 'male'}_front_{letter}_{(pid - 1) * 2 + j:05d}_{pid}.bmp"


def _regdb(root):
    """Visible/<id>/*.bmp, Thermal/<id>/*.bmp and idx/{train,test}_{visible,thermal}_{k}.txt
    with labels renumbered 0.. within each list. Returns {(modality, id): [key, ...]}."""
    keys = {}
    for pid in REGDB_IDS:
        for folder, letter, mod in (("Visible", "v", "vis"), ("Thermal", "t", "thermal")):
            for j in (1, 2):
                rel = f"{folder}/{pid}/{_regdb_name(pid, j, letter)}"
                _write(root / rel, _image(20 + 35 * pid, "bmp", mod == "vis", pid * 10 + j))
                keys.setdefault((mod, pid), []).append(rel[: -len(".bmp")])
    for k, (train, test) in REGDB_TRIALS.items():
        for split, ids in (("train", train), ("test", test)):
            for folder, name, mod in (("Visible", "visible", "vis"), ("Thermal", "thermal", "thermal")):
                lines = [
                    f"{key}.bmp {label}\n"
                    for label, pid in enumerate(ids)
                    for key in keys[(mod, pid)]
                ]
                _write(root / f"idx/{split}_{name}_{k}.txt", "".join(lines).encode())
    return keys


@pytest.fixture
def regdb(tmp_path):
    root = tmp_path / "RegDB"
    return root, _regdb(root)


def test_regdb_round_trip_and_trials(regdb, tmp_path):
    root, keys = regdb
    out = tmp_path / "out"
    result = convert.convert_reid("regdb", root, out, num_shards=3, progress=False)
    ds, samples = _samples(out)
    assert len(samples) == 24
    assert ds.info.modalities == {"vis": 12, "thermal": 12}
    assert ds.info.class_names == [str(i) for i in REGDB_IDS]
    for (mod, pid), ks in keys.items():
        for k in ks:
            assert (samples[k].modality, samples[k].identity) == (mod, str(pid))
            assert samples[k].image_format == "bmp"
            assert samples[k].image == (root / f"{k}.bmp").read_bytes()
    protocol = Protocol.load(out)
    assert (protocol.num_folds, protocol.gallery_modality, protocol.probe_modality) == (
        2,
        "vis",
        "thermal",
    )
    for k, (train, test) in REGDB_TRIALS.items():
        fold = protocol.fold(k)
        assert fold.train == {
            "vis": [x for p in train for x in keys[("vis", p)]],
            "thermal": [x for p in train for x in keys[("thermal", p)]],
        }
        assert fold.gallery == [x for p in test for x in keys[("vis", p)]]
        assert fold.probe == [x for p in test for x in keys[("thermal", p)]]
        counts = result["folds"][k - 1]["counts"]
        assert (counts["train_ids"], counts["test_ids"], counts["train_test_shared_ids"]) == (
            3,
            3,
            0,
        )
    assert any("identities: 6, expected 412" in w for w in result["warnings"])


def test_regdb_bad_lists_are_named(regdb, tmp_path):
    root, keys = regdb
    lst = root / "idx/test_visible_2.txt"
    text = lst.read_text()
    lines = text.splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " 0"  # Identity 3's image labelled like identity 1.
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError, match=r"test_visible_2.txt:3: label 0 and identity folder"):
        convert.convert_reid("regdb", root, tmp_path / "a", progress=False)
    lst.write_text(text.replace("Visible/1/", "Thermal/1/", 1))
    with pytest.raises(ConversionError, match="lies under Thermal/"):
        convert.convert_reid("regdb", root, tmp_path / "b", progress=False)
    lst.write_text(text)
    missing = root / f"{keys[('thermal', 5)][1]}.bmp"
    missing.unlink()
    with pytest.raises(ConversionError, match="1 file.* do not exist"):
        convert.convert_reid("regdb", root, tmp_path / "c", progress=False)
    result = convert.convert_reid("regdb", root, tmp_path / "d", on_bad="skip", progress=False)
    assert result["report"]["skipped"]["missing file"]["count"] == 1
    assert keys[("thermal", 5)][1] not in Protocol.load(tmp_path / "d").fold(1).probe
    (root / "idx/test_thermal_2.txt").unlink()
    with pytest.raises(ConversionError, match="trial 2: list"):
        convert.convert_reid("regdb", root, tmp_path / "e", progress=False)


def test_cli_runs_and_reports_bad_input(regdb, tmp_path, capsys):
    root, _ = regdb
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    args = parser.parse_args(
        ["--dataset", "regdb", "--root", str(root), "--out", str(tmp_path / "o"), "--quiet"]
    )
    assert convert.run(args) == 0
    assert Dataset.open(tmp_path / "o").info.num_images == 24
    args = parser.parse_args(
        ["--dataset", "regdb", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "p")]
    )
    assert convert.run(args) == 2
    assert "is not a directory" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Evaluation on the converted datasets.


def _embed(images):
    """A fixed random projection of the pixels: identity-coded grey level plus noise."""
    flat = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    proj = np.random.default_rng(0).normal(size=(flat.shape[1], 8)).astype(np.float32)
    return flat @ proj + 0.3 * flat.mean(axis=1, keepdims=True)


def _expected(out, protocol, k, swap, rules):
    """Per-fold metrics computed here from the stored lists (cameras read with a regex)."""
    ds = Dataset.open(out)
    fold = protocol.fold(k)
    q, g = (fold.gallery, fold.probe) if swap else (fold.probe, fold.gallery)
    emb = eval_protocols.embed_keys(_embed, ds, [*q, *g], 8, image_size=(H, W), num_threads=1)
    lab = ds.records.select_keys([*q, *g]).label
    cam = np.asarray([int(m.group(1)) if (m := re.match(r"cam(\d)/", x)) else 0 for x in [*q, *g]])
    n = len(q)
    return reid.reid_metrics(emb[:n] @ emb[n:].T, lab[:n], lab[n:], cam[:n], cam[n:], rules=rules)


def test_evaluate_reid_on_converted_sysu(sysu, tmp_path):
    root, _ = sysu
    out = tmp_path / "out"
    convert.convert_reid("sysu-mm01", root, out, trials=3, progress=False)
    protocol = Protocol.load(out)
    with pytest.raises(ValueError, match="pass mode="):
        reid.evaluate_reid(_embed, out, image_size=(H, W))
    for mode, first in (("all-search", 1), ("indoor-search", 4)):
        res = reid.evaluate_reid(
            _embed, out, mode=mode, batch_size=8, image_size=(H, W), num_threads=1
        )
        assert [f["name"] for f in res["folds"]] == [f"{mode}/{t}" for t in (1, 2, 3)]
        assert res["rules"]["name"] == "sysu-mm01"
        for i, f in enumerate(res["folds"]):
            want = _expected(out, protocol, first + i, False, reid.SYSU_RULES)
            assert f["metrics"] == pytest.approx(want, abs=1e-6)
        mean = {n: np.mean([f["metrics"][n] for f in res["folds"]]) for n in res["metrics"]}
        assert res["mean"] == pytest.approx(mean)
    assert "| Method |" in reid.format_results({"tiny": res})


def test_evaluate_reid_on_converted_regdb_both_directions(regdb, tmp_path):
    root, _ = regdb
    out = tmp_path / "out"
    convert.convert_reid("regdb", root, out, progress=False)
    protocol = Protocol.load(out)
    for direction, swap in (("thermal->visible", False), ("visible->thermal", True)):
        res = reid.evaluate_reid(
            _embed, out, direction=direction, batch_size=8, image_size=(H, W), num_threads=1
        )
        assert [f["num_queries"] for f in res["folds"]] == [6, 6]
        for k, f in enumerate(res["folds"], start=1):
            assert f["metrics"] == pytest.approx(
                _expected(out, protocol, k, swap, reid.REGDB_RULES), abs=1e-6
            )
    with pytest.raises(ValueError, match="does not match protocol"):
        reid.evaluate_reid(_embed, out, direction="nir->visible")
