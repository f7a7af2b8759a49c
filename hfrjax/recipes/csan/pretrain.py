"""A stand-in for CSAN's ImageNet-pretrained VGG16 at the synthetic scale.

CSAN (§III-C, §IV-C) starts from a VGG16 pretrained on ImageNet and keeps it fixed; its
block-3 features are "well-formed generic low-level features". No ImageNet weights ship with
the library, and a randomly initialised frozen VGG gives features close to useless for
identity. So the synthetic tables first train the truncated VGG with a classifier on the
synthetic *visible-only source* set (other identities, no infrared: like ImageNet, labelled
data from elsewhere), then CSAN uses its block-3 layers frozen and never sees a label of the
RGB-IR set. `vgg16_conv3_gap` is that pretraining network: `VGG16Conv3` (submodule
"backbone", so its parameters load into the ``csan`` model as they are), global average
pooling and a linear embedding, trained by the core ``classification`` task.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hfrjax.models.layers import Dtype
from hfrjax.models.registry import register_model
from hfrjax.models.vgg import VGG16_WIDTHS, VGG16Conv3


class VGGConv3Embedder(nn.Module):
    """Truncated VGG16 -> global average pool -> linear ``embedding_dim`` embedding -> BN."""

    widths: Sequence[int] = VGG16_WIDTHS
    final_pool: bool = True
    embedding_dim: int = 128
    input_size: int = 64
    in_channels: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        f = VGG16Conv3(
            widths=tuple(self.widths),
            final_pool=self.final_pool,
            input_size=self.input_size,
            in_channels=self.in_channels,
            dtype=self.dtype,
            name="backbone",
        )(x, train)
        pooled = jnp.mean(f.astype(jnp.float32), axis=(1, 2))
        emb = nn.Dense(self.embedding_dim, name="embedding")(pooled)
        # BN on the embedding (a face-recognition "BN neck"): VGG has no normalisation of its
        # own, and margin softmax from scratch needs one to start learning.
        return nn.BatchNorm(use_running_average=not train, name="embedding_bn")(emb)


@register_model("vgg16_conv3_gap")
def vgg16_conv3_gap(
    *,
    widths: Sequence[int] = VGG16_WIDTHS,
    final_pool: bool = True,
    embedding_dim: int = 128,
    input_size: int = 64,
    in_channels: int = 3,
    dtype: Dtype = jnp.float32,
) -> VGGConv3Embedder:
    """CSAN's backbone with a pooled linear embedding, for pretraining it (module docstring)."""
    return VGGConv3Embedder(
        widths=tuple(widths),
        final_pool=final_pool,
        embedding_dim=embedding_dim,
        input_size=input_size,
        in_channels=in_channels,
        dtype=dtype,
    )


def backbone_from_workdir(path: str, params: dict) -> dict:
    """``params`` with its "backbone" replaced by the VGG of an hfrjax export or training
    workdir (a `vgg16_conv3_gap` pretraining, or a ``csan`` run); shapes must match."""
    from hfrjax.train.export import load_weights

    model, variables = load_weights(path)
    tree = variables.get("params", {})
    if "backbone" not in tree:
        raise ValueError(
            f"{path} ({model.get('name')}) has no 'backbone' parameters to take the VGG from"
        )
    want = jax.tree.map(jnp.shape, params["backbone"])
    have = jax.tree.map(jnp.shape, tree["backbone"])
    if want != have:
        raise ValueError(
            f"the VGG of {path} ({model.get('name')} {model.get('kwargs')}) does not fit the "
            f"configured backbone: {have} vs {want}"
        )
    return dict(params, backbone=jax.tree.map(jnp.asarray, tree["backbone"]))
