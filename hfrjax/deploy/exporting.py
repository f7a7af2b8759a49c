"""Export with a parity check: write the ONNX / serialized JAX file, run it next to the Flax
model on the same images, and carry the calibrated threshold over.

Shared by ``hfrjax export`` and ``launch/export.py --format``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

PARITY_TOLERANCE = 1e-4


def parity(reference, candidate, *, batch_sizes=(1, 7), seed: int = 0) -> tuple[float, float]:
    """(max |reference - candidate|, max |reference|) of the un-normalised embeddings of
    random uint8 images at each batch size."""
    rng = np.random.default_rng(seed)
    shape = (reference.input_size, reference.input_size, reference.channels)
    worst = scale = 0.0
    for b in batch_sizes:
        x = rng.integers(0, 256, (b, *shape)).astype(np.uint8)
        want = reference.embed_raw(x)
        worst = max(worst, float(np.abs(want - candidate.embed_raw(x)).max()))
        scale = max(scale, float(np.abs(want).max()))
    return worst, scale


def export_artifact(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str,
    opset: int | None = None,
    platforms: tuple[str, ...] | None = None,
    check: bool = True,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """Writes ``source`` (hfrjax export directory) as ``fmt`` ("onnx" | "jax") to ``out``."""
    from hfrjax.deploy import calibration
    from hfrjax.deploy.backends import FlaxModel, load_model
    from hfrjax.deploy.flax_source import FlaxSource

    src = FlaxSource.from_export(source)
    if fmt == "onnx":
        from hfrjax.deploy.onnx_export import export_onnx

        path = export_onnx(src, out, opset=opset)
    elif fmt == "jax":
        from hfrjax.deploy.jax_export import DEFAULT_PLATFORMS, export_jax

        path = export_jax(src, out, platforms=platforms or DEFAULT_PLATFORMS)
    else:
        raise ValueError(f"format must be 'onnx' or 'jax', got {fmt!r}")
    conv = src.convention()
    lines = [f"input: {conv.describe()}", f"output: [N, {src.embedding_dim()}] un-normalised"]
    if fmt == "onnx":
        import onnx

        opsets = {o.domain or "ai.onnx": o.version for o in onnx.load(str(path)).opset_import}
        lines.append(f"opset: {opsets.get('ai.onnx')}")
    report: dict[str, Any] = {"path": Path(path), "lines": lines}
    if check or calibration.calibration_path(source).exists():
        ref, new = FlaxModel(source), load_model(path)
        if check:
            diff, scale = parity(ref, new)
            report["parity_max_abs"], report["parity_scale"] = diff, scale
            scale = max(1.0, scale)
            lines.append(f"parity: max |{fmt} - flax| = {diff:.2e} (batch 1 and 7)")
            if not diff <= tolerance * scale:
                raise RuntimeError(
                    f"{path} differs from the Flax model by {diff:.3g} (> {tolerance:g} x "
                    f"{scale:.3g}); the conversion is wrong, do not deploy it"
                )
        copied = calibration.copy_calibration(ref, new)
        if copied:
            lines.append(f"calibration carried over to {copied}")
    return report
