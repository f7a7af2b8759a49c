"""ARL-VTF and generic set-list converters on tiny fixtures; set protocols with named folds."""

import argparse
import io

import numpy as np
import pytest
from PIL import Image

from hfrjax.data import tfrecord
from hfrjax.data.convert import thermal
from hfrjax.data.convert.common import ConversionError
from hfrjax.data.dataset import Dataset
from hfrjax.data.protocol import Protocol
from hfrjax.eval import protocols as eval_protocols

SIZE = 12


def _png(value: int, rgb: bool, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.full((SIZE, SIZE, 3) if rgb else (SIZE, SIZE), value, np.uint8)
    img[-1, -1] = rng.integers(0, 256)  # Files differ; the grey level codes the subject.
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
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
    return ds, samples


# --------------------------------------------------------------------------------------------
# ARL-VTF.

TEST_SUBJECTS = [1, 2, 3, 4]  # 3 and 4 own glasses.
TRAIN_SUBJECTS = [5, 6]


def _arlvtf(root):
    """Images under root/sub_XXXX/<condition>/<vis|lwir>/ and one list per set under
    root/protocols/. Returns {set: [key, ...]}."""
    sets: dict[str, list[str]] = {}
    seed = [0]

    def image(subject, rel, spectrum):
        seed[0] += 1
        key = f"sub_{subject:04d}/{rel}"
        _write(root / f"{key}.png", _png(20 * subject, spectrum == "vis", seed[0]))
        return key

    for s in TEST_SUBJECTS:
        glasses = s in (3, 4)
        sets.setdefault("G_VB0-", []).append(image(s, "baseline/vis/noglasses_0", "vis"))
        if glasses:
            sets.setdefault("G_VB0+", []).append(image(s, "baseline/vis/glasses_0", "vis"))
        base, expr = ("P_TB-", "P_TE-") if glasses else ("P_TB0", "P_TE0")
        for j in range(2):
            sets.setdefault(base, []).append(image(s, f"baseline/lwir/noglasses_{j}", "thermal"))
            sets.setdefault(expr, []).append(image(s, f"expression/lwir/noglasses_{j}", "thermal"))
            if glasses:
                sets.setdefault("P_TB+", []).append(image(s, f"baseline/lwir/glasses_{j}", "thermal"))
    for s in TRAIN_SUBJECTS:
        sets.setdefault("train_visible", []).append(image(s, "baseline/vis/noglasses_0", "vis"))
        sets.setdefault("train_thermal", []).append(image(s, "baseline/lwir/noglasses_0", "thermal"))
    for name, keys in sets.items():
        if name == "P_TE0":  # Identity column, comma-separated.
            lines = [f"{k}.png,sub_{k[4:8]}" for k in keys]
        elif name == "P_TB+":  # Windows separators.
            lines = [f"{k}.png".replace("/", "\\") for k in keys]
        else:
            lines = [f"{k}.png" for k in keys]
        _write(root / f"protocols/{name}.txt", ("\r\n".join(lines) + "\r\n").encode())
    return sets


@pytest.fixture
def arlvtf(tmp_path):
    root = tmp_path / "ARL-VTF"
    return root, _arlvtf(root)


PROBES = ["P_TB0", "P_TB-", "P_TB+", "P_TE0", "P_TE-"]
GALLERIES = ["G_VB0-", "G_VB0+"]


def test_arlvtf_sets_become_named_folds(arlvtf, tmp_path):
    root, sets = arlvtf
    out = tmp_path / "out"
    result = thermal.convert_arlvtf(root, out, num_shards=2, progress=False)
    ds, samples = _samples(out)
    all_keys = {k for keys in sets.values() for k in keys}
    assert set(samples) == all_keys
    n_vis = len(sets["G_VB0-"]) + len(sets["G_VB0+"]) + len(sets["train_visible"])
    assert ds.info.modalities == {"vis": n_vis, "thermal": len(all_keys) - n_vis}
    assert ds.info.class_names == [f"sub_{i:04d}" for i in range(1, 7)]
    for k, s in samples.items():
        assert s.identity == k.split("/")[0]
        assert s.modality == ("vis" if "/vis/" in k else "thermal")
        assert s.image == (root / f"{k}.png").read_bytes()

    protocol = Protocol.load(out)
    assert protocol.fold_names == [f"{p}|{g}" for p in PROBES for g in GALLERIES]
    assert (protocol.gallery_modality, protocol.probe_modality) == ("vis", "thermal")
    for k in range(1, protocol.num_folds + 1):
        p, g = protocol.fold_name(k).split("|")
        fold = protocol.fold(k)
        assert (fold.probe, fold.gallery) == (sets[p], sets[g])
        assert fold.train == {"thermal": sets["train_thermal"], "vis": sets["train_visible"]}
    counts = {f["name"]: f["counts"] for f in result["folds"]}
    assert counts["P_TB+|G_VB0+"]["gallery_ids"] == 2
    assert counts["P_TB0|G_VB0+"]["probe_ids_without_gallery"] == 2  # Impostor pairs only.
    assert any("gallery_ids 2 (expected 30)" in w for w in result["warnings"])


def test_arlvtf_pose_sets_and_selection(arlvtf, tmp_path):
    root, sets = arlvtf
    _write(root / "protocols/P_TP0.txt", f"{sets['P_TB0'][0]}.png\n".encode())
    protocol_all = Protocol.load(
        (thermal.convert_arlvtf(root, tmp_path / "a", progress=False), tmp_path / "a")[1]
    )
    assert protocol_all.fold_names[-2:] == ["P_TP0|G_VB0-", "P_TP0|G_VB0+"]
    thermal.convert_arlvtf(root, tmp_path / "b", sets=["G_VB0-", "P_TE-"], progress=False)
    assert Protocol.load(tmp_path / "b").fold_names == ["P_TE-|G_VB0-"]
    with pytest.raises(ValueError, match="not an ARL-VTF set name"):
        thermal.convert_arlvtf(root, tmp_path / "c", sets=["G_VB1"], progress=False)


def test_arlvtf_bad_input_is_named(arlvtf, tmp_path):
    root, sets = arlvtf
    (root / "protocols/P_TE-.txt").rename(root / "protocols/P_TE_minus.txt")
    with pytest.raises(ConversionError, match=r"P_TE-.txt do not exist"):
        thermal.convert_arlvtf(root, tmp_path / "a", progress=False)
    (root / "protocols/P_TE_minus.txt").rename(root / "protocols/P_TE-.txt")
    lst = root / "protocols/P_TB0.txt"
    good = lst.read_text()
    lst.write_text(good + "a.png b c\n")
    with pytest.raises(ConversionError, match=r"P_TB0.txt:\d+: expected 'relative/path"):
        thermal.convert_arlvtf(root, tmp_path / "b", progress=False)
    lst.write_text(good + f"{sets['P_TB-'][0]}.png sub_0001\n")  # Subject 3's file as subject 1.
    with pytest.raises(
        ConversionError, match=r"thermal of identity 'sub_000[13]' here but thermal of identity 'sub_000[13]'"
    ):
        thermal.convert_arlvtf(root, tmp_path / "c", progress=False)
    lst.write_text(good)
    (root / f"{sets['P_TB0'][1]}.png").unlink()
    with pytest.raises(ConversionError, match="1 file.* do not exist"):
        thermal.convert_arlvtf(root, tmp_path / "d", progress=False)
    result = thermal.convert_arlvtf(root, tmp_path / "e", on_bad="skip", progress=False)
    assert result["report"]["skipped"]["missing file"]["count"] == 1
    assert Protocol.load(tmp_path / "e").fold(1).probe == [sets["P_TB0"][0], *sets["P_TB0"][2:]]


def test_arlvtf_protocol_runs_through_face_evaluation(arlvtf, tmp_path):
    root, _ = arlvtf
    out = tmp_path / "out"
    thermal.convert_arlvtf(root, out, progress=False)

    def embed(images):  # One-hot of the grey level: the subject.
        return np.eye(8, dtype=np.float32)[images[:, 0, 0, 0] // 20]

    res = eval_protocols.evaluate_protocol(
        embed, out, folds=[1, 6], direction="thermal->vis", batch_size=8, num_threads=1
    )
    assert res["mean"]["TAR@FAR=1e-2"] == pytest.approx(1.0)
    assert res["mean"]["EER"] == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------
# Generic set list.


def _set_csv(root):
    rows = ["path,identity,modality,set,note"]
    keys = {}
    for s in (1, 2, 3):
        for mod, folder in (("RGB", "color"), ("thermal", "lwir")):
            for j in range(2):
                rel = f"people/p{s}/{folder}/{j}.png"
                _write(root / rel, _png(40 * s, mod == "RGB", 10 * s + j + (mod == "RGB")))
                keys[(s, mod, j)] = rel[:-4]
    for s in (1, 2):
        rows.append(f"{keys[(s, 'RGB', 0)]}.png,p{s},RGB,gallery,")
        rows.append(f"{keys[(s, 'thermal', 0)]}.png,p{s},thermal,probe_day,x")
        rows.append(f"{keys[(s, 'thermal', 1)]}.png,p{s},thermal,probe_night,")
        rows.append(f"{keys[(s, 'thermal', 1)]}.png,p{s},thermal,probe_all,")  # Two sets.
        rows.append(f"{keys[(s, 'RGB', 1)]}.png,p{s},visible,,")  # In no set.
    for j in range(2):
        for mod in ("RGB", "thermal"):
            rows.append(f"{keys[(3, mod, j)]}.png,p3,{mod},train,")
    _write(root / "sets.csv", ("\n".join(rows) + "\n").encode())
    return keys


def test_set_list_folds_roles_and_modalities(tmp_path):
    root = tmp_path / "thermal-set"
    keys = _set_csv(root)
    out = tmp_path / "out"
    result = thermal.convert_set_list(root, root / "sets.csv", out, progress=False)
    ds, samples = _samples(out)
    assert len(samples) == 12 and ds.info.modalities == {"vis": 6, "thermal": 6}
    assert samples[keys[(1, "RGB", 1)]].modality == "vis"  # Converted though in no set.
    protocol = Protocol.load(out)
    assert protocol.name == "thermal-set" and result["dataset"] == "thermal-set"
    assert protocol.fold_names == ["probe_day|gallery", "probe_night|gallery", "probe_all|gallery"]
    assert protocol.fold(1).gallery == [keys[(1, "RGB", 0)], keys[(2, "RGB", 0)]]
    assert (
        protocol.fold(2).probe
        == protocol.fold(3).probe
        == [
            keys[(1, "thermal", 1)],
            keys[(2, "thermal", 1)],
        ]
    )
    assert protocol.fold(1).train == {
        "thermal": [keys[(3, "thermal", 0)], keys[(3, "thermal", 1)]],
        "vis": [keys[(3, "RGB", 0)], keys[(3, "RGB", 1)]],
    }
    thermal.convert_set_list(
        root, root / "sets.csv", tmp_path / "o2", pairs=["probe_night|gallery"], progress=False
    )
    assert Protocol.load(tmp_path / "o2").fold_names == ["probe_night|gallery"]


def test_set_list_bad_input_is_named(tmp_path):
    root = tmp_path / "set"
    keys = _set_csv(root)
    csv_path = root / "sets.csv"
    good = csv_path.read_text()

    def fails(text, match, **kw):
        csv_path.write_text(text)
        with pytest.raises(ConversionError, match=match):
            thermal.convert_set_list(root, csv_path, tmp_path / "x", progress=False, **kw)

    fails(good + f"{keys[(3, 'RGB', 0)]}.png,p3,RGB,holdout,\n", r"sets.csv:\d+: set 'holdout'")
    fails(good + f"{keys[(3, 'thermal', 0)]}.png,p3,thermal,gallery,\n", "gallery sets hold")
    fails(good + f"{keys[(1, 'RGB', 0)]}.png,p2,RGB,gallery_b,\n", "identity 'p2' here")
    fails(good + f"{keys[(1, 'RGB', 0)]}.png,p1,RGB,gallery,\n", "listed in set 'gallery' again")
    fails(good.replace("modality", "spectrum"), r"lacks the column\(s\) \['modality'\]")
    with pytest.raises(ValueError, match="pair 'probe_day' must be"):
        thermal.convert_set_list(root, csv_path, tmp_path / "y", pairs=["probe_day"])
    fails(good, "needs a probe set and a gallery set", pairs=["gallery|probe_day"])
    fails(good + "people/p9/x.png,p9,RGB,gallery,\n", "1 file.* do not exist")


def test_cli(tmp_path, capsys):
    root = tmp_path / "ARL-VTF"
    _arlvtf(root)
    parser = argparse.ArgumentParser()
    thermal.add_arguments(parser)
    args = parser.parse_args(
        ["--root", str(root), "--out", str(tmp_path / "a"), "--arlvtf", "--quiet"]
    )
    assert thermal.run(args) == 0
    assert Protocol.load(tmp_path / "a").num_folds == 10
    args = parser.parse_args(
        [
            "--root",
            str(root),
            "--out",
            str(tmp_path / "b"),
            "--arlvtf",
            "--sets",
            "G_VB0-,P_TB0",
            "--quiet",
        ]
    )
    assert thermal.run(args) == 0
    assert Protocol.load(tmp_path / "b").fold_names == ["P_TB0|G_VB0-"]
    set_root = tmp_path / "set"
    _set_csv(set_root)
    args = parser.parse_args(
        [
            "--root",
            str(set_root),
            "--out",
            str(tmp_path / "c"),
            "--csv",
            str(set_root / "sets.csv"),
            "--pairs",
            "probe_day|gallery",
            "--quiet",
        ]
    )
    assert thermal.run(args) == 0
    args = parser.parse_args(
        ["--root", str(root), "--out", str(tmp_path / "d"), "--arlvtf", "--pairs", "a|b"]
    )
    assert thermal.run(args) == 2
    assert "--pairs and --name apply to --csv only" in capsys.readouterr().err
