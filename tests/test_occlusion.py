"""Partial-face occlusions: templates, landmark masks, probe occluders, training rectangles."""

import dataclasses
import hashlib
import pickle

import numpy as np
import pytest

from hfrjax.data import augment as aug
from hfrjax.data import occlusion as occ
from hfrjax.data import pipeline

ARCFACE = np.array(occ.ARCFACE_112)


def _pixel(point):
    """(row, col) of the pixel whose centre is nearest to an (x, y) landmark."""
    return int(round(point[1])), int(round(point[0]))


def _inside(box, point):
    y0, y1, x0, x1 = box
    r, c = _pixel(point)
    return y0 <= r < y1 and x0 <= c < x1


def test_template_112_and_128():
    t112 = occ.FaceTemplate.for_size(112)
    assert t112.size == (112, 112)
    np.testing.assert_allclose(t112.points, ARCFACE)
    np.testing.assert_allclose(t112.left_eye, (38.2946, 51.6963))
    np.testing.assert_allclose(t112.mouth[1], (70.7299, 92.2041))
    t128 = occ.FaceTemplate.for_size((128, 128))
    np.testing.assert_allclose(t128.points, ARCFACE + [8.0, 0.0])
    t256 = occ.FaceTemplate.for_size(256)
    np.testing.assert_allclose(t256.points, (ARCFACE + [8.0, 0.0]) * 2)
    np.testing.assert_allclose(occ.FaceTemplate.for_size(224).points, ARCFACE * 2)
    # 896 = 8 x 112 = 7 x 128: 112 wins, as in InsightFace's estimate_norm.
    np.testing.assert_allclose(occ.FaceTemplate.for_size(896).points, ARCFACE * 8)
    assert occ.FaceTemplate.for_size(112) == t112 and hash(occ.FaceTemplate.for_size(112))


def test_template_errors_and_explicit_points():
    # Other sizes are resized 112 crops (the synthetic sets render that way).
    np.testing.assert_allclose(occ.FaceTemplate.for_size(32).points, ARCFACE * 32 / 112)
    with pytest.raises(ValueError, match=r"non-square.*\(112, 96\)"):
        occ.FaceTemplate.for_size((112, 96))
    t = occ.FaceTemplate.for_size((112, 96), points=ARCFACE - [8.0, 0.0])
    assert t.size == (112, 96) and t.points[0] == pytest.approx((30.2946, 51.6963))
    with pytest.raises(ValueError, match="5 finite"):
        occ.FaceTemplate((112, 112), ARCFACE[:4])


@pytest.mark.parametrize("size", [112, 128, 224, 256])
def test_masks_contain_the_right_landmarks(size):
    t = occ.FaceTemplate.for_size(size)
    top = occ.occlusion_box("maskTop", t)
    bottom = occ.occlusion_box("maskBottom", t)
    for box in (top, bottom):
        y0, y1, x0, x1 = box
        assert all(isinstance(v, int) for v in box)
        assert 0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size
    assert _inside(top, t.left_eye) and _inside(top, t.right_eye)
    assert not _inside(top, t.nose)
    assert not any(_inside(top, m) for m in t.mouth)
    assert all(_inside(bottom, m) for m in t.mouth)
    assert not _inside(bottom, t.left_eye) and not _inside(bottom, t.right_eye)
    assert bottom[1] == size  # To the bottom of the crop.
    assert top[1] <= bottom[0]  # The two masks do not overlap.


def test_mask_geometry_112_and_128_and_scaling():
    t112, t128 = occ.FaceTemplate.for_size(112), occ.FaceTemplate.for_size(128)
    # Values documented in the module docstring.
    assert occ.occlusion_box("maskTop", t112) == (33, 62, 14, 99)
    assert occ.occlusion_box("maskBottom", t112) == (72, 112, 14, 99)
    for kind in occ.OCCLUSIONS:
        y0, y1, x0, x1 = occ.occlusion_box(kind, t112)
        # 128 = the 112 template shifted 8 px right (plus 16 more rows below it).
        b128 = occ.occlusion_box(kind, t128)
        assert b128[0] == y0 and b128[2:] == (x0 + 8, x1 + 8)
        # 224 = 2 x 112: every edge doubles, up to one pixel of rounding.
        b224 = occ.occlusion_box(kind, occ.FaceTemplate.for_size(224))
        assert all(abs(a - 2 * b) <= 1 for a, b in zip(b224, (y0, y1, x0, x1)))


def test_occlusion_box_clips_to_image():
    # Landmarks near the top-left corner: the box must stay inside the image.
    t = occ.FaceTemplate.for_size((40, 40), points=ARCFACE / 4 - [5.0, 10.0])
    y0, y1, x0, x1 = occ.occlusion_box("maskTop", t)
    assert y0 == 0 and x0 == 0 and 0 < y1 <= 40 and 0 < x1 <= 40


@pytest.mark.parametrize("kind", occ.OCCLUSIONS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_apply_occlusion_fills_exactly_the_box(kind, dtype):
    rng = np.random.default_rng(0)
    batch = rng.integers(1, 255, (3, 128, 128, 3)).astype(dtype)
    before = batch.copy()
    y0, y1, x0, x1 = occ.occlusion_box(kind, occ.FaceTemplate.for_size(128))
    inside = np.zeros((128, 128), bool)
    inside[y0:y1, x0:x1] = True
    for fill in (0, 255):
        out = occ.apply_occlusion(batch, kind, fill=fill)
        assert out.shape == batch.shape and out.dtype == batch.dtype
        np.testing.assert_array_equal(batch, before)  # Input untouched.
        assert np.all(out[:, inside] == fill)
        np.testing.assert_array_equal(out[:, ~inside], batch[:, ~inside])
        single = occ.apply_occlusion(batch[1], kind, fill=fill)
        np.testing.assert_array_equal(single, out[1])


def test_apply_occlusion_none_errors_and_template():
    img = np.full((112, 112, 1), 7, np.uint8)
    assert occ.apply_occlusion(img, "none") is img
    with pytest.raises(ValueError, match=r"unknown occlusion 'maskEyes'.*maskTop.*maskBottom"):
        occ.apply_occlusion(img, "maskEyes")
    with pytest.raises(ValueError, match=r"non-square"):
        occ.apply_occlusion(np.zeros((100, 90, 3), np.uint8), "maskTop")
    with pytest.raises(ValueError, match=r"got shape \(112, 112\)"):
        occ.apply_occlusion(img[..., 0], "maskTop")
    with pytest.raises(ValueError, match="fill 300"):
        occ.apply_occlusion(img, "maskTop", fill=300)
    with pytest.raises(ValueError, match=r"template is for \(128, 128\)"):
        occ.apply_occlusion(img, "maskTop", template=occ.FaceTemplate.for_size(128))
    t = occ.FaceTemplate.for_size((112, 112), points=ARCFACE + [0.0, 10.0])
    out = occ.apply_occlusion(img, "maskBottom", template=t)
    assert (
        occ.occlusion_box("maskBottom", t)[0] == 82 and out[81, 56, 0] == 7 and out[82, 56, 0] == 0
    )


def test_make_probe_occluder():
    assert occ.make_probe_occluder("none") is None
    with pytest.raises(ValueError, match="unknown occlusion"):
        occ.make_probe_occluder("top")
    fn = occ.make_probe_occluder("maskTop", fill=128)
    batch = np.random.default_rng(1).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    out = fn(batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, occ.apply_occlusion(batch, "maskTop", fill=128))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fn))(batch), out)


@pytest.mark.parametrize("fill", ["zero", "noise"])
def test_random_rectangle_one_box_in_area_range(fill):
    img = np.full((112, 112, 3), 100, np.uint8)
    fractions = []
    for s in range(40):
        out = occ.random_rectangle(img, np.random.default_rng(s), area=(0.1, 0.5), fill=fill)
        assert out.shape == img.shape and np.all(img == 100)
        changed = np.any(out != img, axis=-1)
        ys, xs = np.nonzero(changed)
        box = np.zeros_like(changed)
        box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        if fill == "zero":
            # Exactly one filled rectangle, and nothing changed outside it.
            assert np.all(changed == box) and np.all(out[box] == 0)
        else:
            assert not np.any(changed & ~box) and changed.sum() >= 0.95 * box.sum()
        fractions.append(box.sum() / changed.size)
    # Rounding the side lengths moves the area by a few percent at most.
    assert 0.1 * 0.95 <= min(fractions) and max(fractions) <= 0.5 * 1.05
    assert max(fractions) - min(fractions) > 0.15  # Sizes really vary.
    with pytest.raises(ValueError, match="fill must be one of"):
        occ.random_rectangle(img, np.random.default_rng(0), fill="black")
    with pytest.raises(ValueError, match=r"area must be .*\(0.5, 0.1\)"):
        occ.random_rectangle(img, np.random.default_rng(0), area=(0.5, 0.1))


def test_augment_occludes_listed_modalities_only():
    img = np.full((32, 32, 3), 200, np.uint8)
    cfg = aug.AugmentConfig(hflip=False, occlude_p=1.0, occlude_area=(0.2, 0.3))
    nir = aug.augment(img, cfg, np.random.default_rng(0), modality="nir")
    assert 0.15 * 1024 <= np.sum(np.all(nir == 0, axis=-1)) <= 0.35 * 1024
    vis = aug.augment(img, cfg, np.random.default_rng(0), modality="vis")
    np.testing.assert_array_equal(vis, img)
    both = dataclasses.replace(cfg, occlude_modalities=("nir", "vis"), occlude_fill="noise")
    assert np.any(aug.augment(img, both, np.random.default_rng(0), modality="vis") != img)
    with pytest.raises(ValueError, match="needs modality"):
        aug.augment(img, cfg, np.random.default_rng(0))


def test_augment_config_occlusion_validation():
    cfg = aug.AugmentConfig.from_dict(
        {"occlude_p": 0.5, "occlude_area": [0.1, 0.2], "occlude_modalities": ["nir", "vis"]}
    )
    assert cfg.occlude_area == (0.1, 0.2) and cfg.occlude_modalities == ("nir", "vis")
    with pytest.raises(ValueError, match="occlude_p must be in"):
        aug.AugmentConfig(occlude_p=1.5)
    with pytest.raises(ValueError, match="occlude_area"):
        aug.AugmentConfig(occlude_area=(0.2, 1.5))
    with pytest.raises(ValueError, match="occlude_ratio"):
        aug.AugmentConfig(occlude_ratio=(0.0, 1.0))
    with pytest.raises(ValueError, match="occlude_fill .*'grey'"):
        aug.AugmentConfig(occlude_fill="grey")
    with pytest.raises(ValueError, match="occlude_modalities must be a tuple"):
        aug.AugmentConfig.from_dict({"occlude_modalities": "nir"})
    with pytest.raises(ValueError, match=r"unknown modality \['rgb'\]"):
        aug.AugmentConfig(occlude_modalities=("rgb",))


def test_occlusion_off_leaves_augment_bit_identical():
    # Digest of augment() outputs computed before occlusion existed (same image, configs, seeds):
    # with occlude_p == 0 no RNG draw or pixel may change, whatever the modality.
    img = np.arange(32 * 32 * 3, dtype=np.uint32).reshape(32, 32, 3).astype(np.uint8)
    configs = (
        aug.AugmentConfig(hflip=True, channel_aug="red", erasing_p=0.7),
        aug.AugmentConfig(channel_aug="random_channel", erasing_p=1.0),
    )
    for modality in (None, "nir", "vis"):
        digest = hashlib.sha256()
        for cfg in configs:
            for s in range(20):
                out = aug.augment(img, cfg, np.random.default_rng([7, s]), modality=modality)
                digest.update(out.tobytes())
        assert digest.hexdigest() == (
            "be4d1971e1d9b45d205c2b767851c6bb808fa18edf53a1316e948eb3564cc1c8"
        )


@pytest.mark.parametrize("mode", ["random_access", "streaming"])
def test_pipeline_occludes_nir_only(tiny_dataset, mode):
    d, _ = tiny_dataset

    def batches(occlude_p):
        cfg = pipeline.InputConfig.from_dict(
            dict(
                data_dir=str(d),
                batch_size=6,
                seed=3,
                num_threads=1,
                mode=mode,
                num_epochs=1,
                shuffle_window=8,
                augment={"hflip": False, "occlude_p": occlude_p, "occlude_area": [0.3, 0.5]},
            )
        )
        inp = pipeline.make_train_input(cfg, process_index=0, process_count=1)
        return [next(inp) for _ in range(3)]

    n_nir = 0
    for off, on in zip(batches(0.0), batches(1.0)):
        np.testing.assert_array_equal(off["modality"], on["modality"])
        for a, b, mod in zip(off["image"], on["image"], on["modality"]):
            if mod == pipeline.modality_code("vis"):
                np.testing.assert_array_equal(a, b)
            else:
                n_nir += 1
                changed = np.any(a != b, axis=-1)
                assert changed.any() and np.all(b[changed] == 0)
    assert n_nir > 0
