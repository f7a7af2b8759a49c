"""Inference checkpoints: weights plus the model config as JSON, loadable without the
training config.

    DIR/model.json   {"model": {"name", "kwargs"}, "input_size", "channels", ...}
    DIR/weights/     Orbax checkpoint of {"params", "batch_stats"} (backbone only)

``hfrjax.load_embedder(DIR)`` returns an `Embedder` that maps uint8 images to L2-normalised
embeddings. `load_weights` is the one way to read a model's weights back, from an export or
from a training workdir's checkpoint (``init_from``, evaluation).

Replacing an export is atomic: the new one is written under ``DIR.tmp-export``, the old one is
renamed to ``DIR.old-export``, the new one renamed in, then the old one deleted. A kill at any
point leaves either export complete; `load_embedder` finds the old one (or a complete new one)
if the kill fell between the two renames, and says so.
"""

from __future__ import annotations

import copy
import functools
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
    tmp = directory.with_name(directory.name + TMP_SUFFIX)
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
    old = directory.with_name(directory.name + OLD_SUFFIX)
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


OLD_SUFFIX = ".old-export"
TMP_SUFFIX = ".tmp-export"


def _resolve(path: Path) -> Path:
    """``path``, or the export a replacement interrupted between its two renames left."""
    if (path / MODEL_JSON).exists():
        return path
    for suffix, what in ((OLD_SUFFIX, "the previous export"), (TMP_SUFFIX, "the new export")):
        other = path.with_name(path.name + suffix)
        if (other / MODEL_JSON).exists() and (other / WEIGHTS).exists():
            import warnings

            warnings.warn(
                f"{path} is missing: a replacement of the export was interrupted; loading "
                f"{what} from {other} (export again to finish the replacement)",
                stacklevel=3,
            )
            return other
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


class Embedder:
    """uint8 [N, H, W, C] images (or [-1, 1] floats) -> L2-normalised float32 embeddings.

    Models that treat modalities differently (``model.takes_modality``, e.g. per-modality
    masks) take the images' modality: a name ("nir") or int32 [N] codes; default "vis".
    """

    takes_modality = True

    def __init__(self, meta: dict, variables: dict):
        self.meta = meta
        self.backbone = models.get_model(meta["model"]["name"], **meta["model"]["kwargs"])
        self.variables = variables
        self.params = variables.get("params", {})
        self.batch_stats = variables.get("batch_stats", {})
        self.input_size = self.backbone.input_size
        self.channels = self.backbone.in_channels
        with_modality = bool(getattr(self.backbone, "takes_modality", False))

        def embed(variables, images, modality):
            kw = {"modality": modality} if with_modality else {}
            emb = self.backbone.apply(variables, model_inputs(images), train=False, **kw)
            return l2_normalize(emb)

        self._embed = jax.jit(embed)

    def __call__(self, images: np.ndarray, modality: Any = None) -> np.ndarray:
        from hfrjax.eval.embedding import modality_codes

        images = np.asarray(images)
        size = self.input_size
        hw = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        want = (*hw, self.channels)
        if images.ndim != 4 or images.shape[1:] != want:
            raise ValueError(
                f"expected images of shape [N, {want[0]}, {want[1]}, {want[2]}], got {images.shape}"
            )
        codes = jnp.asarray(modality_codes(modality, len(images)))
        return np.asarray(self._embed(self.variables, jnp.asarray(images), codes))


def load_embedder(path: str | os.PathLike) -> Embedder:
    """Loads an inference checkpoint written by `export_embedder` (``launch/export.py``)."""
    meta, variables = _read_export(Path(path).absolute())
    return Embedder(meta, variables)


def _read_export(path: Path) -> tuple[dict, dict]:
    path = _resolve(path)
    meta_path = path / MODEL_JSON
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path} not found: {path} is not an exported embedder "
            "(write one with launch/export.py)"
        )
    from hfrjax.fileio import read_json

    meta = read_json(meta_path)
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(path / WEIGHTS)
    return meta, dict(tree)


def _host_copy(a) -> np.ndarray:
    out = np.array(a)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=2)
def _read_checkpoint(workdir: str, step: int, mtime_ns: int | None) -> tuple[dict, dict]:
    """(model config, variables as read-only host arrays) of a training checkpoint. Remembered
    by (workdir, step, the step's mtime): fine-tuning ten folds from one pretraining run reads
    its weights once."""
    from hfrjax.train import checkpoint as ckpt_lib
    from hfrjax.train.task import select_variables

    ck = ckpt_lib.Checkpointer(Path(workdir) / "checkpoints", async_save=False)
    try:
        _, raw, meta = ck.restore_untyped(step)
    finally:
        ck.close()
    spec = meta.get("export")
    if not spec:
        raise ValueError(f"checkpoint {workdir} step {step} records no export spec in its metadata")
    return spec["model"], jax.tree.map(_host_copy, select_variables(raw, spec["variables"]))


def load_weights(path: str | os.PathLike, step: int | None = None) -> tuple[dict, dict]:
    """(model config {"name", "kwargs"}, model variables) from an export directory or from a
    training workdir's latest (or given) checkpoint: the one weight loader of the library."""
    p = Path(path).absolute()
    if (_resolve(p) / MODEL_JSON).exists():
        meta, variables = _read_export(p)
        return meta["model"], variables
    if (p / "checkpoints").exists():
        from hfrjax.train import checkpoint as ckpt_lib

        if step is None:
            ck = ckpt_lib.Checkpointer(p / "checkpoints", async_save=False)
            try:
                step = ck.latest_readable_step()
            finally:
                ck.close()
            if step is None:
                raise FileNotFoundError(f"{p / 'checkpoints'} holds no readable checkpoint")
        step_dir = p / "checkpoints" / str(step)
        mtime = step_dir.stat().st_mtime_ns if step_dir.exists() else None
        model_cfg, variables = _read_checkpoint(str(p), step, mtime)
        # The caller's own containers and device arrays: a train step donates its state.
        return copy.deepcopy(model_cfg), jax.tree.map(jnp.array, variables)
    raise FileNotFoundError(
        f"{path} is neither an exported embedder (model.json) nor a training workdir (checkpoints/)"
    )


def export_from_workdir(workdir: str, out_dir: str, *, step: int | None = None) -> Path:
    """Writes an inference export of ``workdir``'s latest (or given) checkpoint."""
    model_cfg, variables = load_weights(workdir, step)
    return export_embedder(
        out_dir,
        model_cfg=model_cfg,
        params=variables.get("params", {}),
        batch_stats=variables.get("batch_stats", {}),
        extra={"source": str(Path(workdir).absolute())},
    )
