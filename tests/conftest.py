"""Shared fixtures: a tiny NIR-VIS dataset written in the library's on-disk format."""

import io

import numpy as np
import pytest
from PIL import Image

from hfrjax.data import tfrecord
from hfrjax.data.dataset import DatasetInfo


def encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return buf.getvalue()


def write_tiny_dataset(directory, *, num_ids=6, per_modality=3, size=16, num_shards=3, seed=0):
    """num_ids identities x per_modality images for each of vis (RGB) and nir (grey) as PNG.

    Each image's pixels encode (label, modality, index) so tests can recognise them.
    Returns the list of written Samples in write order.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for label in range(num_ids):
        for mod in ("vis", "nir"):
            for i in range(per_modality):
                c = 3 if mod == "vis" else 1
                img = rng.integers(0, 256, (size, size, c), dtype=np.uint8)
                img[0, 0, 0] = label
                img[0, 1, 0] = 0 if mod == "vis" else 1
                img[0, 2, 0] = i
                key = f"id{label:03d}/{mod}/{i:03d}"
                samples.append(
                    tfrecord.Sample(
                        image=encode_png(img),
                        label=label,
                        modality=mod,
                        identity=f"id{label:03d}",
                        key=key,
                        dataset="tiny",
                        image_format="png",
                    )
                )
    paths = tfrecord.write_shards(samples, directory, "data", num_shards)
    DatasetInfo(
        name="tiny",
        shards=[p.name for p in paths],
        num_images=len(samples),
        class_names=[f"id{i:03d}" for i in range(num_ids)],
        modalities={"vis": num_ids * per_modality, "nir": num_ids * per_modality},
        image_size=(size, size),
        image_format="png",
    ).save(directory)
    return samples


@pytest.fixture
def tiny_dataset(tmp_path):
    d = tmp_path / "tiny"
    samples = write_tiny_dataset(d)
    return d, samples
