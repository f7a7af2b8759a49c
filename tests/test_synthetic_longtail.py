"""Tests of the long-tailed (FTL layout) synthetic sets, their pair list, and per-record yaw."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
from tensorflow_datasets.proto import tf_example_pb2

from hfrjax.data import augment, synthetic, tfrecord
from hfrjax.data import dataset as dataset_lib
from hfrjax.data.synthetic import longtail
from hfrjax.data.verification_pack import load_pack
from hfrjax.eval import verification

SEED = 2


# ------------------------------------------------------------------------------------------
# Per-record yaw: Example feature, index sidecar, RecordTable.


def _sample(key: str, yaw: float | None = None, label: int = 0) -> tfrecord.Sample:
    return tfrecord.Sample(
        image=b"\xff\xd8fake",
        label=label,
        modality="vis",
        identity="a",
        key=key,
        dataset="d",
        yaw=yaw,
    )


def test_yaw_round_trips_as_a_float_feature():
    decoded = tfrecord.decode_example(tfrecord.encode_example(_sample("a/vis/000", 12.3456789)))
    assert decoded.yaw == float(np.float32(12.3456789))
    ex = tf_example_pb2.Example.FromString(tfrecord.encode_example(_sample("k", -3.5)))
    assert list(ex.features.feature["yaw"].float_list.value) == [-3.5]
    with pytest.raises(ValueError, match="not a finite number"):
        _sample("k", float("nan"))


def test_records_without_yaw_are_unchanged():
    """No yaw: no "yaw" feature, the same bytes as an Example built without it, yaw None."""
    sample = _sample("a/vis/000")
    ex = tf_example_pb2.Example()
    f = ex.features.feature
    f["image/encoded"].bytes_list.value.append(sample.image)
    f["image/format"].bytes_list.value.append(b"jpeg")
    f["label"].int64_list.value.append(0)
    f["modality"].bytes_list.value.append(b"vis")
    f["identity"].bytes_list.value.append(b"a")
    f["key"].bytes_list.value.append(b"a/vis/000")
    f["dataset"].bytes_list.value.append(b"d")
    assert tfrecord.encode_example(sample) == ex.SerializeToString(deterministic=True)
    assert tfrecord.decode_example(tfrecord.encode_example(sample)).yaw is None


def test_index_sidecar_has_a_yaw_column_only_when_some_record_has_yaw(tmp_path):
    legacy = tmp_path / "legacy.tfrecord"
    with tfrecord.TFRecordWriter(legacy) as w:
        w.write_sample(_sample("a/vis/000"))
    assert tfrecord.index_path(legacy).read_text().splitlines()[0] == (
        "offset\tlength\tlabel\tmodality\tkey"
    )
    assert np.isnan(tfrecord.ShardIndex.load(legacy).yaw).all()
    mixed = tmp_path / "mixed.tfrecord"
    with tfrecord.TFRecordWriter(mixed) as w:
        w.write_sample(_sample("a/vis/000", 10.25))
        w.write_sample(_sample("a/vis/001"))
        w.write_sample(_sample("a/vis/002", -7.0))
    lines = tfrecord.index_path(mixed).read_text().splitlines()
    assert lines[0].split("\t")[-1] == "yaw" and lines[2].endswith("\tnan")
    index = tfrecord.ShardIndex.load(mixed)
    np.testing.assert_array_equal(index.yaw, [10.25, np.nan, -7.0])
    table = dataset_lib.RecordTable.load([legacy, mixed])
    np.testing.assert_array_equal(table.yaw, [np.nan, 10.25, np.nan, -7.0])
    np.testing.assert_array_equal(table.subset(np.array([3, 1])).yaw, [-7.0, 10.25])
    np.testing.assert_array_equal(table.select_keys(["a/vis/002"]).yaw[-1:], [-7.0])
    # A table built without yaw (older code paths) reads as unknown.
    bare = dataset_lib.RecordTable(
        table.shard_paths,
        table.shard,
        table.offset,
        table.label,
        table.modality,
        table.key,
        table.record,
    )
    assert np.isnan(bare.yaw).all() and len(bare.yaw) == 4


def test_bad_yaw_in_an_index_names_the_line(tmp_path):
    shard = tmp_path / "s.tfrecord"
    with tfrecord.TFRecordWriter(shard) as w:
        w.write_sample(_sample("a/vis/000", 1.0))
    path = tfrecord.index_path(shard)
    path.write_text(path.read_text().replace("\t1.0\n", "\tleft\n"))
    with pytest.raises(ValueError, match=r"s\.tfrecord\.index:2: yaw 'left'"):
        tfrecord.ShardIndex.load(shard)


# ------------------------------------------------------------------------------------------
# The FTL-layout family.


@pytest.fixture(scope="module")
def lt(tmp_path_factory):
    out = tmp_path_factory.mktemp("longtail")
    synthetic.generate(out, "longtail_tiny", seed=SEED, workers=1)
    spec = synthetic.PRESETS["longtail_tiny"].longtail
    sets = {
        name: dataset_lib.Dataset.open(out / "longtail" / f"train_{name}")
        for name, _, _ in spec.variants()
    }
    sets["holdout"] = dataset_lib.Dataset.open(out / "longtail" / "holdout")
    return out / "longtail", spec, sets


def _payloads(ds: dataset_lib.Dataset) -> dict[str, tfrecord.Sample]:
    out = {}
    for shard in ds.info.shards:
        for payload in tfrecord.iter_records(ds.directory / shard):
            sample = tfrecord.decode_example(payload)
            out[sample.key] = sample
    return out


def test_variants_follow_ftl_table_1(lt):
    _, spec, sets = lt
    r = spec.num_regular
    assert [v[0] for v in spec.variants()] == ["10K0K", "10K10K", "10K30K", "10K50K", "60K0K"]
    expected_ur = {"10K0K": 0, "10K10K": r, "10K30K": 3 * r, "10K50K": 5 * r, "60K0K": 5 * r}
    everyone = sets["60K0K"].info.class_names
    for name, n_ur in expected_ur.items():
        ds = sets[name]
        assert ds.info.num_classes == r + n_ur
        assert ds.info.class_names == everyone[: r + n_ur]  # Same label for the same identity.
        per_class = np.bincount(ds.records.label, minlength=r + n_ur)
        assert (per_class[:r] == spec.images_per_regular).all()
        ur_images = spec.images_per_regular if name == "60K0K" else spec.ur_images
        assert (per_class[r:] == ur_images).all()
        assert ds.info.extra["regular_classes"] == r and ds.info.extra["ur_classes"] == n_ur
        for key, label in zip(ds.records.key, ds.records.label):
            assert key.split("/")[0] == everyone[label]


def test_ur_images_are_the_first_captures_of_the_full_class(lt):
    _, spec, sets = lt
    full, ur = _payloads(sets["60K0K"]), _payloads(sets["10K50K"])
    ur_keys = [k for k in ur if int(k[3:8]) >= spec.num_regular]
    assert ur_keys and all(int(k.split("/")[2]) < spec.ur_images for k in ur_keys)
    for key in ur_keys:
        assert ur[key].image == full[key].image and ur[key].yaw == full[key].yaw


def test_holdout_set_holds_new_images_of_regular_and_first_block_ur_classes(lt):
    _, spec, sets = lt
    holdout = sets["holdout"]
    r = spec.num_regular
    assert holdout.info.class_names == sets["10K10K"].info.class_names
    assert (np.bincount(holdout.records.label) == spec.holdout_images).all()
    assert {int(k.split("/")[2]) for k in holdout.records.key} == set(
        range(spec.images_per_regular, spec.images_per_regular + spec.holdout_images)
    )
    train_images = {hashlib.sha256(s.image).digest() for s in _payloads(sets["60K0K"]).values()}
    assert not train_images & {
        hashlib.sha256(s.image).digest() for s in _payloads(holdout).values()
    }
    assert holdout.info.extra["regular_classes"] == r and holdout.info.extra["ur_classes"] == r


def test_every_record_carries_the_generators_yaw(lt):
    _, spec, sets = lt
    for ds in sets.values():
        assert np.isfinite(ds.records.yaw).all()
        samples = _payloads(ds)
        np.testing.assert_array_equal(ds.records.yaw, [samples[k].yaw for k in ds.records.key])
    # The stored yaw is the capture's head yaw, regenerated from the seed.
    _, train, holdout = synthetic.longtail_captures(spec, SEED, 4)
    stored = _payloads(sets["holdout"])
    for k, params in enumerate(holdout):
        key = f"ltl00004/vis/{spec.images_per_regular + k:03d}"
        assert stored[key].yaw == float(np.float32(math.degrees(params.yaw)))
    yaws = np.abs(sets["60K0K"].records.yaw)
    assert yaws.max() <= spec.variation.max_yaw_deg + 1e-4
    assert (yaws > 25).any() and (yaws < 10).mean() > 0.3  # Large yaws exist to exclude.


def test_pair_list_is_lfw_like(lt):
    root, spec, sets = lt
    pairs = synthetic.read_pairs(root / "holdout" / "pairs.txt")
    assert len(pairs) == spec.num_pairs
    holdout_keys = set(sets["holdout"].records.key)
    identity = lambda key: key.split("/")[0]  # noqa: E731
    fold = spec.num_pairs // 10
    seen = set()
    for n, (a, b, same) in enumerate(pairs):
        assert a in holdout_keys and b in holdout_keys and a != b
        assert same == (n % fold < fold // 2)  # Per fold: same pairs, then different.
        assert same == (identity(a) == identity(b))
        assert frozenset((a, b)) not in seen
        seen.add(frozenset((a, b)))
    labels = {int(identity(k)[3:]) for a, b, _ in pairs for k in (a, b)}
    assert min(labels) < spec.num_regular <= max(labels)  # Regular and UR classes both used.


def test_verification_pack_runs_through_the_evaluation(lt):
    root, spec, sets = lt
    images, issame = load_pack(root / "holdout" / "verification.bin")
    pairs = synthetic.read_pairs(root / "holdout" / "pairs.txt")
    assert list(issame) == [same for _, _, same in pairs]
    stored = _payloads(sets["holdout"])
    assert images == [stored[k].image for a, b, _ in pairs for k in (a, b)]
    # An oracle embedding (one-hot identity, looked up from the decoded pixels) verifies
    # every pair: the pack is in the format the evaluation reads.
    label_of = {
        augment.decode_image(s.image, size=(112, 112)).tobytes(): s.label for s in stored.values()
    }
    n = sets["holdout"].info.num_classes

    def oracle(batch: np.ndarray) -> np.ndarray:
        out = np.zeros((len(batch), n + 1), np.float32)
        for i, img in enumerate(batch):
            out[i, label_of.get(np.ascontiguousarray(img).tobytes(), n)] = 1.0
        return out

    result = verification.evaluate_pack(
        oracle, root / "holdout" / "verification.bin", batch_size=16, flip=False
    )
    assert result["accuracy"] == 1.0


def test_longtail_spec_validates():
    spec = synthetic.PRESETS["longtail_tiny"].longtail
    with pytest.raises(ValueError, match="multiple of 20"):
        dataclasses.replace(spec, num_pairs=30)
    with pytest.raises(ValueError, match="ur_images"):
        dataclasses.replace(spec, ur_images=spec.images_per_regular + 1)
    with pytest.raises(ValueError, match="increasing"):
        dataclasses.replace(spec, ur_multiples=(3, 1))
    with pytest.raises(ValueError, match="fewer than"):
        longtail.verification_pairs(dataclasses.replace(spec, num_pairs=2000), 0)
