"""The grain input pipeline: determinism, resumption, samplers, process slicing, augmentation."""

import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from hfrjax.data import augment as aug
from hfrjax.data import pipeline, tfrecord
from hfrjax.data.dataset import Dataset


def _cfg(d, **kw):
    base = dict(
        data_dir=str(d),
        batch_size=6,
        seed=3,
        num_threads=1,
        augment={"hflip": True, "channel_aug": "red", "erasing_p": 0.5},
    )
    base.update(kw)
    return pipeline.InputConfig.from_dict(base)


def _take(inp, n):
    return [next(inp) for _ in range(n)]


def _ident(img):
    """(label, modality, index) as encoded in the tiny dataset's first pixels (pre-flip)."""
    return int(img[0, 0, 0]), int(img[0, 1, 0]), int(img[0, 2, 0])


def test_plain_epoch_covers_every_record_once(tiny_dataset):
    d, samples = tiny_dataset
    inp = pipeline.make_train_input(
        _cfg(d, augment={"hflip": False}), process_index=0, process_count=1
    )
    assert inp.steps_per_epoch == len(samples) // 6 and inp.num_classes == 6
    seen = [_ident(img) for b in _take(inp, inp.steps_per_epoch) for img in b["image"]]
    assert len(set(seen)) == len(samples)
    b = next(inp)
    assert b["image"].dtype == np.uint8 and b["image"].shape == (6, 16, 16, 3)
    assert b["label"].dtype == np.int32 and b["modality"].dtype == np.int32


def test_labels_and_modalities_match_images(tiny_dataset):
    d, _ = tiny_dataset
    inp = pipeline.make_train_input(
        _cfg(d, augment={"hflip": False}), process_index=0, process_count=1
    )
    for b in _take(inp, 4):
        for img, lab, mod in zip(b["image"], b["label"], b["modality"]):
            assert _ident(img)[:2] == (lab, mod)


def test_same_seed_same_batches_different_seed_differs(tiny_dataset):
    d, _ = tiny_dataset
    a = _take(pipeline.make_train_input(_cfg(d), process_index=0, process_count=1), 5)
    b = _take(pipeline.make_train_input(_cfg(d), process_index=0, process_count=1), 5)
    c = _take(pipeline.make_train_input(_cfg(d, seed=4), process_index=0, process_count=1), 5)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_process_slices_reassemble_the_global_batch(tiny_dataset):
    d, _ = tiny_dataset
    for sampler in ("plain", "paired"):
        cfg = _cfg(d, sampler=sampler)
        whole = _take(pipeline.make_train_input(cfg, process_index=0, process_count=1), 4)
        parts = [
            _take(pipeline.make_train_input(cfg, process_index=p, process_count=3), 4)
            for p in range(3)
        ]
        for s in range(4):
            for k in whole[s]:
                np.testing.assert_array_equal(
                    whole[s][k], np.concatenate([parts[p][s][k] for p in range(3)])
                )


def test_paired_and_pk_samplers(tiny_dataset):
    d, _ = tiny_dataset
    inp = pipeline.make_train_input(
        _cfg(d, sampler="paired", augment={"hflip": False}), process_index=0, process_count=1
    )
    assert inp.steps_per_epoch == 2  # 6 identities / P=3.
    for b in _take(inp, 6):
        labels, mods = b["label"], b["modality"]
        # P=3 identities, each as (K=1 NIR, K=1 VIS) with modalities in sorted order nir, vis.
        assert len(set(labels)) == 3
        np.testing.assert_array_equal(labels[0::2], labels[1::2])
        np.testing.assert_array_equal(mods, [1, 0] * 3)
    epoch = [
        set(b["label"])
        for b in _take(
            pipeline.make_train_input(_cfg(d, sampler="paired"), process_index=0, process_count=1),
            2,
        )
    ]
    assert epoch[0] | epoch[1] == set(range(6)) and not epoch[0] & epoch[1]
    inp = pipeline.make_train_input(
        _cfg(
            d,
            sampler="pk",
            batch_size=8,
            p=2,
            k=2,
            modalities=["nir", "vis"],
            augment={"hflip": False},
        ),
        process_index=0,
        process_count=1,
    )
    for b in _take(inp, 3):
        assert len(set(b["label"])) == 2
        for lab in set(b["label"]):
            sel = b["label"] == lab
            assert sorted(b["modality"][sel]) == [0, 0, 1, 1]
            # K=2 distinct images per modality when the identity has enough (it has 3).
            idents = {_ident(img) for img in b["image"][sel]}
            assert len(idents) == 4
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.make_train_input(
            _cfg(d, sampler="pk", batch_size=7, k=2), process_index=0, process_count=1
        )


def test_keys_restrict_and_remap_labels(tiny_dataset):
    d, samples = tiny_dataset
    keys = [s.key for s in samples if s.label in (2, 4)]
    inp = pipeline.make_train_input(
        _cfg(d, keys=keys, augment={"hflip": False}), process_index=0, process_count=1
    )
    assert inp.num_classes == 2 and list(inp.class_labels) == [2, 4]
    for b in _take(inp, 3):
        for img, lab in zip(b["image"], b["label"]):
            assert _ident(img)[0] == [2, 4][lab]
    with pytest.raises(ValueError, match="not in"):
        pipeline.make_train_input(_cfg(d, keys=["nope"]), process_index=0, process_count=1)


def test_config_typos_are_errors(tiny_dataset):
    d, _ = tiny_dataset
    with pytest.raises(
        ValueError, match=r"unknown key 'input.batchsize'; did you mean 'batch_size'"
    ):
        pipeline.InputConfig.from_dict({"data_dir": str(d), "batchsize": 4})
    with pytest.raises(ValueError, match=r"unknown key 'input.augment.flip'"):
        _cfg(d, augment={"flip": True})
    with pytest.raises(ValueError, match="channel_aug"):
        _cfg(d, augment={"channel_aug": "blue"})


def test_resume_mid_epoch_with_orbax(tiny_dataset, tmp_path):
    d, _ = tiny_dataset
    cfg = _cfg(d)
    reference = _take(pipeline.make_train_input(cfg, process_index=0, process_count=1), 9)
    inp = pipeline.make_train_input(cfg, process_index=0, process_count=1)
    _take(inp, 4)  # Mid-epoch (3 steps per epoch) into the second epoch.
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(inp.iterator)))
    mngr.wait_until_finished()
    fresh = pipeline.make_train_input(cfg, process_index=0, process_count=1)
    mngr.restore(
        4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh.iterator))
    )
    for want, got in zip(reference[4:], _take(fresh, 5)):
        for k in want:
            np.testing.assert_array_equal(want[k], got[k])
    mngr.close()


def test_corrupt_record_in_pipeline_raise_and_skip(tiny_dataset):
    d, _ = tiny_dataset
    ds = Dataset.open(d)
    shard = ds.records.shard_paths[0]
    idx = tfrecord.ShardIndex.load(shard)
    raw = bytearray(open(shard, "rb").read())
    raw[int(idx.offsets[1]) + 20] ^= 0xFF
    open(shard, "wb").write(bytes(raw))
    cfg = _cfg(d, shuffle=False)
    with pytest.raises(tfrecord.CorruptRecordError, match=f"{shard}.*record #1"):
        _take(pipeline.make_train_input(cfg, process_index=0, process_count=1), 6)
    tfrecord.CORRUPTION_STATS.reset()
    inp = pipeline.make_train_input(
        _cfg(d, shuffle=False, on_corrupt="skip"), process_index=0, process_count=1
    )
    batches = _take(inp, inp.steps_per_epoch)
    assert tfrecord.CORRUPTION_STATS.total == 1
    assert "skipped 1 corrupt record" in tfrecord.CORRUPTION_STATS.report()
    assert sum(len(b["label"]) for b in batches) == inp.steps_per_epoch * 6


def test_cache_decoded_same_batches_one_decode_per_record(tiny_dataset, monkeypatch):
    """input.cache_decoded: three epochs give the uncached batches (augmentation still draws per
    position) while each record is decoded once; the cached arrays are never written."""
    d, samples = tiny_dataset
    calls = []
    decode = aug.decode_native
    monkeypatch.setattr(aug, "decode_native", lambda *a, **k: calls.append(1) or decode(*a, **k))
    cached = pipeline.make_train_input(
        _cfg(d, cache_decoded=True), process_index=0, process_count=1
    )
    got = _take(cached, 3 * cached.steps_per_epoch)
    assert len(calls) == len(samples)  # Read-ahead cannot add any: every record is cached.
    plain = pipeline.make_train_input(_cfg(d), process_index=0, process_count=1)
    want = _take(plain, 3 * plain.steps_per_epoch)
    assert len(calls) >= len(samples) + 3 * plain.steps_per_epoch * 6
    for a, b in zip(want, got):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_cache_decoded_with_a_skipped_corrupt_record(tiny_dataset):
    """In skip mode the corrupt record's stand-in is cached: the same batches as uncached."""
    d, _ = tiny_dataset
    shard = Dataset.open(d).records.shard_paths[0]
    idx = tfrecord.ShardIndex.load(shard)
    raw = bytearray(open(shard, "rb").read())
    raw[int(idx.offsets[1]) + 20] ^= 0xFF
    open(shard, "wb").write(bytes(raw))
    tfrecord.CORRUPTION_STATS.reset()
    runs = []
    for cache in (False, True):
        cfg = _cfg(d, shuffle=False, on_corrupt="skip", cache_decoded=cache)
        inp = pipeline.make_train_input(cfg, process_index=0, process_count=1)
        runs.append(_take(inp, 2 * inp.steps_per_epoch))
    for a, b in zip(*runs):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert tfrecord.CORRUPTION_STATS.total == 1
    tfrecord.CORRUPTION_STATS.reset()


def test_streaming_shards_disjoint_and_covering(tiny_dataset):
    d, samples = tiny_dataset
    shards = Dataset.open(d).records.shard_paths
    parts = [pipeline.process_shards(shards, p, 2) for p in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(shards)
    with pytest.raises(ValueError, match="cannot be split"):
        pipeline.process_shards(shards, 0, 4)
    cfg = _cfg(
        d, mode="streaming", batch_size=4, num_epochs=1, shuffle_window=8, augment={"hflip": False}
    )
    seen = []
    for p in range(2):
        inp = pipeline.make_train_input(cfg, process_index=p, process_count=2)
        seen += [_ident(img) for b in inp for img in b["image"]]
    # Per process, drop_remainder may drop up to batch-1 records; the rest are distinct.
    assert len(seen) == len(set(seen)) >= len(samples) - 2 * 3


def test_streaming_resume(tiny_dataset):
    d, _ = tiny_dataset
    cfg = _cfg(d, mode="streaming", batch_size=4, shuffle_window=8)
    ref = _take(pipeline.make_train_input(cfg, process_index=0, process_count=1), 8)
    inp = pipeline.make_train_input(cfg, process_index=0, process_count=1)
    _take(inp, 3)
    state = json.loads(json.dumps(inp.get_state()))
    fresh = pipeline.make_train_input(cfg, process_index=0, process_count=1)
    fresh.set_state(state)
    for want, got in zip(ref[3:], _take(fresh, 5)):
        np.testing.assert_array_equal(want["image"], got["image"])


def test_eval_batches_in_order_and_padded(tiny_dataset):
    d, samples = tiny_dataset
    keys = [s.key for s in samples[:7]]
    batches = list(pipeline.iter_eval_batches(Dataset.open(d), keys, 4))
    assert len(batches) == 2
    valid = np.concatenate([b["valid"] for b in batches])
    np.testing.assert_array_equal(valid, [True] * 7 + [False])
    imgs = np.concatenate([b["image"] for b in batches])[:7]
    assert [_ident(i) for i in imgs] == [
        (s.label, 0 if s.modality == "vis" else 1, int(s.key[-3:])) for s in samples[:7]
    ]


def test_red_channel_and_random_channel_augmentation():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = aug.red_channel(img)
    np.testing.assert_array_equal(out, np.stack([img[..., 0]] * 3, -1))
    cfg = aug.AugmentConfig(hflip=False, channel_aug="red", channel_aug_p=0.5)
    outs = [aug.augment(img, cfg, np.random.default_rng(s)) for s in range(200)]
    red = [o for o in outs if np.array_equal(o, out)]
    same = [o for o in outs if np.array_equal(o, img)]
    assert len(red) + len(same) == 200 and 70 < len(red) < 130
    cfg = aug.AugmentConfig(hflip=False, channel_aug="random_channel")
    kinds = set()
    for s in range(100):
        o = aug.augment(img, cfg, np.random.default_rng(s))
        kinds.add(
            next(
                (k for k in range(3) if np.array_equal(o, np.stack([img[..., k]] * 3, -1))),
                3 if np.array_equal(o, img) else None,
            )
        )
    assert kinds == {0, 1, 2, 3}


def test_flip_and_random_erasing():
    img = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    flipped = [aug.augment(img, aug.AugmentConfig(), np.random.default_rng(s)) for s in range(50)]
    assert any(np.array_equal(f, img[:, ::-1]) for f in flipped)
    assert any(np.array_equal(f, img) for f in flipped)
    erased = aug.random_erase(img, np.random.default_rng(1), (0.1, 0.2))
    changed = np.any(erased != img, axis=-1)
    ys, xs = np.nonzero(changed)
    # One rectangle, of 10-20% of the area (a few noise pixels may coincide with the input).
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert 0.1 * 120 * 0.8 <= box <= 0.2 * 120 * 1.3
    assert changed.sum() >= 0.8 * box


def test_decode_formats_and_channels():
    import io

    import simplejpeg
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    grey = rgb[..., :1].copy()
    png = io.BytesIO()
    Image.fromarray(grey[..., 0]).save(png, format="PNG")
    bmp = io.BytesIO()
    Image.fromarray(rgb).save(bmp, format="BMP")
    jpg = simplejpeg.encode_jpeg(rgb, quality=95)
    g3 = aug.decode_image(png.getvalue())
    assert g3.shape == (16, 16, 3) and np.array_equal(g3[..., 0], g3[..., 2])
    np.testing.assert_array_equal(g3[..., 0], grey[..., 0])
    np.testing.assert_array_equal(aug.decode_image(bmp.getvalue()), rgb)
    assert aug.decode_image(jpg, channels=1).shape == (16, 16, 1)
    assert aug.decode_image(jpg, size=(8, 8)).shape == (8, 8, 3)
    with pytest.raises(Exception):
        aug.decode_image(b"not an image")
    x = aug.normalize_images(np.array([0, 255], np.uint8))
    np.testing.assert_allclose(x, [-1.0, 1.0])


def _augment_reference(img, cfg, rng, modality=None):
    """The plain formulation of `aug.augment` (views, one copy, Generator.uniform): the fast
    implementation must draw the same numbers and produce the same bytes."""
    if cfg.hflip and rng.random() < 0.5:
        img = img[:, ::-1]
    if img.shape[2] == 3:
        k = 3
        if cfg.channel_aug == "red":
            k = 0 if rng.random() < cfg.channel_aug_p else 3
        elif cfg.channel_aug == "random_channel":
            k = int(rng.integers(4))
        if k < 3:
            img = np.broadcast_to(img[:, :, k : k + 1], img.shape)
    img = np.array(img, order="C", copy=True)

    def erase(area, ratio, fill):
        h, w, c = img.shape
        for _ in range(10):
            target = rng.uniform(*area) * h * w
            aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
            eh, ew = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
            if 0 < eh < h and 0 < ew < w:
                y, x = int(rng.integers(h - eh + 1)), int(rng.integers(w - ew + 1))
                noise = rng.integers(0, 256, (eh, ew, c), dtype=np.uint8)
                img[y : y + eh, x : x + ew] = 0 if fill == "zero" else noise
                return

    if cfg.erasing_p > 0 and rng.random() < cfg.erasing_p:
        erase(cfg.erasing_area, cfg.erasing_ratio, "noise")
    if cfg.occlude_p > 0 and modality in cfg.occlude_modalities and rng.random() < cfg.occlude_p:
        erase(cfg.occlude_area, cfg.occlude_ratio, cfg.occlude_fill)
    return img


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"channel_aug": "red", "erasing_p": 0.5},
        {"channel_aug": "random_channel", "erasing_p": 1.0, "erasing_area": (0.3, 0.6)},
        {"hflip": False, "channel_aug": "red", "channel_aug_p": 1.0},
        {"channel_aug": "red", "occlude_p": 0.8, "occlude_fill": "noise"},
    ],
)
def test_augment_matches_the_plain_formulation(kw):
    """Same bytes and same random stream as the reference, for RGB images, for single-band
    images replicated inside `augment` (channels=3) and for single-band outputs."""
    cfg = aug.AugmentConfig(**kw)
    src = np.random.default_rng(7)
    for s in range(40):
        h, w = (int(v) for v in src.integers(5, 40, 2))
        rgb = src.integers(0, 256, (h, w, 3), dtype=np.uint8)
        grey = src.integers(0, 256, (h, w, 1), dtype=np.uint8)
        for img, kwargs, ref_in in (
            (rgb, {}, rgb),
            (grey, {"channels": 3}, np.repeat(grey, 3, axis=2)),
            (grey, {}, grey),
        ):
            r1, r2 = np.random.default_rng(s), np.random.default_rng(s)
            out = aug.augment(img, cfg, r1, modality="nir", **kwargs)
            ref = _augment_reference(ref_in, cfg, r2, modality="nir")
            assert out.flags.c_contiguous and out.dtype == np.uint8
            np.testing.assert_array_equal(out, ref)
            assert r1.random() == r2.random()  # Same number of draws.
    with pytest.raises(ValueError, match="cannot make 3 channels"):
        aug.augment(np.zeros((4, 4, 2), np.uint8), cfg, np.random.default_rng(0), channels=3)


def test_augment_rng_is_numpys_default_rng():
    """`augment_rng` restates SeedSequence + PCG64 seeding: same state as numpy's, for edge and
    random seeds and positions; out-of-range values take numpy's path (and its errors)."""
    from hfrjax.data.pipeline_rng import augment_rng, seed_sequence_state

    src = np.random.default_rng(0)
    cases = [(0, 0), (0, 1), (3, 2**32 - 1), (2**32 - 1, 2**31)]
    cases += [tuple(int(v) for v in src.integers(0, 2**32, 2)) for _ in range(200)]
    for seed, t in cases:
        ref = np.random.default_rng([seed, 0x5EED, t])
        assert augment_rng(seed, t).bit_generator.state == ref.bit_generator.state, (seed, t)
    words = (5, 6, 7, 8)
    assert (
        seed_sequence_state(words)
        == np.random.SeedSequence(words).generate_state(4, np.uint64).tolist()
    )
    ts = np.arange(2**32 - 3, 2**32, dtype=np.uint64)  # Vectorised over positions.
    many = np.stack(seed_sequence_state((9, 10, ts)), axis=1)
    for row, t in zip(many.tolist(), ts.tolist()):
        assert row == seed_sequence_state((9, 10, t))
    big = augment_rng(1, 2**40)
    assert big.random() == np.random.default_rng([1, 0x5EED, 2**40]).random()
    with pytest.raises(ValueError):
        augment_rng(-1, 0)


def test_decode_native_keeps_one_band_and_expands_like_repeat():
    import io

    from PIL import Image

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(grey).save(png, format="PNG")
    native = aug.decode_native(png.getvalue())
    assert native.shape == (20, 24, 1) and native.flags.c_contiguous
    np.testing.assert_array_equal(native[..., 0], grey)
    np.testing.assert_array_equal(aug.expand_channels(native, 3), np.repeat(native, 3, axis=2))
    np.testing.assert_array_equal(aug.decode_image(png.getvalue()), np.repeat(native, 3, axis=2))
    # Resizing the band, then replicating it, equals resizing the 3-channel replica.
    small = aug.expand_channels(aug.decode_native(png.getvalue(), size=(9, 11)), 3)
    rgb = Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).resize((11, 9), Image.BILINEAR)
    np.testing.assert_array_equal(small, np.asarray(rgb))
    with pytest.raises(ValueError, match="cannot expand 3 channels"):
        aug.expand_channels(np.zeros((2, 2, 3), np.uint8), 4)


def test_process_pickles_for_worker_processes(tiny_dataset):
    """grain pickles the per-element function for `input.worker_count` workers: the record
    source (a lock, open descriptors) is rebuilt on the other side; same output."""
    import pickle

    d, _ = tiny_dataset
    ds = Dataset.open(d)
    process = pipeline._Process(
        pipeline.RecordSource(ds.records), ds.records.label, _cfg(d), train=True
    )
    process((0, 0))  # Opens a descriptor.
    clone = pickle.loads(pickle.dumps(process))
    for t in range(5):
        a, b = process((t, t)), clone((t, t))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_worker_processes_give_the_in_process_batches(tiny_dataset):
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["pytest"])  # grain's workers read absl flags.
    d, _ = tiny_dataset
    ref = _take(pipeline.make_train_input(_cfg(d), process_index=0, process_count=1), 3)
    inp = pipeline.make_train_input(_cfg(d, worker_count=2), process_index=0, process_count=1)
    try:
        got = _take(inp, 3)
    finally:
        inp.iterator.close()
    for a, b in zip(ref, got):
        assert all(np.array_equal(a[k], b[k]) for k in a)
