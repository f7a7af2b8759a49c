"""Shared fixtures: a tiny NIR-VIS dataset written in the library's on-disk format.

Also a compilation cache for the whole run: many tests build the same tiny model, training
step or evaluation, and XLA's CPU compilations (threefry initialisers above all) are most of
their time. JAX's persistent cache reuses an identical executable instead of compiling it again;
the code under test is still traced and lowered every time. The cache lives in a fresh
temporary folder (removed at exit), so every run starts cold and nothing outlives it; xdist
workers and subprocesses inherit it through the environment and share it (a size limit turns
on JAX's file lock). ``HFRJAX_TEST_COMPILE_CACHE=0`` turns it off; a ``JAX_COMPILATION_CACHE_DIR``
already set is used as it is.
"""

import atexit
import io
import os
import shutil
import tempfile

if os.environ.get("HFRJAX_TEST_COMPILE_CACHE", "1") != "0":
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        _cache_dir = tempfile.mkdtemp(prefix="hfrjax_test_jax_cache_")
        atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from hfrjax.data import tfrecord  # noqa: E402
from hfrjax.data.dataset import DatasetInfo  # noqa: E402

if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # Also if jax was imported before this file.
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    for _name in ("persistent_cache_min_compile_time_secs", "compilation_cache_max_size"):
        _value = os.environ.get(f"JAX_{_name.upper()}")
        if _value is not None:
            jax.config.update(f"jax_{_name}", type(getattr(jax.config, f"jax_{_name}"))(_value))


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
