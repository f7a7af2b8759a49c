"""IResNet (improved ResNet) backbones in the InsightFace ``arcface_torch`` layout.

Layout (ArcFace, Deng et al., CVPR 2019, and InsightFace's arcface_torch iresnet.py): stem conv3x3 + BN + PReLU; four stages of ``IBasicBlock``
(BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus a conv1x1 + BN shortcut on the
first block of each stage); head BN -> flatten -> dropout -> FC -> BatchNorm1d with its
scale fixed at 1 (flax ``use_scale=False``, so it is not a parameter at all).

Submodule names mirror the PyTorch attribute paths so that
``iresnet_params_from_torch_state_dict`` can load arcface_torch checkpoints.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.models.convert import convert_state_dict, strip_prefix, to_numpy
from hfrjax.models.layers import BatchNorm, Dtype, PReLU, torch_padding
from hfrjax.models.registry import dummy_input, register_model

IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}

# Largest map on which a stride-2 conv is computed at stride 1 and subsampled (IBasicBlock).
TINY_MAP = 4

# arcface_torch initialises every conv with N(0, 0.1).
_conv_init = nn.initializers.normal(stddev=0.1)


class IBasicBlock(nn.Module):
    """Pre-activation-style basic block; the stride sits on the *second* conv."""

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        bn = functools.partial(
            BatchNorm, use_running_average=not train, dtype=self.dtype, param_dtype=self.param_dtype
        )
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_conv_init,
        )
        out = bn(name="bn1")(x)
        out = conv(self.planes, (3, 3), padding=torch_padding(1), name="conv1")(out)
        out = bn(name="bn2")(out)
        out = PReLU(param_dtype=self.param_dtype, name="prelu")(out)
        # On a map of at most 4x4 XLA:CPU swaps the operands of this conv's input-gradient
        # convolution (its kernel is as large as the map) and runs it ~3x slower than the
        # stride-1 conv's whole backward; the stride-1 outputs at even positions are the
        # stride-2 outputs, so tiny maps (the last stage of 32x32 models) take that path.
        subsample = self.stride == 2 and out.shape[1] <= TINY_MAP
        out = conv(
            self.planes,
            (3, 3),
            strides=1 if subsample else self.stride,
            padding=torch_padding(1),
            name="conv2",
        )(out)
        if subsample:
            out = out[:, ::2, ::2]
        out = bn(name="bn3")(out)
        identity = x
        if self.downsample:
            identity = conv(
                self.planes, (1, 1), strides=self.stride, padding="VALID", name="downsample_0"
            )(x)
            identity = bn(name="downsample_1")(identity)
        return out + identity


class IResNet(nn.Module):
    """IResNet backbone mapping NHWC images to an ``embedding_dim`` float32 embedding.

    ``base_width`` is the stem/stage-1 width (64 in the published models; stage widths are
    base_width * (1, 2, 4, 8)); tiny values make CPU tests fast. ``input_size`` must be a
    multiple of 16; it fixes the FC input (base_width * 8 * (input_size / 16)^2).
    ``dtype`` is the computation dtype of the conv trunk; the FC + BN head runs in float32
    as in arcface_torch (which leaves it outside fp16 autocast).
    """

    layers: Sequence[int] = IRESNET_LAYERS[50]
    base_width: int = 64
    embedding_dim: int = 512
    input_size: int = 112
    in_channels: int = 3
    dropout: float = 0.0
    remat: bool = False  # Recompute each block's activations in the backward pass (memory).
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        chex.assert_shape(x, (None, self.input_size, self.input_size, self.in_channels))
        if len(self.layers) != 4:
            raise ValueError(f"IResNet has 4 stages, got layers={self.layers}")
        bn = functools.partial(
            BatchNorm, use_running_average=not train, param_dtype=self.param_dtype
        )

        x = x.astype(self.dtype)
        x = nn.Conv(
            self.base_width,
            (3, 3),
            padding=torch_padding(1),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_conv_init,
            name="conv1",
        )(x)
        x = bn(dtype=self.dtype, name="bn1")(x)
        x = PReLU(param_dtype=self.param_dtype, name="prelu")(x)

        # static_argnums counts the module: (self, x, train) -> train is 2.
        block_cls = nn.remat(IBasicBlock, static_argnums=(2,)) if self.remat else IBasicBlock
        inplanes = self.base_width
        for stage, num_blocks in enumerate(self.layers, start=1):
            planes = self.base_width * 2 ** (stage - 1)
            for i in range(num_blocks):
                stride = 2 if i == 0 else 1
                x = block_cls(
                    planes,
                    stride=stride,
                    downsample=(i == 0) and (stride != 1 or inplanes != planes),
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"layer{stage}_{i}",
                )(x, train)
                inplanes = planes

        x = bn(dtype=self.dtype, name="bn2")(x)
        x = x.reshape(x.shape[0], -1).astype(jnp.float32)  # NHWC flatten: (H, W, C) order
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(
            self.embedding_dim, dtype=jnp.float32, param_dtype=self.param_dtype, name="fc"
        )(x)
        x = bn(dtype=jnp.float32, use_scale=False, name="features")(x)
        return x.astype(jnp.float32)


@register_model("iresnet")
def iresnet(
    layers: Sequence[int] | None = None,
    depth: int | None = None,
    *,
    base_width: int | None = None,
    width_mult: float = 1.0,
    embedding_dim: int = 512,
    input_size: int = 112,
    in_channels: int = 3,
    dropout: float = 0.0,
    remat: bool = False,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> IResNet:
    """Generic IResNet: give ``layers`` (blocks per stage) or a published ``depth``
    (18/34/50/100), and ``base_width`` or ``width_mult`` (times 64)."""
    if layers is None:
        if depth not in IRESNET_LAYERS:
            raise ValueError(
                f"give layers=... or depth in {sorted(IRESNET_LAYERS)}, got depth={depth}"
            )
        layers = IRESNET_LAYERS[depth]
    elif depth is not None:
        raise ValueError("give either layers or depth, not both")
    if base_width is None:
        base_width = max(1, int(round(64 * width_mult)))
    if input_size % 16:
        raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
    return IResNet(
        layers=tuple(layers),
        base_width=base_width,
        embedding_dim=embedding_dim,
        input_size=input_size,
        in_channels=in_channels,
        dropout=dropout,
        remat=remat,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def _register_depth(depth: int) -> None:
    def factory(**kwargs: Any) -> IResNet:
        return iresnet(depth=depth, **kwargs)

    factory.__name__ = f"ir{depth}"
    factory.__doc__ = f"IResNet-{depth} (layers {IRESNET_LAYERS[depth]}); kwargs as ``iresnet``."
    register_model(f"ir{depth}")(factory)


for _depth in IRESNET_LAYERS:
    _register_depth(_depth)


def iresnet_config_from_torch_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Infer ``iresnet(...)`` kwargs (layers, base_width, embedding_dim, input_size,
    in_channels) from an arcface_torch IResNet state_dict."""
    sd = strip_prefix(state_dict)
    layers = []
    for stage in range(1, 5):
        blocks = {int(k.split(".")[1]) for k in sd if k.startswith(f"layer{stage}.")}
        layers.append(len(blocks))
    width, in_channels = to_numpy(sd["conv1.weight"]).shape[:2]
    fc_out, fc_in = to_numpy(sd["fc.weight"]).shape
    side = math.isqrt(fc_in // (8 * width))
    if side * side * 8 * width != fc_in:
        raise ValueError(f"fc input {fc_in} is not 8*{width}*side^2")
    return dict(
        layers=tuple(layers),
        base_width=int(width),
        embedding_dim=int(fc_out),
        input_size=16 * side,
        in_channels=int(in_channels),
    )


def iresnet_params_from_torch_state_dict(
    state_dict: Mapping[str, Any], model: IResNet | None = None
) -> dict[str, Any]:
    """Convert an arcface_torch IResNet ``state_dict`` into flax variables
    ``{'params': ..., 'batch_stats': ...}`` for ``model`` (inferred from the state_dict when
    omitted; build it with ``iresnet(**iresnet_config_from_torch_state_dict(sd))``).

    Conv kernels go OIHW -> HWIO; the FC weight is transposed and its input axis permuted from
    torch's (C, H, W) flatten order to NHWC's (H, W, C). ``features.weight`` (fixed at 1 and
    frozen in arcface_torch) has no flax counterpart and must be all ones.
    """
    sd = strip_prefix(state_dict)
    if model is None:
        model = iresnet(**iresnet_config_from_torch_state_dict(sd))
    gamma = to_numpy(sd.get("features.weight", np.ones(1)))
    if not np.allclose(gamma, 1.0):
        raise ValueError(
            "features.weight (BatchNorm1d scale) must be 1: it is fixed in arcface_torch"
        )
    template = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), dummy_input(model)
    )
    side = model.input_size // 16
    chw = (model.base_width * 8, side, side)
    return convert_state_dict(
        template, sd, flatten_chw={"fc.weight": chw}, ignore=("features.weight",)
    )
