"""TOPLight's task-oriented augmentations: determinism, each operation's defining property,
and agreement with independent implementations (scipy.ndimage, Pillow, float64 formulas)."""

import copy
import io

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from hfrjax.data import task_augment as ta
from hfrjax.data.augment import luminance

OFF = dict(crop_p=0.0, flip_p=0.0, deform_p=0.0, jpeg_p=0.0, defocus_p=0.0, sharpen_grey_p=0.0)


def smooth_image(seed=0, size=48):
    """A face-like smooth colour image (gradients plus blurred noise), values in ~[30, 220]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([120 + 80 * x, 90 + 60 * y, 140 - 70 * x * y], -1)
    noise = scipy.ndimage.gaussian_filter(rng.normal(0, 25, (size, size, 3)), (2, 2, 0))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def noise_image(seed=0, shape=(40, 36, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_pair_is_deterministic_resumable_and_varies():
    img = smooth_image()
    a = ta.task_augment_pair(img, ta.sample_rng(3, 11))
    b = ta.task_augment_pair(img, ta.sample_rng(3, 11))  # fresh, as after a restart
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    others = [ta.task_augment_pair(img, ta.sample_rng(3, t)) for t in range(8)]
    assert len({o[0].tobytes() for o in others}) == 8  # colour path always changes something
    assert len({o[1].tobytes() for o in others}) > 1
    assert not np.array_equal(ta.task_augment_pair(img, ta.sample_rng(4, 11))[0], a[0])


@pytest.mark.parametrize(
    "fn", [ta.random_generic, ta.random_colour, ta.random_texture, ta.task_augment_pair]
)
def test_shapes_and_dtypes(fn):
    img = noise_image(shape=(30, 26, 3))
    cfg = ta.TaskAugmentConfig(crop_p=1, deform_p=1, jpeg_p=1, defocus_p=1)
    out = fn(img, np.random.default_rng(0), cfg)
    for o in out if isinstance(out, tuple) else (out,):
        assert o.dtype == np.uint8 and o.shape == img.shape and o.flags.c_contiguous


def test_channel_shuffle_permutes_channels():
    img = noise_image()
    cfg = ta.TaskAugmentConfig(colour_ops=("channel_shuffle",))
    seen = set()
    for seed in range(12):
        out = ta.random_colour(img, np.random.default_rng(seed), cfg)
        perm = tuple(
            next(j for j in range(3) if np.array_equal(out[..., i], img[..., j])) for i in range(3)
        )
        assert sorted(perm) == [0, 1, 2]
        seen.add(perm)
    assert len(seen) >= 3
    with pytest.raises(ValueError, match="permutation"):
        ta.channel_shuffle(img, [0, 0, 1])


def test_greyscale_and_texture_path_have_equal_channels():
    img = noise_image()
    grey = ta.greyscale(img)
    assert np.array_equal(grey[..., 0], luminance(img))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    for t in range(5):
        _, texture = ta.task_augment_pair(smooth_image(t), ta.sample_rng(0, t))
        assert np.array_equal(texture[..., 0], texture[..., 1])
        assert np.array_equal(texture[..., 0], texture[..., 2])


def test_jpeg_round_trip_changes_the_image_but_stays_close_and_matches_pillow():
    img = smooth_image(size=64)
    out = ta.jpeg_compress(img, 40)
    diff = out.astype(float) - img
    assert np.abs(diff).max() > 0
    psnr = 10 * np.log10(255**2 / np.mean(diff**2))
    assert psnr > 28, psnr
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=40, subsampling=2)  # 4:2:0
    pil = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(float)
    assert np.abs(out - pil).mean() < 1.5
    assert ta.jpeg_compress(img, 95).astype(float).__sub__(img).std() < diff.std()
    grey = ta.greyscale(img)[..., :1]
    assert ta.jpeg_compress(grey, 40).shape == grey.shape
    with pytest.raises(ValueError, match="quality"):
        ta.jpeg_compress(img, 0)


def test_probability_zero_is_identity_and_draws_nothing():
    img = noise_image()
    cfg = ta.TaskAugmentConfig(**OFF)
    for fn in (ta.random_generic, ta.random_texture):
        rng = np.random.default_rng(5)
        state = copy.deepcopy(rng.bit_generator.state)
        assert np.array_equal(fn(img, rng, cfg), img)
        assert rng.bit_generator.state == state
    # Probability one always applies: the texture path then differs from the input.
    assert not np.array_equal(ta.random_texture(img, np.random.default_rng(0)), img)


def test_defocus_kernel_and_mean_and_scipy():
    for radius, sigma in ((1, 0.0), (3, 0.3), (4, 0.5)):
        k = ta.defocus_kernel(radius, sigma)
        assert k.shape[0] % 2 == 1 and np.isclose(k.sum(), 1.0) and np.allclose(k, k.T)
        assert np.allclose(k, k[::-1, ::-1])
    k = ta.defocus_kernel(3, 0.3)
    img = noise_image(1, (50, 44, 3))
    out = ta.defocus(img, 3, 0.3)
    ref = np.stack(
        [
            scipy.ndimage.correlate(img[..., c].astype(np.float64), k, mode="mirror")
            for c in range(3)
        ],
        -1,
    )
    assert np.abs(out - np.clip(np.rint(ref), 0, 255)).max() <= 1
    assert abs(out.mean() - img.mean()) < 0.5
    assert out.std() < 0.5 * img.std()  # it blurs


def test_sharpen_matches_scipy_and_convolve_checks_its_kernel():
    img = smooth_image(2)
    k = ta.sharpen_kernel(0.4, 0.7)
    assert np.isclose(k.sum(), 0.6 + 0.4 * 0.7)
    ref = np.stack(
        [
            scipy.ndimage.correlate(img[..., c].astype(np.float64), k, mode="mirror")
            for c in range(3)
        ],
        -1,
    )
    out = ta.sharpen(img, 0.4, 0.7)
    assert np.abs(out - np.clip(np.rint(ref), 0, 255)).max() <= 1
    with pytest.raises(ValueError, match="odd"):
        ta.convolve(img, np.ones((2, 2)))


def test_flip_and_crop():
    img = noise_image()
    assert np.array_equal(ta.hflip(img), img[:, ::-1])
    h, w = img.shape[:2]
    assert np.array_equal(ta.resized_crop(img, (0, 0, h, w)), img)
    # Upscaling the top-left quarter x2 is bilinear with pixel centres aligned, as Pillow's.
    smooth = smooth_image(3, 40)
    out = ta.resized_crop(smooth, (0, 0, 20, 20))
    pil = np.asarray(Image.fromarray(smooth).resize((40, 40), Image.BILINEAR, box=(0, 0, 20, 20)))
    assert np.abs(out.astype(int) - pil)[2:-2, 2:-2].max() <= 1
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, ch, cw = ta.random_crop_box(h, w, rng, (0.8, 1.0), (0.9, 1 / 0.9))
        assert 0 <= top and top + ch <= h + 1e-9 and 0 <= left and left + cw <= w + 1e-9
        assert 0.8 * h * w * 0.9 <= ch * cw <= h * w + 1e-9


def test_deform_identity_and_integer_shift():
    img = noise_image()
    assert np.array_equal(ta.deform(img, np.zeros((5, 5, 2))), img)
    shift = np.zeros((3, 3, 2))
    shift[..., 1] = 1.0  # sample one pixel to the right everywhere
    out = ta.deform(img, shift)
    assert np.array_equal(out[:, :-1], img[:, 1:]) and np.array_equal(out[:, -1], img[:, -1])
    out = ta.random_generic(
        img, np.random.default_rng(0), ta.TaskAugmentConfig(**{**OFF, "deform_p": 1})
    )
    assert not np.array_equal(out, img)
    with pytest.raises(ValueError, match="displacement"):
        ta.deform(img, np.zeros((4, 2)))


def test_rgb_shift_adds_per_channel_constants():
    img = np.full((8, 8, 3), 100, np.uint8)
    img[0, 0] = (250, 3, 100)
    out = ta.rgb_shift(img, [10, -5, 0])
    assert np.array_equal(out[1:, 1:], np.full((7, 7, 3), (110, 95, 100)))
    assert tuple(out[0, 0]) == (255, 0, 100)  # clipped
    cfg = ta.TaskAugmentConfig(colour_ops=("rgb_shift",), rgb_shift=20)
    mid = np.full((6, 6, 3), 128, np.uint8)
    for seed in range(5):
        d = ta.random_colour(mid, np.random.default_rng(seed), cfg).astype(int) - 128
        assert (d == d[0, 0]).all() and (np.abs(d) <= 20).all()


def test_colour_jitter_against_float64_formulas():
    img = smooth_image(4)
    f = img.astype(np.float64)
    out = ta.colour_jitter(img, {"brightness": 1.15})
    assert np.abs(out - np.clip(np.rint(f * 1.15), 0, 255)).max() <= 1
    grey_mean = (f @ np.array([0.299, 0.587, 0.114])).mean()
    out = ta.colour_jitter(img, {"contrast": 0.8})
    assert np.abs(out - np.rint(grey_mean + 0.8 * (f - grey_mean))).max() <= 1
    out = ta.colour_jitter(img, {"saturation": 0.0})  # fully desaturated = luma
    assert np.abs(out.astype(int) - luminance(img)[..., None]).max() <= 1
    # Hue: a rotation about the grey axis keeps luma, a full turn is the identity, and
    # +h then -h undoes itself; grey pixels never change.
    assert np.abs(ta.colour_jitter(img, {"hue": 1.0}).astype(int) - img).max() <= 1
    rot = ta.colour_jitter(img, {"hue": 0.1})
    assert np.abs(rot.astype(int) - img).max() > 5
    assert np.abs(luminance(rot).astype(int) - luminance(img)).max() <= 2
    back = ta.colour_jitter(rot, {"hue": -0.1})
    assert np.abs(back.astype(int) - img).max() <= 3
    grey = ta.greyscale(img)
    assert np.array_equal(ta.colour_jitter(grey, {"hue": 0.3, "saturation": 1.2}), grey)
    with pytest.raises(ValueError, match="jitter step"):
        ta.colour_jitter(img, {"gamma": 1.0}, ("gamma",))


def test_paths_use_independent_streams_and_optional_shared_generic():
    img = smooth_image(5)
    c1, _ = ta.task_augment_pair(img, ta.sample_rng(0, 3))
    c2, _ = ta.task_augment_pair(img, ta.sample_rng(0, 3), ta.TaskAugmentConfig(jpeg_p=1.0))
    assert np.array_equal(c1, c2)  # texture settings do not move the colour path
    shared = ta.TaskAugmentConfig(
        crop_p=1.0,
        jpeg_p=0.0,
        defocus_p=0.0,
        sharpen_grey_p=0.0,
        colour_ops=("channel_shuffle",),
        share_generic=True,
    )
    for t in range(4):
        colour, texture = ta.task_augment_pair(img, ta.sample_rng(1, t), shared)
        assert sorted(colour.reshape(-1, 3).sum(0)) == sorted(texture.reshape(-1, 3).sum(0))
    separate = ta.TaskAugmentConfig(**{**shared.__dict__, "share_generic": False})
    colour, texture = ta.task_augment_pair(img, ta.sample_rng(1, 0), separate)
    assert sorted(colour.reshape(-1, 3).sum(0)) != sorted(texture.reshape(-1, 3).sum(0))


def test_bad_inputs_and_config():
    with pytest.raises(ValueError, match="uint8"):
        ta.task_augment_pair(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        ta.random_generic(np.zeros((8, 8), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        ta.random_colour(np.zeros((8, 8, 1), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="jpeg_p"):
        ta.TaskAugmentConfig(jpeg_p=1.5)
    with pytest.raises(ValueError, match="colour_ops"):
        ta.TaskAugmentConfig(colour_ops=("sepia",))
    with pytest.raises(ValueError, match="jpeg_quality"):
        ta.TaskAugmentConfig(jpeg_quality=(50, 120))
    with pytest.raises(ValueError, match="crop_scale"):
        ta.TaskAugmentConfig(crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="unknown task augmentation option"):
        ta.TaskAugmentConfig.from_dict({"jpeg_prob": 0.3})
    cfg = ta.TaskAugmentConfig.from_dict({"jpeg_quality": [20, 40], "colour_ops": ["rgb_shift"]})
    assert cfg.jpeg_quality == (20, 40) and cfg.colour_ops == ("rgb_shift",)


def test_show_script_builds_the_grid():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "launch" / "show_task_augment.py"
    spec = importlib.util.spec_from_file_location("show_task_augment", path)
    show = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(show)
    rows = show.tiles(smooth_image(6, 32), seed=0)
    assert [len(r) for r in rows] == [5, 5, 5]
    assert all(img.shape == (32, 32, 3) and img.dtype == np.uint8 for r in rows for _, img in r)
    canvas = show.grid(rows, scale=1)
    assert canvas.size == (5 * 38 + 6, 3 * 58 + 6)
