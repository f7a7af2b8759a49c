"""Tests of the synthetic NIR-VIS face generator (hfrjax.data.synthetic)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image
from scipy import ndimage

from hfrjax.data import dataset as dataset_lib
from hfrjax.data import protocol as protocol_lib
from hfrjax.data import synthetic, tfrecord

SETS = ("source", "target", "target_cross")
_REPO = Path(__file__).resolve().parents[1]


def _identity_and_sample(
    seed: int, modality: str = "nir", variation: synthetic.Variation = synthetic.LAB_VARIATION
):
    rng = np.random.default_rng(seed)
    ident = synthetic.sample_identity(rng)
    return ident, synthetic.sample_params(rng, modality, variation, ident)


# ------------------------------------------------------------------------------------------
# Rendering as pure functions.


def test_render_shapes_dtypes_and_purity():
    ident, sample = _identity_and_sample(0)
    vis = synthetic.render(ident, sample, "vis", "vis_lab")
    nir = synthetic.render(ident, sample, "nir", "nir850")
    assert vis.shape == (112, 112, 3) and vis.dtype == np.uint8
    assert nir.shape == (112, 112, 1) and nir.dtype == np.uint8
    np.testing.assert_array_equal(nir, synthetic.render(ident, sample, "nir", "nir850"))
    small = synthetic.render(ident, sample, "vis", "vis_lab", image_size=64)
    assert small.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="cannot capture"):
        synthetic.render(ident, sample, "vis", "nir850")


def test_images_are_not_degenerate():
    ident, sample = _identity_and_sample(1, "vis")
    vis = synthetic.render(ident, sample, "vis", "vis_web")
    assert 40 < vis.mean() < 220 and vis.std() > 15
    assert (vis == 255).mean() < 0.05 and (vis == 0).mean() < 0.05


def test_landmarks_stay_near_the_arcface_template():
    errors = []
    for seed in range(20):
        ident, sample = _identity_and_sample(seed, "vis")
        frontal = dataclasses.replace(
            sample,
            yaw=0.0,
            pitch=0.0,
            roll=0.0,
            scale=1.0,
            shift=(0.0, 0.0),
            smile=0.0,
            mouth_open=0.0,
        )
        pts = synthetic.landmarks(ident, frontal)
        errors.append(np.linalg.norm(pts - synthetic.ARCFACE_TEMPLATE_112, axis=1))
    errors = np.array(errors)
    assert errors.mean() < 4.0 and errors.max() < 9.0
    # Scaled with the crop size.
    ident, sample = _identity_and_sample(0, "vis")
    np.testing.assert_allclose(
        synthetic.landmarks(ident, sample, 224),
        2 * synthetic.landmarks(ident, sample, 112),
        rtol=1e-5,
    )


def test_pigment_model_nir_is_weakly_governed_by_melanin():
    bands = range(len(synthetic.BANDS))
    light, dark = (synthetic.skin_reflectance(m, 0.3, bands) for m in (0.2, 3.0))
    ratio = dark / light  # R, G, B, NIR850, NIR940
    assert ratio[2] < ratio[1] < ratio[0] < ratio[3] <= ratio[4] + 1e-6
    assert ratio[3] > 0.6 and ratio[2] < 0.15


# ------------------------------------------------------------------------------------------
# Image statistics: NIR vs VIS as designed.

_FACE = (slice(35, 95), slice(32, 80))


def _noise(img: np.ndarray) -> float:
    g = img.astype(np.float32).mean(-1)
    return float(np.median(np.abs(g - ndimage.uniform_filter(g, 3))))


def _centre_to_corners(img: np.ndarray) -> float:
    g = img.astype(np.float32).mean(-1)
    corners = np.concatenate([g[:12, :12].ravel(), g[:12, -12:].ravel()])
    return float(g[40:72, 40:72].mean() / (corners.mean() + 1.0))


@pytest.fixture(scope="module")
def paired_captures():
    """(VIS, NIR850, NIR940, independent VIS) captures of 16 identities; the first three
    share one pose/expression so that pixels correspond."""
    out = []
    for seed in range(16):
        rng = np.random.default_rng(100 + seed)
        ident = synthetic.sample_identity(rng)
        shared = synthetic.sample_params(rng, "nir", synthetic.LAB_VARIATION, ident)
        own_vis = synthetic.sample_params(rng, "vis", synthetic.LAB_VARIATION, ident)
        out.append(
            (
                synthetic.render(ident, shared, "vis", "vis_lab"),
                synthetic.render(ident, shared, "nir", "nir850"),
                synthetic.render(ident, shared, "nir", "nir940"),
                synthetic.render(ident, own_vis, "vis", "vis_lab"),
            )
        )
    return out


def test_nir_correlates_with_the_red_channel_more_than_blue(paired_captures):
    corr_r, corr_b = [], []
    for vis, nir, _, _ in paired_captures:
        n = nir[_FACE][..., 0].ravel().astype(np.float32)
        corr_r.append(np.corrcoef(n, vis[_FACE][..., 0].ravel())[0, 1])
        corr_b.append(np.corrcoef(n, vis[_FACE][..., 2].ravel())[0, 1])
    corr_r, corr_b = np.array(corr_r), np.array(corr_b)
    assert corr_r.mean() > corr_b.mean() + 0.15
    assert (corr_r > corr_b).mean() >= 0.85


def test_vis_has_colour_nir_has_one_band(paired_captures):
    for vis, nir, _, _ in paired_captures:
        assert nir.shape[-1] == 1
        # Colour information: the channels of a VIS capture clearly differ.
        assert np.abs(vis[..., 0].astype(float) - vis[..., 2]).mean() > 8


def test_nir_active_illumination_and_sensor_noise(paired_captures):
    vis_centre = np.median([_centre_to_corners(c[3]) for c in paired_captures])
    nir_centre = np.median([_centre_to_corners(c[1]) for c in paired_captures])
    assert nir_centre > 3 * vis_centre  # LED: bright centre, dark far background.
    vis_noise = np.median([_noise(c[3]) for c in paired_captures])
    nir_noise = np.median([_noise(c[1]) for c in paired_captures])
    assert nir_noise > 2 * vis_noise


def test_cross_sensor_is_noisier_and_flatter(paired_captures):
    contrast = lambda img: float(img[_FACE].astype(np.float32).std())
    c850 = np.median([contrast(c[1]) for c in paired_captures])
    c940 = np.median([contrast(c[2]) for c in paired_captures])
    snr850 = np.median([contrast(c[1]) / _noise(c[1]) for c in paired_captures])
    snr940 = np.median([contrast(c[2]) / _noise(c[2]) for c in paired_captures])
    assert c940 < 0.9 * c850
    assert snr940 < 0.85 * snr850


def _pixel_feature(img: np.ndarray, cells: int = 16) -> np.ndarray:
    g = img.astype(np.float32).mean(-1)[8:104, 8:104]
    f = g.reshape(cells, 96 // cells, cells, 96 // cells).mean((1, 3)).ravel()
    f -= f.mean()
    return f / np.linalg.norm(f)


def test_identity_signal_and_domain_gap():
    spec = dataclasses.replace(synthetic.PRESETS["quickstart"].target, vis_per_id=3, nir_per_id=3)
    n_ids = 30
    vis, nir = [], []
    for i in range(n_ids):
        _, images = synthetic.render_identity_images(spec, seed=7, set_index=1, identity_index=i)
        vis += [_pixel_feature(im) for m, im in images if m == "vis"]
        nir += [_pixel_feature(im) for m, im in images if m == "nir"]
    vis, nir = np.stack(vis), np.stack(nir)
    labels = np.repeat(np.arange(n_ids), 3)
    sim = vis @ vis.T
    same = labels[:, None] == labels[None]
    off_diag = ~np.eye(len(labels), dtype=bool)
    assert sim[same & off_diag].mean() > sim[~same].mean() + 0.1
    np.fill_diagonal(sim, -np.inf)
    vis_to_vis = (labels[sim.argmax(1)] == labels).mean()
    nir_to_vis = (labels[(nir @ vis.T).argmax(1)] == labels).mean()
    chance = 1.0 / n_ids
    assert vis_to_vis > 5 * chance
    assert nir_to_vis < vis_to_vis - 0.15


# ------------------------------------------------------------------------------------------
# Generation: files, protocol, determinism.


def _tiny(**overrides) -> synthetic.SynthConfig:
    return dataclasses.replace(synthetic.PRESETS["tiny"], **overrides)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "w1"
    synthetic.generate(out, "tiny", seed=3, workers=1)
    return out


def test_generate_writes_three_readable_datasets(tiny_dir):
    config = synthetic.PRESETS["tiny"]
    summary = json.loads((tiny_dir / "synth.json").read_text())
    assert summary["preset"] == "tiny" and summary["seed"] == 3
    assert summary["images"] == sum(s.num_images for s in config.sets)
    for directory, spec in zip(SETS, config.sets):
        ds = dataset_lib.Dataset.open(tiny_dir / directory)
        info = ds.info
        assert info.name == spec.name and info.num_classes == spec.num_ids
        assert info.num_images == spec.num_images == len(ds.records)
        assert info.image_size == (112, 112)
        assert len(info.shards) == spec.num_shards
        assert info.class_names == [f"{spec.id_prefix}{i:05d}" for i in range(spec.num_ids)]
        expected = {"vis": spec.num_ids * spec.vis_per_id, "nir": spec.num_ids * spec.nir_per_id}
        assert info.modalities == {m: n for m, n in expected.items() if n}
        for m, n in info.modalities.items():
            assert (ds.records.modality == m).sum() == n
        assert sorted(set(ds.records.label.tolist())) == list(range(spec.num_ids))
        assert summary["sets"][directory]["images"] == info.modalities


def test_records_decode_to_the_stored_format(tiny_dir):
    ds = dataset_lib.Dataset.open(tiny_dir / "target")
    assert ds.info.extra["image_formats"] == {"vis": "jpeg", "nir": "png"}
    seen = set()
    for shard in ds.info.shards:
        for payload in tfrecord.iter_records(tiny_dir / "target" / shard):
            sample = tfrecord.decode_example(payload)
            identity, modality, _ = sample.key.split("/")
            assert identity == sample.identity and modality == sample.modality
            assert ds.info.class_names[sample.label] == sample.identity
            if sample.modality == "vis":
                assert sample.image_format == "jpeg"
                assert simplejpeg.decode_jpeg(sample.image).shape == (112, 112, 3)
            else:
                assert sample.image_format == "png"
                img = Image.open(io.BytesIO(sample.image))
                assert img.mode == "L" and img.size == (112, 112)
            seen.add(sample.modality)
    assert seen == {"vis", "nir"}


def test_stored_nir_images_are_regenerated_exactly_from_the_seed(tiny_dir):
    # PNG is lossless, so a stored NIR image equals a fresh render of its captured parameters.
    config = synthetic.PRESETS["tiny"]
    info = dataset_lib.DatasetInfo.load(tiny_dir / "target")
    ident, captures = synthetic.identity_captures(
        config.target, seed=3, set_index=1, identity_index=2
    )
    nir_params = [p for m, p in captures if m == "nir"]
    assert len(captures) == config.target.vis_per_id + config.target.nir_per_id
    stored = {}
    for shard in info.shards:
        for payload in tfrecord.iter_records(tiny_dir / "target" / shard):
            sample = tfrecord.decode_example(payload)
            if sample.identity == "tgt00002" and sample.modality == "nir":
                stored[sample.key] = np.array(Image.open(io.BytesIO(sample.image)))
    for k, params in enumerate(nir_params):
        expected = synthetic.render(ident, params, "nir", config.target.nir_sensor)
        np.testing.assert_array_equal(stored[f"tgt00002/nir/{k:03d}"], expected[..., 0])


@pytest.mark.parametrize("directory", ["target", "target_cross"])
def test_protocol_is_casia_view2_like(tiny_dir, directory):
    ds = dataset_lib.Dataset.open(tiny_dir / directory)
    proto = protocol_lib.Protocol.load(tiny_dir / directory)
    assert proto.num_folds == 10
    assert (proto.gallery_modality, proto.probe_modality) == ("vis", "nir")
    modality_of = dict(zip(ds.records.key, ds.records.modality))
    all_ids = set(ds.info.class_names)
    identity = lambda key: key.split("/")[0]
    nir_of = {
        i: sorted(k for k, m in modality_of.items() if m == "nir" and identity(k) == i)
        for i in all_ids
    }
    vis_of = {
        i: sorted(k for k, m in modality_of.items() if m == "vis" and identity(k) == i)
        for i in all_ids
    }
    splits = set()
    for fold in proto.folds:
        train_ids = {identity(k) for k in fold.train_keys}
        test_ids = {identity(k) for k in fold.gallery}
        assert not train_ids & test_ids
        assert train_ids | test_ids == all_ids
        assert abs(len(train_ids) - len(test_ids)) <= 1
        assert sorted(fold.train["vis"]) == sorted(k for i in train_ids for k in vis_of[i])
        assert sorted(fold.train["nir"]) == sorted(k for i in train_ids for k in nir_of[i])
        assert len(fold.gallery) == len(test_ids)  # Exactly one VIS image per test identity.
        assert all(modality_of[k] == "vis" for k in fold.gallery)
        assert sorted(fold.probe) == sorted(k for i in test_ids for k in nir_of[i])
        ds.records.select_keys(fold.train_keys + fold.gallery + fold.probe)  # Keys exist.
        splits.add(frozenset(test_ids))
        if directory == "target_cross":  # Neutral frontal capture as the gallery.
            assert all(k.endswith("/vis/000") for k in fold.gallery)
    assert len(splits) > 1  # Folds are different random splits.


def test_identities_are_disjoint_across_sets(tiny_dir):
    names = [set(dataset_lib.DatasetInfo.load(tiny_dir / d).class_names) for d in SETS]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    datasets = {dataset_lib.DatasetInfo.load(tiny_dir / d).name for d in SETS}
    assert datasets == {"synth_source", "synth_nirvis", "synth_nirvis_cross"}


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "synth.json"
    }


def test_output_is_byte_identical_for_any_worker_count(tiny_dir, tmp_path):
    synthetic.generate(tmp_path, "tiny", seed=3, workers=2)
    ours, theirs = _files(tiny_dir), _files(tmp_path)
    assert sorted(ours) == sorted(theirs)
    assert any(name.endswith(".tfrecord") for name in ours)
    for name in ours:
        assert ours[name] == theirs[name], name


def test_output_is_byte_identical_across_processes(tiny_dir, tmp_path):
    # Another interpreter (other hash seed) must write the very same bytes.
    code = (
        "import sys; from hfrjax.data import synthetic; "
        "synthetic.generate(sys.argv[1], 'tiny', seed=3, workers=1)"
    )
    env = {
        **os.environ,
        "PYTHONHASHSEED": "12345",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])),
    }
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env)
    ours, theirs = _files(tiny_dir), _files(tmp_path)
    assert sorted(ours) == sorted(theirs)
    assert [n for n in ours if ours[n] != theirs[n]] == []


def test_seed_changes_the_images_and_config_overrides(tiny_dir, tmp_path):
    small = _tiny(
        source=dataclasses.replace(synthetic.PRESETS["tiny"].source, num_ids=3),
        target=dataclasses.replace(synthetic.PRESETS["tiny"].target, num_ids=4),
        cross=dataclasses.replace(synthetic.PRESETS["tiny"].cross, num_ids=2),
    )
    summary = synthetic.generate(tmp_path / "s4", seed=4, workers=1, config=small)
    assert summary["preset"] == "custom"
    assert summary["sets"]["source"]["identities"] == 3
    again = _files(tmp_path / "s4")
    synthetic.generate(tmp_path / "s4b", seed=4, workers=1, config=small)
    assert _files(tmp_path / "s4b") == again
    reference = _files(tiny_dir)
    shard = "target/data-00000-of-00002.tfrecord"
    assert again[shard] != reference[shard]


def test_make_protocol_first_gallery_and_sizes():
    ids = [f"id{i:02d}" for i in range(7)]
    vis = {i: [f"{i}/vis/{k:03d}" for k in range(3)] for i in ids}
    nir = {i: [f"{i}/nir/{k:03d}" for k in range(2)] for i in ids}
    proto = synthetic.make_protocol("p", ids, vis, nir, 10, np.random.default_rng(0), "first")
    for fold in proto.folds:
        assert len(fold.gallery) == 4 and all(k.endswith("/vis/000") for k in fold.gallery)
        assert len(fold.probe) == 8 and len(fold.train["vis"]) == 9
    with pytest.raises(ValueError):
        synthetic.make_protocol("p", ids[:1], vis, nir, 10, np.random.default_rng(0))


def test_presets_have_the_documented_scale():
    quick = synthetic.PRESETS["quickstart"]
    assert quick.image_size == 112
    assert [s.num_shards for s in quick.sets] == [4, 4, 4]
    assert quick.source.nir_per_id == 0 and quick.source.num_folds == 0
    assert sum(s.num_images for s in quick.sets) < 8000
    assert synthetic.PRESETS["small"].source.num_ids >= 2000
    assert synthetic.PRESETS["large"].source.num_ids >= 10000
    assert synthetic.preset_config("quickstart", image_size=128).image_size == 128
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        synthetic.preset_config("huge")


def test_cli_synth_renders_at_the_requested_size(tmp_path, capsys):
    from hfrjax.cli import main as cli_main

    assert cli_main(["synth", "--out", str(tmp_path), "--preset", "tiny", "--image_size", "40",
                     "--workers", "1"]) == 0  # fmt: skip
    for name in ("source", "target"):
        ds = dataset_lib.Dataset.open(tmp_path / name)
        assert ds.info.image_size == (40, 40)
        shard = tmp_path / name / ds.info.shards[0]
        sample = tfrecord.decode_example(next(iter(tfrecord.iter_records(shard))))
        assert Image.open(io.BytesIO(sample.image)).size == (40, 40)
