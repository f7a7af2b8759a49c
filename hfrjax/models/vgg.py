"""VGG16 truncated at block3-conv3 (Simonyan & Zisserman), CSAN's backbone (CSAN §III-C, §IV-C).

Layout = torchvision ``vgg16().features[:16]``: conv3x3(64) x2, max-pool, conv3x3(128) x2,
max-pool, conv3x3(256) x3, each conv with bias and ReLU; with ``final_pool`` also block 3's
max-pool (``features[:17]``). Output: the [B, H/4, W/4, 256] feature map (H/8, W/8 with
``final_pool``), in the computation dtype. 1,735,488 parameters at the published widths.

Submodules are named after torchvision's ``Sequential`` indices (``features_0``, ...,
``features_14``), so ImageNet checkpoints convert mechanically
(`vgg_params_from_torch_state_dict`). Inputs are RGB; the pipeline does the ImageNet
normalisation and feeds single-band (NIR, thermal) images as 3 identical channels.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hfrjax.models.convert import convert_state_dict, strip_prefix, to_numpy
from hfrjax.models.layers import Dtype, torch_padding
from hfrjax.models.registry import dummy_input, register_model

VGG16_CONVS_PER_BLOCK = (2, 2, 3)  # VGG16's blocks 1-3.
VGG16_WIDTHS = (64, 128, 256)


def vgg_layer_indices(
    convs_per_block: Sequence[int] = VGG16_CONVS_PER_BLOCK,
) -> tuple[list[tuple[int, int]], list[int]]:
    """torchvision ``features`` indices: ([(block, conv index)], [pool indices]).

    Every conv occupies two slots (conv, ReLU), every pool one.
    """
    convs, pools, index = [], [], 0
    for block, n in enumerate(convs_per_block):
        for _ in range(n):
            convs.append((block, index))
            index += 2
        pools.append(index)
        index += 1
    return convs, pools


class VGG16Conv3(nn.Module):
    """VGG16 ``features`` up to block3-conv3 + ReLU (optionally block 3's pool).

    Fully convolutional: any H, W work (``input_size`` only sizes ``dummy_input``).
    ``widths`` are the block widths (64, 128, 256); shrink them for tests. ``train`` is
    accepted for interface uniformity (no BN or dropout here).
    """

    widths: Sequence[int] = VGG16_WIDTHS
    final_pool: bool = False
    input_size: int = 224
    in_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"VGG16Conv3 expects NHWC input with {self.in_channels} channels, got {x.shape}"
            )
        if len(self.widths) != len(VGG16_CONVS_PER_BLOCK):
            raise ValueError(f"widths must give 3 block widths, got {self.widths}")
        convs, pools = vgg_layer_indices()
        x = x.astype(self.dtype)
        for i, (block, index) in enumerate(convs):
            if i and convs[i - 1][0] != block:  # a new block starts after a max-pool
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = nn.Conv(
                self.widths[block],
                (3, 3),
                padding=torch_padding(1),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), bias 0.
                kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                name=f"features_{index}",
            )(x)
            x = nn.relu(x)
        if self.final_pool:
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return x


@register_model("vgg16_conv3")
def vgg16_conv3(
    *,
    widths: Sequence[int] = VGG16_WIDTHS,
    final_pool: bool = False,
    input_size: int = 224,
    in_channels: int = 3,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> VGG16Conv3:
    """VGG16 truncated at block3-conv3 (CSAN's backbone); returns a feature map, not an
    embedding."""
    return VGG16Conv3(
        widths=tuple(widths),
        final_pool=final_pool,
        input_size=input_size,
        in_channels=in_channels,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def vgg_config_from_torch_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Infer ``vgg16_conv3(...)`` widths / in_channels from a VGG16 state_dict (full
    torchvision ``vgg16()`` or its truncated ``features``)."""
    sd = strip_prefix(state_dict)
    convs, _ = vgg_layer_indices()
    widths = [0, 0, 0]
    for block, index in convs:
        key = f"features.{index}.weight"
        if key not in sd:
            raise ValueError(f"VGG16 state_dict has no {key!r} (conv of block {block + 1})")
        widths[block] = int(to_numpy(sd[key]).shape[0])
    in_channels = int(to_numpy(sd["features.0.weight"]).shape[1])
    return dict(widths=tuple(widths), in_channels=in_channels)


def vgg_params_from_torch_state_dict(
    state_dict: Mapping[str, Any], model: VGG16Conv3 | None = None
) -> dict[str, Any]:
    """Convert a torchvision VGG16 ``state_dict`` (e.g. ImageNet weights) into flax
    variables ``{'params': ...}`` for ``model`` (inferred when omitted).

    Layers after block3-conv3 (``features.17`` on, ``classifier.*``) are dropped; conv
    kernels go OIHW -> HWIO. Any missing or mis-shaped conv raises ``ValueError``.
    """
    sd = strip_prefix(state_dict)
    if model is None:
        model = vgg16_conv3(**vgg_config_from_torch_state_dict(sd))
    template = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), dummy_input(model)
    )
    last = vgg_layer_indices()[0][-1][1]
    beyond = tuple(
        k
        for k in sd
        if k.startswith("classifier.")
        or (k.startswith("features.") and int(k.split(".")[1]) > last)
    )
    return convert_state_dict(template, sd, ignore=beyond)
