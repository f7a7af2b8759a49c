"""Inference checkpoints: weights plus the model config as JSON, loadable without the
training config.

    DIR/model.json   {"model": {"name", "kwargs"}, "input_size", "channels", ...}
    DIR/weights/     Orbax checkpoint of {"params", "batch_stats"} (backbone only)

``hfrjax.load_embedder(DIR)`` returns an `Embedder` that maps uint8 images to L2-normalised
embeddings. The directory is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hfrjax import models
from hfrjax.losses import l2_normalize
from hfrjax.train.step import model_inputs

MODEL_JSON = "model.json"
WEIGHTS = "weights"
FORMAT_VERSION = 1


def export_embedder(
    directory: str | os.PathLike,
    *,
    model_cfg: dict,
    params: Any,
    batch_stats: Any,
    extra: dict | None = None,
) -> Path:
    """Writes an inference checkpoint of a backbone to ``directory`` (replacing it)."""
    directory = Path(directory).absolute()
    tmp = directory.with_name(directory.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tree = {"params": jax.device_get(params), "batch_stats": jax.device_get(batch_stats)}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / WEIGHTS, tree)
    kwargs = {k: v for k, v in dict(model_cfg.get("kwargs", {})).items() if k != "dtype"}
    meta = {
        "format_version": FORMAT_VERSION,
        "model": {"name": model_cfg["name"], "kwargs": _jsonable(kwargs)},
        "normalization": "(x - 127.5) / 127.5",
        **(extra or {}),
    }
    (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


class Embedder:
    """uint8 [N, H, W, C] images (or [-1, 1] floats) -> L2-normalised float32 embeddings."""

    def __init__(self, meta: dict, params: Any, batch_stats: Any):
        self.meta = meta
        self.backbone = models.get_model(meta["model"]["name"], **meta["model"]["kwargs"])
        self.params, self.batch_stats = params, batch_stats
        self.input_size = self.backbone.input_size
        self.channels = self.backbone.in_channels

        def embed(params, batch_stats, images):
            emb = self.backbone.apply(
                {"params": params, "batch_stats": batch_stats}, model_inputs(images), train=False
            )
            return l2_normalize(emb)

        self._embed = jax.jit(embed)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        want = (self.input_size, self.input_size, self.channels)
        if images.ndim != 4 or images.shape[1:] != want:
            raise ValueError(
                f"expected images of shape [N, {want[0]}, {want[1]}, {want[2]}], got {images.shape}"
            )
        return np.asarray(self._embed(self.params, self.batch_stats, jnp.asarray(images)))


def load_embedder(path: str | os.PathLike) -> Embedder:
    """Loads an inference checkpoint written by `export_embedder` (``launch/export.py``)."""
    path = Path(path).absolute()
    meta_path = path / MODEL_JSON
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path} not found: {path} is not an exported embedder "
            "(write one with launch/export.py)"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(path / WEIGHTS)
    return Embedder(meta, tree["params"], tree.get("batch_stats", {}))
