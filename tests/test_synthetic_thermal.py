"""Tests of the synthetic thermal (LWIR) modality and the ARL-VTF-style thermal-visible set."""

from __future__ import annotations

import dataclasses
import io
import itertools

import numpy as np
import pytest
from PIL import Image

from hfrjax.data import dataset as dataset_lib
from hfrjax.data import protocol as protocol_lib
from hfrjax.data import synthetic, tfrecord
from hfrjax.data.synthetic import geometry, thermal

N_IDS = 16


def _frontal(seed: int, **overrides):
    """An identity, its heat signature, a frontal neutral capture (so face coordinates map
    to pixels by the face frame alone) and its thermal conditions."""
    rng = np.random.default_rng(1000 + seed)
    ident = synthetic.sample_identity(rng)
    sample = synthetic.sample_params(rng, "vis", synthetic.LAB_VARIATION, ident)
    sample = dataclasses.replace(
        sample,
        yaw=0.0,
        pitch=0.0,
        roll=0.0,
        scale=1.0,
        shift=(0.0, 0.0),
        smile=0.0,
        mouth_open=0.0,
        eye_open=1.0,
        glasses=False,
        **overrides,
    )
    traits = synthetic.sample_thermal_traits(rng)
    conditions = synthetic.sample_thermal_conditions(rng)
    return ident, traits, sample, conditions


def _pixel(u: float, v: float) -> tuple[int, int]:
    """(row, col) of face coordinates in a frontal 112 crop."""
    return (
        int(round(v * geometry.UNIT_112 + geometry.ORIGIN_112[1])),
        int(round(u * geometry.UNIT_112 + geometry.ORIGIN_112[0])),
    )


def _patch_mean(img: np.ndarray, u: float, v: float, r: int = 1) -> float:
    row, col = _pixel(u, v)
    return float(img[row - r : row + r + 1, col - r : col + r + 1].astype(np.float64).mean())


@pytest.fixture(scope="module")
def frontal_thermal():
    out = []
    for seed in range(N_IDS):
        ident, traits, sample, cond = _frontal(seed)
        img = synthetic.render_thermal(ident, traits, sample, cond)[..., 0]
        out.append((ident, traits, sample, cond, img))
    return out


def test_render_thermal_is_a_pure_single_channel_render():
    ident, traits, sample, cond = _frontal(0)
    img = synthetic.render_thermal(ident, traits, sample, cond)
    assert img.shape == (112, 112, 1) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, synthetic.render_thermal(ident, traits, sample, cond))
    assert synthetic.render_thermal(ident, traits, sample, cond, image_size=64).shape == (
        64,
        64,
        1,
    )
    assert img.std() > 20  # Not degenerate: face against a cooler room.
    with pytest.raises(ValueError, match="unknown thermal sensor"):
        synthetic.render_thermal(ident, traits, sample, cond, sensor="mwir")


def test_planck_radiance_round_trips_and_grows_with_temperature():
    t = np.linspace(-10.0, 60.0, 71)
    radiance = thermal.planck_radiance(t)
    assert np.all(np.diff(radiance) > 0)
    np.testing.assert_allclose(thermal.apparent_temperature(radiance), t, atol=2e-3)
    # Against Planck's law in float64 (h c / (lambda k) at 10 um = 1438.777 K).
    expected = 1.0 / np.expm1(1438.777 / (t + 273.15))
    np.testing.assert_allclose(radiance, expected, rtol=1e-4)


def test_no_colour_and_no_skin_texture_in_thermal():
    """Pigmentation (melanin, haemoglobin, freckles, moles, lip colour) changes the visible
    image but not one thermal pixel: skin emits as a near-black body whatever its colour."""
    ident, traits, sample, cond = _frontal(3)
    texture = ident.texture.copy()
    texture[..., :2] = np.random.default_rng(0).normal(0, 0.5, texture[..., :2].shape)
    other = dataclasses.replace(
        ident,
        melanin=3.0 if ident.melanin < 1.0 else 0.15,
        haemoglobin=0.6 if ident.haemoglobin < 0.4 else 0.18,
        lip_redness=3.5 if ident.lip_redness < 2.5 else 1.5,
        iris_melanin=4.0 if ident.iris_melanin < 1.0 else 0.08,
        texture=texture,
    )
    vis = [synthetic.render(i, sample, "vis", "vis_lab") for i in (ident, other)]
    assert np.abs(vis[0].astype(int) - vis[1]).mean() > 5
    np.testing.assert_array_equal(
        synthetic.render_thermal(ident, traits, sample, cond),
        synthetic.render_thermal(other, traits, sample, cond),
    )


def test_nose_tip_is_cooler_than_the_inner_eye_corners(frontal_thermal):
    canthus, nose = [], []
    for ident, _, _, _, img in frontal_thermal:
        corner = ident.eye_sep - 0.9 * ident.eye_w
        canthus.append(np.mean([_patch_mean(img, s * corner, ident.eye_v + 0.03) for s in (-1, 1)]))
        nose.append(_patch_mean(img, 0.0, ident.nose_tip))
    canthus, nose = np.array(canthus), np.array(nose)
    assert canthus.mean() > nose.mean() + 15
    assert (canthus > nose).mean() >= 0.85


def test_forehead_is_warmer_than_hair_and_the_room(frontal_thermal):
    forehead, hair, room = [], [], []
    for ident, _, _, _, img in frontal_thermal:
        forehead.append(_patch_mean(img, 0.0, ident.eye_v - ident.brow_gap - 0.5))
        room.append(float(img[:6, :6].mean()))
        if not ident.bald:  # Scalp hair above the head, inside the hair shell.
            hair.append(_patch_mean(img, 0.0, -ident.face_top - 0.4 * ident.hair_volume))
    assert np.mean(forehead) > np.mean(hair) + 30
    assert np.mean(hair) > np.mean(room) + 10  # Hair sits between skin and room.
    assert np.mean(forehead) > np.mean(room) + 80


def test_glasses_are_opaque_and_cold():
    colder, below_skin = [], []
    for seed in range(8):
        ident, traits, sample, cond = _frontal(seed)
        off = synthetic.render_thermal(ident, traits, sample, cond)[..., 0]
        on = synthetic.render_thermal(
            ident, traits, dataclasses.replace(sample, glasses=True), cond
        )[..., 0]
        lens = np.mean([_patch_mean(on, s * (ident.eye_sep + 0.04), ident.eye_v) for s in (-1, 1)])
        eyes = np.mean([_patch_mean(off, s * (ident.eye_sep + 0.04), ident.eye_v) for s in (-1, 1)])
        forehead = _patch_mean(on, 0.0, ident.eye_v - ident.brow_gap - 0.5)
        colder.append(eyes - lens)
        below_skin.append(forehead - lens)
    assert min(colder) > 40  # The warm eyes disappear behind the lenses.
    assert min(below_skin) > 40


def test_sensor_fixed_pattern_and_temporal_noise():
    """A uniform scene shows the camera's fixed pattern (the same in every frame at one crop
    position) plus temporal noise (different in every frame)."""
    sensor = thermal.THERMAL_SENSORS["lwir"]
    flat = thermal.planck_radiance(np.full((1, 112, 112), 30.0, np.float32))
    base = dict(ambient=22.0, nose_cooling=0.0, breath=0.0, flush=0.0, agc_plateau_scale=1.0)
    frames = [
        thermal.thermal_camera(
            flat, thermal.ThermalConditions(fpn_offset=(3, 5), noise_seed=s, **base), sensor, 112
        )[..., 0].astype(np.float64)
        for s in (1, 2)
    ]
    moved = thermal.thermal_camera(
        flat, thermal.ThermalConditions(fpn_offset=(9, 0), noise_seed=1, **base), sensor, 112
    )[..., 0].astype(np.float64)
    assert frames[0].std() > 10 and not np.array_equal(frames[0], frames[1])
    same_pattern = np.corrcoef(frames[0].ravel(), frames[1].ravel())[0, 1]
    other_position = np.corrcoef(frames[0].ravel(), moved.ravel())[0, 1]
    assert same_pattern > 0.6 and same_pattern > other_position + 0.3
    # Column stripes: column means vary far more than white noise of the same variance would.
    col_means = frames[0].mean(0)
    assert col_means.std() > 3 * frames[0].std() / np.sqrt(112)


def test_thermal_images_have_low_resolution(frontal_thermal):
    """Re-sampling to the sensor's native grid and back changes a thermal image much less
    than a visible image of the same capture: it holds no detail finer than the sensor."""
    native = round(112 * thermal.THERMAL_SENSORS["lwir"].resolution)

    def resample_error(img: np.ndarray) -> float:
        f = Image.fromarray(img.astype(np.float32))
        back = f.resize((native, native), Image.Resampling.BOX).resize(
            (112, 112), Image.Resampling.BILINEAR
        )
        return float(np.abs(np.asarray(back) - img).mean() / (img.std() + 1e-6))

    t_err, v_err = [], []
    for ident, _, sample, _, img in frontal_thermal[:6]:
        vis = synthetic.render(ident, sample, "vis", "vis_lab").astype(np.float32).mean(-1)
        t_err.append(resample_error(img.astype(np.float32)))
        v_err.append(resample_error(vis))
    assert np.mean(t_err) < 0.5 * np.mean(v_err)


# ------------------------------------------------------------------------------------------
# The thermal-visible set and its ARL-VTF-style protocol.


@pytest.fixture(scope="module")
def thermal_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("thermal")
    synthetic.generate(out, "thermal_tiny", seed=5, workers=1)
    return out / "thermal_vis"


def test_thermal_vis_dataset_is_readable(thermal_dir):
    config = synthetic.PRESETS["thermal_tiny"]
    spec = config.thermal_vis
    ds = dataset_lib.Dataset.open(thermal_dir)
    assert ds.info.num_images == spec.num_images == len(ds.records)
    assert ds.info.modalities["vis"] == ds.info.modalities["thermal"] == spec.num_images // 2
    assert set(ds.records.modality) == {"vis", "thermal"}
    # Stored thermal images (PNG, lossless) are exactly the renders; single channel.
    wearers = synthetic.glasses_wearers(spec, 5)
    rendered = synthetic.render_thermal_vis_images(spec, 5, 1, 1 in wearers)
    thermal_images = [img for m, img in rendered if m == "thermal"]
    stored = {}
    for shard in ds.info.shards:
        for payload in tfrecord.iter_records(thermal_dir / shard):
            sample = tfrecord.decode_example(payload)
            if sample.identity == "tvf00001" and sample.modality == "thermal":
                assert sample.image_format == "png"
                stored[sample.key] = np.array(Image.open(io.BytesIO(sample.image)))
    assert len(stored) == len(thermal_images)
    for k, img in enumerate(thermal_images):
        assert stored[f"tvf00001/thermal/{k:03d}"].ndim == 2
        np.testing.assert_array_equal(stored[f"tvf00001/thermal/{k:03d}"], img[..., 0])


def test_arlvtf_protocol_structure(thermal_dir):
    spec = synthetic.PRESETS["thermal_tiny"].thermal_vis
    ds = dataset_lib.Dataset.open(thermal_dir)
    proto = protocol_lib.Protocol.load(thermal_dir)
    assert (proto.gallery_modality, proto.probe_modality) == ("vis", "thermal")
    expected_names = [
        f"{p}|{g}" for p, g in itertools.product(synthetic.PROBE_SETS, synthetic.GALLERY_SETS)
    ]
    assert proto.fold_names == expected_names and proto.num_folds == 10
    assert "P_TB0|G_VB0-" in proto.fold_names
    modality_of = dict(zip(ds.records.key, ds.records.modality))
    identity = lambda key: key.split("/")[0]  # noqa: E731
    index = lambda key: int(key.split("/")[2])  # noqa: E731
    names = ds.info.class_names
    train_ids = set(names[: spec.num_train_ids])
    test_ids = set(names[spec.num_train_ids :])
    wearers = {names[i] for i in synthetic.glasses_wearers(spec, 5)}
    assert wearers & test_ids and test_ids - wearers  # Both kinds of test subject exist.
    captures = {
        n: synthetic.thermal_vis_captures(spec, 5, i, n in wearers)[2] for i, n in enumerate(names)
    }
    for name, fold in zip(proto.fold_names, proto.folds):
        probe_set, gallery_set = name.split("|")
        ds.records.select_keys(fold.train_keys + fold.gallery + fold.probe)  # All keys exist.
        # Training identities are disjoint from the test ones; training has both modalities.
        assert {identity(k) for k in fold.train_keys} == train_ids
        assert sorted(fold.train) == ["thermal", "vis"]
        assert all(modality_of[k] == m for m, keys in fold.train.items() for k in keys)
        assert len(fold.train["vis"]) == len(fold.train["thermal"]) > 0
        # Gallery: exactly one visible baseline image per test identity.
        assert sorted(identity(k) for k in fold.gallery) == sorted(test_ids)
        for key in fold.gallery:
            c = captures[identity(key)][index(key)]
            assert modality_of[key] == "vis" and c.condition == "B"
            assert c.sample.glasses == (gallery_set == "G_VB0+" and identity(key) in wearers)
        # Probes: thermal images of the set's condition and eyewear, never a gallery twin.
        assert fold.probe, name
        condition, eyewear = probe_set[3], probe_set[4]
        twins = {(identity(k), index(k)) for f in proto.folds for k in f.gallery}
        for key in fold.probe:
            c = captures[identity(key)][index(key)]
            assert modality_of[key] == "thermal" and identity(key) in test_ids
            assert (c.condition, c.eyewear) == (condition, eyewear)
            assert (identity(key) in wearers) == (eyewear != "0")
            assert c.sample.glasses == (eyewear == "+")
            assert (identity(key), index(key)) not in twins
    # Each probe set has the same probes whichever gallery it is matched to.
    by_probe = {}
    for name, fold in zip(proto.fold_names, proto.folds):
        by_probe.setdefault(name.split("|")[0], []).append(fold.probe)
    assert all(a == b for a, b in by_probe.values())


def test_expression_probes_have_expressions_and_baseline_is_neutral():
    spec = synthetic.PRESETS["thermal_tiny"].thermal_vis
    expressive = []
    for i in range(spec.num_ids):
        _, _, captures = synthetic.thermal_vis_captures(spec, 0, i, wearer=i % 2 == 0)
        for c in captures:
            s = c.sample
            if c.condition == "B":
                assert s.smile == s.mouth_open == s.brow_raise == 0.0 and s.eye_open == 1.0
                assert abs(np.degrees(s.yaw)) <= 8.0 + 1e-9
            else:
                expressive.append(s.smile > 0 or s.mouth_open > 0 or s.brow_raise != 0)
                assert s.eye_open < 1.0
    assert np.mean(expressive) >= 0.5  # ~88 % expected (smile 60 %, mouth 40 %, brows 50 %).


def test_make_arlvtf_protocol_rejects_overlapping_identities():
    plans = {"a": synthetic.capture_plan(synthetic.PRESETS["thermal_tiny"].thermal_vis, False)}
    with pytest.raises(ValueError, match="both in training and test"):
        synthetic.make_arlvtf_protocol("p", ["a"], ["a"], plans)


def test_thermal_vis_spec_validates_sizes():
    spec = synthetic.PRESETS["thermal_tiny"].thermal_vis
    with pytest.raises(ValueError, match="baseline_per_condition"):
        dataclasses.replace(spec, baseline_per_condition=1)
    with pytest.raises(ValueError, match="test identities"):
        dataclasses.replace(spec, num_test_ids=1)
