"""Serialized JAX export (``jax.export``: StableHLO with a symbolic batch dimension).

The artifact is one file of ``Exported.serialize()`` bytes; the weights are constants inside
it, so running it needs plain ``jax`` only (no flax, no hfrjax)::

    import jax
    exported = jax.export.deserialize(open("model.jaxexport", "rb").read())
    embeddings = exported.call(x)   # x: float32 [N, C, H, W], any N

Input and output follow the ONNX export's convention (`hfrjax.deploy.conventions`): NCHW,
(pixel - 127.5) / 127.5 (LightCNN: grey in [0, 1]), un-normalised [N, D] embeddings. A JSON
sidecar ``model.jaxexport.json`` records the convention, the model config and the JAX version.

It is lowered for CPU, CUDA and TPU at once (``platforms``); the program has no
platform-specific primitives, so this costs almost nothing. Compatibility (JAX's export
documentation, "Compatibility guarantees"): an artifact can be compiled and run by a JAX
runtime (jaxlib) built up to **6 months after** the one that exported it, and up to **3 weeks
before** it. Re-export from the hfrjax checkpoint (kept alongside) to go beyond that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from hfrjax.deploy.flax_source import FlaxSource

SUFFIX = ".jaxexport"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
BATCH_DIM = "N"
COMPATIBILITY = (
    "jax.export artifacts run on jaxlib releases built up to 6 months after the exporting "
    "jaxlib (backward compatibility) and up to 3 weeks before it (forward compatibility)"
)


def sidecar_path(path: str | os.PathLike) -> Path:
    """``model.jaxexport`` -> ``model.jaxexport.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_jax(
    source: FlaxSource | str | os.PathLike,
    path: str | os.PathLike,
    *,
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    info_extra: dict | None = None,
) -> Path:
    """Writes ``source`` (a `FlaxSource` or an hfrjax export directory) as a serialized JAX
    export at ``path`` plus its JSON sidecar."""
    from hfrjax.fileio import atomic_output, write_text_atomic

    if not isinstance(source, FlaxSource):
        source = FlaxSource.from_export(source)
    conv = source.convention()
    (batch,) = jax.export.symbolic_shape(BATCH_DIM)
    spec = jax.ShapeDtypeStruct((batch, conv.channels, conv.size, conv.size), jnp.float32)
    exported = jax.export.export(jax.jit(source.nchw_function(portable=True)), platforms=platforms)(
        spec
    )
    info = {
        **source.artifact_info("jax_export"),
        "jax_version": jax.__version__,
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "compatibility": COMPATIBILITY,
        **(info_extra or {}),
    }
    path = Path(path)
    with atomic_output(path, "wb") as f:
        f.write(exported.serialize())
    write_text_atomic(sidecar_path(path), json.dumps(info, indent=1, sort_keys=True) + "\n")
    return path


def load_jax_export(path: str | os.PathLike) -> tuple[Any, dict | None]:
    """(``jax.export.Exported``, sidecar dict or None when the sidecar is absent)."""
    from hfrjax.fileio import read_json

    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except Exception as e:
        raise ValueError(
            f"{path} is not a serialized JAX export (jax.export.deserialize failed: "
            f"{type(e).__name__}: {e}); it may also come from a JAX release outside the "
            f"compatibility window ({COMPATIBILITY})"
        ) from None
    side = sidecar_path(path)
    return exported, (read_json(side) if side.exists() else None)
