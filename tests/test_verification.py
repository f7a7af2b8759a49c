"""InsightFace verification packs (safe loading) and the LFW 10-fold accuracy."""

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import KFold

from hfrjax.data.verification_pack import PackError, load_pack, parse_pack
from hfrjax.eval import verification


def _png(value: int, size: int = 8) -> bytes:
    img = np.full((size, size, 3), value, dtype=np.uint8)
    img[0, 0] = (value * 7) % 256  # Some structure, so files differ.
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


IMAGES = [_png(v) for v in (10, 20, 30, 40, 50, 60)]
FLAGS = [True, False, True]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_load_insightface_layout(tmp_path, protocol):
    f = tmp_path / "lfw.bin"
    f.write_bytes(pickle.dumps((IMAGES, FLAGS), protocol=protocol))
    images, issame = load_pack(f)
    assert images == IMAGES and all(type(b) is bytes for b in images)
    assert issame.dtype == bool and issame.tolist() == FLAGS


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_numpy_variant(tmp_path, protocol):
    f = tmp_path / "cfp_fp.bin"
    arrays = [np.frombuffer(b, np.uint8).copy() for b in IMAGES]
    mixed = arrays[:4] + [bytearray(IMAGES[4]), IMAGES[5]]
    payload = (mixed, np.array(FLAGS))
    f.write_bytes(pickle.dumps(payload, protocol=protocol))
    images, issame = load_pack(f)
    assert images == IMAGES
    assert issame.tolist() == FLAGS
    f.write_bytes(pickle.dumps((IMAGES, [np.bool_(v) for v in FLAGS]), protocol=protocol))
    assert load_pack(f)[1].tolist() == FLAGS


def _py2_pickle(images: list[bytes], flags: list[bool]) -> bytes:
    """What Python 2's ``pickle.dump((images, flags), f, protocol=2)`` writes: images as
    BINSTRING (py2 ``str``), which Python 3 can only load with ``encoding="bytes"``."""
    out = [b"\x80\x02", b"]("]
    for b in images:
        out.append(b"T" + struct.pack("<I", len(b)) + b)
    out.append(b"e](")
    out += [b"\x88" if v else b"\x89" for v in flags]
    out.append(b"e\x86.")
    return b"".join(out)


def test_load_python2_pack(tmp_path):
    f = tmp_path / "agedb_30.bin"
    f.write_bytes(_py2_pickle(IMAGES, FLAGS))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(f.read_bytes())  # Why the loader retries with encoding="bytes".
    images, issame = load_pack(f)
    assert images == IMAGES and issame.tolist() == FLAGS


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_malicious_pickle_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.bin"
    f.write_bytes(pickle.dumps(([_Evil(marker), IMAGES[1]], [True])))
    with pytest.raises(PackError, match=r"evil.bin: refusing to load global posix\.system"):
        load_pack(f)
    assert not marker.exists()
    pickle.loads(f.read_bytes())  # Plain unpickling would have run it.
    assert marker.exists()
    f.write_bytes(pickle.dumps(_EvalEvil()))
    with pytest.raises(PackError, match=r"builtins\.eval"):
        load_pack(f)


def test_codecs_encode_only_latin1(tmp_path):
    f = tmp_path / "x.bin"
    data = pickle.dumps((IMAGES[:2], [True]), protocol=2)
    assert b"latin1" in data
    f.write_bytes(data.replace(b"latin1", b"hex_co"))  # Same length: a different codec.
    with pytest.raises(PackError, match="x.bin: .*encoding 'hex_co' is not allowed"):
        load_pack(f)


@pytest.mark.parametrize(
    "payload, match",
    [
        ((IMAGES[:5], [True, False]), r"5 images for 2 pairs; expected 2 x 2 = 4"),
        (
            (IMAGES, FLAGS, 1),
            r"expected a pickled \(images, issame\) pair, got a tuple of length 3",
        ),
        ({"a": 1}, r"expected a pickled .* got a dict"),
        ((IMAGES[:1] + ["text"], [True]), r"image 1 is a str; expected encoded image bytes"),
        ((IMAGES[:2], [2]), r"is-same flag 0 is 2; expected a bool"),
        ((IMAGES[:2], "1"), r"is-same flags are a str"),
        (([], []), r"the pack holds no pairs"),
        ((b"".join(IMAGES), FLAGS), r"images are a bytes"),
        (([np.zeros((2, 2), np.uint8)] * 2, [True]), r"image 0 is a numpy array .* shape \(2, 2\)"),
    ],
)
def test_malformed_structures(tmp_path, payload, match):
    f = tmp_path / "bad.bin"
    f.write_bytes(pickle.dumps(payload))
    with pytest.raises(PackError, match="bad.bin: " + match):
        load_pack(f)


def test_not_a_pickle(tmp_path):
    f = tmp_path / "junk.bin"
    f.write_bytes(b"\x00\x01garbage")
    with pytest.raises(PackError, match="junk.bin"):
        load_pack(f)
    with pytest.raises(PackError, match="does not exist"):
        load_pack(tmp_path / "missing.bin")
    with pytest.raises(PackError, match="odd.bin"):
        parse_pack(([b"x"], []), "odd.bin")


# Accuracy.


@pytest.mark.parametrize("n", [100, 6000, 7001, 23])
def test_kfold_matches_sklearn(n):
    ours = verification.kfold_splits(n, 10)
    theirs = list(KFold(n_splits=10, shuffle=False).split(np.arange(n)))
    assert len(ours) == len(theirs)
    for (a_train, a_test), (b_train, b_test) in zip(ours, theirs):
        np.testing.assert_array_equal(a_train, b_train)
        np.testing.assert_array_equal(a_test, b_test)


def _brute_force(emb, issame, nfolds=10):
    """InsightFace's calculate_roc, written out loop by loop in float64."""
    emb = np.asarray(emb, np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = np.sum(np.square(emb[0::2] - emb[1::2]), 1)
    thresholds = np.arange(0, 4, 0.01)
    accs, ths = [], []

    def acc(t, d, s):
        pred = np.less(d, t)
        tp = np.sum(pred & s)
        tn = np.sum(~pred & ~s)
        return float(tp + tn) / d.size

    for train, test in KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(issame))):
        train_acc = [acc(t, dist[train], issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        accs.append(acc(best, dist[test], issame[test]))
        ths.append(best)
    return np.mean(accs), np.std(accs), accs, ths


def test_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    n, d = 600, 16
    issame = rng.random(n) < 0.5
    a = rng.normal(size=(n, d))
    b = np.where(issame[:, None], a + rng.normal(scale=0.9, size=(n, d)), rng.normal(size=(n, d)))
    emb = np.empty((2 * n, d))
    emb[0::2], emb[1::2] = a, b
    res = verification.verification_accuracy(emb, issame.tolist())
    mean, std, accs, ths = _brute_force(emb, issame)
    assert 0.6 < mean < 1.0  # Non-trivial.
    assert res["accuracy"] == pytest.approx(mean, abs=1e-12)
    assert res["accuracy_std"] == pytest.approx(std, abs=1e-12)
    np.testing.assert_allclose(res["fold_accuracies"], accs, atol=1e-12)
    np.testing.assert_allclose(res["fold_thresholds"], ths, atol=1e-12)
    assert res["num_pairs"] == n
    assert 0.0 <= res["val"] <= 1.0 and res["far"] <= 0.01


def test_perfect_embeddings():
    rng = np.random.default_rng(1)
    n = 200
    issame = np.arange(n) % 2 == 0
    ids = rng.normal(size=(2 * n, 32))
    emb = ids.copy()
    emb[1::2][issame] = ids[0::2][issame] * 3.0  # Same pair: same direction, any norm.
    res = verification.verification_accuracy(emb, issame)
    assert res["accuracy"] == 1.0 and res["accuracy_std"] == 0.0
    assert res["val"] == 1.0 and res["threshold"] < 1.0


def test_accuracy_input_errors():
    with pytest.raises(ValueError, match=r"\[2N, D\] = \[6, D\] for 3 pairs, got shape \(5, 4\)"):
        verification.verification_accuracy(np.ones((5, 4)), FLAGS)
    with pytest.raises(ValueError, match="cannot be split into 10 folds"):
        verification.verification_accuracy(np.ones((6, 4)), FLAGS)
    with pytest.raises(ValueError, match="pass images="):
        verification.verification_accuracy(lambda x: x, FLAGS)


def _embed(images: np.ndarray) -> np.ndarray:
    """A trivial embedding: mean colour of the left and right halves, centred."""
    x = images.astype(np.float64) / 255.0 - 0.5
    w = x.shape[2] // 2
    return np.concatenate([x[:, :, :w].mean((1, 2)), x[:, :, w:].mean((1, 2))], axis=1)


def test_evaluate_pack_end_to_end(tmp_path):
    rng = np.random.default_rng(2)
    n = 40
    issame = rng.random(n) < 0.5
    images = []
    for i in range(n):
        colour = rng.integers(0, 256, 3)
        other = colour if issame[i] else rng.integers(0, 256, 3)
        for c in (colour, other):
            img = np.empty((120, 100, 3), np.uint8)  # Resized to 112x112 by the loader.
            img[:] = c
            images.append(_jpeg(img))
    f = tmp_path / "lfw.bin"
    f.write_bytes(pickle.dumps((images, issame.tolist()), protocol=2))
    calls = []

    def embed_fn(batch):
        calls.append(batch.shape)
        assert batch.dtype == np.uint8
        return _embed(batch)

    res = verification.evaluate_pack(embed_fn, f, batch_size=32, flip=True)
    assert res["accuracy"] == 1.0 and res["num_pairs"] == n
    assert set(calls) == {(32, 112, 112, 3)}  # Last batch padded: one static shape.
    assert len(calls) == 2 * 3  # 80 images in 3 batches, each also flipped.
    for key in ("accuracy_std", "threshold"):
        assert key in res


def test_evaluate_pack_flip_fuses_mirrored_embeddings(tmp_path):
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (20, 112, 112, 3), dtype=np.uint8)
    fused = verification.embed_images(_embed, imgs, batch_size=8, flip=True)
    ref = np.asarray(_embed(imgs), np.float64) + _embed(imgs[:, :, ::-1])
    np.testing.assert_allclose(fused, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-5)


def test_evaluate_pack_bad_image(tmp_path):
    f = tmp_path / "lfw.bin"
    f.write_bytes(pickle.dumps(([IMAGES[0], b"\xff\xd8\xffnot a jpeg"] * 10, [True] * 10)))
    with pytest.raises(PackError, match=r"lfw.bin: image 1 cannot be decoded"):
        verification.evaluate_pack(_embed, f, batch_size=4)
