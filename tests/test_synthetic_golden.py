"""Pinned output of the synthetic generator's ``tiny`` preset (seed 3), so that drift is caught.

Refactors of `hfrjax.data.synthetic` must leave the images and protocols of the existing presets
unchanged: the quickstart's and the README's numbers are computed on them. The pins are

* per identity, the sha256 of its rendered uint8 images (exactly what `generate` encodes), and
  each image's mean with a tolerance: a mean off by more than the tolerance is a real change of
  the generator; a hash mismatch with every mean in tolerance is a last-bit numeric difference
  (another numpy or CPU), or a very local change, and needs a look before re-pinning;
* the sha256 of each set's ``dataset.json`` and protocol lists (pure random draws and text, no
  floating-point rendering, no image encoder).

Shard bytes are not pinned: they also depend on the JPEG and PNG encoders' versions.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from hfrjax.data import synthetic

_SEED = 3

# (set index, identity index) -> (sha256 of its images, [(modality, mean pixel value)]).
_IMAGES = {
    (0, 0): (
        "93665f305ae68f1fb1b128367694fda3682c0a7ad96a6fe6b0b3be098baad1e8",
        [("vis", 155.566), ("vis", 126.899), ("vis", 126.78), ("vis", 131.551)],
    ),
    (1, 2): (
        "6660db2d9acfb0c5999848a17e95cebeb349f498b31dd5d9e5a7cff7c8756b5b",
        [("vis", 116.071), ("vis", 115.091), ("nir", 83.443), ("nir", 82.776)],
    ),
    (2, 1): (
        "0676a11d0982df9bf8071e1f7fdbeb9b00e37feaf746de749884d0c61cdd983d",
        [("vis", 125.52), ("vis", 69.276), ("nir", 85.766), ("nir", 93.108)],
    ),
}

# Set directory -> (sha256 of dataset.json, sha256 of its protocol files, None: no protocol).
_FILES = {
    "source": ("fa54428a19ff2b6ce7830b07821537490a34458d548470af73b8a2de462760f9", None),
    "target": (
        "4699e16e2d4f037301bb2f8c16007ca857d48fd52b7e6a6b287e9792ae9c6e9b",
        "5fedbe2c3bdc13166e260a674012d2d3b61fc8325ff0d1e97013b48fe592797c",
    ),
    "target_cross": (
        "1271abe603c1d0c8b1635e69ee1e68aac2ca8da0038cd8719002700363502ccd",
        "3cf9f7ed1309c7c0804857ce7ebda480bc64f384012e4d3ee8a94301cd10f73e",
    ),
}


def _images_sha256(images) -> str:
    h = hashlib.sha256()
    for modality, image in images:
        h.update(modality.encode())
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def _protocol_sha256(directory) -> str:
    h = hashlib.sha256()
    for path in sorted((directory / "protocols").iterdir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@pytest.mark.parametrize("set_index,identity_index", sorted(_IMAGES))
def test_tiny_preset_images_are_pinned(set_index, identity_index):
    spec = synthetic.PRESETS["tiny"].sets[set_index]
    _, images = synthetic.render_identity_images(spec, _SEED, set_index, identity_index)
    expected_hash, expected_means = _IMAGES[(set_index, identity_index)]
    assert [m for m, _ in images] == [m for m, _ in expected_means]
    means = [round(float(image.mean()), 3) for _, image in images]
    np.testing.assert_allclose(
        means,
        [mean for _, mean in expected_means],
        atol=0.02,
        err_msg="the generator's images changed (image means moved)",
    )
    assert _images_sha256(images) == expected_hash, (
        "image means agree but the pixels differ: last-bit numerics (numpy/CPU) or a very "
        "local change of the renderer"
    )


def test_tiny_preset_dataset_and_protocol_files_are_pinned(tmp_path):
    synthetic.generate(tmp_path, "tiny", seed=_SEED, workers=1)
    for directory, (info_hash, protocol_hash) in _FILES.items():
        d = tmp_path / directory
        assert hashlib.sha256((d / "dataset.json").read_bytes()).hexdigest() == info_hash, d
        if protocol_hash is None:
            assert not (d / "protocols").exists()
        else:
            assert _protocol_sha256(d) == protocol_hash, d
