"""Joint ("+target") training input: several datasets in one contiguous class-id space."""

import json
import os

import numpy as np
import pytest
from conftest import write_tiny_dataset

from hfrjax.data import pipeline
from hfrjax.data.dataset import Dataset
from hfrjax.data.protocol import Fold, Protocol

SIZE = 8


def _keys(ids, mod, per=3):
    return [f"id{i:03d}/{mod}/{j:03d}" for i in ids for j in range(per)]


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """A "source" set of 5 ids and a "target" set of 4 ids; raw labels both start at 0.

    The target has a 2-fold protocol: fold 1 trains on ids 0,1, fold 2 on ids 2,3.
    """
    root = tmp_path_factory.mktemp("joint")
    src, tgt = root / "source", root / "target"
    write_tiny_dataset(src, num_ids=5, per_modality=2, size=SIZE, num_shards=2, seed=1)
    write_tiny_dataset(tgt, num_ids=4, per_modality=3, size=SIZE, num_shards=3, seed=2)
    folds = [
        Fold(
            train={"vis": _keys(train, "vis"), "nir": _keys(train, "nir")},
            gallery=_keys(test, "vis", 1),
            probe=_keys(test, "nir"),
        )
        for train, test in (([0, 1], [2, 3]), ([2, 3], [0, 1]))
    ]
    Protocol("tiny-joint", folds).save(tgt)
    return src, tgt


def _image_index(*dirs):
    """Decoded image bytes -> (dataset number, raw label), over all records of ``dirs``.

    Images are random per seed, so an image identifies its dataset and sample.
    """
    index = {}
    for n, d in enumerate(dirs):
        ds = Dataset.open(d)
        for b in pipeline.iter_eval_batches(ds, list(ds.records.key), 8, num_threads=1):
            for img, lab, ok in zip(b["image"], b["label"], b["valid"]):
                if ok:
                    index[img.tobytes()] = (n, int(lab))
    return index


def _cfg(src, tgt, **kw):
    base = dict(
        data_dir=str(src),
        batch_size=4,
        seed=5,
        num_threads=1,
        augment={"hflip": False},
        joint=[{"data_dir": str(tgt)}],
    )
    base.update(kw)
    return pipeline.InputConfig.from_dict(base)


def _make(cfg):
    return pipeline.make_train_input(cfg, process_index=0, process_count=1)


def test_class_ranges_cover_both_datasets(two_datasets):
    src, tgt = two_datasets
    inp = _make(_cfg(src, tgt))
    a, b = inp.class_ranges
    assert (a.data_dir, a.fold, a.start, a.stop) == (str(src), None, 0, 5)
    assert (b.data_dir, b.fold, b.start, b.stop) == (str(tgt), None, 5, 9)
    assert list(a.labels) == [0, 1, 2, 3, 4] and list(b.labels) == [0, 1, 2, 3]
    assert inp.num_classes == 9 and inp.num_records == 5 * 4 + 4 * 6
    assert list(inp.class_labels) == [0, 1, 2, 3, 4, 0, 1, 2, 3]


def test_single_source_has_one_range(two_datasets):
    src, _ = two_datasets
    inp = _make(_cfg(src, None, joint=None, keys=_keys([1, 3], "vis", 2)))
    (r,) = inp.class_ranges
    assert (r.start, r.stop, list(r.labels)) == (0, 2, [1, 3])
    assert list(inp.class_labels) == [1, 3]


def test_every_batch_label_maps_back_to_its_dataset_and_raw_label(two_datasets):
    src, tgt = two_datasets
    index = _image_index(src, tgt)
    inp = _make(_cfg(src, tgt))
    seen = []
    for _ in range(inp.steps_per_epoch):
        b = next(inp)
        for img, cls in zip(b["image"], b["label"]):
            n, raw = index[img.tobytes()]
            r = inp.class_ranges[n]
            assert r.start <= cls < r.stop and r.labels[cls - r.start] == raw
            seen.append(img.tobytes())
    # One epoch of the plain sampler covers every record of both datasets once.
    assert len(set(seen)) == len(seen) == inp.steps_per_epoch * 4 == inp.num_records


def test_colliding_raw_labels_stay_distinct_classes(two_datasets):
    src, tgt = two_datasets
    index = _image_index(src, tgt)
    inp = _make(_cfg(src, tgt))
    by_class = {}
    for _ in range(inp.steps_per_epoch):
        b = next(inp)
        for img, cls in zip(b["image"], b["label"]):
            by_class.setdefault(int(cls), set()).add(index[img.tobytes()])
    # Raw label 0 of both datasets: two classes, each holding one dataset's identity only.
    assert by_class[0] == {(0, 0)} and by_class[5] == {(1, 0)}
    assert all(len(v) == 1 for v in by_class.values()) and len(by_class) == 9


def test_joint_fold_selects_that_folds_training_keys(two_datasets):
    src, tgt = two_datasets
    index = _image_index(src, tgt)
    for fold, ids in ((1, [0, 1]), (2, [2, 3])):
        inp = _make(_cfg(src, tgt, joint=[{"data_dir": str(tgt), "fold": fold}]))
        r = inp.class_ranges[1]
        assert (r.fold, r.start, r.stop, list(r.labels)) == (fold, 5, 7, ids)
        assert inp.num_records == 5 * 4 + 2 * 6
        raw_target = set()
        for _ in range(inp.steps_per_epoch):
            for img in next(inp)["image"]:
                n, raw = index[img.tobytes()]
                if n == 1:
                    raw_target.add(raw)
        assert raw_target <= set(ids)


def test_joint_modalities_restriction(two_datasets):
    src, tgt = two_datasets
    cfg = _cfg(src, tgt, modalities=["vis"], joint=[{"data_dir": str(tgt), "modalities": ["nir"]}])
    inp = _make(cfg)
    assert inp.num_records == 5 * 2 + 4 * 3
    for _ in range(inp.steps_per_epoch):
        b = next(inp)
        src_rows = b["label"] < 5
        assert (b["modality"][src_rows] == pipeline.modality_code("vis")).all()
        assert (b["modality"][~src_rows] == pipeline.modality_code("nir")).all()


def test_pk_sampler_on_joint_input(two_datasets):
    src, tgt = two_datasets
    index = _image_index(src, tgt)
    inp = _make(_cfg(src, tgt, sampler="pk", batch_size=8, p=2, k=2))
    assert inp.steps_per_epoch == 9 // 2
    ids_seen = set()
    for _ in range(2 * inp.steps_per_epoch):
        b = next(inp)
        labels = b["label"]
        assert len(set(labels.tolist())) == 2
        for lab in set(labels.tolist()):  # K=2 images per modality of each identity.
            assert sorted(b["modality"][labels == lab].tolist()) == [0, 0, 1, 1]
        for img, cls in zip(b["image"], labels):
            n, raw = index[img.tobytes()]
            r = inp.class_ranges[n]
            assert r.labels[cls - r.start] == raw
        ids_seen |= set(labels.tolist())
    assert ids_seen & set(range(5)) and ids_seen & set(range(5, 9))


def test_paired_sampler_on_joint_input(two_datasets):
    src, tgt = two_datasets
    inp = _make(_cfg(src, tgt, sampler="paired", batch_size=4))
    nir, vis = pipeline.modality_code("nir"), pipeline.modality_code("vis")
    for _ in range(2 * inp.steps_per_epoch):
        b = next(inp)
        assert b["modality"].tolist() == [nir, vis, nir, vis]
        assert (b["label"][0::2] == b["label"][1::2]).all()


def test_class_range_json_round_trip(two_datasets):
    src, tgt = two_datasets
    inp = _make(_cfg(src, tgt, joint=[{"data_dir": str(tgt), "fold": 2}]))
    blob = json.dumps([r.to_json() for r in inp.class_ranges])
    back = tuple(pipeline.ClassRange.from_json(d) for d in json.loads(blob))
    assert back == inp.class_ranges
    assert back[1].to_json() == {
        "data_dir": str(tgt),
        "fold": 2,
        "start": 5,
        "stop": 7,
        "labels": [2, 3],
    }
    with pytest.raises(ValueError, match="unknown keys \\['extra'\\]"):
        pipeline.ClassRange.from_json({**back[0].to_json(), "extra": 1})
    with pytest.raises(ValueError, match="does not fit"):
        pipeline.ClassRange("x", None, 0, 3, np.array([1, 2]))


def test_class_rows_for(two_datasets, tmp_path):
    src, tgt = two_datasets
    inp = _make(_cfg(src, tgt, joint=[{"data_dir": str(tgt), "fold": 2}]))
    rows = pipeline.class_rows_for(inp.class_ranges, tgt, [3, 2, 3])
    np.testing.assert_array_equal(rows, [6, 5, 6])
    np.testing.assert_array_equal(pipeline.class_rows_for(inp.class_ranges, src, [0, 4]), [0, 4])
    # Paths are compared after realpath: a symlink or a "dir/../dir" spelling finds the range.
    link = tmp_path / "link"
    os.symlink(tgt, link)
    np.testing.assert_array_equal(pipeline.class_rows_for(inp.class_ranges, link, [2]), [5])
    np.testing.assert_array_equal(
        pipeline.class_rows_for(inp.class_ranges, f"{tgt}/../{tgt.name}", [3]), [6]
    )
    with pytest.raises(ValueError, match=r"label\(s\) of dataset .*target.*\[0, 1\]"):
        pipeline.class_rows_for(inp.class_ranges, tgt, [0, 2, 1])
    with pytest.raises(ValueError, match="has no class range"):
        pipeline.class_rows_for(inp.class_ranges, tmp_path / "elsewhere", [0])


def test_from_dict_errors(two_datasets):
    src, tgt = two_datasets
    with pytest.raises(ValueError, match=r"unknown key 'input.joint\[\].flod'; did you mean 'fold'"):
        _cfg(src, tgt, joint=[{"data_dir": str(tgt), "flod": 1}])
    with pytest.raises(ValueError, match="no data_dir"):
        _cfg(src, tgt, joint=[{"fold": 1}])
    with pytest.raises(ValueError, match="list of dicts"):
        _cfg(src, tgt, joint={"data_dir": str(tgt)})
    with pytest.raises(ValueError, match="keys or fold"):
        _cfg(src, tgt, joint=[{"data_dir": str(tgt), "fold": 1, "keys": ["a"]}])
    with pytest.raises(ValueError, match="unknown modalities"):
        _cfg(src, tgt, joint=[{"data_dir": str(tgt), "modalities": ["rgb"]}])
    with pytest.raises(ValueError, match="appears twice"):
        _cfg(src, tgt, joint=[{"data_dir": str(src) + "/"}])
    with pytest.raises(ValueError, match="joint sources need mode='random_access'"):
        _cfg(src, tgt, mode="streaming")
    cfg = _cfg(src, tgt, joint=[{"data_dir": str(tgt), "fold": 1, "modalities": ["nir"]}])
    assert cfg.joint == (pipeline.JointSource(str(tgt), fold=1, modalities=("nir",)),)
    assert _cfg(src, tgt, joint=None).joint == ()


def test_joint_fold_error_names_dataset(two_datasets):
    src, tgt = two_datasets
    with pytest.raises(ValueError, match="folds 1..2, asked for 3"):
        _make(_cfg(src, tgt, joint=[{"data_dir": str(tgt), "fold": 3}]))
    with pytest.raises(ValueError, match="not in .*target"):
        _make(_cfg(src, tgt, joint=[{"data_dir": str(tgt), "keys": ["nope"]}]))


def test_joint_labels_agree_with_images_under_augmentation(two_datasets):
    """Augmentation leaves pixel (0, 0) of unflipped images alone: it still carries the label."""
    src, tgt = two_datasets
    inp = _make(_cfg(src, tgt, augment={"hflip": False, "channel_aug": "red"}))
    for _ in range(3):
        b = next(inp)
        raw = np.asarray(inp.class_labels)[b["label"]]
        np.testing.assert_array_equal(b["image"][:, 0, 0, 0], raw)
    assert b["image"].dtype == np.uint8
