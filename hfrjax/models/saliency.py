"""SSN: LightCNN-29v2 with modality-aware Pixel Selection Blocks (SSN §III-A, Eq. 4).

After each of LightCNN's N = 4 blocks (a stack of res-blocks followed by an MFM group, SSN
Fig. 3) a Pixel Selection Block multiplies the block output Y_B by σ(M_B^m), a learnable
saliency indicator with Y_B's shape (H×W×C here, NHWC) for the modality m of the image,
initialised to 1 (every pixel selected at the start of the search):

    Ŷ_B^m = σ(M_B^m) ⊙ Y_B^m.

Modes (``saliency``): ``"none"`` (plain LightCNN, the baseline), ``"shared"`` (one indicator
for both modalities, Table VII's "SI") and ``"split"`` (one per modality, "SI (split)").

Parameter layout: the network's parameters keep LightCNN's names exactly (``conv1``,
``block1_0``, ``group1``, ..., ``fc``), so a LightCNN checkpoint loads unchanged, and the
indicators live together in the subtree ``params["masks"]`` (``block1`` .. ``block4``, each
shaped [M, H, W, C] with M = 1 shared / 2 split; row 0 = vis, row 1 = nir). AFS (SSN Alg. 1)
updates the masks and the network with different optimizers: `saliency_param_labels` labels
the two groups for ``optax.multi_transform``; `split_mask_params` separates them.

Where the PSB sits: on the output of the MFM group, before LightCNN's 2x2 pooling
(``psb_after_pool=False``, default; Fig. 3 draws a block as ResBlock + MFM Group and pooling
is a separate layer in LightCNN) or after it (``psb_after_pool=True``, 4x fewer mask entries
for blocks 1, 2 and 4). The paper does not pin this down.

What "masks at 1 leave LightCNN unchanged up to the σ(1) scale" means: the output equals a
LightCNN with every block output multiplied by σ(1) ≈ 0.731. It is *not* σ(1)^4 times the
plain LightCNN's output: convolution biases make the layers affine, not homogeneous. Only
with all biases zero (MFM, pooling and the residual sum are positively homogeneous of degree
1) is the embedding exactly σ(1)^N times LightCNN's. The tests check both statements.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from hfrjax.models.layers import MFM, Dtype
from hfrjax.models.lightcnn import Group, ResBlock, v2_pool
from hfrjax.models.registry import dummy_input, register_model

SALIENCY_MODES = ("none", "shared", "split")
MASKS = "masks"  # Name of the indicator subtree in params.


class PixelSelection(nn.Module):
    """All saliency indicators of one network (the ``masks`` parameter group).

    Called once per block: ``(y, is_nir, block)`` -> σ(M_block[m]) ⊙ y, creating the
    indicator ``block{block}`` of shape [M, H, W, C] on first use (SSN Eq. 4).
    """

    num_modalities: int  # 1 = shared ("SI"), 2 = split ("SI (split)": row 0 vis, row 1 nir).
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, y: jnp.ndarray, is_nir: jnp.ndarray | None, block: int) -> jnp.ndarray:
        indicator = self.param(
            f"block{block}",
            nn.initializers.ones,
            (self.num_modalities, *y.shape[1:]),
            self.param_dtype,
        )
        gate = jax.nn.sigmoid(indicator).astype(y.dtype)
        if self.num_modalities == 1:
            return gate[0] * y
        # jnp.where routes each image's gradient to its own modality's row only.
        return jnp.where(is_nir[:, None, None, None], gate[1], gate[0]) * y


class LightCNN29v2PSB(nn.Module):
    """LightCNN-29v2 with a Pixel Selection Block after each block (SSN §III-A).

    ``apply(variables, x, modality, train=False, return_blocks=False)``:
    ``modality`` is an int array [B] with 0 = vis and anything else = nir (the indices of
    ``hfrjax.data.tfrecord.MODALITIES``); each image is gated by its own modality's
    indicators. It may be omitted for ``saliency`` "none"/"shared", and during ``init``.
    Returns the float32 embedding [B, embedding_dim], or with ``return_blocks`` the pair
    (embedding, (Ŷ_1, ..., Ŷ_4)) of gated block outputs; the information bottleneck
    (SSN Eq. 5/12) uses the first and the last.
    """

    # Embedding loops pass each image's modality code (`hfrjax.eval.embedding`).
    takes_modality: ClassVar[bool] = True

    layers: Sequence[int] = (1, 2, 3, 4)
    channels: Sequence[int] = (48, 96, 192, 128, 128)
    embedding_dim: int = 256
    input_size: int = 128
    in_channels: int = 1
    saliency: str = "split"
    psb_after_pool: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        modality: jnp.ndarray | None = None,
        train: bool = False,
        return_blocks: bool = False,
    ) -> jnp.ndarray | tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
        del train  # No BN or dropout before the embedding (as LightCNN29v2).
        chex.assert_shape(x, (None, self.input_size, self.input_size, self.in_channels))
        if self.saliency not in SALIENCY_MODES:
            raise ValueError(f"saliency must be one of {SALIENCY_MODES}, got {self.saliency!r}")
        if len(self.layers) != 4 or len(self.channels) != 5:
            raise ValueError("LightCNN-29v2 needs 4 res-block counts and 5 channel widths")
        is_nir = None
        if self.saliency == "split":
            if modality is None:
                if not self.is_initializing():
                    raise ValueError(
                        "saliency='split' needs modality= (int array [batch], 0 = vis, "
                        "1 = nir) to pick each image's masks"
                    )
                modality = jnp.zeros((x.shape[0],), jnp.int32)
            modality = jnp.asarray(modality)
            if modality.shape != (x.shape[0],):
                raise ValueError(
                    f"modality must have shape ({x.shape[0]},) (one per image), "
                    f"got {modality.shape}"
                )
            is_nir = modality != 0
        psb = None
        if self.saliency != "none":
            psb = PixelSelection(
                1 if self.saliency == "shared" else 2, param_dtype=self.param_dtype, name=MASKS
            )

        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = self.channels
        x = x.astype(self.dtype)
        x = v2_pool(MFM(c[0], 5, 1, 2, name="conv1", **kw)(x))
        blocks = []
        for stage in range(4):
            for i in range(self.layers[stage]):
                x = ResBlock(x.shape[-1], name=f"block{stage + 1}_{i}", **kw)(x)
            x = Group(c[stage + 1], name=f"group{stage + 1}", **kw)(x)
            pooled = stage != 2  # LightCNN v2: no pooling between group3 and block4.
            if pooled and self.psb_after_pool:
                x = v2_pool(x)
            if psb is not None:
                x = psb(x, is_nir, stage + 1)
            blocks.append(x)
            if pooled and not self.psb_after_pool:
                x = v2_pool(x)
        x = x.reshape(x.shape[0], -1).astype(jnp.float32)  # NHWC flatten, as LightCNN29v2.
        x = nn.Dense(
            self.embedding_dim,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            name="fc",
        )(x)
        x = x.astype(jnp.float32)
        if return_blocks:
            return x, tuple(blocks)
        return x


@register_model("lightcnn29v2_psb")
def lightcnn29v2_psb(
    *,
    saliency: str = "split",
    psb_after_pool: bool = False,
    layers: Sequence[int] = (1, 2, 3, 4),
    channels: Sequence[int] = (48, 96, 192, 128, 128),
    embedding_dim: int = 256,
    input_size: int = 128,
    in_channels: int = 1,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> LightCNN29v2PSB:
    """SSN's network; ``saliency`` "none" | "shared" | "split" (SSN Table VII's rows)."""
    if saliency not in SALIENCY_MODES:
        raise ValueError(f"saliency must be one of {SALIENCY_MODES}, got {saliency!r}")
    if input_size % 16:
        raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
    return LightCNN29v2PSB(
        layers=tuple(layers),
        channels=tuple(channels),
        embedding_dim=embedding_dim,
        input_size=input_size,
        in_channels=in_channels,
        saliency=saliency,
        psb_after_pool=psb_after_pool,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def saliency_param_labels(params: Mapping[str, Any]) -> dict[str, Any]:
    """Pytree of labels, ``"masks"`` for the indicators and ``"network"`` for everything
    else, matching ``params`` (for ``optax.multi_transform``; AFS, SSN Alg. 1)."""
    return {
        key: jax.tree.map(lambda _: MASKS if key == MASKS else "network", value)
        for key, value in params.items()
    }


def split_mask_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``params`` -> (masks, network): the indicator group and the rest (LightCNN's names)."""
    params = dict(params)
    masks = params.pop(MASKS, {})
    return dict(masks), params


def merge_mask_params(masks: Mapping[str, Any], network: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `split_mask_params`."""
    if MASKS in network:
        raise ValueError(f"network params already contain a {MASKS!r} group")
    out = dict(network)
    if masks:
        out[MASKS] = dict(masks)
    return out


def initial_masks(model: LightCNN29v2PSB) -> dict[str, jnp.ndarray]:
    """The indicators at their initial value 1, e.g. to add to a pretrained LightCNN's
    params (``merge_mask_params(initial_masks(model), lightcnn_params)``)."""
    if model.saliency == "none":
        return {}
    template = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), dummy_input(model)
    )
    return {
        name: jnp.ones(leaf.shape, leaf.dtype)
        for name, leaf in template["params"][MASKS].items()
    }
