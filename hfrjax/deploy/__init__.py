"""Deployment and interop: ONNX and serialized-JAX exports, model-zoo ONNX import, and the
embedding / verification / search tools behind ``hfrjax embed | verify | search``.

* `export_onnx` — ONNX in InsightFace's recognition conventions (jax2onnx converter);
* `export_jax` — ``jax.export`` StableHLO with a symbolic batch, runnable with plain jax;
* `import_onnx` — an arcface_torch IResNet ONNX file -> hfrjax export (``init_from``);
* `load_model` — any of the three formats behind one ``embed(images)`` interface;
* `embed_images`, `calibrate`, `top_k_identities` — the command-line tools' library functions.

Submodules import their heavy dependencies (jax2onnx, onnxruntime) only when used.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "InputConvention": "hfrjax.deploy.conventions",
    "FlaxSource": "hfrjax.deploy.flax_source",
    "export_onnx": "hfrjax.deploy.onnx_export",
    "export_jax": "hfrjax.deploy.jax_export",
    "load_jax_export": "hfrjax.deploy.jax_export",
    "import_onnx": "hfrjax.deploy.onnx_import",
    "read_iresnet_onnx": "hfrjax.deploy.onnx_import",
    "UnsupportedGraphError": "hfrjax.deploy.onnx_import",
    "load_model": "hfrjax.deploy.backends",
    "EmbeddingModel": "hfrjax.deploy.backends",
    "ModelFormatError": "hfrjax.deploy.backends",
    "open_images": "hfrjax.deploy.inputs",
    "FaceReader": "hfrjax.deploy.inputs",
    "ImageReadError": "hfrjax.deploy.inputs",
    "embed_images": "hfrjax.deploy.embed",
    "EmbeddingSet": "hfrjax.deploy.embed",
    "calibrate": "hfrjax.deploy.calibration",
    "threshold_at_far": "hfrjax.deploy.calibration",
    "top_k_identities": "hfrjax.deploy.search",
    "export_artifact": "hfrjax.deploy.exporting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hfrjax.deploy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
