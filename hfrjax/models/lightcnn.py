"""LightCNN-29v2 (Wu et al., official PyTorch ``network_29layers_v2``).

128x128 single-channel input in [0, 1] -> conv1 MFM(48, 5x5) -> pool -> res-blocks [1, 2, 3, 4]
interleaved with "group" layers (1x1 MFM then 3x3 MFM) 48 -> 96 -> 192 -> 128 -> 128, with
v2 pooling (2x2 max-pool + 2x2 avg-pool, summed) after conv1, group1, group2 and group4 ->
flatten (8*8*128) -> plain linear fc to 256 = the embedding. The official model's training
classifier ``fc2`` is not part of the backbone (see ``lightcnn_params_from_torch_state_dict``).

Submodule names mirror the PyTorch attribute paths (``block2_1/conv1/filter``), so official
checkpoints convert mechanically. There is no BatchNorm in this network.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.models.convert import convert_state_dict, strip_prefix, to_numpy
from hfrjax.models.layers import MFM, Dtype
from hfrjax.models.registry import dummy_input, register_model


def _v2_pool(x: jnp.ndarray) -> jnp.ndarray:
    """LightCNN v2 down-sampling: ``max_pool2d(x, 2) + avg_pool2d(x, 2)``."""
    return nn.max_pool(x, (2, 2), strides=(2, 2)) + nn.avg_pool(x, (2, 2), strides=(2, 2))


# Public name for networks assembled from LightCNN's parts (SSN's saliency model).
v2_pool = _v2_pool


class ResBlock(nn.Module):
    """Two 3x3 MFM convs with an identity shortcut (channel count unchanged)."""

    channels: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        mfm = functools.partial(
            MFM, self.channels, 3, 1, 1, dtype=self.dtype, param_dtype=self.param_dtype
        )
        out = mfm(name="conv1")(x)
        out = mfm(name="conv2")(out)
        return out + x


class Group(nn.Module):
    """1x1 MFM (same width) followed by a 3x3 MFM to ``features`` channels."""

    features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = MFM(
            x.shape[-1], 1, 1, 0, dtype=self.dtype, param_dtype=self.param_dtype, name="conv_a"
        )(x)
        return MFM(
            self.features, 3, 1, 1, dtype=self.dtype, param_dtype=self.param_dtype, name="conv"
        )(x)


class LightCNN29v2(nn.Module):
    """LightCNN-29v2 backbone returning the float32 ``fc`` output (256-d by default).

    ``channels`` are the widths of (conv1, group1, group2, group3, group4); res-blocks keep
    the width of the preceding layer. ``input_size`` must be a multiple of 16 (four 2x
    poolings). ``train`` is accepted for interface uniformity; the network has no BN or
    dropout before the embedding, so it has no effect.
    """

    layers: Sequence[int] = (1, 2, 3, 4)
    channels: Sequence[int] = (48, 96, 192, 128, 128)
    embedding_dim: int = 256
    input_size: int = 128
    in_channels: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train
        chex.assert_shape(x, (None, self.input_size, self.input_size, self.in_channels))
        if len(self.layers) != 4 or len(self.channels) != 5:
            raise ValueError("LightCNN-29v2 needs 4 res-block counts and 5 channel widths")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = self.channels

        x = x.astype(self.dtype)
        x = _v2_pool(MFM(c[0], 5, 1, 2, name="conv1", **kw)(x))
        for stage in range(4):
            for i in range(self.layers[stage]):
                x = ResBlock(x.shape[-1], name=f"block{stage + 1}_{i}", **kw)(x)
            x = Group(c[stage + 1], name=f"group{stage + 1}", **kw)(x)
            if stage != 2:  # no pooling between group3 and block4
                x = _v2_pool(x)
        x = x.reshape(x.shape[0], -1).astype(jnp.float32)  # NHWC flatten: (H, W, C) order
        x = nn.Dense(
            self.embedding_dim,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            name="fc",
        )(x)
        return x.astype(jnp.float32)


@register_model("lightcnn29v2")
def lightcnn29v2(
    *,
    layers: Sequence[int] = (1, 2, 3, 4),
    channels: Sequence[int] = (48, 96, 192, 128, 128),
    embedding_dim: int = 256,
    input_size: int = 128,
    in_channels: int = 1,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> LightCNN29v2:
    """LightCNN-29v2 (official layout by default; shrink ``channels``/``input_size`` for tests)."""
    if input_size % 16:
        raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
    return LightCNN29v2(
        layers=tuple(layers),
        channels=tuple(channels),
        embedding_dim=embedding_dim,
        input_size=input_size,
        in_channels=in_channels,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def lightcnn_config_from_torch_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Infer ``lightcnn29v2(...)`` kwargs from a LightCNN-29v2 state_dict."""
    sd = strip_prefix(state_dict)
    layers = tuple(
        len({int(k.split(".")[1]) for k in sd if k.startswith(f"block{s}.")}) for s in range(1, 5)
    )
    channels = [to_numpy(sd["conv1.filter.weight"]).shape[0] // 2]
    channels += [to_numpy(sd[f"group{s}.conv.filter.weight"]).shape[0] // 2 for s in range(1, 5)]
    in_channels = to_numpy(sd["conv1.filter.weight"]).shape[1]
    fc_out, fc_in = to_numpy(sd["fc.weight"]).shape
    side = int(round(np.sqrt(fc_in / channels[-1])))
    if side * side * channels[-1] != fc_in:
        raise ValueError(f"fc input {fc_in} is not {channels[-1]}*side^2")
    return dict(
        layers=layers,
        channels=tuple(int(c) for c in channels),
        embedding_dim=int(fc_out),
        input_size=16 * side,
        in_channels=int(in_channels),
    )


def lightcnn_params_from_torch_state_dict(
    state_dict: Mapping[str, Any],
    model: LightCNN29v2 | None = None,
    *,
    return_classifier: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], np.ndarray | None]:
    """Convert an official LightCNN-29v2 PyTorch ``state_dict`` to flax variables
    ``{'params': ...}`` for ``model`` (inferred from the state_dict when omitted).

    Strips DataParallel ``module.`` prefixes, transposes conv kernels OIHW -> HWIO and linear
    weights [out, in] -> [in, out], permuting the fc input axis from torch's (C, H, W)
    flatten order to NHWC's (H, W, C). The training classifier ``fc2.weight`` ([classes, 256],
    no bias) is dropped, or returned as numpy rows when ``return_classifier``.
    """
    sd = strip_prefix(state_dict)
    if model is None:
        model = lightcnn29v2(**lightcnn_config_from_torch_state_dict(sd))
    template = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), dummy_input(model)
    )
    side = model.input_size // 16
    variables = convert_state_dict(
        template,
        sd,
        flatten_chw={"fc.weight": (model.channels[-1], side, side)},
        ignore=("fc2.weight", "fc2.bias"),
    )
    if return_classifier:
        fc2 = sd.get("fc2.weight")
        return variables, None if fc2 is None else to_numpy(fc2)
    return variables
