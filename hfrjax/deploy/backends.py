"""One interface over the three model formats: hfrjax Flax exports, ONNX (onnxruntime) and
serialized JAX exports.

``load_model(path)`` returns an `EmbeddingModel`: ``embed(images)`` maps uint8 face crops
[N, H, W, C] to L2-normalised float32 [N, D] embeddings whatever the format, so the
command-line tools (`hfrjax embed | verify | search`) and the benchmark treat them alike.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from hfrjax.deploy.conventions import (
    METADATA_KEY,
    InputConvention,
    infer_convention,
)

FLAX, ONNX, JAX = "flax", "onnx", "jax"


from hfrjax.eval.embedding import l2_normalize  # noqa: E402,F401 - the one host normaliser.


class ModelFormatError(ValueError):
    """A path that is not a face-embedding model this library can run; the message says why."""


class EmbeddingModel:
    """uint8 face crops -> embeddings, for one loaded model (see `load_model`)."""

    kind: str = ""

    def __init__(self, path: Path, convention: InputConvention, embedding_dim: int):
        self.path = Path(path)
        self.convention = convention
        self.embedding_dim = int(embedding_dim)

    @property
    def input_size(self) -> int:
        return self.convention.size

    @property
    def channels(self) -> int:
        return self.convention.channels

    def describe(self) -> str:
        return (
            f"{self.kind} model {self.path} ({self.input_size}x{self.input_size}x{self.channels}"
            f" -> {self.embedding_dim}-d)"
        )

    def check_images(self, images: Any) -> np.ndarray:
        x = np.asarray(images)
        want = (self.input_size, self.input_size, self.channels)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(
                f"{self.describe()} takes uint8 images [N, {want[0]}, {want[1]}, {want[2]}]; "
                f"got an array of shape {x.shape}"
                + (
                    f" ({x.shape[-1]} channels instead of {self.channels})"
                    if x.ndim == 4 and x.shape[1:3] == want[:2]
                    else ""
                )
            )
        if x.dtype != np.uint8:
            raise ValueError(f"{self.describe()} takes uint8 images (0..255), got {x.dtype}")
        return x

    def embed_raw(self, images: np.ndarray) -> np.ndarray:
        """Un-normalised float32 [N, D] embeddings of uint8 [N, H, W, C] images."""
        x = self.check_images(images)
        if len(x) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        out = np.asarray(self._run(x), np.float32)
        if out.shape != (len(x), self.embedding_dim):
            raise RuntimeError(
                f"{self.describe()} returned shape {out.shape} for {len(x)} images"
            )
        return out

    def embed(self, images: np.ndarray) -> np.ndarray:
        """L2-normalised float32 [N, D] embeddings (cosine similarity = dot product)."""
        return l2_normalize(self.embed_raw(images))

    def _run(self, images: np.ndarray) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 of the model's bytes (for calibration files and resumable runs)."""
        h = hashlib.sha256()
        files = [self.path] if self.path.is_file() else sorted(
            p for p in self.path.rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        for p in files:
            if p.name.endswith(".calibration.json") or p.name == "calibration.json":
                continue  # Calibrations are stored next to the model, not part of it.
            if p != self.path:
                h.update(p.relative_to(self.path).as_posix().encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()


class FlaxModel(EmbeddingModel):
    """An hfrjax export directory (``model.json`` + Orbax weights), run with jax.jit."""

    kind = FLAX

    def __init__(self, path: str | os.PathLike):
        import jax
        import jax.numpy as jnp

        from hfrjax.deploy.flax_source import FlaxSource

        source = FlaxSource.from_export(path)
        module = source.backbone(portable=False)
        conv = source.convention()
        super().__init__(Path(path), conv, source.embedding_dim())
        self.model_name = source.name
        variables = jax.tree_util.tree_map(jnp.asarray, source.variables)

        def embed(variables, images):
            x = (images.astype(jnp.float32) - 127.5) / 127.5  # As hfrjax.load_embedder.
            return module.apply(variables, x, train=False).astype(jnp.float32)

        fn = jax.jit(embed)
        self._run = lambda x: fn(variables, x)


class OnnxModel(EmbeddingModel):
    """An ONNX file run with onnxruntime (hfrjax's exports or InsightFace model-zoo files)."""

    kind = ONNX

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover
            raise ImportError("ONNX models need onnxruntime: pip install onnxruntime") from None
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        if providers is None:
            available = ort.get_available_providers()
            providers = [
                p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
            ]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:
            raise ModelFormatError(f"{path} is not a loadable ONNX model: {e}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        out_shape = list(outputs[0].shape) if len(outputs) == 1 else []
        ok = (
            len(shape) == 4
            and shape[1] in (1, 3)
            and isinstance(shape[2], int)
            and shape[2] == shape[3]
            and len(out_shape) == 2
            and isinstance(out_shape[1], int)
            and inputs[0].type == "tensor(float)"
        )
        if not ok:
            raise ModelFormatError(
                f"{path} is not a face-embedding model: expected one float input "
                "[N, C, H, W] (C = 1 or 3, H = W) and one output [N, D]; it has inputs "
                f"{[(i.name, i.shape, i.type) for i in inputs]} and outputs "
                f"{[(o.name, o.shape) for o in outputs]}"
            )
        self.input_name = inputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = None
        if METADATA_KEY in meta:
            import json

            self.info = json.loads(meta[METADATA_KEY])
            conv = InputConvention.from_json(self.info["input"])
        else:
            conv = infer_convention(shape[1], shape[2], _first_node_names(path))
        super().__init__(path, conv, out_shape[1])

    def _run(self, images: np.ndarray) -> np.ndarray:
        x = self.convention.to_input(images)
        if self.fixed_batch is None:
            return self.session.run(None, {self.input_name: x})[0]
        b, parts = self.fixed_batch, []
        for s in range(0, len(x), b):
            chunk = x[s : s + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append(self.session.run(None, {self.input_name: chunk})[0][:n])
        return np.concatenate(parts)


def _first_node_names(path: Path, count: int = 8) -> list[str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    return [n.name for n in model.graph.node[:count]]


class JaxExportModel(EmbeddingModel):
    """A serialized ``jax.export`` artifact (`hfrjax.deploy.jax_export`)."""

    kind = JAX

    def __init__(self, path: str | os.PathLike):
        import jax

        from hfrjax.deploy.jax_export import load_jax_export

        path = Path(path)
        exported, info = load_jax_export(path)
        ins, outs = exported.in_avals, exported.out_avals
        shape = tuple(ins[0].shape) if len(ins) == 1 else ()
        ok = (
            len(shape) == 4
            and shape[1] in (1, 3)
            and isinstance(shape[2], int)
            and shape[2] == shape[3]
            and len(outs) == 1
            and len(outs[0].shape) == 2
        )
        if not ok:
            raise ModelFormatError(
                f"{path} is not a face-embedding export: expected one input [N, C, H, W] and "
                f"one output [N, D]; it has inputs {ins} and outputs {outs}"
            )
        self.info = info
        if info and "input" in info:
            conv = InputConvention.from_json(info["input"])
        else:
            conv = infer_convention(shape[1], shape[2])
        super().__init__(path, conv, int(outs[0].shape[1]))
        self.symbolic_batch = not isinstance(shape[0], int)
        self.fixed_batch = None if self.symbolic_batch else int(shape[0])
        self._call = jax.jit(exported.call)

    def _run(self, images: np.ndarray) -> Any:
        x = self.convention.to_input(images)
        if self.fixed_batch is None:
            return self._call(x)
        b, parts = self.fixed_batch, []
        for s in range(0, len(x), b):
            chunk = x[s : s + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append(np.asarray(self._call(chunk))[:n])
        return np.concatenate(parts)


def model_kind(path: str | os.PathLike) -> str:
    """"flax", "onnx" or "jax" from the path; a `ModelFormatError` otherwise."""
    from hfrjax.deploy.jax_export import SUFFIX, sidecar_path

    p = Path(path)
    if p.is_dir():
        if (p / "model.json").exists():
            return FLAX
        raise ModelFormatError(
            f"{p} is a directory without model.json: not an hfrjax export (write one with "
            "launch/export.py or `hfrjax import-onnx`)"
        )
    if not p.exists():
        raise FileNotFoundError(f"model {p} does not exist")
    if p.suffix.lower() == ".onnx":
        return ONNX
    if p.suffix == SUFFIX or sidecar_path(p).exists():
        return JAX
    raise ModelFormatError(
        f"cannot tell the format of {p}: give an hfrjax export directory, a .onnx file or a "
        f"{SUFFIX} file"
    )


def load_model(path: str | os.PathLike, **kwargs) -> EmbeddingModel:
    """The model at ``path``: an hfrjax export directory (Flax), an ``.onnx`` file (run with
    onnxruntime) or a ``.jaxexport`` file (serialized JAX)."""
    kind = model_kind(path)
    if kind == FLAX:
        return FlaxModel(path)
    if kind == ONNX:
        return OnnxModel(path, **kwargs)
    return JaxExportModel(path)
