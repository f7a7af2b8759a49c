"""FTL's UR training sets from a converted dataset (`hfrjax.recipes.ftl.subsets`): the Table 1
layout and the per-class cap, checked against their definitions on a hand-made source."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hfrjax.data import tfrecord
from hfrjax.data.dataset import Dataset, DatasetInfo
from hfrjax.data.pipeline import RecordSource
from hfrjax.recipes.ftl import evaluation, subsets

COUNTS = [20, 3, 15, 12, 11, 30, 10, 10, 9, 14, 16, 13]  # images per source class


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value % 256, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    names = [f"id{c:02d}" for c in range(len(COUNTS))]
    samples = [
        tfrecord.Sample(
            image=_png(7 * c + k), label=c, modality="vis", identity=names[c],
            key=f"{names[c]}/vis/{k:03d}", dataset="src", image_format="png", yaw=float(k - c),
        )
        for c, n in enumerate(COUNTS)
        for k in range(n)
    ]
    paths = tfrecord.write_shards(samples, d, "data", 3)
    DatasetInfo("src", [p.name for p in paths], len(samples), names, {"vis": len(samples)}, (4, 4), "png").save(d)
    return Dataset.open(d)


def test_table1_plan_follows_the_papers_construction(source):
    labels = source.records.label
    kw = dict(num_regular=2, ur_multiples=(1, 3), ur_images=3, holdout_images=2, seed=5)
    plan = subsets.plan_table1(labels, 12, **kw)
    assert sorted(plan) == ["10K0K", "10K10K", "10K30K", "40K0K", "holdout"]
    ranked = sorted(range(12), key=lambda c: (-COUNTS[c], c))  # [5, 0, 10, 2, 9, 11, 3, 4, ...]
    regular, ur = ranked[:2], ranked[2:8]
    assert plan["10K30K"].classes == regular + ur and plan["10K10K"].classes == regular + ur[:2]
    assert plan["holdout"].classes == regular + ur[:2]
    held = set(plan["holdout"].rows.tolist())
    assert len(held) == 4 * 2 and all(sum(labels[r] == c for r in held) == 2 for c in regular + ur[:2])
    for name in ("10K0K", "10K10K", "10K30K", "40K0K"):
        rows = plan[name].rows
        assert not held & set(rows.tolist()) and len(set(rows.tolist())) == len(rows)
    for c in regular:  # Regular classes keep every image that is not held out, in every set.
        want = {r for r in np.flatnonzero(labels == c) if r not in held}
        for name in ("10K0K", "10K10K", "10K30K", "40K0K"):
            assert {r for r in plan[name].rows if labels[r] == c} == want
    for c in ur:  # UR classes: the same 3 images wherever they appear; all of them in 40K0K.
        picks = [{r for r in plan[n].rows if labels[r] == c} for n in ("10K10K", "10K30K") if c in plan[n].classes]
        assert all(len(p) == 3 for p in picks) and all(p == picks[0] for p in picks)
        assert {r for r in plan["40K0K"].rows if labels[r] == c} == {r for r in np.flatnonzero(labels == c) if r not in held}
    again = subsets.plan_table1(labels, 12, **kw)
    assert all(np.array_equal(plan[k].rows, again[k].rows) for k in plan)
    other = subsets.plan_table1(labels, 12, **{**kw, "seed": 6})
    assert not np.array_equal(plan["10K30K"].rows, other["10K30K"].rows)


def test_table1_plan_names_what_is_missing(source):
    labels = source.records.label
    with pytest.raises(ValueError, match=r"has 12 classes; the layout needs 2 regular \+ 20 UR"):
        subsets.plan_table1(labels, 12, num_regular=2, ur_multiples=(10,))
    with pytest.raises(ValueError, match=r"class id01 \(label 1, rank 11\) has 3 images; its role needs 5"):
        subsets.plan_table1(labels, 12, num_regular=1, ur_multiples=(1, 11), ur_images=5,
                            holdout_images=2, class_names=source.info.class_names)


def test_written_sets_copy_records_renumber_labels_and_list_keys(source, tmp_path):
    summary = subsets.build_table1_sets(
        source.directory, tmp_path, num_shards=2, num_regular=2, ur_multiples=(1, 3),
        ur_images=3, holdout_images=2, seed=5,
    )
    assert summary["train_10K10K"] == {
        "images": (30 - 2) + (20 - 2) + 2 * 3, "classes": 4, "source_ranking": "image count, most first; ties by label",
        "seed": 5, "regular_classes": 2, "ur_classes": 2, "images_per_ur": 3,
    }
    src_source = RecordSource(source.records)
    src_row = {k: i for i, k in enumerate(source.records.key)}
    for sub in ("train_10K10K", "holdout"):
        ds = Dataset.open(tmp_path / sub)
        keys = (tmp_path / sub / subsets.KEYS_FILE).read_text().split()
        assert sorted(keys) == sorted(ds.records.key)
        for row, key in enumerate(ds.records.key):
            got = tfrecord.decode_example(RecordSource(ds.records)[row])
            want = tfrecord.decode_example(src_source[src_row[key]])
            assert got.image == want.image and got.yaw == want.yaw
            assert ds.info.class_names[got.label] == want.identity == ds.info.class_names[ds.records.label[row]]
    hold = Dataset.open(tmp_path / "holdout")
    assert evaluation.holdout_regular(hold).tolist() == [True, True, False, False]
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        subsets.build_table1_sets(source.directory, tmp_path, num_regular=2, ur_multiples=(1, 3))


def test_capped_sets_keep_at_most_n_seeded_images_of_the_chosen_classes(source, tmp_path):
    info = subsets.build_capped_set(source.directory, tmp_path / "all", max_images_per_class=10, seed=1)
    assert info.num_images == sum(min(n, 10) for n in COUNTS) and info.class_names == source.info.class_names
    (tmp_path / "names.txt").write_text("id05\nid01\n")
    info = subsets.build_capped_set(source.directory, tmp_path / "two", max_images_per_class=4, classes_file=str(tmp_path / "names.txt"))
    assert info.class_names == ["id05", "id01"] and info.num_images == 4 + 3
    info = subsets.build_capped_set(source.directory, tmp_path / "top", max_images_per_class=2, num_classes=3)
    assert info.class_names == ["id05", "id00", "id10"]
    (tmp_path / "bad.txt").write_text("id05\nnobody\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: class 'nobody' is not in"):
        subsets.build_capped_set(source.directory, tmp_path / "bad", max_images_per_class=2, classes_file=str(tmp_path / "bad.txt"))
    assert subsets.main(["--src", str(source.directory), "--out", str(tmp_path / "cli"), "--max_images_per_class", "3", "--seed", "1"]) == 0
    assert Dataset.open(tmp_path / "cli").info.num_images == 3 * 12
