"""CSAN: cross-spectral attention network (CSAN §III-C, Eq. 1-3).

A truncated VGG16 (`VGG16Conv3`) gives an intermediate feature map F_VGG. Three 1x1-conv
subspaces with tanh project it (Eq. 1): F_u = tanh(W_u * F_VGG), u in {RGB, IR, common}
(256 -> 128 channels). With the P spatial positions ("patches") as rows, the cross-spectral
attention (Eq. 2) and the output (Eq. 3) are

    A = log softmax(α F_rgb F_irᵀ)   [P, P], softmax over each row, α = 1/√dim (dim = 128),
    F_out = A · F_common             [P, 128],

and the embedding is F_out flattened (P·128 values; 16,384 on RegDB, CSAN Table V).

Which features go where. Every image, RGB or IR, goes through *all three* subspaces: Eq. 1
feeds "the intermediate representation" to each of them and Eq. 2 combines the two
modality-specific projections of it. The paper's only asymmetry is in training: "if the image
is RGB, no gradient is calculated for the IR subspace, and similarly for the IR image, no
gradient is calculated for the RGB subspace" (§III-C). So:

* training: ``modality`` [B] (0 = RGB/visible, anything else = infrared, the indices of
  ``hfrjax.data.tfrecord.MODALITIES``) stops the gradient of F_ir for RGB images and of F_rgb
  for IR images; the forward values are unchanged;
* test: ``modality=None``; a single image is embedded on its own by the same computation
  (its own F_rgb and F_ir form the attention). Gallery and probe embeddings are thus
  independent of each other and can be matched by distance, as retrieval needs.

The backbone is "a fixed network" (§III-C; Table V counts only the subspaces, 98,688
trainable parameters at dim 128): ``freeze_backbone=True`` stops its gradient. Parameter
groups: ``params["backbone"]`` (VGG, torchvision names) and ``params["subspace_rgb"]``,
``["subspace_ir"]``, ``["subspace_common"]``; `csan_param_labels` labels them.

Spatial size: Table V's feature sizes (dim x 128 on 128x64 RegDB crops, e.g. 4,096 at
dim 32) imply 128 = 16 x 8 positions, i.e. a /8 feature map: block-3's max-pool after
block3-conv3. ``backbone_pool=True`` (default) does that; ``False`` uses the conv3_3 map
itself (/4: 512 positions on RegDB, a 4x larger embedding and a 16x larger attention).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hfrjax.models.layers import Dtype
from hfrjax.models.registry import register_model
from hfrjax.models.vgg import VGG16_WIDTHS, VGG16Conv3

SUBSPACES = ("rgb", "ir", "common")


def cross_spectral_attention(
    f_rgb: jnp.ndarray, f_ir: jnp.ndarray, f_common: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """CSAN Eq. 2-3 on [B, P, dim] subspace features -> (A [B, P, P], F_out [B, P, dim]).

    A[b, p, q] = log softmax_q(α <F_rgb[b, p], F_ir[b, q]>), α = 1/√dim; F_out = A F_common.
    """
    alpha = 1.0 / math.sqrt(f_rgb.shape[-1])
    logits = alpha * jnp.einsum("bpc,bqc->bpq", f_rgb, f_ir)
    attention = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).astype(f_common.dtype)
    return attention, jnp.einsum("bpq,bqc->bpc", attention, f_common)


class CrossSpectralAttentionNet(nn.Module):
    """CSAN's network: truncated VGG16 + subspaces + cross-spectral attention.

    ``apply(variables, x, modality=None, train=False, return_parts=False)``; ``x`` [B, H, W, 3]
    (any H, W; ``input_size`` only sizes ``dummy_input``). Returns the float32
    embedding [B, P * dim] (F_out flattened, not normalised), or with ``return_parts`` the
    pair (embedding, parts) with parts = {"rgb", "ir", "common": [B, P, dim],
    "attention": [B, P, P], "out": F_out [B, P, dim]} (F_out feeds the PCS loss, Eq. 5).
    """

    # Embedding loops may pass modality codes: same values, only the gradients differ.
    takes_modality: ClassVar[bool] = True

    dim: int = 128
    backbone_widths: Sequence[int] = VGG16_WIDTHS
    backbone_pool: bool = True
    freeze_backbone: bool = True
    input_size: int = 224
    in_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        modality: jnp.ndarray | None = None,
        train: bool = False,
        return_parts: bool = False,
    ) -> jnp.ndarray | tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        features = VGG16Conv3(
            widths=tuple(self.backbone_widths),
            final_pool=self.backbone_pool,
            input_size=self.input_size,
            in_channels=self.in_channels,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="backbone",
        )(x, train)
        if self.freeze_backbone:
            features = jax.lax.stop_gradient(features)
        b, h, w, _ = features.shape
        sub = {}
        for name in SUBSPACES:
            y = nn.Conv(
                self.dim,
                (1, 1),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"subspace_{name}",
            )(features)
            sub[name] = jnp.tanh(y).reshape(b, h * w, self.dim)  # rows = positions (h, w)
        if modality is not None:
            modality = jnp.asarray(modality)
            if modality.shape != (b,):
                raise ValueError(
                    f"modality must have shape ({b},) (one per image), got {modality.shape}"
                )
            is_ir = (modality != 0)[:, None, None]
            # Same values; an image sends no gradient into the other modality's subspace.
            sub["rgb"] = jnp.where(is_ir, jax.lax.stop_gradient(sub["rgb"]), sub["rgb"])
            sub["ir"] = jnp.where(is_ir, sub["ir"], jax.lax.stop_gradient(sub["ir"]))
        attention, out = cross_spectral_attention(sub["rgb"], sub["ir"], sub["common"])
        embedding = out.reshape(b, -1).astype(jnp.float32)
        if return_parts:
            return embedding, dict(sub, attention=attention, out=out)
        return embedding


@register_model("csan")
def csan(
    *,
    dim: int = 128,
    backbone_widths: Sequence[int] = VGG16_WIDTHS,
    backbone_pool: bool = True,
    freeze_backbone: bool = True,
    input_size: int = 224,
    in_channels: int = 3,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> CrossSpectralAttentionNet:
    """CSAN's network (dim 128, VGG16 block3-conv3 backbone)."""
    return CrossSpectralAttentionNet(
        dim=dim,
        backbone_widths=tuple(backbone_widths),
        backbone_pool=backbone_pool,
        freeze_backbone=freeze_backbone,
        input_size=input_size,
        in_channels=in_channels,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def csan_param_labels(params: Mapping[str, Any]) -> dict[str, Any]:
    """Pytree of labels matching ``params``: ``"backbone"`` for the VGG, ``"attention"``
    for the three subspaces (for ``optax.multi_transform``)."""
    def label(key: str) -> str:
        return "backbone" if key == "backbone" else "attention"

    return {key: jax.tree.map(lambda _, k=key: label(k), value) for key, value in params.items()}
