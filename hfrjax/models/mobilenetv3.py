"""MobileNetV3-Large in torchvision's layout, split into TOPLight's seven blocks.

Architecture: Howard et al., "Searching for MobileNetV3" (ICCV 2019), Table 1, as torchvision
builds it: a 3x3/2 conv stem (16, hard-swish); 15 inverted-residual bottlenecks ("bnecks":
1x1 expand, kxk depthwise, optional squeeze-excite, linear 1x1 projection, identity shortcut
when stride 1 and widths match); a 1x1 conv to 6x the last width (960); global average
pooling; a 960 -> 1280 linear layer with hard-swish ("pre-logits"); then the ImageNet
classifier (dropout 0.2, linear to 1000 classes). Every conv is bias-free and followed by
BatchNorm (eps 1e-3, torch momentum 0.01); the SE layers are 1x1 convs with biases
(squeeze = make_divisible(expanded / 4, 8), ReLU, hard-sigmoid gate). With the ImageNet
head the model has torchvision's 5,483,032 parameters.

Block split (TOPLight, Yu et al., CVPR 2023, Table 1, "without overlap"):
  Block1 = stem + bneck0 (16 ch, /2)        Block5 = bneck6..11 (112 ch, /16)
  Block2 = bneck1 (24 ch, /4)               Block6 = bneck12..14 (160 ch, /32)
  Block3 = bneck2 (24 ch, /4)               Block7 = 1x1 conv 960 + pool + pre-logits 1280
  Block4 = bneck3..5 (40 ch, /8)
Table 1 lists Block7 as three 1x1 convs: the 960-wide conv, the 1280-wide pre-logits and
the classifier. Here the classifier belongs to the head (below), so Block7 ends with the
1280-d pooled pre-logits vector and the backbone is the same for every head.

Heads (``MobileNetV3Head``):
* ``imagenet_head=True``: torchvision's classifier (dropout, linear to ``num_classes``),
  returning logits; this is what converted ImageNet checkpoints reproduce.
* otherwise, the embedding head for re-identification / face recognition: an optional
  bias-free linear layer to ``embedding_dim`` (``None`` keeps the 1280-d pre-logits), then a
  BatchNorm "neck" without bias (BNNeck, Luo et al., "Bag of tricks and a strong baseline
  for deep person re-identification", CVPRW 2019). The model returns the BN output
  (float32, not L2-normalised); the pre-BN feature is ``intermediates['pre_neck']``
  (BNNeck feeds it to the triplet loss).

Inputs may be non-square (person crops, e.g. 288x144; faces 112x112): ``input_size`` is an
int or an (height, width) pair. Depthwise convs use ``layers.GroupedConv`` (shifted slices
on CPU). ``mobilenetv3_params_from_torch_state_dict`` loads torchvision ``state_dict``s.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hfrjax.models.convert import conv_kernel, dense_kernel, strip_prefix, to_numpy
from hfrjax.models.layers import TORCH_BN_EPS, TORCH_BN_MOMENTUM, Dtype, GroupedConv
from hfrjax.models.registry import register_model

# torchvision's MobileNetV3 BatchNorm: eps=0.001, momentum=0.01 (flax: 1 - 0.01).
MBV3_BN_EPS = 1e-3
MBV3_BN_MOMENTUM = 0.99

# torchvision initialisation: kaiming_normal_(mode='fan_out') for convs, N(0, 0.01) linears.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_linear_init = nn.initializers.normal(stddev=0.01)

NUM_BLOCKS = 7


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (at least ``divisor``),
    never going more than 10% below ``value`` (MobileNetV2/V3 reference code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class Bneck(NamedTuple):
    """One inverted-residual bottleneck (a row of MobileNetV3's Table 1)."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    hard_swish: bool
    stride: int


# MobileNetV3-Large, Howard et al. Table 1: (in, kernel, expanded, out, SE, activation, stride).
_LARGE_BNECKS = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)
# TOPLight Table 1: which bnecks each of Block1..7 holds.
TOPLIGHT_BLOCK_BNECKS = ((0,), (1,), (2,), (3, 4, 5), tuple(range(6, 12)), (12, 13, 14), ())


class BlockSpec(NamedTuple):
    """What one of TOPLight's Block1..7 contains (widths already scaled)."""

    stem: int | None  # output width of the 3x3/2 stem conv (Block1 only)
    bnecks: tuple[tuple[int, Bneck], ...]  # (global bneck index, config)
    last_conv: int | None  # 1x1 conv width (Block7 only)
    pre_logits: int | None  # pooled linear width (Block7 only)

    @property
    def out_channels(self) -> int:
        if self.pre_logits is not None:
            return self.pre_logits
        return self.bnecks[-1][1].out_channels


@functools.lru_cache(maxsize=None)
def mobilenetv3_large_blocks(width_mult: float = 1.0) -> tuple[BlockSpec, ...]:
    """The seven TOPLight blocks of MobileNetV3-Large with every width (including the
    stem, the 960-wide last conv and the 1280-wide pre-logits) scaled by ``width_mult`` and
    rounded by ``make_divisible`` as torchvision does."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")

    def adjust(channels: int) -> int:
        return make_divisible(channels * width_mult, 8)

    bnecks = [
        Bneck(adjust(i), k, adjust(e), adjust(o), se, act == "HS", s)
        for i, k, e, o, se, act, s in _LARGE_BNECKS
    ]
    blocks = []
    for b, indices in enumerate(TOPLIGHT_BLOCK_BNECKS):
        last = b == NUM_BLOCKS - 1
        blocks.append(
            BlockSpec(
                stem=bnecks[0].in_channels if b == 0 else None,
                bnecks=tuple((i, bnecks[i]) for i in indices),
                last_conv=6 * bnecks[-1].out_channels if last else None,
                pre_logits=adjust(1280) if last else None,
            )
        )
    return tuple(blocks)


def input_hw(input_size: int | tuple[int, int]) -> tuple[int, int]:
    """``input_size`` (int for square, or (height, width)) -> (height, width)."""
    if isinstance(input_size, (int, np.integer)):
        return int(input_size), int(input_size)
    h, w = input_size
    return int(h), int(w)


def _activation(name: str | None):
    return {"relu": nn.relu, "hardswish": jax.nn.hard_swish, None: lambda x: x}[name]


class ConvBNAct(nn.Module):
    """conv (no bias, symmetric padding (k - 1) / 2) -> BatchNorm -> activation;
    ``groups == features`` makes it depthwise (``layers.GroupedConv``)."""

    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    activation: str | None = None
    depthwise_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        pad = (self.kernel - 1) // 2
        if self.groups > 1:
            x = GroupedConv(
                self.features,
                (self.kernel, self.kernel),
                self.groups,
                stride=self.stride,
                padding=pad,
                impl=self.depthwise_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=_conv_init,
                name="conv",
            )(x)
        else:
            x = nn.Conv(
                self.features,
                (self.kernel, self.kernel),
                strides=self.stride,
                padding=((pad, pad), (pad, pad)),
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=_conv_init,
                name="conv",
            )(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=MBV3_BN_MOMENTUM,
            epsilon=MBV3_BN_EPS,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="bn",
        )(x)
        return _activation(self.activation)(x)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with MobileNetV3's hard-sigmoid gate: x * hsig(fc2(relu(fc1(
    GAP(x))))), fc1/fc2 being 1x1 convs with bias."""

    squeeze: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = functools.partial(
            nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_conv_init
        )
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        scale = nn.relu(conv(self.squeeze, (1, 1), name="fc1")(scale))
        scale = jax.nn.hard_sigmoid(conv(x.shape[-1], (1, 1), name="fc2")(scale))
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: [1x1 expand] -> kxk depthwise (stride) -> [SE] -> linear 1x1
    projection, plus the input when stride is 1 and the widths match."""

    config: Bneck
    depthwise_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        cfg = self.config
        if x.shape[-1] != cfg.in_channels:
            raise ValueError(f"bneck expects {cfg.in_channels} input channels, got {x.shape}")
        act = "hardswish" if cfg.hard_swish else "relu"
        block = functools.partial(
            ConvBNAct,
            depthwise_impl=self.depthwise_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        y = x
        if cfg.expanded != cfg.in_channels:
            y = block(cfg.expanded, 1, activation=act, name="expand")(y, train)
        y = block(
            cfg.expanded, cfg.kernel, cfg.stride, groups=cfg.expanded, activation=act, name="dw"
        )(y, train)
        if cfg.use_se:
            squeeze = make_divisible(cfg.expanded // 4, 8)
            y = SqueezeExcite(squeeze, self.dtype, self.param_dtype, name="se")(y)
        y = block(cfg.out_channels, 1, name="project")(y, train)
        if cfg.stride == 1 and cfg.in_channels == cfg.out_channels:
            y = y + x
        return y


class MobileNetV3Block(nn.Module):
    """One of TOPLight's Block1..7 (see ``BlockSpec``). Block7 returns the pooled
    [B, pre_logits] vector (pooling and pre-logits in float32); the others a feature map."""

    spec: BlockSpec
    depthwise_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        spec = self.spec
        conv = functools.partial(
            ConvBNAct,
            activation="hardswish",
            depthwise_impl=self.depthwise_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if spec.stem is not None:
            x = conv(spec.stem, 3, 2, name="stem")(x.astype(self.dtype), train)
        for index, cfg in spec.bnecks:
            x = InvertedResidual(
                cfg, self.depthwise_impl, self.dtype, self.param_dtype, name=f"bneck{index}"
            )(x, train)
        if spec.last_conv is not None:
            x = conv(spec.last_conv, 1, name="last_conv")(x, train)
            x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
            x = nn.Dense(
                spec.pre_logits,
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                kernel_init=_linear_init,
                name="pre_logits",
            )(x)
            x = jax.nn.hard_swish(x)
        return x


class MobileNetV3Head(nn.Module):
    """ImageNet classifier (``imagenet_head``) or embedding head (optional bias-free FC to
    ``embedding_dim``, then a bias-free BatchNorm neck). Returns (output, pre_neck)."""

    embedding_dim: int | None = None
    imagenet_head: bool = False
    num_classes: int = 1000
    dropout: float = 0.2
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
        x = x.astype(jnp.float32)
        if self.imagenet_head:
            y = nn.Dropout(self.dropout, deterministic=not train)(x)
            y = nn.Dense(
                self.num_classes,
                param_dtype=self.param_dtype,
                kernel_init=_linear_init,
                name="classifier",
            )(y)
            return y, x
        if self.embedding_dim is not None:
            x = nn.Dense(
                self.embedding_dim,
                use_bias=False,
                param_dtype=self.param_dtype,
                kernel_init=_linear_init,
                name="neck_fc",
            )(x)
        y = nn.BatchNorm(
            use_running_average=not train,
            use_bias=False,
            momentum=TORCH_BN_MOMENTUM,
            epsilon=TORCH_BN_EPS,
            param_dtype=self.param_dtype,
            name="neck_bn",
        )(x)
        return y, x


def check_head_options(embedding_dim: int | None, num_classes: int, dropout: float) -> None:
    """Clear errors for head arguments (shared by the single- and dual-path models)."""
    if embedding_dim is not None and embedding_dim < 1:
        raise ValueError(f"embedding_dim must be positive or None, got {embedding_dim}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class MobileNetV3(nn.Module):
    """MobileNetV3-Large as TOPLight's Block1..7 plus a head (module docstring).

    ``model.apply(variables, x, train)`` with x [B, H, W, in_channels] returns the head
    output (embedding, or logits with ``imagenet_head``); ``return_intermediates=True``
    returns ``(output, {'block1': ..., ..., 'block7': ..., 'pre_neck': ...})``.
    """

    width_mult: float = 1.0
    embedding_dim: int | None = None
    imagenet_head: bool = False
    num_classes: int = 1000
    dropout: float = 0.2
    input_size: int | tuple[int, int] = 224
    in_channels: int = 3
    # layers.GroupedConv: "conv" | "shifts" | "fused" | "auto" (fused on CPU, conv elsewhere).
    depthwise_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool = False, return_intermediates: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        chex.assert_shape(x, (None, *input_hw(self.input_size), self.in_channels))
        intermediates = {}
        for b, spec in enumerate(mobilenetv3_large_blocks(self.width_mult), start=1):
            x = MobileNetV3Block(
                spec, self.depthwise_impl, self.dtype, self.param_dtype, name=f"block{b}"
            )(x, train)
            intermediates[f"block{b}"] = x
        out, intermediates["pre_neck"] = MobileNetV3Head(
            self.embedding_dim,
            self.imagenet_head,
            self.num_classes,
            self.dropout,
            self.param_dtype,
            name="head",
        )(x, train)
        out = out.astype(jnp.float32)
        return (out, intermediates) if return_intermediates else out


@register_model("mobilenetv3_large")
def mobilenetv3_large(
    *,
    width_mult: float = 1.0,
    embedding_dim: int | None = None,
    imagenet_head: bool = False,
    num_classes: int = 1000,
    dropout: float = 0.2,
    input_size: int | tuple[int, int] = 224,
    in_channels: int = 3,
    depthwise_impl: str = "auto",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> MobileNetV3:
    """MobileNetV3-Large (torchvision layout). ``imagenet_head=True`` gives the published
    classifier (5,483,032 parameters at width 1, 1000 classes); otherwise the embedding head
    (``embedding_dim=None`` keeps the 1280-d pre-logits)."""
    check_head_options(embedding_dim, num_classes, dropout)
    mobilenetv3_large_blocks(width_mult)  # validates width_mult
    size = input_hw(input_size)
    return MobileNetV3(
        width_mult=width_mult,
        embedding_dim=embedding_dim,
        imagenet_head=imagenet_head,
        num_classes=num_classes,
        dropout=dropout,
        input_size=size[0] if size[0] == size[1] else size,
        in_channels=in_channels,
        depthwise_impl=depthwise_impl,
        dtype=dtype,
        param_dtype=param_dtype,
    )


# ----------------------------------------------------------------- torchvision weights

# flax leaf -> torch parameter / buffer suffix.
_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _bneck_layer_index(cfg: Bneck, role: str) -> int:
    """Position of a bneck sub-layer in torchvision's ``InvertedResidual.block``
    (the expand conv and the SE layer exist only for some bnecks)."""
    order = []
    if cfg.expanded != cfg.in_channels:
        order.append("expand")
    order.append("dw")
    if cfg.use_se:
        order.append("se")
    order.append("project")
    return order.index(role)


def torchvision_key(
    collection: str, path: tuple[str, ...], width_mult: float = 1.0
) -> str | None:
    """flax variable path of ``MobileNetV3`` -> torchvision ``mobilenet_v3_large`` state_dict
    key (``None`` for the embedding head, which torchvision does not have).

    torchvision: ``features.0`` stem, ``features.{1+i}`` bneck i (``.block.{j}.{0 conv,
    1 bn}``, SE ``.block.{j}.fc1/fc2``), ``features.16`` last conv, ``classifier.0``
    pre-logits, ``classifier.3`` ImageNet classifier.
    """
    *modules, leaf = path
    try:
        suffix = _LEAF[(collection, leaf)]
    except KeyError:
        raise KeyError(f"no torch equivalent for flax leaf {collection}/{'/'.join(path)}") from None
    if modules[0] == "head":
        return f"classifier.3.{suffix}" if modules[1] == "classifier" else None
    layer = modules[1]
    if layer == "pre_logits":
        return f"classifier.0.{suffix}"
    if layer in ("stem", "last_conv"):
        index = 0 if layer == "stem" else len(_LARGE_BNECKS) + 1
        return f"features.{index}.{ {'conv': 0, 'bn': 1}[modules[2]] }.{suffix}"
    if not layer.startswith("bneck"):
        raise KeyError(f"unexpected MobileNetV3 module path {'/'.join(path)}")
    i = int(layer[len("bneck") :])
    bnecks = dict(b for spec in mobilenetv3_large_blocks(width_mult) for b in spec.bnecks)
    j = _bneck_layer_index(bnecks[i], modules[2])
    inner = modules[3]  # conv / bn / fc1 / fc2
    inner = {"conv": "0", "bn": "1"}.get(inner, inner)
    return f"features.{i + 1}.block.{j}.{inner}.{suffix}"


def mobilenetv3_params_from_torch_state_dict(
    state_dict: Mapping[str, Any], model: MobileNetV3, *, rng: jax.Array | None = None
) -> dict[str, Any]:
    """Convert a torchvision ``mobilenet_v3_large`` ``state_dict`` (any ``_width_mult``)
    into flax variables ``{'params', 'batch_stats'}`` for ``model``.

    Conv kernels go OIHW -> HWIO, linear weights are transposed. With ``imagenet_head`` the
    classifier is loaded too; otherwise ``classifier.3`` is ignored and the embedding head
    (neck FC / BN, absent from torchvision) is freshly initialised from ``rng`` (default
    ``jax.random.key(0)``). Missing or unexpected keys and shape mismatches raise
    ``ValueError`` listing all of them.
    """
    state = {k: to_numpy(v) for k, v in strip_prefix(state_dict).items()}
    h, w = input_hw(model.input_size)
    x = jnp.zeros((1, h, w, model.in_channels), jnp.float32)
    init = functools.partial(model.init, train=False)
    if rng is None:
        rng = jax.random.key(0)
    template = jax.eval_shape(init, rng, x)
    flat = traverse_util.flatten_dict(dict(template))
    fresh = {}
    if not model.imagenet_head:  # the embedding head: initialise it alone (cheap)
        head = MobileNetV3Head(
            model.embedding_dim, False, model.num_classes, model.dropout, model.param_dtype
        )
        width = mobilenetv3_large_blocks(model.width_mult)[-1].pre_logits
        head_vars = head.init(rng, jnp.zeros((1, width), jnp.float32), train=False)
        fresh = {
            (col, "head", *rest): v
            for (col, *rest), v in traverse_util.flatten_dict(dict(head_vars)).items()
        }
    out, used, errors = {}, set(), []
    for path, leaf in flat.items():
        key = torchvision_key(path[0], path[1:], model.width_mult)
        if key is None:
            out[path] = fresh[path]
            continue
        if key not in state:
            errors.append(f"missing torch key {key!r} for flax {'/'.join(path)}")
            continue
        value = state[key]
        used.add(key)
        if path[-1] == "kernel":
            value = conv_kernel(value) if value.ndim == 4 else dense_kernel(value)
        if tuple(value.shape) != tuple(leaf.shape):
            errors.append(f"{key}: converted shape {value.shape} != flax {tuple(leaf.shape)}")
            continue
        out[path] = jnp.asarray(value, dtype=leaf.dtype)
    ignored = set() if model.imagenet_head else {"classifier.3.weight", "classifier.3.bias"}
    leftover = sorted(
        k
        for k in state
        if k not in used and k not in ignored and not k.endswith("num_batches_tracked")
    )
    if leftover:
        errors.append(f"unexpected torch keys: {leftover}")
    if errors:
        raise ValueError(
            "state_dict does not match the flax MobileNetV3:\n  " + "\n  ".join(errors)
        )
    return traverse_util.unflatten_dict(out)
