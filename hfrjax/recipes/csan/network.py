"""CSAN's network as the task runs it: the registered ``csan`` model, and its head on cached
backbone features.

CSAN §III-C keeps the truncated VGG16 "a fixed network"; only the three 1x1 subspaces learn.
The paper trains without augmentation, so with a frozen backbone the block-3 feature map of
every training image is a constant: `backbone_features` computes it once and `subspace_head`
runs the rest of the network (Eq. 1-3, with the same per-modality gradient stops) on it. That
is the same function of the parameters as the full model on the image (tested), and turns a
training step from a VGG forward pass into three 1x1 projections and one attention product.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.models.cross_spectral_attention import SUBSPACES, cross_spectral_attention
from hfrjax.models.vgg import VGG16Conv3
from hfrjax.train.step import apply_model, model_inputs

SUBSPACE_GROUPS = tuple(f"subspace_{name}" for name in SUBSPACES)


def backbone_of(model) -> VGG16Conv3:
    """The model's truncated VGG16 as a module of its own (same parameters, same output)."""
    return VGG16Conv3(
        widths=tuple(model.backbone_widths),
        final_pool=model.backbone_pool,
        input_size=model.input_size,
        in_channels=model.in_channels,
        dtype=model.dtype,
        param_dtype=model.param_dtype,
    )


def make_backbone_fn(model):
    """jitted ``(backbone params, uint8 images) -> float32 block-3 features [B, h, w, C]``."""
    vgg = backbone_of(model)

    @jax.jit
    def run(params, images):
        return vgg.apply({"params": params}, model_inputs(images)).astype(jnp.float32)

    return run


def subspace_head(params: dict, features: jax.Array, modality: jax.Array | None, dim: int):
    """CSAN Eq. 1-3 on backbone features [B, h, w, C]: (embedding [B, P·dim], F_out [B, P, dim]).

    ``params`` holds the model's ``subspace_rgb`` / ``subspace_ir`` / ``subspace_common`` 1x1
    convolutions; ``modality`` (0 = RGB) stops the other modality's subspace gradient as the
    model does (§III-C).
    """
    b, h, w, _ = features.shape
    x = features.astype(jnp.float32)
    sub = {}
    for name in SUBSPACES:
        p = params[f"subspace_{name}"]
        y = jnp.einsum("bhwc,cd->bhwd", x, p["kernel"][0, 0]) + p["bias"]
        sub[name] = jnp.tanh(y).reshape(b, h * w, dim)
    if modality is not None:
        is_ir = (jnp.asarray(modality) != 0)[:, None, None]
        sub["rgb"] = jnp.where(is_ir, jax.lax.stop_gradient(sub["rgb"]), sub["rgb"])
        sub["ir"] = jnp.where(is_ir, sub["ir"], jax.lax.stop_gradient(sub["ir"]))
    _, out = cross_spectral_attention(sub["rgb"], sub["ir"], sub["common"])
    return out.reshape(b, -1).astype(jnp.float32), out


def forward(model, params, x, modality, *, cached: bool, rng=None):
    """(embedding, F_out) of a training batch: ``x`` is backbone features when ``cached``, else
    uint8 images through the whole model."""
    if cached:
        return subspace_head(params, x, modality, model.dim)
    (emb, parts), _ = apply_model(
        model, params, {}, x, True, rng, modality=modality, return_parts=True
    )
    return emb, parts["out"]


def model_embed(model):
    """The task's embedder for evaluation and export: the full model on images."""

    def embed(params, model_state, images, modality, train_bn=False):
        emb, _ = apply_model(model, params, model_state, images, False, None)
        return emb

    return embed


@functools.partial(jax.jit, static_argnames=("dim",))
def _head_embed(params, features, dim):
    emb, _ = subspace_head(params, features, None, dim)
    return emb / jnp.maximum(jnp.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def embed_features(params: dict, features: np.ndarray, dim: int, batch: int) -> np.ndarray:
    """L2-normalised embeddings [N, P·dim] of cached backbone features, in fixed-size batches
    (the last one padded) so the head compiles once."""
    n = len(features)
    out = []
    for start in range(0, n, batch):
        x = features[start : start + batch]
        m = len(x)
        if m < batch:
            x = np.concatenate([x, np.zeros((batch - m, *x.shape[1:]), x.dtype)])
        out.append(np.asarray(_head_embed(params, jnp.asarray(x), dim))[:m])
    return np.concatenate(out).astype(np.float32)


def trainable_groups(freeze_backbone: bool) -> tuple[str, ...]:
    return SUBSPACE_GROUPS if freeze_backbone else ("backbone", *SUBSPACE_GROUPS)


def load_torch_backbone(path: str, params: dict) -> dict:
    """ImageNet VGG16 weights (a torchvision ``state_dict`` file) for ``params["backbone"]``."""
    import torch

    from hfrjax.models.vgg import vgg_params_from_torch_state_dict

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a VGG16 state_dict, got {type(state).__name__}")
    converted = vgg_params_from_torch_state_dict(state)["params"]
    want = jax.tree.map(np.shape, params["backbone"])
    have = jax.tree.map(np.shape, converted)
    if want != have:
        raise ValueError(
            f"{path}: VGG16 weights of shapes {have} do not fit the configured backbone {want} "
            "(model.backbone_widths must be the published (64, 128, 256))"
        )
    return dict(params, backbone=jax.tree.map(jnp.asarray, converted))


def param_count(tree: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))
