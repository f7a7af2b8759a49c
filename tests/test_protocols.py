"""Protocol evaluation end to end on a tiny dataset with fake embedders."""

import math

import numpy as np
import pytest
from conftest import write_tiny_dataset

from hfrjax.data import pipeline
from hfrjax.data.dataset import Dataset
from hfrjax.data.protocol import Fold, Protocol
from hfrjax.eval import protocols

NUM_IDS, PER_MOD = 12, 2


def _keys(ids, mod, idx=range(PER_MOD)):
    return [f"id{i:03d}/{mod}/{j:03d}" for i in ids for j in idx]


def _write(d, test_sets):
    """Dataset + a protocol with one fold per test set: gallery = vis/000, probes = all nir."""
    write_tiny_dataset(d, num_ids=NUM_IDS, per_modality=PER_MOD, size=8, num_shards=2)
    folds = []
    for test in test_sets:
        train = [i for i in range(NUM_IDS) if i not in test]
        folds.append(
            Fold(
                train={"vis": _keys(train, "vis"), "nir": _keys(train, "nir")},
                gallery=_keys(test, "vis", [0]),
                probe=_keys(test, "nir"),
            )
        )
    Protocol("tiny-proto", folds).save(d)
    return d


@pytest.fixture(scope="module")
def proto_dir(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("proto") / "ds", [range(0, 6), range(6, 12), range(3, 9)])


def _pixel_label(images):
    return images[:, 0, 0, 0].astype(int)  # Label written into the first pixel.


class LabelEmbed:
    """One-hot of the label read from the image + small noise; counts what it sees."""

    def __init__(self, noise=0.01, seed=0):
        self.noise, self.rng, self.calls, self.images = noise, np.random.default_rng(seed), 0, 0

    def __call__(self, images):
        assert images.dtype == np.uint8 and images.ndim == 4
        self.calls += 1
        self.images += len(images)
        e = np.eye(NUM_IDS + 4, dtype=np.float32)[np.minimum(_pixel_label(images), NUM_IDS + 3)]
        return e + self.noise * self.rng.normal(size=e.shape)


class ShuffledEmbed:
    """One-hot of a random label per image (fixed per (label, modality, index)): chance level."""

    def __init__(self):
        self.table = np.random.default_rng(0).integers(0, NUM_IDS, (NUM_IDS, 2, PER_MOD))

    def __call__(self, images):
        lab, mod, idx = (images[:, 0, i, 0].astype(int) for i in range(3))
        # NIR pixels are replicated grey, VIS keep the red channel: the encoding survives both.
        return np.eye(NUM_IDS, dtype=np.float32)[
            self.table[lab, mod, idx]
        ] + 0.01 * np.random.default_rng(1).normal(size=(len(images), NUM_IDS))


def test_perfect_embedder_scores_perfectly(proto_dir):
    embed = LabelEmbed()
    r = protocols.evaluate_protocol(embed, proto_dir, batch_size=8, fars=(1e-3, 1e-2), ranks=(1, 5))
    assert r["metrics"] == ["TAR@FAR=1e-3", "TAR@FAR=1e-2", "Rank-1", "Rank-5", "EER", "AUC"]
    assert [f["fold"] for f in r["folds"]] == [1, 2, 3]
    for f in r["folds"]:
        assert f["num_probes"] == 6 * PER_MOD and f["num_gallery"] == 6
        assert f["num_genuine"] == 6 * PER_MOD and f["num_impostor"] == 6 * PER_MOD * 5
        assert f["num_unmatched_probes"] == 0
        m = f["metrics"]
        assert m["Rank-1"] == 1.0 and m["TAR@FAR=1e-3"] == 1.0 and m["TAR@FAR=1e-2"] == 1.0
        assert m["EER"] == 0.0 and m["AUC"] == 1.0
    assert r["mean"]["Rank-1"] == 1.0 and r["std"]["Rank-1"] == 0.0
    # Each distinct image embedded once across the overlapping folds, in one pass.
    distinct = len({k for f in Protocol.load(proto_dir).folds for k in f.probe + f.gallery})
    assert distinct == NUM_IDS * (PER_MOD + 1)
    assert embed.calls == math.ceil(distinct / 8) and embed.images == embed.calls * 8
    table = protocols.format_table(r)
    assert "| Method | TAR@FAR=1e-3 | TAR@FAR=1e-2 | Rank-1 | Rank-5 | EER | AUC |" in table
    assert "100.00 ± 0.00" in table and "0.00 ± 0.00" in table


def test_shuffled_labels_give_chance(proto_dir):
    r = protocols.evaluate_protocol(ShuffledEmbed(), proto_dir, batch_size=16)
    assert 0.3 < r["mean"]["AUC"] < 0.7
    assert r["mean"]["Rank-1"] < 0.4  # Chance is 1/6; a working embedder gets 1.0.
    assert r["mean"]["EER"] > 0.3


@pytest.mark.parametrize("direction", ["vis->nir", "vis->vis", "probe->gallery"])
def test_other_directions(proto_dir, direction):
    r = protocols.evaluate_protocol(
        LabelEmbed(), proto_dir, folds=[2], direction=direction, batch_size=8
    )
    (f,) = r["folds"]
    expected = {
        "vis->nir": (6, 6 * PER_MOD),
        "vis->vis": (6 * (PER_MOD - 1), 6),
        "probe->gallery": (6 * PER_MOD, 6),
    }[direction]
    assert (f["num_probes"], f["num_gallery"]) == expected
    assert r["mean"]["Rank-1"] == 1.0 and r["mean"]["AUC"] == 1.0


def test_probe_transform_touches_probes_only(proto_dir):
    def occlude(images):  # Wipe the label pixel: every probe now looks like identity 0.
        images = images.copy()
        images[:, 0, 0, :] = 0
        return images

    r = protocols.evaluate_protocol(
        LabelEmbed(noise=0.0), proto_dir, batch_size=8, probe_transform=occlude
    )
    # Gallery intact, probes all map to identity 0: Rank-1 only for id 0's probes (fold 1);
    # the others tie at similarity 0 with every wrong gallery entry and lose (pessimistic ties).
    rank1 = [f["metrics"]["Rank-1"] for f in r["folds"]]
    assert rank1 == pytest.approx([1 / 6, 0.0, 0.0])


def test_embed_keys_order_padding_and_flip_fuse(proto_dir):
    ds = Dataset.open(proto_dir)
    keys = _keys([5, 1, 3], "nir") + _keys([2], "vis", [1])  # 7 keys, batch 4: one padded.
    emb = protocols.embed_keys(LabelEmbed(noise=0.0), ds, keys, 4)
    assert emb.shape == (7, NUM_IDS + 4) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb.argmax(1), [5, 5, 1, 1, 3, 3, 2])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)

    def linear(images):  # Not flip-invariant, so fusion is visible.
        return images.reshape(len(images), -1)[:, :10].astype(np.float32) + 1.0

    fused = protocols.embed_keys(linear, ds, keys, 4, flip_fuse=True)
    images = np.concatenate(
        [b["image"][b["valid"]] for b in pipeline.iter_eval_batches(ds, keys, 4)]
    )
    ref = linear(images) + linear(images[:, :, ::-1])
    np.testing.assert_allclose(fused, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-6)


def test_embed_keys_rejects_bad_embeddings(proto_dir):
    ds = Dataset.open(proto_dir)
    with pytest.raises(ValueError, match="embeddings"):
        protocols.embed_keys(lambda x: np.ones((len(x) + 1, 3)), ds, _keys([0], "vis"), 4)
    with pytest.raises(ValueError, match="non-finite.*id000/vis/001"):
        protocols.embed_keys(
            lambda x: np.where((x[:, 0, 2, 0] == 1)[:, None], np.nan, 1.0) * np.ones((len(x), 3)),
            ds,
            _keys([0], "vis"),
            4,
        )


def test_errors_name_the_problem(tmp_path, proto_dir):
    with pytest.raises(ValueError, match="direction must be one of"):
        protocols.evaluate_protocol(LabelEmbed(), proto_dir, direction="ir->vis")
    with pytest.raises(ValueError, match="tar_method"):
        protocols.evaluate_protocol(LabelEmbed(), proto_dir, tar_method="interp")
    with pytest.raises(ValueError, match="has folds 1..3"):
        protocols.evaluate_protocol(LabelEmbed(), proto_dir, folds=[4])
    # A fold whose gallery identities are disjoint from its probes: no genuine pairs.
    d = tmp_path / "bad"
    write_tiny_dataset(d, num_ids=NUM_IDS, per_modality=PER_MOD, size=8, num_shards=1)
    Protocol(
        "bad", [Fold(train={}, gallery=_keys([0, 1], "vis", [0]), probe=_keys([2, 3], "nir"))]
    ).save(d)
    with pytest.raises(ValueError, match="fold 1 .*no genuine pairs"):
        protocols.evaluate_protocol(LabelEmbed(), d)


def test_format_table_several_rows(proto_dir):
    a = protocols.evaluate_protocol(LabelEmbed(), proto_dir, folds=[1, 2], batch_size=16)
    b = protocols.evaluate_protocol(ShuffledEmbed(), proto_dir, folds=[1, 2], batch_size=16)
    table = protocols.format_table({"label": a, "shuffled": b})
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| label | 100.00 ± 0.00")
    assert lines[3].startswith("| shuffled | ")


def test_curves_match_the_metrics(proto_dir):
    r = protocols.evaluate_protocol(
        ShuffledEmbed(), proto_dir, batch_size=8, fars=(1e-2, 1e-1), ranks=(1, 5)
    )
    for f in r["folds"]:
        c = f["curves"]
        # The ROC grid stops at 1 / #impostors and is ascending; TAR is non-decreasing.
        assert c["roc"]["far"][0] * f["num_impostor"] >= 1.0
        assert c["roc"]["far"] == sorted(c["roc"]["far"]) and c["roc"]["far"][-1] == 1.0
        assert np.all(np.diff(c["roc"]["tar"]) >= 0) and c["roc"]["tar"][-1] == 1.0
        assert c["cmc"]["rank"] == list(range(1, 7))  # Gallery of 6 identities < 20.
        assert c["cmc"]["rate"][0] == f["metrics"]["Rank-1"]
        assert c["cmc"]["rate"][4] == f["metrics"]["Rank-5"]
        assert sum(c["scores"]["genuine"]) == f["num_genuine"]
        assert sum(c["scores"]["impostor"]) == f["num_impostor"]
        assert len(c["scores"]["edges"]) == len(c["scores"]["genuine"]) + 1
    m = r["curves"]
    ranks = np.array([f["curves"]["cmc"]["rate"] for f in r["folds"]])
    np.testing.assert_allclose(m["cmc"]["rate"], ranks.mean(0))
    np.testing.assert_allclose(m["cmc"]["rate_std"], ranks.std(0))
    assert m["roc"]["far"][0] >= max(f["curves"]["roc"]["far"][0] for f in r["folds"])
    assert sum(m["scores"]["impostor"]) == sum(f["num_impostor"] for f in r["folds"])


def test_histogram_pair_scores_agree_with_exact(proto_dir):
    kw = dict(batch_size=8, fars=(1e-2, 1e-1), folds=[1, 2])
    exact = protocols.evaluate_protocol(ShuffledEmbed(), proto_dir, **kw)
    hist = protocols.evaluate_protocol(ShuffledEmbed(), proto_dir, pair_scores="histogram", **kw)
    for a, b in zip(exact["folds"], hist["folds"]):
        assert a["num_impostor"] == b["num_impostor"]
        assert b["metrics"] == pytest.approx(a["metrics"], abs=1e-4)


def test_template_gallery_fuses_each_identity(tmp_path):
    # Gallery lists hold two VIS images per identity; templates leave one row per identity.
    write_tiny_dataset(tmp_path, num_ids=NUM_IDS, per_modality=PER_MOD, size=8, num_shards=1)
    test = range(6)
    fold = Fold(train={}, gallery=_keys(test, "vis"), probe=_keys(test, "nir"))
    Protocol("two-per-id", [fold]).save(tmp_path)
    images = protocols.evaluate_protocol(LabelEmbed(), tmp_path, batch_size=8)
    tmpl = protocols.evaluate_protocol(
        LabelEmbed(), tmp_path, batch_size=8, gallery_mode="template"
    )
    assert images["folds"][0]["num_gallery"] == 12 and tmpl["folds"][0]["num_gallery"] == 6
    assert tmpl["folds"][0]["num_genuine"] == 12  # 12 probes x their one template.
    assert tmpl["folds"][0]["metrics"]["Rank-1"] == 1.0
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], np.float32)
    t, ids = protocols.identity_templates(emb, np.array([5, 5, 2]))
    np.testing.assert_array_equal(ids, [2, 5])
    np.testing.assert_allclose(t, [[0.6, 0.8], [2**-0.5, 2**-0.5]], rtol=1e-6)
    with pytest.raises(ValueError, match="gallery_mode"):
        protocols.evaluate_protocol(LabelEmbed(), tmp_path, gallery_mode="mean")
