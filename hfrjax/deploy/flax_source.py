"""An hfrjax Flax embedder as one pure function of the portable input convention.

Both exporters (`onnx_export`, `jax_export`) trace the same function: NCHW float32 input in
the artifact's convention (`conventions`) -> transpose to the backbones' NHWC -> (LightCNN:
[0, 1] -> [-1, 1]) -> ``backbone.apply(variables, x, train=False)`` -> un-normalised [N, D]
embedding. The weights are closed over, so they become constants of the traced program.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from hfrjax.deploy.conventions import UNIT, InputConvention, convention_for_model


@dataclasses.dataclass
class FlaxSource:
    """A backbone, its variables and the model config it was built from."""

    model_cfg: dict[str, Any]  # {"name", "kwargs"} as in model.json.
    variables: dict[str, Any]  # {"params": ..., "batch_stats": ...}
    meta: dict[str, Any]  # The whole model.json (or what stands for it).
    path: Path | None = None

    @classmethod
    def from_export(cls, directory: str | os.PathLike) -> "FlaxSource":
        """Loads an hfrjax export directory (``model.json`` + weights)."""
        from hfrjax import load_embedder

        emb = load_embedder(directory)
        variables = {"params": emb.params}
        if emb.batch_stats:
            variables["batch_stats"] = emb.batch_stats
        return cls(dict(emb.meta["model"]), variables, dict(emb.meta), Path(directory))

    @classmethod
    def from_parts(cls, model_cfg: dict, params: Any, batch_stats: Any = None) -> "FlaxSource":
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        meta = {"model": {"name": model_cfg["name"], "kwargs": dict(model_cfg.get("kwargs", {}))}}
        return cls(meta["model"], variables, meta)

    def backbone(self, portable: bool = True):
        """The flax module; ``portable`` picks the plain grouped convolution where a backbone
        offers a CPU-specific rewrite (`hfrjax.models.layers.GroupedConv`), so the exported
        program does not depend on the machine that traced it."""
        from hfrjax.models import get_model

        kwargs = {k: v for k, v in self.model_cfg.get("kwargs", {}).items() if k != "dtype"}
        module = get_model(self.model_cfg["name"], **kwargs)
        if portable and getattr(module, "grouped_impl", None) == "auto":
            module = module.clone(grouped_impl="conv")
        return module

    @property
    def name(self) -> str:
        return str(self.model_cfg["name"])

    def convention(self) -> InputConvention:
        m = self.backbone()
        return convention_for_model(self.name, int(m.in_channels), int(m.input_size))

    def embedding_dim(self) -> int:
        m = self.backbone()
        x = jax.ShapeDtypeStruct((1, m.input_size, m.input_size, m.in_channels), jnp.float32)
        out = jax.eval_shape(lambda v, x: m.apply(v, x, train=False), self.variables, x)
        if len(out.shape) != 2:
            raise ValueError(
                f"backbone {self.name!r} returns shape {tuple(out.shape)} for one image, not an "
                "[N, D] embedding: only embedding backbones can be deployed"
            )
        return int(out.shape[-1])

    def nchw_function(self, portable: bool = True) -> Callable[[jax.Array], jax.Array]:
        """``f(x)``: float32 [N, C, H, W] in `convention` -> float32 [N, D] (un-normalised)."""
        module = self.backbone(portable)
        variables = jax.tree_util.tree_map(jnp.asarray, self.variables)
        unit = self.convention().pixel_scale == UNIT

        def embed(x: jax.Array) -> jax.Array:
            x = jnp.transpose(x, (0, 2, 3, 1))
            if unit:  # [0, 1] as LightCNN's release -> the [-1, 1] hfrjax models train on.
                x = x * 2.0 - 1.0
            return module.apply(variables, x, train=False).astype(jnp.float32)

        return embed

    def artifact_info(self, fmt: str) -> dict[str, Any]:
        """The JSON stored with a portable artifact (ONNX metadata / JAX sidecar)."""
        from hfrjax import __version__

        return {
            "format": fmt,
            "format_version": 1,
            "hfrjax_version": __version__,
            "model": {"name": self.name, "kwargs": _jsonable(self.model_cfg.get("kwargs", {}))},
            "input": self.convention().to_json(),
            "output": {"embedding_dim": self.embedding_dim(), "normalized": False},
            "source": str(self.path) if self.path else None,
        }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)
