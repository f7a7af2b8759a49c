"""`hfrjax embed | verify | search` and their library functions against brute-force numpy,
with every model format, resumption and the bad-input errors."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_dataset
from PIL import Image

from hfrjax.cli import main as cli_main
from hfrjax.data.protocol import Fold, Protocol
from hfrjax.deploy import embed as embed_lib
from hfrjax.deploy.backends import ModelFormatError, load_model
from hfrjax.deploy.calibration import calibration_path, threshold_at_far
from hfrjax.deploy.search import top_k_identities

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

SIZE = 16


# --------------------------------------------------------------------------------------------
# Fixtures: a tiny dataset with a protocol, the same faces as a folder, one model in 3 formats.


def _torch_iresnet(dim, seed):
    from hfrjax.models.torch_reference import TorchIResNet, randomize_torch

    net = TorchIResNet((1, 1, 1, 1), width=4, num_features=dim, input_size=SIZE)
    return randomize_torch(net, seed)


def _onnx_file(net, path):
    net.eval()
    with torch.no_grad():
        torch.onnx.export(
            net,
            torch.randn(1, 3, SIZE, SIZE),
            str(path),
            input_names=["data"],
            opset_version=11,
            dynamo=False,
            dynamic_axes={"data": {0: "N"}},
        )
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from hfrjax.deploy.jax_export import export_jax
    from hfrjax.deploy.onnx_import import import_onnx

    root = tmp_path_factory.mktemp("deploy_tools")
    data = root / "tiny"
    samples = write_tiny_dataset(data)
    ids = [f"id{i:03d}" for i in range(6)]
    folds = []
    for k in (0, 1):
        gallery = [f"{i}/vis/{k:03d}" for i in ids]
        probe = [f"{i}/nir/{j:03d}" for i in ids for j in range(3)]
        folds.append(Fold(train={"vis": [], "nir": []}, gallery=gallery, probe=probe))
    Protocol("tiny2", folds).save(data)
    folder = root / "faces"
    for s in samples:
        p = folder / f"{s.key}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(s.image)
    onnx_path = _onnx_file(_torch_iresnet(8, 0), root / "m.onnx")
    flax_dir, _ = import_onnx(onnx_path, root / "m_flax")
    jax_path = export_jax(flax_dir, root / "m.jaxexport")
    return dict(root=root, data=data, folder=folder, flax=flax_dir, onnx=onnx_path, jax=jax_path)


_MODELS = {}


def _cached_model(path):
    if str(path) not in _MODELS:
        _MODELS[str(path)] = load_model(path)
    return _MODELS[str(path)]


def brute_embeddings(model_path, files):
    """Each image alone through the model, normalised in float64 (independent of the batched
    path, the resumable store and the command line)."""
    from hfrjax.data.augment import decode_image

    model = _cached_model(model_path)
    out = []
    for f in files:
        img = decode_image(Path(f).read_bytes(), channels=3)
        e = model.embed_raw(img[None]).astype(np.float64)[0]
        out.append(e / np.linalg.norm(e))
    return np.stack(out)


def folder_files(world, pattern="*/*/*.png"):
    return sorted(world["folder"].glob(pattern))


# --------------------------------------------------------------------------------------------
# Thresholds and search, against brute force.


def test_threshold_at_far_is_the_smallest_meeting_the_target():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=500), 2)  # Many ties.
    cands = np.unique(np.concatenate([scores, np.nextafter(scores, np.inf)]))
    for far in (0.0, 0.001, 0.01, 0.1, 0.37, 1.0):
        ok = [t for t in cands if np.mean(scores >= t) <= far]
        want = min(ok)
        got = threshold_at_far(scores, far)
        assert got == pytest.approx(want, abs=0)
        assert np.mean(scores >= got) <= far


@pytest.mark.parametrize("block_size, probe_block", [(16, 4), (10**6, 256), (1, 1)])
def test_top_k_identities_matches_brute_force(block_size, probe_block):
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 9, 37)
    sizes[5] = 40  # An identity bigger than a block.
    names = [f"person{i:02d}" for i in range(len(sizes))]
    ident = [names[i] for i in rng.permutation(np.repeat(np.arange(len(sizes)), sizes))]
    g = rng.normal(size=(len(ident), 12))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    p = rng.normal(size=(13, 12))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    res = top_k_identities(p, g, ident, k=5, block_size=block_size, probe_block=probe_block)
    sim = p @ g.T
    ident_arr = np.asarray(ident)
    for i in range(len(p)):
        best = {n: sim[i, ident_arr == n].max() for n in names}
        want = sorted(best, key=lambda n: (-best[n], n))[:5]
        got = [res.identities[j] for j in res.top_identity[i]]
        assert got == want
        np.testing.assert_allclose(res.top_score[i], [best[n] for n in want], atol=1e-5)
        for n, gi in zip(want, res.top_gallery[i]):
            assert ident[gi] == n and sim[i, gi] == pytest.approx(best[n], abs=1e-6)
    assert top_k_identities(p, g, ident, k=100).top_identity.shape == (13, 37)


# --------------------------------------------------------------------------------------------
# embed


@pytest.mark.parametrize("fmt", ["flax", "onnx", "jax"])
def test_embed_folder_any_format_matches_brute_force(world, tmp_path, fmt):
    out = tmp_path / "emb"
    rc = cli_main(["embed", str(world["folder"]), "--model", str(world[fmt]), "--out", str(out),
                   "--batch-size", "5", "--quiet"])  # fmt: skip
    assert rc == 0
    got = embed_lib.EmbeddingSet.load(out)
    files = folder_files(world)
    assert got.keys == [f.relative_to(world["folder"]).as_posix() for f in files]
    assert got.identities == [f.relative_to(world["folder"]).parts[0] for f in files]
    np.testing.assert_allclose(got.embeddings, brute_embeddings(world["flax"], files), atol=1e-5)


def test_embed_resumes_after_an_interruption(world, tmp_path, monkeypatch):
    files = folder_files(world)
    args = ["embed", str(world["folder"]), "--model", str(world["flax"]), "--out",
            str(tmp_path / "emb"), "--batch-size", "4", "--chunk-size", "4", "--quiet"]  # fmt: skip
    real = embed_lib.embed_batch
    calls = []

    def failing(model, crops, batch_size):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(len(crops))
        return real(model, crops, batch_size)

    monkeypatch.setattr(embed_lib, "embed_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        cli_main(args)
    assert len(list((tmp_path / "emb" / "partial").glob("chunk-*.npz"))) == 3
    resumed = []

    def counting(model, crops, batch_size):
        resumed.append(len(crops))
        return real(model, crops, batch_size)

    monkeypatch.setattr(embed_lib, "embed_batch", counting)
    assert cli_main(args) == 0
    assert sum(resumed) == len(files) - 12  # Only what the first run had not saved.
    got = embed_lib.EmbeddingSet.load(tmp_path / "emb")
    np.testing.assert_allclose(got.embeddings, brute_embeddings(world["flax"], files), atol=1e-5)
    assert not (tmp_path / "emb" / "partial").exists()
    # A finished run is not silently redone.
    assert cli_main(args) == 2


def test_embed_dataset_with_modality(world, tmp_path):
    out = tmp_path / "emb"
    args = ["embed", str(world["data"]), "--model", str(world["onnx"]), "--out", str(out),
            "--modality", "nir", "--quiet"]  # fmt: skip
    assert cli_main(args) == 0
    got = embed_lib.EmbeddingSet.load(out)
    assert len(got.keys) == 18 and all("/nir/" in k for k in got.keys)
    assert got.identities[0] == "id000"
    files = [world["folder"] / f"{k}.png" for k in got.keys]
    np.testing.assert_allclose(got.embeddings, brute_embeddings(world["flax"], files), atol=1e-5)


def test_embed_aligns_with_landmarks(world, tmp_path):
    """Landmarks on the template points of an aligned crop: alignment is the identity warp."""
    from hfrjax.data.occlusion import FaceTemplate

    pts = np.asarray(FaceTemplate.for_size(SIZE).points)
    files = folder_files(world, "id000/*/*.png")
    lm = tmp_path / "lm.csv"
    coords = ",".join(f"{v:.6f}" for v in pts.ravel())
    lm.write_text("\n".join(f"{f.relative_to(world['folder']).as_posix()},{coords}" for f in files))
    out = tmp_path / "emb"
    args = ["embed", str(world["folder"] / "id000"), "--model", str(world["flax"]), "--out",
            str(out), "--landmarks", str(lm), "--quiet"]  # fmt: skip
    # Keys are relative to the folder given; the landmark file uses id000/... paths.
    assert cli_main(args) == 2
    lm.write_text(lm.read_text().replace("id000/", ""))
    assert cli_main(args) == 0
    got = embed_lib.EmbeddingSet.load(out)
    np.testing.assert_allclose(got.embeddings, brute_embeddings(world["flax"], files), atol=1e-5)


# --------------------------------------------------------------------------------------------
# verify


def test_verify_two_images_and_pairs_match_brute_force(world, tmp_path, capsys):
    keys = ("id001/vis/000.png", "id001/nir/002.png", "id004/nir/000.png")
    a, b, c = (world["folder"] / k for k in keys)
    e = brute_embeddings(world["flax"], [a, b, c])
    assert cli_main(["verify", str(a), str(b), "--model", str(world["onnx"]), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["score"] == pytest.approx(float(e[0] @ e[1]), abs=1e-5) and r["same"] is None
    t = float(e[0] @ e[1]) - 1e-3
    args = ["verify", str(a), str(b), "--model", str(world["jax"]), "--threshold", str(t)]
    assert cli_main(args) == 0
    assert "SAME at threshold" in capsys.readouterr().out
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"{a},{b}\n{a},{c}\n# comment\n{b},{c}\n")
    out = tmp_path / "scores.csv"
    args = ["verify", "--pairs", str(pairs), "--model", str(world["flax"]), "--threshold", str(t),
            "--out", str(out)]  # fmt: skip
    assert cli_main(args) == 0
    rows = list(csv.DictReader(out.open()))
    want = [(0, 1), (0, 2), (1, 2)]
    scores = [e[i] @ e[j] for i, j in want]
    assert [float(r["score"]) for r in rows] == pytest.approx(scores, abs=1e-5)
    assert [r["same"] for r in rows] == [str(e[i] @ e[j] >= t) for i, j in want]


def test_calibrate_threshold_at_far_matches_brute_force(world, tmp_path, capsys):
    model_dir = world["flax"]
    args = ["verify", "--calibrate", str(world["data"]), "--model", str(model_dir),
            "--far", "0.1", "--far", "0.5", "--json"]  # fmt: skip
    try:
        assert cli_main(args) == 0
        record = json.loads(capsys.readouterr().out)
        # Brute force: every fold's probe x gallery pairs, float64.
        protocol = Protocol.load(world["data"])
        imp, gen = [], []
        for k in (1, 2):
            f = protocol.fold(k)
            pe = brute_embeddings(model_dir, [world["folder"] / f"{x}.png" for x in f.probe])
            ge = brute_embeddings(model_dir, [world["folder"] / f"{x}.png" for x in f.gallery])
            same = np.asarray([p.split("/")[0] for p in f.probe])[:, None] == np.asarray(
                [g.split("/")[0] for g in f.gallery]
            )[None, :]
            s = pe @ ge.T
            imp.append(s[~same])
            gen.append(s[same])
        imp, gen = np.concatenate(imp), np.concatenate(gen)
        assert (record["num_impostor"], record["num_genuine"]) == (imp.size, gen.size)
        for entry, far in zip(record["thresholds"], (0.1, 0.5)):
            t = entry["threshold"]
            assert np.mean(imp >= t + 1e-5) <= far  # Scores agree to ~1e-6.
            k = int(np.floor(far * imp.size))
            assert t == pytest.approx(np.sort(imp)[::-1][k], abs=1e-5)
            assert entry["tar"] == pytest.approx(np.mean(gen >= t), abs=2 / gen.size)
        # verify now decides with the stored threshold (FAR 0.1 by default).
        a, b = world["folder"] / "id002/vis/000.png", world["folder"] / "id002/nir/001.png"
        assert cli_main(["verify", str(a), str(b), "--model", str(model_dir), "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        t0 = record["thresholds"][0]["threshold"]
        assert r["threshold"] == t0 and r["same"] == (r["score"] >= t0)
        assert cli_main(["verify", str(a), str(b), "--model", str(model_dir), "--far", "0.01"]) == 2
        assert "not 0.01" in capsys.readouterr().err
        # The ONNX file holds the same weights but is another file: the stored calibration
        # names its model by fingerprint and is not reused for other weights.
        cal = calibration_path(world["onnx"])
        cal.write_text(calibration_path(model_dir).read_text())
        assert cli_main(["verify", str(a), str(b), "--model", str(world["onnx"])]) == 2
        assert "calibrated for other weights" in capsys.readouterr().err
        cal.unlink()
    finally:
        calibration_path(model_dir).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# search


def test_search_matches_brute_force(world, tmp_path, capsys):
    gallery_dir = tmp_path / "gallery"
    args = ["embed", str(world["data"]), "--model", str(world["flax"]), "--out", str(gallery_dir),
            "--modality", "vis", "--quiet"]  # fmt: skip
    assert cli_main(args) == 0
    probes = world["folder"] / "id003" / "nir"
    out = tmp_path / "hits.csv"
    args = ["search", "--model", str(world["jax"]), "--probes", str(probes), "--gallery",
            str(gallery_dir), "-k", "3", "--block-size", "4", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert cli_main(args) == 0
    rows = list(csv.DictReader(out.open()))
    g_files = folder_files(world, "*/vis/*.png")
    ge = brute_embeddings(world["flax"], g_files)
    g_ids = [f.relative_to(world["folder"]).parts[0] for f in g_files]
    p_files = sorted(probes.glob("*.png"))
    pe = brute_embeddings(world["flax"], p_files)
    for i, f in enumerate(p_files):
        s = pe[i] @ ge.T
        best = {n: max(s[j] for j in range(len(g_ids)) if g_ids[j] == n) for n in set(g_ids)}
        want = sorted(best, key=lambda n: (-best[n], n))[:3]
        mine = [r for r in rows if r["probe"] == f.name]
        assert [r["identity"] for r in mine] == want
        assert [float(r["score"]) for r in mine] == pytest.approx([best[n] for n in want], abs=1e-5)
        assert [r["rank"] for r in mine] == ["1", "2", "3"]
    # JSON output, both sides from images.
    out_json = tmp_path / "hits.json"
    args = ["search", "--model", str(world["onnx"]), "--probes", str(probes), "--gallery",
            str(world["folder"]), "-k", "2", "--out", str(out_json), "--quiet"]  # fmt: skip
    assert cli_main(args) == 0
    hits = json.loads(out_json.read_text())
    assert set(hits) == {f.name for f in p_files} and len(hits[p_files[0].name]) == 2


# --------------------------------------------------------------------------------------------
# Bad inputs.


def _png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_corrupt_and_wrong_size_images_are_named(world, tmp_path, capsys):
    folder = tmp_path / "faces"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "good.png").write_bytes((world["folder"] / "id000/vis/000.png").read_bytes())
    (folder / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    base = ["embed", str(folder), "--model", str(world["flax"]), "--quiet"]
    assert cli_main([*base, "--out", str(tmp_path / "e1")]) == 2
    err = capsys.readouterr().err
    assert "corrupt.png" in err and "not a readable image" in err
    assert cli_main([*base, "--out", str(tmp_path / "e2"), "--skip-bad"]) == 0
    meta = json.loads((tmp_path / "e2" / "keys.json").read_text())
    assert meta["keys"] == ["a/good.png"] and meta["skipped"][0]["key"] == "a/corrupt.png"
    (folder / "a" / "corrupt.png").unlink()
    (folder / "a" / "big.png").write_bytes(_png(np.zeros((20, 24, 3), np.uint8)))
    assert cli_main([*base, "--out", str(tmp_path / "e3")]) == 2
    err = capsys.readouterr().err
    assert "big.png" in err and "20x24" in err and "16x16" in err and "--resize" in err
    assert cli_main([*base, "--out", str(tmp_path / "e4"), "--resize"]) == 0


def test_wrong_channel_count_and_dtype(world):
    model = load_model(world["onnx"])
    with pytest.raises(ValueError, match="2 channels instead of 3"):
        model.embed(np.zeros((1, SIZE, SIZE, 2), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        model.embed(np.zeros((1, SIZE, SIZE, 3), np.float32))


def test_embedding_dimension_mismatch_is_refused(world, tmp_path, capsys):
    other = _onnx_file(_torch_iresnet(4, 1), tmp_path / "other.onnx")  # 4-d embeddings
    gallery = tmp_path / "g4"
    args = ["embed", str(world["folder"]), "--model", str(other), "--out", str(gallery), "--quiet"]
    assert cli_main(args) == 0
    probes = world["folder"] / "id000"
    args = ["search", "--model", str(world["onnx"]), "--probes", str(probes), "--gallery",
            str(gallery), "--quiet"]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "4-d" in err and "8-d" in err and "another model" in err


def test_onnx_graph_that_is_not_a_face_embedder_is_refused(tmp_path):
    class TwoHeads(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))

    path = tmp_path / "det.onnx"
    with torch.no_grad():
        torch.onnx.export(TwoHeads(), torch.randn(1, 3, 32, 32), str(path), dynamo=False)
    with pytest.raises(ModelFormatError, match="not a face-embedding model"):
        load_model(path)
    with pytest.raises(ModelFormatError, match="without model.json"):
        load_model(tmp_path)
